"""UNIT (Liu et al. 2017): translators, weight sharing, the recipe's losses, training, model file, resume."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dicyc.errors import DicycError  # noqa: E402
from dicyc.nets import build_generator, build_unit_pair, count_parameters  # noqa: E402
from dicyc.nets.unit import UnitTranslator, split_blocks  # noqa: E402

TINY = {"generator": "unit", "ngf": 4, "n_blocks": 2}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run faster on one thread than on an oversubscribed pool (shared CI cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared_names(net):
    return [n for n, _ in net.named_parameters() if n.startswith("shared.")]


def unit_config(**extra):
    from dicyc.train import resolve_config

    base = {"method": "unit", "ngf": 4, "n_blocks": 2, "ndf": 4, "slice_size": 32, "spacing": [2.0, 2.0],
            "iterations": 4, "checkpoint_every": 2, "epoch_length": 100, "log_every": 1}
    base.update(extra)
    return resolve_config(None, base)


# ----------------------------------------------------------------------------- networks
@pytest.mark.parametrize("shape", [(32, 32), (32, 48)])
def test_translators_keep_shape_and_range(shape):
    torch.manual_seed(0)
    pair = build_unit_pair(TINY)
    x = torch.randn(2, 1, *shape) * 3
    for direction in ("a2b", "b2a"):
        single = build_generator({**TINY, "direction": direction}).eval()
        assert isinstance(single, UnitTranslator) and single.direction == direction
        for net in (single, pair["G_AB" if direction == "a2b" else "G_BA"].eval()):
            with torch.no_grad():
                y = net(x)
            assert y.shape == x.shape
            assert y.min() >= -1 and y.max() <= 1
            mu = net.encode(x)
            assert mu.shape == (2, 16, shape[0] // 4, shape[1] // 4)
    with pytest.raises(ValueError, match="multiples of 4"):
        pair["G_AB"](torch.randn(1, 1, 30, 32))


def test_synthesis_pass_is_deterministic():
    """forward uses μ alone: no sampling noise at synthesis, in train mode too."""
    torch.manual_seed(0)
    net = build_generator(TINY)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


def test_shared_layers_are_the_same_parameters():
    pair = build_unit_pair({**TINY, "n_blocks": 6, "shared_blocks": 2})
    g_ab, g_ba = pair["G_AB"], pair["G_BA"]
    ab, ba = dict(g_ab.named_parameters()), dict(g_ba.named_parameters())
    shared = shared_names(g_ab)
    assert shared and shared == shared_names(g_ba)
    assert len(g_ab.shared.encoder) == len(g_ab.shared.decoder) == 2
    for name in shared:
        assert ab[name] is ba[name], name
    for name in ab.keys() - set(shared):
        assert ab[name] is not ba[name] and ab[name].data_ptr() != ba[name].data_ptr(), name
    # encoder side: 3 blocks (1 private + 2 shared); decoder side: 3 blocks (2 shared + 1 private)
    assert len(g_ab.encoder.blocks) == 1 and len(g_ab.decoder.blocks) == 1
    unique = {id(p) for net in pair.values() for p in net.parameters()}
    assert len(unique) == len(ab) + len(ba) - len(shared)
    # a gradient through G_BA reaches the parameters G_AB sees
    g_ba(torch.randn(1, 1, 16, 16)).mean().backward()
    assert ab[shared[0]].grad is not None and ab["encoder.stem.1.weight"].grad is None


def test_pair_layout_matches_build_generator_and_state_dicts_never_alias(tmp_path):
    """What training holds is what a model file stores, and both translators save side by side."""
    from safetensors.torch import save_file

    pair = build_unit_pair(TINY)
    single = build_generator(TINY)
    for net in pair.values():
        assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in single.state_dict().items()}
        assert net.architecture() == {**TINY, "shared_blocks": 1, "upsample": "transpose", "input_nc": 1, "output_nc": 1}
    tensors = {f"{n}.{k}": v for n, net in pair.items() for k, v in net.state_dict().items()}
    save_file(tensors, str(tmp_path / "both.safetensors"))  # refuses aliased tensors
    # the borrower's state dict holds copies of the shared values; keep_vars still gives the live ones
    key = shared_names(pair["G_AB"])[0]
    assert torch.equal(pair["G_BA"].state_dict()[key], pair["G_AB"].state_dict()[key])
    assert pair["G_BA"].state_dict(keep_vars=True)[key] is dict(pair["G_AB"].named_parameters())[key]
    # loading either translator's state writes into the one shared parameter
    other = build_unit_pair(TINY)
    other["G_BA"].load_state_dict(pair["G_BA"].state_dict())
    assert torch.equal(other["G_AB"].state_dict()[key], pair["G_AB"].state_dict()[key])


def test_unit_architecture_errors():
    assert split_blocks(9, 1) == (5, 4) and split_blocks(2, 1) == (1, 1)
    assert split_blocks(1, 1) == (1, 1) and split_blocks(4, 3) == (3, 3)  # each side holds the shared blocks
    net = build_generator({**TINY, "n_blocks": 1})
    assert len(net.shared.encoder) == len(net.shared.decoder) == 1
    assert len(net.encoder.blocks) == len(net.decoder.blocks) == 0
    with pytest.raises(ValueError, match="shared_blocks"):
        build_generator({**TINY, "shared_blocks": 0})
    with pytest.raises(ValueError, match="direction"):
        build_generator({**TINY, "direction": "sideways"})
    with pytest.raises(ValueError, match="'unit'"):
        build_generator({"generator": "unet"})
    with torch.device("meta"):  # the default size is CycleGAN's: same residual-block count and cost
        assert count_parameters(build_generator({"generator": "unit"}, init=False)) == count_parameters(
            build_generator({}, init=False))


def test_model_card_accepts_unit_and_checks_sharing():
    from dicyc.modelfile import check_card

    card = {"format": "dicyc-model", "format_version": 1, "method": "unit",
            "architecture": {**TINY, "shared_blocks": 1, "upsample": "transpose", "input_nc": 1, "output_nc": 1},
            "domains": {s: {"name": s, "modality": "MR", "normalization": {}} for s in ("a", "b")}}
    check_card(card)
    check_card(dict(card, architecture={**card["architecture"], "n_blocks": 1, "shared_blocks": 2}))
    for bad in ({"shared_blocks": 0}, {"shared_blocks": "1"}, {"direction": "up"}):
        broken = dict(card, architecture={**card["architecture"], **bad})
        with pytest.raises(DicycError, match="architecture"):
            check_card(broken)


# ----------------------------------------------------------------------------- recipe
def test_recipe_steps_reduce_the_reconstruction_loss():
    from dicyc.losses import ImagePool
    from dicyc.methods import UNIT, get_method, list_methods

    assert get_method("unit") is UNIT and "unit" in dict(list_methods())
    assert UNIT.defaults["lambda_gan"] == 1.0 and UNIT.defaults["lambda_recon"] == 10.0
    torch.manual_seed(0)
    recipe = UNIT(unit_config())
    nets = recipe.build_networks()
    assert set(nets) == {"G_AB", "G_BA", "D_A", "D_B"} and recipe.synthesis_networks() == ["G_AB", "G_BA"]
    groups = recipe.optimizer_groups()
    optim = {}
    for name, members in groups.items():
        params = list({id(p): p for m in members for p in nets[m].parameters()}.values())
        optim[name] = torch.optim.Adam(params, lr=2e-3, betas=(0.5, 0.999))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    blob = lambda cx, cy, r: ((xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2).float()  # noqa: E731
    real_a = torch.stack([blob(0.1 * i, -0.1 * i, 0.5) * 1.6 - 0.8 for i in range(2)])[:, None]
    real_b = torch.stack([1.0 - 2 * blob(-0.1 * i, 0.1 * i, 0.6) for i in range(2)])[:, None]
    pools = {name: ImagePool(4) for name in recipe.pools()}
    recon = []
    for iteration in range(30):
        ctx = {"real_a": real_a, "real_b": real_b, "pools": pools, "iteration": iteration}
        for opt_name, step in recipe.steps():
            for name, net in nets.items():
                net.requires_grad_(name in groups[opt_name])
            optim[opt_name].zero_grad(set_to_none=True)
            loss, logged = step(nets, ctx)
            assert torch.isfinite(loss)
            loss.backward()
            optim[opt_name].step()
            if opt_name == "G":
                assert {"adv_ab", "adv_ba", "kl", "recon", "cycle_kl", "cycle", "G"} <= set(logged)
                recon.append(logged["recon"])
        assert ctx["fake_a"].shape == real_a.shape and ctx["fake_b"].shape == real_b.shape
    assert np.mean(recon[-5:]) < 0.6 * np.mean(recon[:3])


def test_recipe_refuses_no_sharing_in_one_sentence():
    from dicyc.methods import UNIT

    with pytest.raises(DicycError, match="shared_blocks"):
        UNIT(unit_config(shared_blocks=0)).build_networks()


# ----------------------------------------------------------------------------- end to end
def test_train_load_and_synthesise(toy_pair, tmp_path):
    from dicyc.modelfile import load_model, read_card
    from dicyc.synthesize import synthesize_volume
    from dicyc.train import train
    from dicyc.volume import read_volume

    mr, ct = toy_pair
    out = train(mr, ct, tmp_path / "run", unit_config(cache_dir=str(tmp_path / "cache")), device="cpu")
    card = read_card(out)
    assert card["method"] == "unit" and card["architecture"]["generator"] == "unit"
    assert card["architecture"]["shared_blocks"] == 1 and card["training"]["lambda_kl"] == 0.01
    model = load_model(out)
    assert model.generator("b2a").direction == "b2a" and model.generator("a2b").direction == "a2b"
    source = read_volume(mr)
    synthetic = synthesize_volume(model, source, direction="a2b", device="cpu", precision="fp32")
    assert synthetic.same_grid(source) and synthetic.shape == source.shape
    assert np.isfinite(synthetic.array).all()
    # the file's shared weights are the same in both directions, as trained
    from safetensors.torch import load_file

    tensors = load_file(str(out))
    shared = [k for k in tensors if k.startswith("G_AB.shared.")]
    assert shared and all(torch.equal(tensors[k], tensors["G_BA" + k[4:]]) for k in shared)
