"""Training checkpoints: everything needed to continue a run exactly, without pickle.

One ``.safetensors`` file holds every tensor (network weights, optimiser moments, image pools,
RNG states as byte tensors); its metadata holds the rest as JSON (optimiser hyper-parameters,
schedule and early-stop state, sampler state, iteration, loss history). Written atomically, so
``kill -9`` at any moment leaves the previous complete checkpoint.
"""

import json

from dicyc.atomic import atomic_path
from dicyc.errors import DicycError

FORMAT = "dicyc-checkpoint"
FORMAT_VERSION = 1


def _optimizer_to_flat(prefix, optimizer, tensors):
    state = optimizer.state_dict()
    meta = {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        keys = {}
        for key, value in entry.items():
            if hasattr(value, "shape"):
                tensors[f"{prefix}.{idx}.{key}"] = value.detach().cpu().contiguous()
                keys[key] = "tensor"
            else:
                keys[key] = value
        meta["state"][str(idx)] = keys
    return meta


def _optimizer_from_flat(prefix, meta, tensors, device):
    state = {}
    for idx, keys in meta["state"].items():
        entry = {}
        for key, value in keys.items():
            if value == "tensor":
                t = tensors[f"{prefix}.{idx}.{key}"]
                entry[key] = t if key == "step" else t.to(device)
            else:
                entry[key] = value
        state[int(idx)] = entry
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path, nets, optimizers, pools, extra, torch_generators=None):
    """Write a checkpoint. ``extra`` is any JSON-serialisable dict (iteration, schedule, …)."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for name, net in nets.items():
        for key, value in net.state_dict().items():
            tensors[f"net.{name}.{key}"] = value.detach().cpu().contiguous()
    opt_meta = {name: _optimizer_to_flat(f"opt.{name}", opt, tensors) for name, opt in optimizers.items()}
    for name, pool in pools.items():
        tensors[f"pool.{name}"] = pool.state_tensor().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    for name, gen in (torch_generators or {}).items():
        tensors[f"rng.gen.{name}"] = gen.get_state()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "optimizers": opt_meta, "extra": extra}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"dicyc_checkpoint": json.dumps(meta)})


def _load_nets(path, tensors, nets):
    for name, net in nets.items():
        prefix = f"net.{name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise DicycError(f"{path} does not match this run's {name} network ({str(exc).splitlines()[0]}).") from None


def load_checkpoint_networks(path, nets):
    """Restore only the networks of a checkpoint (all of them, training-only ones included).

    For analyses of a finished run, such as what DiCyc's offset fields and TPS transformers
    learned: the model file holds the synthesis generators alone.
    """
    from safetensors.torch import load_file

    from dicyc.modelfile import check_safetensors_header

    check_safetensors_header(path, what="training checkpoint")
    _load_nets(path, load_file(str(path)), nets)


def _checkpoint_meta(path):
    """The checked JSON metadata of a checkpoint (its header only; no tensor is read)."""
    from safetensors import safe_open

    from dicyc.modelfile import check_safetensors_header

    check_safetensors_header(path, what="training checkpoint")
    with safe_open(str(path), framework="pt") as fh:
        raw = (fh.metadata() or {}).get("dicyc_checkpoint")
    if raw is None:
        raise DicycError(f"{path} is a safetensors file but not a DiCyc training checkpoint.")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise DicycError(f"{path} is a checkpoint of an unsupported format version ({meta.get('format_version')}).")
    return meta


def read_checkpoint_extra(path):
    """The ``extra`` dict of a checkpoint (iteration, schedule, precision, …) without loading tensors."""
    return _checkpoint_meta(path)["extra"]


def load_checkpoint(path, nets, optimizers, pools, device, torch_generators=None):
    """Restore a checkpoint into existing networks/optimisers/pools; returns ``extra``."""
    import torch
    from safetensors.torch import load_file

    meta = _checkpoint_meta(path)
    tensors = load_file(str(path))
    _load_nets(path, tensors, nets)
    for name, opt in optimizers.items():
        opt.load_state_dict(_optimizer_from_flat(f"opt.{name}", meta["optimizers"][name], tensors, device))
    for name, pool in pools.items():
        pool.load_state_tensor(tensors[f"pool.{name}"], device)
    torch.set_rng_state(tensors["rng.torch"])
    for name, gen in (torch_generators or {}).items():
        key = f"rng.gen.{name}"
        if key in tensors:
            gen.set_state(tensors[key])
    return meta["extra"]
