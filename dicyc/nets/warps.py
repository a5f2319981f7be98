"""Deformation layers of DicycleGAN and DiCyc: offset fields and a thin-plate-spline transformer.

Wang et al. make a CycleGAN *deformation-invariant* by giving the generator a second,
deformed forward pass G_T(x) = G(x | theta, theta_T) that may absorb the misalignment
between domains, while the undeformed pass G(x | theta) is tied to its input by an
alignment loss (DicycleGAN, MICCAI SASHIMI 2018; DiCyc, Information Fusion 2021).
This module holds theta_T:

- :class:`OffsetField`, the 2018 paper's modified deformable convolution: one 2-D
  displacement field per feature map (shared by all channels, so it moves *content*
  rather than re-mixing channels), predicted from that map and applied by bilinear
  resampling;
- :class:`TPSTransformer`, the 2021 paper's global thin-plate spline on the latent code,
  steered by the latent code of a target-domain image;
- :class:`Deformation`, which builds both from a generator's ``warp_points`` and hands
  :meth:`dicyc.nets.generator.ResnetGenerator.forward` its ``warp`` hook.

Conventions. Sampling grids follow :func:`torch.nn.functional.grid_sample` with
``align_corners=False`` everywhere: pixel ``p`` of a side of length ``size`` has the
normalised coordinate ``(2 p + 1) / size - 1`` (pixel centres), the same grid that
``F.affine_grid(identity, align_corners=False)`` gives. Warps are *backward* maps: the
output at location ``q`` is the input sampled at ``q + d(q)``. Last layers start at zero,
so every warp starts as the exact identity and the deformed pass starts equal to the
undeformed one.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "warp_image",
    "pixel_centres",
    "OffsetField",
    "tps_control_points",
    "tps_radial_basis",
    "tps_kernel_matrix",
    "tps_inverse_kernel",
    "tps_transform_points",
    "tps_grid",
    "TPSTransformer",
    "Deformation",
    "composed_grid",
    "resample",
    "OFFSET_STAGES",
]

#: Stages that get an offset field: in front of the input block, both down-samplings and
#: every residual block -- the 2018 paper's "lasagne" structure.
OFFSET_STAGES = ("stem", "down1", "down2")


def _is_offset_stage(name):
    return name in OFFSET_STAGES or (name.startswith("block") and name[5:].isdigit())


def _no_autocast(device):
    # Sampling coordinates in bf16/fp16 are off by up to a pixel on 256-wide maps; grids
    # are always computed in fp32 whatever mixed precision the caller runs under.
    return torch.autocast(device_type=device.type, enabled=False)


def pixel_centres(height, width, device=None, dtype=torch.float32):
    """(H, W, 2) normalised (x, y) coordinates of pixel centres, for ``align_corners=False``.

    Equal to ``F.affine_grid`` of the identity with ``align_corners=False``; built as
    ``(2 p + 1) / size - 1`` so zero displacement samples exactly at the centres.
    """
    xs = (2 * torch.arange(width, device=device, dtype=torch.float64) + 1) / width - 1
    ys = (2 * torch.arange(height, device=device, dtype=torch.float64) + 1) / height - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).to(dtype)


def _sample(features, grid):
    return F.grid_sample(
        features, grid.to(features.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )


def warp_image(features, displacement):
    """Resample (N, C, H, W) ``features`` at ``q + displacement(q)``; displacement in PIXELS.

    ``displacement`` is (N, 2, H, W) holding (dx, dy) in pixels of this map: output[y, x]
    = features[y + dy, x + dx] (bilinear, border padding). A field of ones in dx therefore
    moves the content one pixel to the left. Pixels convert to ``grid_sample``'s
    normalised units as ``2 d / size``, the scale that matches ``align_corners=False``.
    Zero displacement reproduces ``features`` exactly when H and W are powers of two (all
    maps of 64/128/256 slices); otherwise fp32 grid coordinates are off pixel centres by
    up to ~1e-7·size pixels, a float32 limit of ``grid_sample`` itself.
    """
    if features.dim() != 4 or displacement.dim() != 4 or displacement.shape[1] != 2:
        raise ValueError(
            f"expected features (N, C, H, W) and displacement (N, 2, H, W), got "
            f"{tuple(features.shape)} and {tuple(displacement.shape)}"
        )
    n, _, h, w = features.shape
    if displacement.shape[0] != n or displacement.shape[-2:] != (h, w):
        raise ValueError(
            f"displacement {tuple(displacement.shape)} does not match features {tuple(features.shape)}"
        )
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    with _no_autocast(features.device):
        base = pixel_centres(h, w, device=features.device, dtype=dtype)
        scale = torch.tensor([2.0 / w, 2.0 / h], device=features.device, dtype=dtype)
        grid = base + displacement.to(dtype).permute(0, 2, 3, 1) * scale
        return _sample(features, grid)


class OffsetField(nn.Module):
    """DicycleGAN's modified deformable convolution: one shared 2-D field per feature map.

    A standard deformable convolution (Dai et al.) learns offsets per kernel tap and
    output channel; Wang et al. (MICCAI SASHIMI 2018) share one displacement field across
    all channels so the layer can only *move* the map, which is what absorbing an
    anatomical deformation needs. The field is predicted from the map by a 3x3
    convolution (optionally ``hidden`` channels, ReLU, then 3x3) whose last layer is
    zero-initialised, so the warp starts as the identity. Units: pixels of this map.

    Two optional constraints keep the field a *deformation* rather than a second way of
    changing appearance (found on the quality benchmark: a free per-pixel field lets the
    deformed pass fool the discriminator with shredded anatomy while the undeformed pass,
    which no discriminator judges, stays flat and low-contrast):

    - ``grid``: the field is averaged over a ``grid`` x ``grid`` lattice of cells covering
      the map and interpolated back bilinearly, so it is smooth on the scale of a cell
      whatever the map's resolution (the scanner deformations it must absorb are smooth);
    - ``max_displacement``: each component is bounded by ``max_displacement`` in normalised
      units (1 = half the map's side, as for :class:`TPSTransformer`) through a scaled
      ``tanh``, whose slope at zero is 1, so early training is unchanged.
    """

    def __init__(self, channels, hidden=None, grid=None, max_displacement=None):
        super().__init__()
        if channels < 1 or (hidden is not None and hidden < 1):
            raise ValueError("channels and hidden must be >= 1")
        if grid is not None and int(grid) < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        if max_displacement is not None and not max_displacement > 0:
            raise ValueError(f"max_displacement must be > 0, got {max_displacement}")
        self.channels, self.hidden = channels, hidden
        self.grid = None if grid is None else int(grid)
        self.max_displacement = None if max_displacement is None else float(max_displacement)
        if hidden:
            self.body = nn.Sequential(
                nn.Conv2d(channels, hidden, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, 2, kernel_size=3, padding=1),
            )
        else:
            self.body = nn.Sequential(nn.Conv2d(channels, 2, kernel_size=3, padding=1))
        self.last_field = None
        self.reset_identity()

    def reset_identity(self):
        """Zero the last layer so the warp is the identity (e.g. after ``init_weights``)."""
        last = self.body[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return self

    def field(self, features):
        """The (N, 2, H, W) displacement (dx, dy), in pixels, predicted from ``features``."""
        field = self.body(features)
        h, w = field.shape[-2:]
        if self.grid is not None and (h > self.grid or w > self.grid):
            coarse = F.adaptive_avg_pool2d(field, (min(self.grid, h), min(self.grid, w)))
            field = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        if self.max_displacement is not None:
            # per component: dx bounded by max_displacement * W / 2 pixels, dy by * H / 2
            bound = field.new_tensor([w, h]).view(1, 2, 1, 1) * (self.max_displacement / 2.0)
            field = bound * torch.tanh(field / bound)
        return field

    def forward(self, features):
        field = self.field(features)
        self.last_field = field  # kept with its graph, for smoothness penalties
        return warp_image(features, field)


# --- thin-plate spline ----------------------------------------------------------------


def tps_control_points(grid_size=6, dtype=torch.float32, device=None):
    """(K, 2) control points (x, y) on a ``grid_size`` x ``grid_size`` grid spanning [-1, 1]².

    Row-major: point ``k = row * grid_size + col`` sits at x = col, y = row of the grid.
    """
    if grid_size < 2:
        raise ValueError(f"grid_size must be >= 2, got {grid_size}")
    lin = torch.linspace(-1.0, 1.0, grid_size, dtype=torch.float64, device=device)
    grid_y, grid_x = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1).to(dtype)


def tps_radial_basis(points, control_points):
    """U(r) = r² log r² between (..., P, 2) points and (K, 2) control points → (..., P, K).

    U(0) = 0 exactly (the limit), which is what makes the spline interpolate its
    control points; r² is formed from coordinate differences so it is exactly 0 there.
    """
    diff = points[..., :, None, :] - control_points
    r2 = (diff * diff).sum(-1)
    return r2 * torch.log(r2.clamp_min(torch.finfo(r2.dtype).tiny))


def tps_kernel_matrix(control_points):
    """The (K+3) x (K+3) thin-plate-spline system [[U, P], [Pᵀ, 0]], P = [1, x, y], in fp64.

    Solving it for the weights w (K) and affine part a (3) of
    f(q) = a0 + a1 x + a2 y + Σ_k w_k U(|q - p_k|) with f(p_k) given and Σ w = Σ w p = 0
    yields the minimum-bending interpolant (Bookstein 1989).
    """
    cp = control_points.to(torch.float64)
    k = cp.shape[0]
    poly = torch.cat((torch.ones(k, 1, dtype=cp.dtype, device=cp.device), cp), dim=1)
    top = torch.cat((tps_radial_basis(cp, cp), poly), dim=1)
    bottom = torch.cat((poly.t(), torch.zeros(3, 3, dtype=cp.dtype, device=cp.device)), dim=1)
    return torch.cat((top, bottom), dim=0)


def tps_inverse_kernel(control_points, dtype=torch.float64):
    """Inverse of :func:`tps_kernel_matrix`, inverted once in fp64.

    The control grid is fixed, so DiCyc (Wang et al. 2021) precomputes this once; each
    forward pass is then two small matrix products. Kept in fp64 by default: with an fp32
    inverse the spline misses its control points by ~1e-5 (condition number ~1e3).
    """
    return torch.linalg.inv(tps_kernel_matrix(control_points)).to(dtype)


def tps_transform_points(points, displacements, inverse_kernel, control_points):
    """Map (P, 2) or (N, P, 2) ``points`` through the TPS that moves p_k to p_k + d_k.

    ``displacements`` is (N, K, 2) in normalised units. The spline interpolates the
    displacements (identity + TPS of d): the affine part reproduces the identity exactly,
    so zero displacements give exactly ``points`` and the map passes through p_k + d_k.
    Returns (N, P, 2) in fp32 (fp64 if ``displacements`` is fp64). Evaluated in fp64:
    P x K basis values and a handful of products, negligible next to the convolutions,
    and it keeps the interpolation error at rounding level instead of ~1e-5.
    """
    k = control_points.shape[0]
    if displacements.dim() != 3 or displacements.shape[1:] != (k, 2):
        raise ValueError(f"expected displacements (N, {k}, 2), got {tuple(displacements.shape)}")
    out_dtype = torch.float64 if displacements.dtype == torch.float64 else torch.float32
    dev, f64 = displacements.device, torch.float64
    with _no_autocast(dev):
        d = displacements.to(f64)
        inv = inverse_kernel.to(device=dev, dtype=f64)
        cp = control_points.to(device=dev, dtype=f64)
        pts = points.to(device=dev, dtype=f64)
        # Right-hand side is [d; 0]: only the first K columns of the inverse matter.
        coeff = torch.matmul(inv[:, :k], d)  # (N, K+3, 2): radial weights, then a0, ax, ay
        radial = tps_radial_basis(pts, cp)  # (..., P, K)
        ones = torch.ones(pts.shape[:-1] + (1,), device=dev, dtype=f64)
        basis = torch.cat((radial, ones, pts), dim=-1)  # (..., P, K+3)
        return (pts + torch.matmul(basis, coeff)).to(out_dtype)


def tps_grid(displacements, inverse_kernel, control_points, height, width):
    """(N, H, W, 2) ``grid_sample`` grid (align_corners=False) of the TPS with these displacements.

    Identity grid (pixel centres) for zero displacements; the sample taken at control
    point p_k comes from p_k + d_k.
    """
    base = pixel_centres(height, width, device=displacements.device, dtype=torch.float64).reshape(-1, 2)
    mapped = tps_transform_points(base, displacements, inverse_kernel, control_points)
    return mapped.reshape(displacements.shape[0], height, width, 2)


class TPSTransformer(nn.Module):
    """DiCyc's global transformer: a TPS on the latent code, steered by a target-domain image.

    Wang et al. (Information Fusion 2021) let a localisation subnetwork read the
    concatenated latent features of the source image and of a target-domain image and
    output displacements of a ``grid_size``² control grid; the latent code is warped by
    the resulting thin-plate spline. Localisation: conv 3x3 stride 2 → instance norm →
    ReLU, twice, then adaptive average pooling to a ``pool_size``² map (``pool_size=1`` is
    global average pooling; the default ``grid_size`` keeps *where* features are, which a
    per-control-point displacement needs) → linear to 2K, zero-initialised, bounded by
    ``max_displacement · tanh`` in normalised units (1 = half the map's width).
    """

    def __init__(self, channels, grid_size=6, max_displacement=0.2, hidden=None, pool_size=None):
        super().__init__()
        if channels < 1:
            raise ValueError("channels must be >= 1")
        if not max_displacement > 0:
            raise ValueError(f"max_displacement must be > 0, got {max_displacement}")
        hidden = hidden or max(8, channels // 2)
        pool_size = grid_size if pool_size is None else pool_size
        self.channels, self.grid_size, self.max_displacement = channels, grid_size, float(max_displacement)
        self.pool_size = pool_size
        # GroupNorm with one channel per group is instance norm that also accepts 1x1 maps
        # (tiny test images), where nn.InstanceNorm2d refuses to run in training mode.
        self.features = nn.Sequential(
            nn.Conv2d(2 * channels, hidden, kernel_size=3, stride=2, padding=1),
            nn.GroupNorm(hidden, hidden, affine=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size=3, stride=2, padding=1),
            nn.GroupNorm(hidden, hidden, affine=False),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(pool_size),
            nn.Flatten(),
        )
        control_points = tps_control_points(grid_size, dtype=torch.float64)
        self.n_control = control_points.shape[0]
        self.head = nn.Linear(hidden * pool_size * pool_size, 2 * self.n_control)
        # Derived from grid_size alone: not part of the state dict.
        self.register_buffer("control_points", control_points, persistent=False)
        self.register_buffer("inverse_kernel", tps_inverse_kernel(control_points), persistent=False)
        self.last_displacements = None
        self.reset_identity()

    def reset_identity(self):
        """Zero the last layer so the transformer starts at zero displacement."""
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        return self

    def displacements(self, latent, target_latent):
        """(N, K, 2) control-point displacements (x, y), normalised units, |d| < max_displacement."""
        if latent.dim() != 4 or latent.shape[1] != self.channels:
            raise ValueError(f"expected latent (N, {self.channels}, H, W), got {tuple(latent.shape)}")
        if target_latent is None or target_latent.shape != latent.shape:
            got = None if target_latent is None else tuple(target_latent.shape)
            raise ValueError(f"target_latent must have the latent's shape {tuple(latent.shape)}, got {got}")
        code = self.features(torch.cat((latent, target_latent), dim=1))
        return self.max_displacement * torch.tanh(self.head(code)).view(-1, self.n_control, 2)

    def forward(self, latent, target_latent):
        d = self.displacements(latent, target_latent)
        self.last_displacements = d
        h, w = latent.shape[-2:]
        grid = tps_grid(d, self.inverse_kernel, self.control_points, h, w)
        return _sample(latent, grid)


def composed_grid(height, width, offset_fields=(), tps=None):
    """(N, H, W, 2) ``grid_sample`` grid of a deformed pass's whole warp, seen at its output.

    Why: the deformed pass moves features at several depths (an offset field in front of
    encoder stages, then the TPS on the latent code). If it only *moves* content, its output
    is the undeformed output resampled through the composition of those maps, and comparing
    the two says whether the deformation modules changed appearance as well (DiCyc's option
    ``lambda_warp``). Warps are backward maps, so the last one applied is evaluated first:
    Phi(q) = s_1(s_2(... s_k(t(q)))), with s_i(p) = p + d_i(p) and t the TPS.

    ``offset_fields``: (N, 2, h, w) displacements in pixels of their own map
    (:attr:`OffsetField.last_field`), in the order the encoder applies them; each map may
    have its own size. ``tps``: ``(TPSTransformer, displacements)`` or None. The result is
    in normalised coordinates (``align_corners=False``), on an H x W output grid, fp32.
    """
    fields = list(offset_fields)
    if tps is None and not fields:
        raise ValueError("composed_grid needs at least one offset field or a TPS")
    reference = tps[1] if tps is not None else fields[0]
    with _no_autocast(reference.device):
        if tps is not None:
            module, displacements = tps
            grid = tps_grid(displacements.float(), module.inverse_kernel, module.control_points, height, width)
        else:
            base = pixel_centres(height, width, device=reference.device)
            grid = base.unsqueeze(0).expand(reference.shape[0], -1, -1, -1)
        for field in reversed(fields):
            h, w = field.shape[-2:]
            scale = field.new_tensor([2.0 / w, 2.0 / h], dtype=torch.float32).view(1, 2, 1, 1)
            grid = grid + _sample(field.float() * scale, grid).permute(0, 2, 3, 1)
        return grid


def resample(features, grid):
    """``features`` (N, C, H, W) sampled at ``grid`` (N, H', W', 2), bilinear, border padding."""
    with _no_autocast(features.device):
        return _sample(features.float(), grid.float()).to(features.dtype)


class Deformation(nn.Module):
    """theta_T of DicycleGAN/DiCyc for one generator: offset fields and/or the latent TPS.

    Built from ``ResnetGenerator.warp_points`` (or the generator itself): one
    :class:`OffsetField` in front of ``stem``, ``down1``, ``down2`` and every residual
    block when ``offsets`` (2018), and a :class:`TPSTransformer` on the latent code when
    ``tps`` (2021). Held apart from the generator so the model file (synthesis) stays a
    plain CycleGAN generator; the deformed pass is ``G(x, warp=deformation.hook(t))``.
    """

    def __init__(self, warp_points, offsets=True, tps=True, grid_size=6, max_displacement=0.2,
                 offset_hidden=None, tps_hidden=None, offset_grid=None, offset_max_displacement=None):
        super().__init__()
        warp_points = list(getattr(warp_points, "warp_points", warp_points))
        self.offsets = nn.ModuleDict()
        if offsets:
            for name, channels, _stride in warp_points:
                if _is_offset_stage(name):
                    self.offsets[name] = OffsetField(channels, hidden=offset_hidden, grid=offset_grid,
                                                     max_displacement=offset_max_displacement)
        self.tps = None
        if tps:
            latent = [channels for name, channels, _ in warp_points if name == "latent"]
            if not latent:
                raise ValueError("tps=True needs a 'latent' warp point")
            self.tps = TPSTransformer(latent[0], grid_size=grid_size, max_displacement=max_displacement,
                                      hidden=tps_hidden)

    def reset_identity(self):
        """Zero every last layer (call after a blanket ``init_weights``)."""
        for field in self.offsets.values():
            field.reset_identity()
        if self.tps is not None:
            self.tps.reset_identity()
        return self

    def offset_parameters(self):
        """Parameters of the offset fields (DiCyc's M step trains them with the generator)."""
        return self.offsets.parameters()

    def tps_parameters(self):
        """Parameters of the TPS transformer (the only ones DiCyc's E step updates)."""
        return self.tps.parameters() if self.tps is not None else iter(())

    def hook(self, target_latent=None, use_offsets=True, use_tps=True):
        """The ``warp(stage, features)`` callable for ``ResnetGenerator.forward``.

        ``target_latent`` (the latent code of a target-domain image, same shape as the
        source's) is required when the TPS is in use. ``use_offsets``/``use_tps`` switch
        either part off for this pass.
        """
        apply_tps = use_tps and self.tps is not None
        if apply_tps and target_latent is None:
            raise ValueError("this Deformation has a TPS transformer: hook() needs target_latent")
        offsets = self.offsets if use_offsets else {}
        tps = self.tps

        def warp(stage, features):
            if stage in offsets:
                return offsets[stage](features)
            if stage == "latent" and apply_tps:
                return tps(features, target_latent)
            return features

        return warp
