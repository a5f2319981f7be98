"""Model file: round trip, half-precision storage, cheap card reading, refusals, atomic writes."""

import json
import os
import pickle
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from dicyc.errors import DicycError  # noqa: E402
from dicyc.modelfile import check_card, check_safetensors_header, load_model, read_card, save_model  # noqa: E402
from dicyc.nets import build_generator  # noqa: E402

ARCH = {"generator": "resnet", "ngf": 8, "n_blocks": 2, "upsample": "transpose", "input_nc": 1, "output_nc": 1}


def make_card(**over):
    card = {
        "format": "dicyc-model",
        "format_version": 1,
        "method": "cyclegan",
        "architecture": dict(ARCH),
        "domains": {
            "a": {"name": "MR", "modality": "MR", "normalization": {"kind": "percentile", "low": 0.0, "high": 900.0}},
            "b": {"name": "CT", "modality": "CT", "normalization": {"kind": "window", "low": -1000.0, "high": 2000.0}},
        },
        "spacing": [1.0, 1.0],
        "slice_size": 32,
    }
    card.update(over)
    return card


@pytest.fixture(scope="module")
def gens():
    torch.manual_seed(0)
    return {"G_AB": build_generator(ARCH), "G_BA": build_generator(ARCH)}


def outputs(nets, x):
    with torch.no_grad():
        return {name: net(x) for name, net in nets.items()}


def test_round_trip_is_exact(tmp_path, gens):
    path = save_model(tmp_path / "m.safetensors", gens, make_card())
    model = load_model(path)
    assert model.path == path and model.card["method"] == "cyclegan"
    assert model.card["format_version"] == 1 and "code_version" in model.card and "created" in model.card
    assert model.directions == ["a2b", "b2a"]
    x = torch.randn(2, 1, 32, 32)
    ref = outputs({"a2b": gens["G_AB"].eval(), "b2a": gens["G_BA"].eval()}, x)
    for direction in ("a2b", "b2a"):
        net = model.generator(direction)
        assert not net.training
        assert all(p.dtype == torch.float32 for p in net.parameters())
        with torch.no_grad():
            assert torch.equal(net(x), ref[direction])
    assert model.generator("a2b") is model.generator("a2b")  # cached
    with pytest.raises(DicycError, match="a2b"):
        model.generator("sideways")


def test_state_dicts_and_single_direction(tmp_path, gens):
    path = save_model(tmp_path / "one.safetensors", {"G_AB": gens["G_AB"].state_dict()}, make_card())
    model = load_model(path)
    assert model.directions == ["a2b"]
    with pytest.raises(DicycError, match="G_BA"):
        model.generator("b2a")


def test_float16_storage(tmp_path, gens):
    full = save_model(tmp_path / "f32.safetensors", gens, make_card())
    half = save_model(tmp_path / "f16.safetensors", gens, make_card(), dtype=torch.float16)
    ratio = half.stat().st_size / full.stat().st_size
    assert 0.45 < ratio < 0.6
    net = load_model(half).generator("a2b")
    assert all(p.dtype == torch.float32 for p in net.parameters())
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert (net(x) - gens["G_AB"].eval()(x)).abs().max() < 1e-2


def test_read_card_needs_no_torch(tmp_path, gens):
    path = save_model(tmp_path / "m.safetensors", gens, make_card())
    assert read_card(path)["architecture"] == ARCH
    code = (
        "import sys; from dicyc.modelfile import read_card; "
        f"c = read_card({str(path)!r}); "
        "assert 'torch' not in sys.modules and 'safetensors' not in sys.modules, 'heavy import'; "
        "print(c['domains']['b']['modality'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", errors="replace", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "CT"


def test_header_length_starting_with_pickle_byte_is_fine(tmp_path, gens):
    # The first byte of a safetensors file is the header length's low byte; 0x80 there is a
    # valid DiCyc file, not a pickle. Pad the card until the header length hits it.
    path = tmp_path / "m.safetensors"
    for n in range(0, 400, 1):
        save_model(path, {"G_AB": gens["G_AB"]}, make_card(note="x" * n))
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("could not produce a header length ending in 0x80")
    assert load_model(path).generator("a2b") is not None


class _Pwn:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_refuses_a_malicious_pickle(tmp_path):
    target = tmp_path / "pwned"
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(pickle.dumps(_Pwn(str(target))))
    for fn in (load_model, read_card):
        with pytest.raises(DicycError, match="pickle") as info:
            fn(bad)
        assert "model.safetensors is not a DiCyc model file" in str(info.value)
    assert not target.exists()


def test_header_check_names_the_expected_kind(tmp_path):
    bad = tmp_path / "run.ckpt"
    bad.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DicycError, match="run.ckpt is not a training checkpoint: it looks like a Python pickle"):
        check_safetensors_header(bad, what="training checkpoint")
    good = tmp_path / "t.safetensors"
    safetensors_torch.save_file({"w": torch.zeros(2)}, str(good))
    assert check_safetensors_header(good, what="training checkpoint")["w"]["shape"] == [2]


def test_refuses_torch_save_zip(tmp_path, gens):
    path = tmp_path / "model.pt"
    torch.save(gens["G_AB"].state_dict(), path)
    with pytest.raises(DicycError, match="zip") as info:
        load_model(path)
    assert "model.pt" in str(info.value)


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "empty"),
        (b"hello, this is a text file\nwith lines\n", "text"),
        (b"\x01\x02\x03", "bytes long"),
        (b"\xff" * 64, "no valid safetensors header"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 40, "gzip"),
    ],
)
def test_refuses_non_safetensors(tmp_path, content, words):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(DicycError, match=words):
        load_model(path)


def test_refuses_bad_header_json(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes((5).to_bytes(8, "little") + b"{nope" + b"\0" * 8)
    with pytest.raises(DicycError, match="JSON"):
        read_card(path)


def test_refuses_missing_file_and_folder(tmp_path):
    with pytest.raises(DicycError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(DicycError, match="folder"):
        load_model(tmp_path)


def test_refuses_foreign_safetensors(tmp_path, gens):
    path = tmp_path / "foreign.safetensors"
    safetensors_torch.save_file({"G_AB." + k: v.contiguous() for k, v in gens["G_AB"].state_dict().items()}, str(path))
    with pytest.raises(DicycError, match="without a DiCyc model card") as info:
        load_model(path)
    assert "foreign.safetensors" in str(info.value)


def _write_raw(path, tensors, card):
    meta = {"dicyc_card": card if isinstance(card, str) else json.dumps(card)}
    safetensors_torch.save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c.pop("method"), "'method'"),
        (lambda c: c.pop("domains"), "'domains'"),
        (lambda c: c["domains"]["b"].pop("normalization"), "'domains.b.normalization'"),
        (lambda c: c["domains"]["a"].pop("modality"), "'domains.a.modality'"),
        (lambda c: c["architecture"].pop("ngf"), "'architecture.ngf'"),
        (lambda c: c["architecture"].update(upsample="bilinear"), "'architecture.upsample'"),
        (lambda c: c.update(format="other"), "'format'"),
        (lambda c: c.update(context_slices=2), "'context_slices'"),
        (lambda c: c.update(context_slices=True), "'context_slices'"),
        (lambda c: c.update(context_slices=3), "'architecture.input_nc' and 'output_nc'"),  # 1-channel generators
    ],
)
def test_refuses_card_with_missing_or_bad_key(tmp_path, gens, mutate, key):
    card = make_card()
    mutate(card)
    path = tmp_path / "m.safetensors"
    _write_raw(path, {"G_AB.stem.1.bias": torch.zeros(8)}, card)
    with pytest.raises(DicycError) as info:
        read_card(path)
    assert key in str(info.value) and "m.safetensors" in str(info.value)
    with pytest.raises(DicycError):
        save_model(tmp_path / "new.safetensors", gens, card)
    assert not (tmp_path / "new.safetensors").exists()


def test_refuses_newer_format_and_broken_card_json(tmp_path):
    path = tmp_path / "m.safetensors"
    _write_raw(path, {"x": torch.zeros(1)}, make_card(format_version=99))
    with pytest.raises(DicycError, match="version 99"):
        read_card(path)
    _write_raw(path, {"x": torch.zeros(1)}, "{not json")
    with pytest.raises(DicycError, match="not valid JSON"):
        read_card(path)
    with pytest.raises(DicycError):
        check_card([], "card.json")


def test_refuses_tensors_that_do_not_fit_the_architecture(tmp_path, gens):
    sd = {"G_AB." + k: v.contiguous() for k, v in gens["G_AB"].state_dict().items()}
    path = tmp_path / "m.safetensors"

    missing = dict(sd)
    missing.pop("G_AB.head.1.weight")
    _write_raw(path, missing, make_card())
    with pytest.raises(DicycError, match="missing"):
        load_model(path)

    _write_raw(path, {**sd, "G_AB.extra.weight": torch.zeros(2)}, make_card())
    with pytest.raises(DicycError, match="unexpected"):
        load_model(path)

    _write_raw(path, {**sd, "D_A.model.0.weight": torch.zeros(2)}, make_card())
    with pytest.raises(DicycError, match="unexpected tensor"):
        load_model(path)

    _write_raw(path, sd, make_card(architecture={**ARCH, "ngf": 4}))
    with pytest.raises(DicycError, match="shape"):
        load_model(path)

    _write_raw(path, {**sd, "G_AB.stem.1.bias": torch.zeros(8, dtype=torch.int64)}, make_card())
    with pytest.raises(DicycError, match="floating point"):
        load_model(path)

    with pytest.raises(DicycError, match="shape"):  # save checks the weights against the card too
        save_model(tmp_path / "n.safetensors", gens, make_card(architecture={**ARCH, "ngf": 4}))


def test_save_is_atomic(tmp_path, gens, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_model(path, gens, make_card(method="first"))
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_torch, "save_file", broken)
    with pytest.raises(DicycError, match=r"could not write .*m\.safetensors: disk full\."):  # one sentence
        save_model(path, gens, make_card(method="second"))
    assert path.read_bytes() == before
    assert read_card(path)["method"] == "first"
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


@pytest.mark.parametrize("method", ["dicyc", "dicyclegan"])
def test_a_dicyc_family_model_file_holds_exactly_cyclegans_tensors(toy_pair, tmp_path, method):
    """Synthesis uses the undeformed generators only, so the offset and TPS networks stay out of
    the model file: same tensor names, shapes and dtypes as CycleGAN's, and the same cost."""
    from safetensors import safe_open

    from dicyc.train import resolve_config, train

    def tensors(name):
        config = resolve_config(None, {"method": name, "ngf": 4, "n_blocks": 1, "ndf": 4, "slice_size": 32,
                                       "spacing": [2.0, 2.0], "iterations": 2, "checkpoint_every": 2,
                                       "cache_dir": str(tmp_path / "cache")})
        path = train(*toy_pair, tmp_path / name, config, device="cpu", log=lambda *_: None)
        with safe_open(str(path), framework="pt") as fh:
            return {k: (tuple(fh.get_slice(k).get_shape()), fh.get_slice(k).get_dtype()) for k in fh.keys()}

    ours, cyclegan = tensors(method), tensors("cyclegan")
    assert ours == cyclegan and any(k.startswith("G_AB.") for k in ours) and any(k.startswith("G_BA.") for k in ours)


def test_2p5d_model_round_trip(tmp_path):
    """A 3-slice model (context_slices 3, generators of 3 channels in and out) is written and read back exactly."""
    arch = dict(ARCH, input_nc=3, output_nc=3)
    torch.manual_seed(1)
    nets = {"G_AB": build_generator(arch), "G_BA": build_generator(arch)}
    path = save_model(tmp_path / "k3.safetensors", nets, make_card(architecture=arch, context_slices=3))
    model = load_model(path)
    assert read_card(path)["context_slices"] == 3
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    want = outputs(nets, x)
    with torch.no_grad():
        assert torch.equal(model.generator("a2b")(x), want["G_AB"])
