"""Every method is a recipe on the one training loop; DiCyc's EM steps move what they should."""

import numpy as np
import pytest
import torch

from dicyc.methods import METHODS, DiCyc, get_method, list_methods

PAPER_METHODS = ["cyclegan", "nmi-cyclegan", "gcc-cyclegan", "mind-cyclegan", "dicyc", "gcc-dicyc", "mind-dicyc",
                 "dicyclegan", "cycle-medgan", "unit"]


def _config(method, cache, **extra):
    from dicyc.train import resolve_config

    base = {"method": method, "ngf": 4, "n_blocks": 1, "ndf": 4, "slice_size": 32, "spacing": [2.0, 2.0],
            "iterations": 2, "checkpoint_every": 2, "epoch_length": 100, "cache_dir": cache}
    if method == "cycle-medgan":  # a short extractor pre-training keeps the test quick
        base.update(extractor_steps=5, extractor_slices=16)
    if method == "unit":
        base.update(n_blocks=2)
    base.update(extra)
    return resolve_config(None, base)


def test_registry_lists_every_method_of_the_seed_papers(run_dicyc):
    assert set(PAPER_METHODS) <= set(METHODS)
    r = run_dicyc("methods")
    assert r.returncode == 0
    lines = r.stdout.strip().splitlines()
    assert len(lines) == len(METHODS)
    for name, description in list_methods():
        assert any(line.split()[0] == name for line in lines) and description


@pytest.mark.parametrize("method", PAPER_METHODS)
def test_each_method_trains_and_its_model_synthesises(method, toy_pair, tmp_path):
    from dicyc.modelfile import load_model
    from dicyc.synthesize import synthesize_volume
    from dicyc.train import train
    from dicyc.volume import read_volume

    if method not in METHODS:
        pytest.skip(f"{method} is not registered")
    mr, ct = toy_pair
    cache = str(tmp_path.parent / "toy-cache")  # shared by the tests of this session's tmp folder
    model_path = train(mr, ct, tmp_path / method, _config(method, cache), device="cpu")
    model = load_model(model_path)
    assert model.card["method"] == method
    src = read_volume(mr)
    out = synthesize_volume(model, src, precision="fp32")
    assert out.same_grid(src) and np.isfinite(out.array).all()


def test_dicyc_model_file_costs_what_a_cyclegan_costs(toy_pair, tmp_path):
    """Offsets and TPS are training-only: the synthesis model holds the two generators alone."""
    from safetensors.torch import load_file

    from dicyc.train import train

    mr, ct = toy_pair
    cache = str(tmp_path.parent / "toy-cache")  # shared by the tests of this session's tmp folder
    a = load_file(str(train(mr, ct, tmp_path / "c", _config("cyclegan", cache), device="cpu")))
    b = load_file(str(train(mr, ct, tmp_path / "d", _config("dicyc", cache), device="cpu")))
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape for k in a)


def _recipe_and_nets(method="dicyc"):
    from dicyc.losses import ImagePool

    cfg = _config(method, None)
    recipe = get_method(method)(cfg)
    assert method not in ("cycle-medgan",)  # needs prepare() with data
    torch.manual_seed(0)
    nets = recipe.build_networks()
    gen = torch.Generator().manual_seed(0)
    ctx = {"real_a": torch.rand(2, 1, 32, 32, generator=gen) * 2 - 1,
           "real_b": torch.rand(2, 1, 32, 32, generator=gen) * 2 - 1,
           "pools": {name: ImagePool(4) for name in recipe.pools()}, "iteration": 0}
    return recipe, nets, ctx


def _snapshot(nets, names):
    return {n: [p.detach().clone() for p in nets[n].parameters()] for n in names}


def _changed(before, nets):
    return {n: any(not torch.equal(p0, p1) for p0, p1 in zip(before[n], nets[n].parameters())) for n in before}


def _run_step(recipe, nets, ctx, group, step):
    from dicyc.train import _unique_parameters

    for name, net in nets.items():
        net.requires_grad_(name in recipe.optimizer_groups()[group])
    opt = torch.optim.Adam(_unique_parameters(nets, recipe.optimizer_groups()[group]), lr=1e-2)
    opt.zero_grad()
    loss, logged = step(nets, ctx)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    return logged


def test_dicyc_e_step_moves_only_the_global_transformers():
    recipe, nets, ctx = _recipe_and_nets()
    steps = dict(recipe.steps())
    assert [s for s, _ in recipe.steps()] == ["T", "G", "D"]
    before = _snapshot(nets, list(nets))
    _run_step(recipe, nets, ctx, "T", steps["T"])
    changed = _changed(before, nets)
    assert changed["T_AB"] and changed["T_BA"]
    assert not any(changed[n] for n in ("G_AB", "G_BA", "O_AB", "O_BA", "D_A", "D_B"))


def test_dicyc_m_step_moves_generators_and_offsets_not_transformers():
    recipe, nets, ctx = _recipe_and_nets()
    steps = dict(recipe.steps())
    before = _snapshot(nets, list(nets))
    logged = _run_step(recipe, nets, ctx, "G", steps["G"])
    assert {"adv_ab", "adv_ba", "cycle", "dicyc", "align"} <= set(logged)
    changed = _changed(before, nets)
    assert changed["G_AB"] and changed["G_BA"] and changed["O_AB"] and changed["O_BA"]
    assert not any(changed[n] for n in ("T_AB", "T_BA", "D_A", "D_B"))


def test_dicyc_losses_at_identity_deformation():
    """With zero offsets and TPS the deformed pass equals the undeformed one: L_dicyc = 0."""
    recipe, nets, ctx = _recipe_and_nets()
    with torch.no_grad():
        undeformed = (nets["G_AB"](ctx["real_a"]), nets["G_BA"](ctx["real_b"]))
        terms = recipe.deformation_terms(nets, ctx, undeformed)
    assert float(terms["dicyc"]) < 1e-5
    assert torch.allclose(ctx["fake_b"], undeformed[0], atol=1e-5)


def test_dicyclegan_has_no_tps_and_trains_jointly():
    recipe, nets, ctx = _recipe_and_nets("dicyclegan")
    assert "T_AB" not in nets and "O_AB" in nets
    assert [s for s, _ in recipe.steps()] == ["G", "D"]


def test_mind_cyclegan_uses_position_based_slices_and_lambda_5():
    cfg = _config("mind-cyclegan", None)
    assert cfg["sampling"] == "position" and cfg["lambda_align"] == 5.0
    assert _config("nmi-cyclegan", None)["lambda_align"] == pytest.approx(0.9)
    assert _config("dicyc", None)["lambda_align"] == pytest.approx(2.0)
    assert _config("dicyc", None)["lambda_dicyc"] == 10.0 and _config("dicyc", None)["lambda_cycle"] == 10.0


def test_method_options_are_refused_for_methods_without_them():
    from dicyc.errors import DicycError

    with pytest.raises(DicycError, match="unknown training option"):
        _config("cyclegan", None, lambda_dicyc=3.0)


def test_dicyc_offset_options_are_checked():
    from dicyc.errors import DicycError
    from dicyc.methods import get_method

    cfg = _config("dicyc", None, offset_stages=["stem", "block9"])
    with pytest.raises(DicycError, match="offset_stages .* choose from stem, down1, down2, block0"):
        get_method("dicyc")(cfg)
    with pytest.raises(DicycError, match="lambda_adv_undeformed must be a number"):
        _config("dicyc", None, lambda_adv_undeformed="lots")
    assert _config("dicyc", None, offset_grid="4")["offset_grid"] == 4


def test_dicyc_m_step_judges_both_passes_unless_switched_off():
    """The adversarial loss reaches the undeformed (synthesis) outputs with weight lambda_adv_undeformed."""
    recipe, nets, ctx = _recipe_and_nets()
    assert recipe.config["lambda_adv_undeformed"] == 1.0
    _, logged = recipe.generator_step(nets, ctx)
    assert logged["adv_und"] > 0
    recipe.config["lambda_adv_undeformed"] = 0.0
    _, logged = recipe.generator_step(nets, dict(real_a=ctx["real_a"], real_b=ctx["real_b"]))
    assert "adv_und" not in logged


def test_default_method_is_dicyc():
    from dicyc.train import DEFAULT_CONFIG

    assert DEFAULT_CONFIG["method"] == "dicyc" and issubclass(get_method("dicyc"), DiCyc)
