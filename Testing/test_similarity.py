"""Tests of the mathematics of dicyc.similarity: the differentiable NMI, gradient correlation,
MIND and the Cycle-MedGAN feature losses (not only their shapes)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from dicyc import similarity as sim  # noqa: E402
from dicyc.metrics import compute_metrics  # noqa: E402

S = 48  # image size: big enough for statistics, small enough for 2 shared CPU cores


def smooth_images(n=2, size=S, blur=2.0, seed=0, span=0.9):
    """Smooth random images, periodic (so ``torch.roll`` is an exact shift), min/max = -span/+span."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, size, size, generator=g)
    r = int(math.ceil(3 * blur))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1.0) / blur) ** 2)
    k = k / k.sum()
    z = F.conv2d(F.pad(z, (r, r, 0, 0), mode="circular"), k.view(1, 1, 1, -1))
    z = F.conv2d(F.pad(z, (0, 0, r, r), mode="circular"), k.view(1, 1, -1, 1))
    z = z - z.amin(dim=(2, 3), keepdim=True)
    z = z / z.amax(dim=(2, 3), keepdim=True)
    return (2 * z - 1) * span


def shuffled(x, seed=1):
    g = torch.Generator().manual_seed(seed)
    flat = x.reshape(x.shape[0], -1)
    return torch.stack([row[torch.randperm(row.numel(), generator=g)] for row in flat]).reshape(x.shape)


def shift(x, pixels=3):
    return torch.roll(x, shifts=(pixels, pixels), dims=(2, 3))


def bin_width(bins):
    return (sim.NMI_RANGE[1] - sim.NMI_RANGE[0]) / bins


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: one thread is faster than several fighting over shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def x():
    return smooth_images(n=3)


# ===================================================================== NMI
def test_nmi_of_an_image_with_itself_is_one_for_every_kernel(x):
    # normalised by the estimator's own ceiling I(X;X): exactly 1, however wide the kernel
    for r in (0.01, 0.1, 0.25, 0.5, 1.0):
        value = sim.nmi(x, x, bins=16, sigma=r * bin_width(16))
        assert value.shape == (3,)
        assert torch.allclose(value, torch.ones(3), atol=1e-3)
    assert torch.allclose(sim.nmi(x, x), torch.ones(3), atol=1e-3)


def test_nmi_equals_the_evaluation_metric_as_the_kernel_narrows(x):
    """With a hard histogram I(X;X) = H(X): the loss's NMI becomes dicyc.metrics' 2I/(H+H)."""
    from dicyc.metrics import compute_metrics

    y = (0.7 * x + 0.3 * shuffled(x)).clamp(-1, 1)
    soft = float(sim.nmi(x[:1], y[:1], bins=64, sigma=0.005 * bin_width(64)))
    a, b = x[0, 0].numpy().astype("float64"), y[0, 0].numpy().astype("float64")
    # the metric bins each image over its own range; pin the ranges to [-1, 1] with two corner pixels
    a[0, 0], a[0, 1], b[0, 0], b[0, 1] = -1.0, 1.0, -1.0, 1.0
    hard = compute_metrics(b[None], a[None])["nmi"]
    assert abs(soft - hard) < 0.03


def test_nmi_gradient_ascent_recovers_the_relation(x):
    # Following -grad(nmi_loss) from a half-scrambled image raises the score substantially.
    y = (0.5 * x + 0.5 * shuffled(x)).requires_grad_(True)
    start = sim.nmi(x, y.detach())
    opt = torch.optim.Adam([y], lr=0.02)
    for _ in range(30):
        opt.zero_grad()
        sim.nmi_loss(x, y).backward()
        opt.step()
    assert torch.all(sim.nmi(x, y.detach()) > start + 0.1)


def test_nmi_matches_the_evaluation_metric_with_a_narrow_kernel():
    # Images spanning exactly [-1, 1]: dicyc.metrics bins [min, max] into 64 bins, the same bins
    # as the fixed range here, so a near-hard kernel must give the evaluation's number.
    a = smooth_images(n=1, seed=3, span=1.0)
    b = torch.sign(a) * a.abs() ** 0.7 + 0.3 * smooth_images(n=1, seed=4, span=1.0)
    b = 2 * (b - b.min()) / (b.max() - b.min()) - 1
    soft = float(sim.nmi(a, b, bins=64, sigma=0.01 * bin_width(64)))
    hard = compute_metrics(a.numpy().astype(np.float64)[0], b.numpy().astype(np.float64)[0])["nmi"]
    assert 0.2 < hard < 0.95
    assert soft == pytest.approx(hard, abs=0.01)


def test_nmi_of_a_negated_image_equals_the_identity(x):
    # x -> -x maps the bins of the symmetric range one-to-one onto bins
    narrow = 0.01 * bin_width(16)
    assert torch.all(sim.nmi(x, -x, bins=16, sigma=narrow) > 0.99)
    assert torch.allclose(sim.nmi(x, -x, bins=16, sigma=narrow), sim.nmi(x, x, bins=16, sigma=narrow), atol=2e-3)


@pytest.mark.parametrize(
    "name, f",
    [
        ("affine, negative slope", lambda v: -0.9 * v + 0.05),
        ("tanh", lambda v: torch.tanh(1.5 * v) / math.tanh(1.5)),
        ("power", lambda v: torch.sign(v) * v.abs() ** 0.8),
        ("gamma", lambda v: 2 * ((v + 1) / 2) ** 1.5 - 1),
    ],
)
def test_nmi_is_nearly_invariant_to_monotone_intensity_maps(x, name, f):
    # A histogram NMI is exactly invariant only to maps that send bins onto bins; a smooth monotone
    # map moves bin boundaries, which costs a hard 32-bin histogram 15-20% here. The Parzen kernel
    # of half a bin treats all intensities alike wherever they fall on the bin grid, so a monotone
    # map keeps >= 95% of the identity's score (a many-to-one squeeze like x**3 would not).
    identity = sim.nmi(x, x)
    mapped = sim.nmi(x, f(x))
    assert torch.all(mapped >= 0.95 * identity), (name, mapped, identity)


def test_nmi_of_an_image_with_its_shuffled_pixels_is_about_zero(x):
    # Same histogram, no relation: only the finite-sample bias of the plug-in estimate remains.
    xs = shuffled(x)
    assert torch.all(sim.nmi(x, xs) < 0.05)
    assert torch.all(sim.nmi(x, xs, bins=16, sigma=0.05 * bin_width(16)) < 0.05)


def test_nmi_is_symmetric_bounded_and_per_sample(x):
    y = torch.tanh(3 * smooth_images(n=3, seed=7)) + 0.2 * x
    assert torch.allclose(sim.nmi(x, y), sim.nmi(y, x), atol=1e-6)
    value = sim.nmi(x, y)
    assert torch.all((value >= 0) & (value <= 1))
    # each sample is scored on its own: a batch gives what each sample alone gives
    alone = torch.cat([sim.nmi(x[i : i + 1], y[i : i + 1]) for i in range(3)])
    assert torch.allclose(value, alone, atol=1e-6)
    # and one bad pair in a batch does not change the others
    mixed = torch.cat([x[:1], shuffled(x[1:2]), x[2:]])
    scores = sim.nmi(x, mixed)
    assert scores[1] < 0.1 < scores[0] and scores[2] > 0.1


def test_nmi_loss_is_one_minus_the_mean(x):
    y = smooth_images(n=3, seed=9)
    assert float(sim.nmi_loss(x, y)) == pytest.approx(float(1 - sim.nmi(x, y).mean()), abs=1e-6)
    assert float(sim.nmi_loss(x, x, bins=16)) == pytest.approx(float(1 - sim.nmi(x, x, bins=16).mean()), abs=1e-6)


def test_nmi_mask_restricts_the_histogram(x):
    # inside the mask y equals x, outside it is noise: the masked score is the identity's
    y = x.clone()
    noise = shuffled(x)
    y[..., S // 2 :] = noise[..., S // 2 :]
    mask = torch.zeros_like(x)
    mask[..., : S // 2] = 1
    masked = sim.nmi(x, y, mask=mask)
    assert torch.allclose(masked, sim.nmi(x[..., : S // 2], x[..., : S // 2]), atol=1e-5)
    assert torch.all(masked > sim.nmi(x, y) + 0.05)


def test_nmi_histogram_is_a_probability_and_values_outside_the_range_are_finite(x):
    joint = sim.joint_histogram(x, -x, bins=8)
    assert joint.shape == (3, 8, 8)
    assert torch.allclose(joint.sum(dim=(1, 2)), torch.ones(3), atol=1e-5)
    far = torch.full_like(x, 50.0)
    assert torch.isfinite(sim.nmi(x * 30, far)).all()


def test_nmi_runs_in_float32_under_autocast(x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = sim.nmi(x.bfloat16(), x.bfloat16())
    assert value.dtype == torch.float32
    assert torch.allclose(value, sim.nmi(x.bfloat16().float(), x.bfloat16().float()), atol=1e-6)


# ===================================================================== gradient correlation
def test_gradient_correlation_is_invariant_to_affine_intensity_maps(x):
    assert torch.allclose(sim.gradient_correlation(x, x), torch.ones(3), atol=1e-5)
    assert torch.allclose(sim.gradient_correlation(x, 0.4 * x - 0.3), torch.ones(3), atol=1e-4)
    assert torch.allclose(sim.gradient_correlation(x, -x), -torch.ones(3), atol=1e-5)
    assert float(sim.gradient_correlation_loss(x, 2.0 * x + 0.5)) == pytest.approx(0.0, abs=1e-4)


def test_gradient_correlation_drops_under_a_shift():
    x = smooth_images(n=3, blur=1.5, seed=5)
    moved = sim.gradient_correlation(x, shift(x, 3))
    assert torch.all(moved < 0.5)
    assert float(sim.gradient_correlation_loss(x, shift(x, 3))) > 0.5
    # and decreases with the size of the shift
    assert torch.all(sim.gradient_correlation(x, shift(x, 1)) > moved)


def test_gradient_correlation_matches_a_direct_computation(x):
    from scipy import ndimage

    y = smooth_images(n=3, seed=11)
    xa, ya = x[0, 0].double().numpy(), y[0, 0].double().numpy()

    def ncc(a, b):
        a, b = a - a.mean(), b - b.mean()
        return (a * b).mean() / math.sqrt((a * a).mean() * (b * b).mean())

    expected = 0.5 * sum(
        ncc(ndimage.sobel(xa, axis=ax, mode="nearest"), ndimage.sobel(ya, axis=ax, mode="nearest")) for ax in (0, 1)
    )
    assert float(sim.gradient_correlation(x[:1], y[:1])) == pytest.approx(expected, abs=1e-4)


# ===================================================================== MIND
def test_mind_descriptor_shape_range_and_normalisation(x):
    d = sim.mind_descriptor(x[:2])
    assert d.shape == (2, 80, S, S)
    assert len(sim.mind_offsets(4)) == 80 and (0, 0) not in sim.mind_offsets(4)
    assert torch.all((d >= 0) & (d <= 1))  # far offsets across an edge underflow to 0
    # normalised by its maximum over the offsets
    assert torch.allclose(d.amax(dim=1), torch.ones(2, S, S))
    assert sim.mind_descriptor(x[:1], radius=1, patch=3, sigma=1.0).shape == (1, 8, S, S)


def test_mind_is_invariant_to_affine_intensity_maps(x):
    # D and V both scale by a^2; the floor on V is relative to its mean, so it scales too
    reference = sim.mind_descriptor(x)
    for a, b in ((0.5, 0.3), (1.7, -0.2), (-0.8, 0.1)):
        assert (sim.mind_descriptor(a * x + b) - reference).abs().max() < 1e-3, (a, b)
    assert float(sim.mind_loss(x, 0.5 * x + 0.3)) < 1e-4


def test_mind_loss_grows_under_a_shift(x):
    affine = float(sim.mind_loss(x, 0.5 * x + 0.3))
    moved = float(sim.mind_loss(x, shift(x, 3)))
    assert moved > 0.02
    assert moved > 100 * max(affine, 1e-6)
    assert float(sim.mind_loss(x, shift(x, 1))) < moved


def test_mind_matches_a_direct_computation_at_one_pixel():
    x = smooth_images(n=1, size=24, seed=13)
    d = sim.mind_descriptor(x)
    img = x[0, 0].double().numpy()
    padded = np.pad(img, 4 + 3, mode="edge")  # shifts by up to 4 plus the patch half-width 3
    r = np.arange(-3, 4)
    g = np.exp(-0.5 * (r / 2.0) ** 2)
    g /= g.sum()
    w = np.outer(g, g)
    py, px = 12, 10  # away from the border, where padding does not enter

    def patch(cy, cx):
        return padded[cy + 7 - 3 : cy + 7 + 4, cx + 7 - 3 : cx + 7 + 4]

    dist = {o: float((w * (patch(py, px) - patch(py + o[0], px + o[1])) ** 2).sum()) for o in sim.mind_offsets(4)}
    v = np.mean([dist[o] for o in ((-1, 0), (1, 0), (0, -1), (0, 1))])
    m = {o: math.exp(-dist[o] / v) for o in dist}
    top = max(m.values())
    expected = np.array([m[o] / top for o in sim.mind_offsets(4)])
    assert np.allclose(d[0, :, py, px].double().numpy(), expected, atol=1e-4)


# ===================================================================== constant images
LOSSES = {
    "nmi": lambda a, b: sim.nmi_loss(a, b, bins=16),
    "gc": sim.gradient_correlation_loss,
    "mind": lambda a, b: sim.mind_loss(a, b, radius=2, patch=3, sigma=1.0),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("case", ["both constant", "constant vs image", "image vs constant", "images"])
def test_every_loss_is_finite_with_gradients_to_both_inputs(name, case):
    img = smooth_images(n=2, size=32, seed=17)
    other = smooth_images(n=2, size=32, seed=18)
    const = torch.full_like(img, -1.0)
    a, b = {
        "both constant": (const, torch.full_like(img, 0.3)),
        "constant vs image": (const, img),
        "image vs constant": (img, const),
        "images": (img, other),
    }[case]
    a = a.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    loss = LOSSES[name](a, b)
    loss.backward()
    loss = loss.detach()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    if case == "images":
        assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    if case in ("constant vs image", "image vs constant") and name == "nmi":
        # a constant shares no information with anything: the worst score, not an error
        assert float(loss) == pytest.approx(1.0, abs=1e-5)


def test_constant_images_score_as_documented():
    c = torch.full((2, 1, 32, 32), 0.2)
    img = smooth_images(n=2, size=32)
    assert torch.allclose(sim.nmi(c, c), torch.zeros(2), atol=1e-2)  # float noise over eps
    assert torch.allclose(sim.gradient_correlation(c, img), torch.zeros(2))
    assert torch.allclose(sim.mind_descriptor(c), torch.ones(2, 80, 32, 32))


# ===================================================================== Cycle-MedGAN
def test_gram_matrix_and_style_loss():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 5, 6, 7, generator=g)
    gram = sim.gram_matrix(f)
    assert gram.shape == (2, 5, 5)
    flat = f.reshape(2, 5, 42)
    assert torch.allclose(gram[1], flat[1] @ flat[1].t() / (5 * 6 * 7), atol=1e-6)
    assert torch.allclose(gram, gram.transpose(1, 2))
    feats = [f, torch.randn(2, 3, 4, 4, generator=g)]
    assert float(sim.style_loss(feats, feats)) == 0.0
    assert float(sim.perceptual_loss(feats, feats)) == 0.0
    other = [t + 0.5 * torch.randn(t.shape, generator=g) for t in feats]
    assert float(sim.style_loss(feats, other)) > 0
    # a spatial permutation keeps the Gram matrices (style) but not the features (perception)
    perm = [t.flip(-1).flip(-2) for t in feats]
    assert float(sim.style_loss(feats, perm)) == pytest.approx(0.0, abs=1e-7)
    assert float(sim.perceptual_loss(feats, perm)) > 0.1


def test_feature_loss_weights():
    a = [torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 2, 2)]
    b = [torch.ones(1, 2, 4, 4), 3 * torch.ones(1, 4, 2, 2)]
    assert float(sim.perceptual_loss(a, b)) == pytest.approx(2.0)
    assert float(sim.perceptual_loss(a, b, weights=[1.0, 0.0])) == pytest.approx(1.0)
    assert float(sim.perceptual_loss(a, b, weights=[0.5, 2.0])) == pytest.approx(6.5)
    # Gram of ones(C, HW) is all 1/C; of 3*ones all 9/C; difference^2 summed = C^2 (8/C)^2 = 64
    assert float(sim.style_loss(a, b, weights=[0.0, 1.0])) == pytest.approx(81 / (4 * 16))
    with pytest.raises(ValueError):
        sim.perceptual_loss(a, b, weights=[1.0])
    with pytest.raises(ValueError):
        sim.style_loss(a, b[:1])


def test_feature_extractor_returns_every_stage():
    net = sim.FeatureExtractor(base=4, stages=3)
    feats = net(torch.zeros(2, 1, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 4, 16, 16), (2, 8, 8, 8), (2, 16, 4, 4)]


def test_pretrain_feature_extractor_learns_and_freezes():
    slices = smooth_images(n=6, size=32, seed=21, span=1.0)[:, 0].numpy()  # (M, H, W) arrays work
    state = torch.random.get_rng_state()
    extractor, info = sim.pretrain_feature_extractor(slices, steps=40, lr=2e-3, seed=0, batch_size=4, base=8, stages=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert info["method"] == "autoencoder-l1" and info["steps"] == 40 and info["n_slices"] == 6
    assert info["final_loss"] < 0.7 * info["initial_loss"]
    assert all(not p.requires_grad for p in extractor.parameters())
    assert not extractor.training
    import json

    json.dumps(info)
    # frozen, but a generator's output still receives gradients through it
    fake = torch.tensor(slices[:2, None]).requires_grad_(True)
    real = torch.tensor(slices[2:4, None])
    loss = sim.perceptual_loss(extractor(fake), extractor(real)) + sim.style_loss(extractor(fake), extractor(real))
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    # deterministic for a seed
    again, info2 = sim.pretrain_feature_extractor(slices, steps=40, lr=2e-3, seed=0, batch_size=4, base=8, stages=3)
    assert info2["final_loss"] == pytest.approx(info["final_loss"], rel=1e-5)
    with pytest.raises(ValueError):
        sim.pretrain_feature_extractor(slices[:, :30, :30], steps=1, stages=3)
