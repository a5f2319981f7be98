"""Differentiable similarity measures used as training losses by the methods of the seed papers.

Every function takes batches ``(N, 1, H, W)`` of images normalised to [-1, 1] (the generators'
``tanh`` range) and is differentiable with respect to *both* inputs, because the methods compare a
real image with a generated one and the gradient must reach the generator.

* :func:`nmi` / :func:`nmi_loss` -- normalised mutual information from a Parzen-window joint
  histogram: DiCyc's alignment loss (Wang et al., MICCAI 2018; Wang et al., MedIA 2021).
* :func:`gradient_correlation` / :func:`gradient_correlation_loss` -- Hiasa et al. 2018.
* :func:`mind_descriptor` / :func:`mind_loss` -- MIND (Heinrich et al. 2012) as the structure
  constraint of Yang et al. 2018.
* :func:`perceptual_loss`, :func:`style_loss`, :class:`FeatureExtractor` and
  :func:`pretrain_feature_extractor` -- the cycle-perceptual and cycle-style losses of
  Cycle-MedGAN (Armanious et al. 2019).

Every loss is finite, in value and gradient, on constant images: a generator that collapses to a
constant output must get a bad score, never a NaN that stops training.
"""

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Intensity range that the NMI histogram bins span: the generators' tanh range.
NMI_RANGE = (-1.0, 1.0)

#: Default number of histogram bins per axis of the differentiable NMI.
NMI_DEFAULT_BINS = 32

#: Default Parzen kernel width, as a fraction of the bin width.
NMI_SIGMA_RATIO = 0.5

_ENTROPY_EPS = 1e-10

#: Floor of the Parzen kernel's log-weights (see :func:`_soft_assign`).
_LOG_KERNEL_FLOOR = -20.0


# ===================================================================== helpers
def _fp32(*tensors):
    """The tensors as float32, and a context that turns autocast off.

    Histogram entropies and the MIND/NCC ratios lose all precision in fp16/bf16 (probabilities of
    1e-5 next to 1), so these measures always run in float32 even inside an autocast region.
    """
    device_type = tensors[0].device.type
    if device_type not in ("cpu", "cuda"):
        ctx = contextlib.nullcontext()
    else:
        ctx = torch.autocast(device_type=device_type, enabled=False)
    return ctx, [t.float() for t in tensors]


def _check_pair(x, y):
    if x.dim() != 4 or y.dim() != 4:
        raise ValueError(f"expected batches (N, C, H, W); got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"the two batches differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")


# ===================================================================== NMI
def _soft_assign(values, centres, sigma):
    """Per-pixel Parzen weights over the bins, each pixel's weights summing to 1.

    A softmax over the Gaussian log-kernel ``-(v - c)^2 / (2 sigma^2)`` equals the normalised
    Gaussian weights but cannot underflow to 0/0 for values far outside the binned range (they
    simply land in the nearest edge bin), so the histogram is finite for any input.
    """
    d = values.unsqueeze(-1) - centres  # (N, P, B)
    logits = -0.5 * (d / sigma) ** 2
    # Floor each pixel's weights at e^-20 of its largest one (softmax is shift-invariant): the far
    # tails of the kernel would otherwise be subnormal floats, which made the histogram products 4x
    # slower on x86 CPUs. It changes NMI by ~1e-8.
    logits = logits - logits.amax(dim=-1, keepdim=True)
    return torch.softmax(logits.clamp_min(_LOG_KERNEL_FLOOR), dim=-1)


def _entropy(p, dims):
    """Shannon entropy (nats) of probabilities ``p`` summed over ``dims``; eps keeps log(0) finite."""
    return -(p * torch.log(p + _ENTROPY_EPS)).sum(dim=dims)


def joint_histogram(x, y, bins=NMI_DEFAULT_BINS, sigma=None, mask=None):
    """Parzen-window joint histogram ``p(x, y)`` of each sample, shape ``(N, bins, bins)``.

    Bin centres are spread evenly over the fixed range :data:`NMI_RANGE` = [-1, 1] (a fixed range,
    not each image's min/max, so the loss does not depend on two outliers and its gradient is not
    routed through a max). Each pixel contributes the outer product of its two soft assignments;
    ``p`` is their (mask-weighted) mean, computed as one batched matmul ``(N, B, P) @ (N, P, B)``
    so memory stays ``O(N P B)`` instead of ``O(N P B^2)``.
    """
    _check_pair(x, y)
    bins = int(bins)
    if bins < 2:
        raise ValueError(f"bins must be at least 2; got {bins}")
    lo, hi = NMI_RANGE
    width = (hi - lo) / bins
    sigma = NMI_SIGMA_RATIO * width if sigma is None else float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive; got {sigma}")
    ctx, (x, y) = _fp32(x, y)
    with ctx:
        n = x.shape[0]
        centres = torch.linspace(lo + 0.5 * width, hi - 0.5 * width, bins, device=x.device, dtype=torch.float32)
        ax = _soft_assign(x.reshape(n, -1), centres, sigma)
        ay = _soft_assign(y.reshape(n, -1), centres, sigma)
        if mask is None:
            joint = torch.bmm(ax.transpose(1, 2), ay) / ax.shape[1]
        else:
            m = mask.to(device=x.device, dtype=torch.float32).expand_as(x).reshape(n, -1, 1)
            joint = torch.bmm((ax * m).transpose(1, 2), ay) / (m.sum(dim=1, keepdim=True) + _ENTROPY_EPS)
    return joint


def _mutual_information(joint):
    hx = _entropy(joint.sum(dim=2), dims=1)
    hy = _entropy(joint.sum(dim=1), dims=1)
    return (hx + hy - _entropy(joint, dims=(1, 2))).clamp_min(0.0)


def nmi(x, y, bins=NMI_DEFAULT_BINS, sigma=None, mask=None):
    """Normalised mutual information of each sample pair, a tensor ``(N,)`` in [0, 1].

    ``NMI = 2 I(X;Y) / (I(X;X) + I(Y;Y))`` from Parzen-window joint histograms
    (:func:`joint_histogram`: ``bins`` bins over the fixed range [-1, 1], a Gaussian kernel of
    standard deviation ``sigma``, default :data:`NMI_SIGMA_RATIO` = 0.5 of the bin width).

    Which normalisation, and why: this is the "sum" (arithmetic-mean) normalisation of Vinh,
    Epps & Bailey (JMLR 2010), 2I/(H(X)+H(Y)) — the one :mod:`dicyc.metrics` reports — with each
    marginal entropy replaced by the image's mutual information with itself under the same
    estimator. For a hard histogram I(X;X) = H(X), so the two are identical; for the smoothed
    histogram a training loss needs, I(X;X) < H(X) (the kernel smears the diagonal), and plain
    2I/(H+H) would cap NMI(x, x) near 0.65 at 32 bins. Normalising by the estimator's own
    ceiling keeps every property that matters: symmetric, NMI(x, x) = 1 exactly, near 1 for a
    monotone intensity map, near 0 for unrelated images, so L_align = 2 − NMI − NMI reaches 0
    at perfect alignment as in the paper.

    Half a bin width is the narrowest kernel that still overlaps neighbouring bins everywhere,
    so the gradient never vanishes inside a bin and every intensity is treated alike wherever it
    falls on the bin grid. Constant images: I = 0 and the self-information is 0 too; the eps in
    the division makes the score 0 (the worst value — a loss must not reward a collapsed output)
    with finite value and gradient.

    ``mask`` (broadcastable to ``x``; weights in [0, 1]) restricts the histograms to a region.
    """
    mi = _mutual_information(joint_histogram(x, y, bins=bins, sigma=sigma, mask=mask))
    self_x = _mutual_information(joint_histogram(x, x, bins=bins, sigma=sigma, mask=mask))
    self_y = _mutual_information(joint_histogram(y, y, bins=bins, sigma=sigma, mask=mask))
    # eps well above float noise (real images carry ~1 nat of self-information)
    return (2.0 * mi / (self_x + self_y + 1e-3)).clamp(0.0, 1.0)


def nmi_loss(x, y, **kw):
    """``1 - NMI`` averaged over the batch (DiCyc's L_align is the sum of two of these)."""
    return (1.0 - nmi(x, y, **kw)).mean()


# ===================================================================== gradient correlation
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def sobel(x):
    """Sobel derivatives ``(d/dx, d/dy)`` of each channel, replicate padding (no false border edges).

    Unnormalised (8x the central difference, like ``scipy.ndimage.sobel``): the scale cancels in the
    NCC, and the larger variance keeps the NCC's eps negligible on smooth [-1, 1] images.
    """
    ctx, (x,) = _fp32(x)
    with ctx:
        n, c, h, w = x.shape
        kx = torch.tensor(_SOBEL_X, device=x.device, dtype=torch.float32)
        k = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
        g = F.conv2d(F.pad(x.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate"), k)
        g = g.reshape(n, c, 2, h, w)
    return g[:, :, 0], g[:, :, 1]


def _ncc(a, b, eps):
    """Zero-normalised cross-correlation over everything but the batch dimension, (N,).

    ``cov / sqrt((var_a + eps)(var_b + eps))``: eps keeps the value (0) and the gradient finite
    when either image is flat, and is negligible next to the gradient variance of real images.
    """
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    cov = (a * b).mean(dim=1)
    return cov / torch.sqrt((a.pow(2).mean(dim=1) + eps) * (b.pow(2).mean(dim=1) + eps))


def gradient_correlation(x, y, eps=1e-6):
    """Gradient correlation (Penney et al. 1998) as used by Hiasa et al. 2018, a tensor ``(N,)``.

    Hiasa et al. ("Cross-modality image synthesis from unpaired data using CycleGAN: effects of
    gradient consistency loss", SASHIMI 2018) compare edges rather than intensities, which
    survive a change of modality: ``GC = 1/2 (NCC(dX/dx, dY/dx) + NCC(dX/dy, dY/dy))`` with
    Sobel derivatives and NCC over the whole image. In [-1, 1]; 1 for ``Y = a X + b`` with a > 0.
    """
    _check_pair(x, y)
    ctx, (x, y) = _fp32(x, y)
    with ctx:
        gx_x, gy_x = sobel(x)
        gx_y, gy_y = sobel(y)
        return 0.5 * (_ncc(gx_x, gx_y, eps) + _ncc(gy_x, gy_y, eps))


def gradient_correlation_loss(x, y, eps=1e-6):
    """``1 - GC`` averaged over the batch: Hiasa et al.'s gradient-consistency loss for one pair
    (their L_gc averages it over the two translation directions, which the method recipe does)."""
    return (1.0 - gradient_correlation(x, y, eps=eps)).mean()


# ===================================================================== MIND
def _gaussian_1d(size, sigma, device):
    r = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2.0
    k = torch.exp(-0.5 * (r / sigma) ** 2)
    return k / k.sum()


def mind_offsets(radius=4):
    """The non-local search offsets ``(dy, dx)``: the (2r+1)^2 square without the centre."""
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1) if (dy, dx) != (0, 0)]


def mind_descriptor(x, radius=4, patch=7, sigma=2.0):
    """MIND (Heinrich et al., MedIA 2012), a tensor ``(N, (2 radius + 1)^2 - 1, H, W)``.

    Yang et al. ("Unpaired brain MR-to-CT synthesis using a structure-constrained CycleGAN",
    DLMIA 2018) use MIND to keep anatomy in place across modalities: a 9x9 non-local region
    (``radius`` 4: 80 offsets r), patch distances ``D_P(x, x+r)`` = Gaussian-weighted (``sigma``
    2 on a ``patch`` 7x7 window, weights summing to 1) sum of squared differences between the
    image and the image shifted by r, the local variance ``V(x)`` = mean of ``D_P`` over the
    4-neighbourhood, and ``MIND(x, r) = exp(-D_P(x, x+r) / V(x))`` divided by its maximum over r.

    Shifts and the patch window use replicate padding. The max-normalisation is computed as
    ``exp(-(D - min_r D) / V)``, which is the same value without underflow. V is floored at
    1e-3 of its image mean (as in Heinrich's reference code, so noise in flat regions is not
    amplified without bound) and at 1e-8 (so a constant image gives D / V = 0, MIND = 1, no
    NaN); the relative floor scales with the image, so MIND stays exactly invariant to
    ``a x + b`` (a != 0) -- both D and V scale by a^2.
    """
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"MIND expects a batch (N, 1, H, W); got shape {tuple(x.shape)}")
    radius, patch = int(radius), int(patch)
    if radius < 1 or patch < 1 or patch % 2 == 0:
        raise ValueError(f"need radius >= 1 and an odd patch size; got radius={radius}, patch={patch}")
    ctx, (x,) = _fp32(x)
    with ctx:
        n, _, h, w = x.shape
        offsets = mind_offsets(radius)
        r = radius
        padded = F.pad(x, (r, r, r, r), mode="replicate")
        diffs = torch.cat(
            [(x - padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w]) ** 2 for dy, dx in offsets],
            dim=1,
        )  # (N, K, H, W)
        k = len(offsets)
        g = _gaussian_1d(patch, sigma, x.device)
        half = patch // 2
        # separable Gaussian as depthwise (grouped) convolutions: ~20x faster on CPU, forward and
        # backward, than folding the offsets into the batch of a single-channel convolution
        row = g.view(1, 1, 1, patch).expand(k, 1, 1, patch)
        d = F.conv2d(F.pad(diffs, (half, half, 0, 0), mode="replicate"), row, groups=k)
        d = F.conv2d(F.pad(d, (0, 0, half, half), mode="replicate"), row.transpose(2, 3), groups=k)
        four = [offsets.index(o) for o in ((-1, 0), (1, 0), (0, -1), (0, 1))]
        v = d[:, four].mean(dim=1, keepdim=True)
        v = torch.maximum(v, 1e-3 * v.mean(dim=(1, 2, 3), keepdim=True)).clamp_min(1e-8)
        return torch.exp(-(d - d.min(dim=1, keepdim=True).values) / v)


def mind_loss(x, y, **kw):
    """Mean absolute difference of the MIND descriptors: Yang et al.'s structure-consistency loss
    (their weight, 5, belongs to the method recipe). ``kw`` goes to :func:`mind_descriptor`."""
    _check_pair(x, y)
    return (mind_descriptor(x, **kw) - mind_descriptor(y, **kw)).abs().mean()


# ===================================================================== Cycle-MedGAN
def _layer_weights(weights, count):
    if weights is None:
        return [1.0 / count] * count
    weights = [float(v) for v in weights]
    if len(weights) != count:
        raise ValueError(f"got {len(weights)} weights for {count} feature maps")
    return weights


def _check_features(features_a, features_b):
    features_a, features_b = list(features_a), list(features_b)
    if not features_a or len(features_a) != len(features_b):
        raise ValueError(
            f"need two equally long, non-empty lists of feature maps; got {len(features_a)} and {len(features_b)}"
        )
    for fa, fb in zip(features_a, features_b):
        if fa.shape != fb.shape:
            raise ValueError(f"feature maps differ in shape: {tuple(fa.shape)} vs {tuple(fb.shape)}")
    return features_a, features_b


def perceptual_loss(features_a, features_b, weights=None):
    """Cycle-perceptual loss (Armanious et al. 2019): ``sum_l w_l mean|F_l(a) - F_l(b)|``.

    Matching features of a frozen network instead of pixels penalises lost structure and texture
    that a pixel L1 averages away. ``weights`` default to 1/L each (the plain mean over layers).
    """
    features_a, features_b = _check_features(features_a, features_b)
    weights = _layer_weights(weights, len(features_a))
    return sum(wl * (fa.float() - fb.float()).abs().mean() for wl, fa, fb in zip(weights, features_a, features_b))


def gram_matrix(features):
    """Gram matrices ``F F^T / (C H W)`` of a feature batch ``(N, C, H, W)``, shape ``(N, C, C)``."""
    n, c, h, w = features.shape
    f = features.float().reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def style_loss(features_a, features_b, weights=None):
    """Cycle-style loss (Armanious et al. 2019; Gatys et al. 2016): ``sum_l w_l / (4 C_l^2)
    ||Gram_l(a) - Gram_l(b)||_F^2``, averaged over the batch.

    Gram matrices drop *where* features occur and keep their co-occurrence: the texture of the
    target modality. The 1/(4 C^2) factor is MedGAN's (Armanious et al.), so layers of different
    widths weigh alike; ``weights`` default to 1/L each.
    """
    features_a, features_b = _check_features(features_a, features_b)
    weights = _layer_weights(weights, len(features_a))
    total = 0.0
    for wl, fa, fb in zip(weights, features_a, features_b):
        c = fa.shape[1]
        diff = gram_matrix(fa) - gram_matrix(fb)
        total = total + wl * diff.pow(2).sum(dim=(1, 2)).mean() / (4.0 * c * c)
    return total


class FeatureExtractor(nn.Module):
    """A small convolutional encoder returning the feature map of every stage.

    Stands in for Cycle-MedGAN's pre-trained BiGAN discriminator (no weights can be downloaded
    here): ``stages`` blocks of 4x4 convolution with stride 2, instance norm and LeakyReLU(0.2),
    ``base`` channels doubling per stage. Instance norm keeps no running statistics, so training
    and evaluation mode compute the same features.
    """

    def __init__(self, in_channels=1, base=16, stages=4):
        super().__init__()
        self.in_channels, self.base, self.stages = int(in_channels), int(base), int(stages)
        blocks = []
        c_in = self.in_channels
        for i in range(self.stages):
            c_out = self.base * 2**i
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 4, stride=2, padding=1),
                    nn.InstanceNorm2d(c_out, affine=True),
                    nn.LeakyReLU(0.2, inplace=True),
                )
            )
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = c_in

    def forward(self, x):
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


def _decoder(extractor):
    """Mirror of the extractor's stages (transposed convolutions), ``tanh`` output in [-1, 1]."""
    layers = []
    c_in = extractor.out_channels
    for i in reversed(range(extractor.stages)):
        last = i == 0
        c_out = extractor.in_channels if last else extractor.base * 2 ** (i - 1)
        layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
        if last:
            layers.append(nn.Tanh())
        else:
            layers += [nn.InstanceNorm2d(c_out, affine=True), nn.ReLU(inplace=True)]
        c_in = c_out
    return nn.Sequential(*layers)


def _as_slices(slices):
    t = torch.as_tensor(slices).float() if not torch.is_tensor(slices) else slices.detach().float()
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.dim() != 4 or t.shape[0] == 0:
        raise ValueError(f"expected slices (M, H, W) or (M, 1, H, W); got shape {tuple(t.shape)}")
    return t


def pretrain_feature_extractor(slices, steps=200, lr=2e-4, seed=0, device="cpu", batch_size=8, base=16, stages=4):
    """Self-supervised pre-training of a :class:`FeatureExtractor` on target-domain slices; frozen.

    Cycle-MedGAN takes its features from a BiGAN discriminator pre-trained on CT. Nothing can be
    downloaded here, so the extractor learns from the target-domain training slices themselves,
    without labels: as the encoder of an autoencoder (a mirrored transposed-convolution decoder
    reconstructs the slice from the deepest stage, L1 loss, Adam). Reconstruction forces every
    stage to keep the anatomy and texture of the target modality -- what the cycle-perceptual and
    cycle-style losses compare -- and, unlike adversarial pre-training, it is stable and cheap.

    ``slices`` is an array or tensor ``(M, H, W)`` or ``(M, 1, H, W)`` in [-1, 1] with H and W
    divisible by 2**stages. Deterministic for a given ``seed`` (its own RNG; the global one is
    left alone). Returns ``(extractor, info)``: the extractor in eval mode with
    ``requires_grad=False`` on every parameter, and a JSON-ready dict for the model card.
    """
    data = _as_slices(slices)
    steps, batch_size = int(steps), int(batch_size)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive; got {steps} and {batch_size}")
    factor = 2 ** int(stages)
    if data.shape[-1] % factor or data.shape[-2] % factor:
        raise ValueError(f"slice size {tuple(data.shape[-2:])} must be divisible by {factor} for {stages} stages")
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        extractor = FeatureExtractor(data.shape[1], base=base, stages=stages).to(device)
        decoder = _decoder(extractor).to(device)
    gen = torch.Generator().manual_seed(int(seed))
    params = list(extractor.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=float(lr), betas=(0.5, 0.999))
    extractor.train()
    decoder.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, data.shape[0], (min(batch_size, data.shape[0]),), generator=gen)
        batch = data[idx].to(device)
        recon = decoder(extractor(batch)[-1])
        loss = F.l1_loss(recon, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    extractor.eval()
    for p in extractor.parameters():
        p.requires_grad_(False)
    tail = losses[-min(10, len(losses)) :]
    info = {
        "method": "autoencoder-l1",
        "description": "encoder of an L1 autoencoder trained on target-domain slices (no labels, no downloads)",
        "steps": steps,
        "batch_size": batch_size,
        "lr": float(lr),
        "seed": int(seed),
        "n_slices": int(data.shape[0]),
        "slice_size": [int(data.shape[-2]), int(data.shape[-1])],
        "architecture": {"in_channels": extractor.in_channels, "base": extractor.base, "stages": extractor.stages},
        "initial_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
    }
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError("feature-extractor pre-training diverged (non-finite reconstruction loss)")
    return extractor, info
