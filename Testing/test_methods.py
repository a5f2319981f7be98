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


def _recipe_and_nets(method="dicyc", **options):
    from dicyc.losses import ImagePool

    cfg = _config(method, None, **options)
    recipe = get_method(method)(cfg)
    assert method not in ("cycle-medgan",)  # needs prepare() with data
    torch.manual_seed(0)
    nets = recipe.build_networks()
    gen = torch.Generator().manual_seed(0)
    ctx = {"real_a": torch.rand(2, 1, 32, 32, generator=gen) * 2 - 1,
           "real_b": torch.rand(2, 1, 32, 32, generator=gen) * 2 - 1,
           "pools": {name: ImagePool(4) for name in recipe.pools()}, "iteration": 0}
    return recipe, nets, ctx


def _away_from_identity(nets):
    """Give the offset fields and TPS transformers non-zero last layers, so G_T differs from G."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in ("O_AB", "O_BA", "T_AB", "T_BA"):
            for p in nets.get(name, torch.nn.Module()).parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _snapshot(nets, names):
    return {n: [p.detach().clone() for p in nets[n].parameters()] for n in names}


def _changed(before, nets):
    return {n: any(not torch.equal(p0, p1) for p0, p1 in zip(before[n], nets[n].parameters())) for n in before}


def _run_step(recipe, nets, ctx, groups, step):
    """One step as the training loop runs it (one backward, each named optimiser steps)."""
    from dicyc.train import run_iteration, step_groups, _unique_parameters

    all_groups = recipe.optimizer_groups()
    opts = {g: torch.optim.Adam(_unique_parameters(nets, all_groups[g]), lr=1e-2) for g in step_groups(groups)}
    captured = {}

    def wrapped(nets_, ctx_):
        loss, logged = step(nets_, ctx_)
        assert torch.isfinite(loss)
        captured["loss"] = loss
        return loss, logged

    logged = run_iteration([(groups, wrapped)], nets, all_groups, opts, ctx, lr=1e-2)
    return logged, captured["loss"]


def test_dicyc_defaults_are_the_papers_losses_with_the_tied_bounded_deformation():
    """λ_cyc = λ_dicyc = 10 and λ_align = 0.9 (Wang et al. 2018, 2021), the papers' losses and
    schedule; the one departure by default is the tie with the bounds, measured on both settings."""
    from dicyc.methods import PAPERS_DEFORMATION, TIED_BOUNDED

    cfg = _config("dicyc", None)
    assert cfg["lambda_align"] == pytest.approx(0.9)
    assert cfg["lambda_dicyc"] == 10.0 and cfg["lambda_cycle"] == 10.0
    assert cfg["dicyc_loss"] == "paper" and cfg["em"] == "joint"
    assert cfg["lambda_adv_undeformed"] == 0.0 and cfg["lambda_adv_local"] == 0.0 and cfg["lambda_hist"] == 0.0
    assert {k: cfg[k] for k in TIED_BOUNDED} == {"lambda_warp": 3.0, "tps_max_displacement": 0.1, "offset_grid": 8,
                                                "offset_max_displacement": 0.05}
    assert cfg["constant_epochs"] == 100 and cfg["decay_epochs"] == 100 and cfg["patience_constant"] == 10
    # the variants the tie was not measured with keep the papers' modules
    for method in ("gcc-dicyc", "mind-dicyc"):
        assert {k: _config(method, None)[k] for k in PAPERS_DEFORMATION} == PAPERS_DEFORMATION
    cfg = _config("dicyclegan", None)
    assert cfg["lambda_warp"] == 0.0 and cfg["offset_grid"] == 0 and "tps_max_displacement" not in cfg


def test_the_papers_recipe_keeps_its_benchmark_name():
    """Spelled out after the change of default, the papers' recipe digests as the runs made when it
    was the default (λ_warp 0 is inert), and the new default as the runs of its spelled-out options."""
    from dicyc.bench import digest_config, parse_method
    from dicyc.train import resolve_config

    def digest(spec):
        _, name, options = parse_method(spec)
        return digest_config(resolve_config({}, {"method": name, **options}))

    papers = digest("dicyc[lambda_warp=0,offset_grid=0,offset_max_displacement=0,tps_max_displacement=1]")
    assert "lambda_warp" not in papers and papers["tps_max_displacement"] == 1.0 and papers["offset_grid"] == 0
    assert digest("dicyc") == digest(
        "dicyc[lambda_warp=3,offset_grid=8,offset_max_displacement=0.05,tps_max_displacement=0.1]")


def test_dicyc_joint_step_takes_e_and_m_from_one_backward():
    recipe, nets, ctx = _recipe_and_nets()
    steps = recipe.steps()
    assert [s for s, _ in steps] == [("G", "T"), "D"]
    before = _snapshot(nets, list(nets))
    logged, _ = _run_step(recipe, nets, ctx, *steps[0])
    assert {"adv_ab", "adv_ba", "cycle", "dicyc", "align", "G"} <= set(logged) and "adv_und" not in logged
    changed = _changed(before, nets)
    assert all(changed[n] for n in ("G_AB", "G_BA", "O_AB", "O_BA", "T_AB", "T_BA"))
    assert not changed["D_A"] and not changed["D_B"]


def test_dicyc_e_step_moves_only_the_tps_and_its_loss_holds_l_dicyc():
    recipe, nets, ctx = _recipe_and_nets(em="alternate")
    _away_from_identity(nets)
    steps = recipe.steps()
    assert [s for s, _ in steps] == ["T", "G", "D"]
    before = _snapshot(nets, list(nets))
    _, loss = _run_step(recipe, nets, dict(ctx), *steps[0])
    changed = _changed(before, nets)
    assert changed["T_AB"] and changed["T_BA"]
    assert not any(changed[n] for n in ("G_AB", "G_BA", "O_AB", "O_BA", "D_A", "D_B"))
    # the E step's loss is exactly the θ_TPS-dependent part: GAN on the deformed outputs + λ_dicyc L_dicyc,
    # and the default's tie λ_warp |G_T(x) − Φ(G(x))| (G_T(x) is the TPS's output)
    for p, p0 in zip([p for n in ("T_AB", "T_BA") for p in nets[n].parameters()],
                     [p for n in ("T_AB", "T_BA") for p in before[n]]):
        p.data.copy_(p0)
    with torch.no_grad():
        check = dict(ctx)
        recipe.passes(nets, check)
        terms = recipe.deformation_terms(nets, check)
    assert set(terms) == {"adv_ab", "adv_ba", "dicyc", "warp"} and float(terms["dicyc"]) > 0
    assert float(terms["warp"]) > 0
    assert float(loss.detach()) == pytest.approx(float(sum(terms.values())), rel=1e-5)
    recipe, nets, ctx = _recipe_and_nets(em="alternate", lambda_warp=0)  # the papers' E step: no tie
    recipe.passes(nets, ctx)
    assert set(recipe.deformation_terms(nets, ctx)) == {"adv_ab", "adv_ba", "dicyc"}


def test_dicyc_alternate_m_step_moves_generators_and_offsets_not_the_tps():
    recipe, nets, ctx = _recipe_and_nets(em="alternate")
    before = _snapshot(nets, list(nets))
    logged, _ = _run_step(recipe, nets, ctx, *recipe.steps()[1])
    assert {"adv_ab", "adv_ba", "cycle", "dicyc", "align"} <= set(logged)
    changed = _changed(before, nets)
    assert changed["G_AB"] and changed["G_BA"] and changed["O_AB"] and changed["O_BA"]
    assert not any(changed[n] for n in ("T_AB", "T_BA", "D_A", "D_B"))


def _gradients(recipe, nets, ctx, groups, step):
    members = {m for g in groups for m in recipe.optimizer_groups()[g]}
    for name, net in nets.items():
        net.requires_grad_(name in members)
        for p in net.parameters():
            p.grad = None
    loss, _ = step(nets, dict(ctx))
    loss.backward()
    return {n: [None if p.grad is None else p.grad.clone() for p in nets[n].parameters()] for n in members}


def test_one_backward_gives_the_separate_e_and_m_steps_gradients():
    """Joint (one forward, one backward) and alternating EM see the same gradients on one batch."""
    recipe, nets, ctx = _recipe_and_nets()
    _away_from_identity(nets)
    joint = _gradients(recipe, nets, ctx, ("G", "T"), recipe.generator_step)
    e_step = _gradients(recipe, nets, ctx, ("T",), recipe.transformer_step)
    m_step = _gradients(recipe, nets, ctx, ("G",), recipe.generator_step)
    for name, separate in list(e_step.items()) + list(m_step.items()):
        for g_joint, g_sep in zip(joint[name], separate):
            assert g_joint is not None and g_sep is not None, name
            assert torch.allclose(g_joint, g_sep, rtol=1e-4, atol=1e-7), name
    assert any(float(g.abs().max()) > 0 for g in e_step["T_AB"])


class _IdentityGenerator(torch.nn.Module):
    """G(x) = x, with the encode/decode split and warp hook of the ResNet generator."""

    def encode(self, x, warp=None):
        return x if warp is None else warp("stem", x)

    def decode(self, latent):
        return latent

    def forward(self, x, warp=None):
        return self.decode(self.encode(x, warp))


class _Shift(torch.nn.Module):
    """A fixed deformation φ: a cyclic shift of ``pixels`` along x, in front of the input block."""

    def __init__(self, pixels):
        super().__init__()
        self.pixels = pixels
        self.offsets = {"stem": None}

    def hook(self):
        return lambda stage, features: torch.roll(features, self.pixels, dims=-1)


def _l_dicyc(shift_ab, shift_ba):
    from dicyc.nets.warps import TPSTransformer

    recipe, _, ctx = _recipe_and_nets(lambda_warp=0)  # a fixed shift has no composed warp to tie to
    nets = {"G_AB": _IdentityGenerator(), "G_BA": _IdentityGenerator(), "O_AB": _Shift(shift_ab),
            "O_BA": _Shift(shift_ba), "T_AB": TPSTransformer(1), "T_BA": TPSTransformer(1)}  # TPS at identity
    recipe.passes(nets, ctx)
    (pa, ta), (pb, tb) = ctx["dicyc_pairs"]
    return float((torch.nn.functional.l1_loss(pa, ta) + torch.nn.functional.l1_loss(pb, tb)).detach())


def test_paper_l_dicyc_is_zero_for_an_inverse_pair_and_positive_for_phi_twice():
    """L_dicyc = |G_T^{B→A}(G_T^{A→B}(a)) − a| + (B side): with identity generators it vanishes
    when B→A deforms by φ⁻¹ where A→B deforms by φ, and not when both deform by φ."""
    assert _l_dicyc(3, -3) == pytest.approx(0.0, abs=1e-6)
    assert _l_dicyc(3, 3) > 0.1


def test_dicyc_at_identity_deformation_equals_cyclegan_passes():
    """With zero offsets and TPS the deformed pass equals the undeformed one and L_dicyc = L_cyc."""
    for variant in ("paper", "commutation"):
        recipe, nets, ctx = _recipe_and_nets(dicyc_loss=variant)
        with torch.no_grad():
            recipe.passes(nets, ctx)
            terms = recipe.deformation_terms(nets, ctx)
            assert torch.allclose(ctx["fake_b"], ctx["und_b"], atol=1e-5)
            assert torch.allclose(ctx["und_b"], nets["G_AB"](ctx["real_a"]), atol=1e-5)
            cycle = torch.nn.functional.l1_loss(ctx["rec_a"], ctx["real_a"]) + torch.nn.functional.l1_loss(
                ctx["rec_b"], ctx["real_b"])
        expected = 0.0 if variant == "commutation" else 10.0 * float(cycle)
        assert float(terms["dicyc"]) == pytest.approx(expected, abs=1e-4)


def test_dicyclegan_has_no_tps_and_trains_jointly():
    recipe, nets, ctx = _recipe_and_nets("dicyclegan")
    assert "T_AB" not in nets and "O_AB" in nets
    assert [s for s, _ in recipe.steps()] == ["G", "D"]
    _run_step(recipe, nets, ctx, *recipe.steps()[0])


def test_mind_cyclegan_uses_position_based_slices_and_lambda_5():
    cfg = _config("mind-cyclegan", None)
    assert cfg["sampling"] == "position" and cfg["lambda_align"] == 5.0
    assert _config("nmi-cyclegan", None)["lambda_align"] == pytest.approx(0.9)


def test_method_options_are_refused_for_methods_without_them():
    from dicyc.errors import DicycError

    with pytest.raises(DicycError, match="unknown training option"):
        _config("cyclegan", None, lambda_dicyc=3.0)


def test_dicyc_options_are_checked():
    from dicyc.errors import DicycError
    from dicyc.methods import get_method

    cfg = _config("dicyc", None, offset_stages=["stem", "block9"])
    with pytest.raises(DicycError, match="offset_stages .* choose from stem, down1, down2, block0"):
        get_method("dicyc")(cfg)
    with pytest.raises(DicycError, match="lambda_adv_undeformed must be a number"):
        _config("dicyc", None, lambda_adv_undeformed="lots")
    with pytest.raises(DicycError, match="dicyc_loss must be one of paper, commutation"):
        get_method("dicyc")(_config("dicyc", None, dicyc_loss="both"))
    with pytest.raises(DicycError, match="em must be one of joint, alternate"):
        get_method("dicyc")(_config("dicyc", None, em="sometimes"))
    assert _config("dicyc", None, offset_grid="4")["offset_grid"] == 4


def test_undeformed_adversarial_option_reaches_generator_and_discriminators():
    """With lambda_adv_undeformed > 0 the undeformed outputs are judged, and the discriminators see them."""
    recipe, nets, ctx = _recipe_and_nets(lambda_adv_undeformed=1.0)
    assert {"und_a", "und_b"} <= set(recipe.pools())
    logged, _ = _run_step(recipe, nets, ctx, *recipe.steps()[0])
    assert logged["adv_und"] > 0
    before = len(ctx["pools"]["und_b"].images)
    logged, _ = _run_step(recipe, nets, ctx, *recipe.steps()[1])
    assert logged["D_und"] > 0 and len(ctx["pools"]["und_b"].images) > before


def test_local_adversarial_option_judges_the_undeformed_outputs_with_small_patchgans():
    """lambda_adv_local > 0: D_local_* (16x16 windows) score G(x), learn from real vs pooled G(x), main Ds untouched."""
    from dicyc.errors import DicycError

    recipe, nets, ctx = _recipe_and_nets(lambda_adv_local=1.0)
    assert {"D_local_A", "D_local_B"} <= set(nets) and nets["D_local_A"].n_layers == 1
    assert set(recipe.optimizer_groups()["D"]) == {"D_A", "D_B", "D_local_A", "D_local_B"}
    assert {"und_a", "und_b"} <= set(recipe.pools()) and not recipe.judges_undeformed()
    logged, _ = _run_step(recipe, nets, ctx, *recipe.steps()[0])
    assert logged["adv_local"] > 0 and "adv_und" not in logged
    logged, _ = _run_step(recipe, nets, ctx, *recipe.steps()[1])
    assert logged["D_local"] > 0 and len(ctx["pools"]["und_b"].images) == 2
    assert "D_und" not in logged
    assert recipe.synthesis_networks() == ["G_AB", "G_BA"]  # the model file is unchanged
    with pytest.raises(DicycError, match="local_d_layers must be an integer from 0 to 3"):
        get_method("dicyc")(_config("dicyc", None, local_d_layers=7))


def test_histogram_distance_ignores_where_intensities_sit_and_sees_what_they_are():
    """W1 of the intensity histograms: 0 for the same values moved elsewhere, the shift for a contrast change."""
    from dicyc.losses import histogram_distance

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 16, 16, generator=gen)
    moved = torch.roll(x, shifts=(3, -5), dims=(2, 3)).flip(3)
    assert float(histogram_distance(x, moved)) == pytest.approx(0.0, abs=1e-7)
    assert float(histogram_distance(x, x + 0.25)) == pytest.approx(0.25, rel=1e-5)
    # per sample: swapping the two images of the batch is a different pairing
    other = torch.cat((x[1:], x[:1]))
    assert float(histogram_distance(x, other)) > 0


def test_histogram_option_pulls_only_the_undeformed_pass():
    """lambda_hist > 0 logs a "hist" term whose gradient reaches G and never the TPS or offset fields."""
    recipe, nets, ctx = _recipe_and_nets(lambda_hist=1.0)
    _away_from_identity(nets)
    plain = _recipe_and_nets()
    assert "hist" not in _run_step(*plain, *plain[0].steps()[0])[0]  # off by default
    logged, _ = _run_step(recipe, nets, ctx, *recipe.steps()[0])
    assert logged["hist"] > 0
    for net in nets.values():
        net.zero_grad(set_to_none=True)
    recipe.passes(nets, ctx)
    recipe.histogram_terms(ctx).backward()
    grads = {name: [p.grad for p in nets[name].parameters()] for name in ("G_AB", "G_BA", "O_AB", "O_BA", "T_AB", "T_BA")}
    assert all(g is None or not g.any() for name in ("T_AB", "T_BA", "O_AB", "O_BA") for g in grads[name])
    assert any(g is not None and g.abs().sum() > 0 for g in grads["G_AB"])
    assert recipe.synthesis_networks() == ["G_AB", "G_BA"]  # the model file is unchanged


def test_warp_option_ties_the_deformed_pass_to_the_moved_undeformed_pass():
    """lambda_warp > 0 logs a "warp" term: 0 while the deformation is the identity, positive once it is not, and its
    gradient reaches the generators. For a shift the generator can follow (a multiple of its stride), the composed
    warp explains the deformed pass far better than no warp; a sub-stride shift it cannot, which is why it is a loss."""
    from dicyc.nets.warps import resample

    # the papers' unbounded offsets, so that the bias below is a shift of exactly 4 pixels
    recipe, nets, ctx = _recipe_and_nets(lambda_warp=1.0, offset_grid=0, offset_max_displacement=0,
                                         tps_max_displacement=1)
    assert "warp" in _run_step(*_recipe_and_nets(), *_recipe_and_nets()[0].steps()[0])[0]  # on by default
    plain = _recipe_and_nets(lambda_warp=0)
    assert "warp" not in _run_step(*plain, *plain[0].steps()[0])[0]  # the papers' recipe has no tie
    recipe.passes(nets, ctx)
    assert float(recipe.warp_terms(ctx).detach()) == pytest.approx(0.0, abs=1e-6)  # identity fields: G_T(x) = G(x)
    with torch.no_grad():  # the offset field in front of the stem: a shift by the generator's whole stride (4 px)
        nets["O_AB"].offsets["stem"].body[-1].bias.copy_(torch.tensor([4.0, -4.0]))
    for net in nets.values():
        net.zero_grad(set_to_none=True)
    recipe.passes(nets, ctx)
    grid = ctx["warp_grids"]["AB"]
    assert not grid.requires_grad
    inside = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # away from the padded borders
    with torch.no_grad():
        moved = float((ctx["fake_b"] - resample(ctx["und_b"], grid))[inside].abs().mean())
        unmoved = float((ctx["fake_b"] - ctx["und_b"])[inside].abs().mean())
    assert 0 < moved < 0.7 * unmoved
    recipe.warp_terms(ctx).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in nets["G_AB"].parameters())
    logged, _ = _run_step(recipe, nets, ctx, *recipe.steps()[0])
    assert logged["warp"] > 0
    assert recipe.synthesis_networks() == ["G_AB", "G_BA"]  # the model file is unchanged


def test_default_method_is_dicyc():
    from dicyc.train import DEFAULT_CONFIG

    assert DEFAULT_CONFIG["method"] == "dicyc" and issubclass(get_method("dicyc"), DiCyc)


# --------------------------------------------------------------------------- 2.5-D context
@pytest.mark.parametrize("method", ["cyclegan", "dicyc"])
def test_2p5d_model_trains_and_synthesises_on_the_input_grid(method, toy_pair, tmp_path):
    """context_slices 3: 3-slice generators, a card that says so, and a synthesis on the input's grid."""
    from dicyc.modelfile import load_model
    from dicyc.synthesize import synthesize_volume_with_info
    from dicyc.train import train
    from dicyc.volume import read_volume

    mr, ct = toy_pair
    cache = str(tmp_path.parent / "toy-cache")
    model = load_model(train(mr, ct, tmp_path / method, _config(method, cache, context_slices=3), device="cpu"))
    assert model.card["context_slices"] == 3 and model.card["training"]["context_slices"] == 3
    assert model.card["architecture"]["input_nc"] == model.card["architecture"]["output_nc"] == 3
    g = model.generator("a2b")
    assert g.stem[1].in_channels == 3 and g.head[1].out_channels == 3
    src = read_volume(mr)
    out, info = synthesize_volume_with_info(model, src, precision="fp32")
    assert out.same_grid(src) and np.isfinite(out.array).all() and info["context_slices"] == 3
    # the body keeps CT-range values slice by slice, ends included (every slice got its average)
    assert all(np.ptp(out.array[k]) > 0 for k in range(out.shape[0]))


@pytest.mark.parametrize("method, options", [("unit", {}), ("cycle-medgan", {}), ("dicyclegan", {}), ("mind-dicyc", {}),
                                             ("dicyc", {"lambda_adv_local": 1.0})])
def test_other_methods_run_their_steps_on_3_slice_slabs(method, options):
    """UNIT, Cycle-MedGAN, the DiCyc variants and DiCyc's local discriminators build 3-channel
    generators and discriminators and take finite steps on (N, 3, H, W) slabs (CycleGAN and DiCyc
    train above; the alignment measures below)."""
    from dicyc.losses import ImagePool
    from dicyc.similarity import FeatureExtractor

    recipe = get_method(method)(_config(method, None, context_slices=3, **options))
    if method == "cycle-medgan":  # what prepare() pre-trains on single slices, untrained here
        recipe.extractors = {k: FeatureExtractor(1, base=4, stages=2).eval().requires_grad_(False) for k in "ab"}
    torch.manual_seed(0)
    nets = recipe.build_networks()
    assert all(net.input_nc == 3 for name, net in nets.items() if name.startswith("D_"))
    gen = torch.Generator().manual_seed(0)
    ctx = {"real_a": torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1,
           "real_b": torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1,
           "pools": {name: ImagePool(4) for name in recipe.pools()}, "iteration": 0}
    assert nets["G_AB"](ctx["real_a"]).shape == (2, 3, 32, 32)
    for groups, step in recipe.steps():
        logged, _ = _run_step(recipe, nets, ctx, groups, step)
        assert all(np.isfinite(v) for v in logged.values())
    assert ctx["fake_b"].shape == (2, 3, 32, 32)


@pytest.mark.parametrize("method", ["nmi-cyclegan", "gcc-cyclegan", "mind-cyclegan"])
def test_alignment_of_a_slab_is_the_mean_of_its_slices(method):
    """NMI, gradient correlation and MIND compare each slice of a slab with its own source slice."""
    recipe = get_method(method)(_config(method, None, context_slices=3))
    gen = torch.Generator().manual_seed(3)
    source = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    synthetic = (0.5 * source + 0.3 * torch.rand(2, 3, 32, 32, generator=gen)).clamp(-1, 1)
    synthetic[:, 2] = torch.rand(2, 32, 32, generator=gen) * 2 - 1  # the third slice unrelated to its source
    whole = recipe.alignment(source, synthetic)
    slices = torch.stack([recipe.alignment(source[:, k : k + 1], synthetic[:, k : k + 1]) for k in range(3)])
    torch.testing.assert_close(whole, slices.mean(), atol=1e-5, rtol=1e-5)
    assert slices[2] > slices[0]  # the unrelated slice is the worse aligned one
