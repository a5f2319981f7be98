"""Mathematics of DicycleGAN's offset fields and DiCyc's TPS transformer (dicyc.nets.warps).

Identity at zero (so the deformed pass starts equal to the undeformed one), exact pixel
shifts, the thin-plate spline interpolating its control points, parameter sharing between
the two passes, and gradients reaching the deformation parameters.
"""

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from dicyc.nets import build_generator  # noqa: E402
from dicyc.nets.warps import (  # noqa: E402
    Deformation,
    OffsetField,
    TPSTransformer,
    composed_grid,
    pixel_centres,
    resample,
    tps_control_points,
    tps_grid,
    tps_inverse_kernel,
    tps_kernel_matrix,
    tps_radial_basis,
    tps_transform_points,
    warp_image,
)


def identity_grid(n, h, w):
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(n, 2, 3)
    return F.affine_grid(theta, (n, 1, h, w), align_corners=False)


def tiny_generator():
    torch.manual_seed(0)
    return build_generator({"ngf": 4, "n_blocks": 2})


# --- warp_image ------------------------------------------------------------------------


def test_pixel_centres_match_affine_grid():
    for h, w in [(8, 8), (12, 20), (5, 7)]:
        assert torch.allclose(pixel_centres(h, w)[None], identity_grid(1, h, w), atol=1e-6)


@pytest.mark.parametrize("shape", [(16, 16), (32, 64), (8, 4)])
def test_zero_displacement_is_exact_identity(shape):
    torch.manual_seed(1)
    x = torch.randn(2, 3, *shape) * 4
    y = warp_image(x, torch.zeros(2, 2, *shape))
    assert torch.allclose(y, x, atol=1e-6, rtol=0)


def test_integer_shift_moves_one_pixel():
    torch.manual_seed(2)
    x = torch.randn(1, 2, 16, 32)
    dx = torch.zeros(1, 2, 16, 32)
    dx[:, 0] = 1.0  # sample one pixel to the right: content moves one pixel left
    y = warp_image(x, dx)
    assert torch.allclose(y[..., :-1], x[..., 1:], atol=1e-6, rtol=0)
    assert torch.allclose(y[..., -1], x[..., -1], atol=1e-6, rtol=0)  # border padding
    dy = torch.zeros(1, 2, 16, 32)
    dy[:, 1] = -1.0
    y = warp_image(x, dy)
    assert torch.allclose(y[..., 1:, :], x[..., :-1, :], atol=1e-6, rtol=0)


def test_half_pixel_shift_is_bilinear_mean():
    x = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 4, 8).contiguous()
    d = torch.zeros(1, 2, 4, 8)
    d[:, 0] = 0.5
    y = warp_image(x, d)
    assert torch.allclose(y[..., :-1], x[..., :-1] + 0.5, atol=1e-6)


def test_warp_image_rejects_bad_shapes():
    with pytest.raises(ValueError):
        warp_image(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError):
        warp_image(torch.zeros(1, 1, 8, 8), torch.zeros(1, 3, 8, 8))


# --- OffsetField -----------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [None, 4])
def test_offset_field_starts_as_identity(hidden):
    torch.manual_seed(3)
    layer = OffsetField(3, hidden=hidden)
    x = torch.randn(2, 3, 16, 16)
    y = layer(x)
    assert torch.equal(layer.last_field, torch.zeros(2, 2, 16, 16))
    assert torch.allclose(y, x, atol=1e-6, rtol=0)


def test_offset_field_shares_one_field_across_channels():
    torch.manual_seed(4)
    layer = OffsetField(2)
    with torch.no_grad():
        layer.body[-1].bias.copy_(torch.tensor([1.0, 0.0]))  # constant dx = 1 pixel
    x = torch.randn(1, 2, 8, 16)
    y = layer(x)
    assert torch.allclose(y[..., :-1], x[..., 1:], atol=1e-6)  # both channels moved alike


def test_offset_field_on_a_grid_is_smooth_and_bounded():
    """``grid`` makes the field piecewise bilinear on a coarse lattice; ``max_displacement`` caps it."""
    torch.manual_seed(5)
    free = OffsetField(3)
    smooth = OffsetField(3, grid=4, max_displacement=0.25)
    for layer in (free, smooth):  # the same large random last layer for both
        torch.manual_seed(6)
        torch.nn.init.normal_(layer.body[-1].weight, std=3.0)
        torch.nn.init.normal_(layer.body[-1].bias, std=3.0)
        layer.body[0].load_state_dict(free.body[0].state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        rough, fine = free.field(x), smooth.field(x)

    def roughness(f):
        return float((f[..., 1:, :] - f[..., :-1, :]).abs().mean() + (f[..., 1:] - f[..., :-1]).abs().mean())

    assert roughness(fine) < 0.25 * roughness(rough)
    assert float(fine.abs().max()) < 0.25 * 32 / 2 and float(rough.abs().max()) > 0.25 * 32 / 2
    # a map no larger than the grid is left as predicted (only bounded)
    small = torch.randn(1, 3, 4, 4)
    bound = 0.25 * 4 / 2
    with torch.no_grad():
        assert torch.allclose(smooth.field(small), bound * torch.tanh(smooth.body(small) / bound))


def test_offset_field_options_keep_the_identity_start_and_refuse_nonsense():
    layer = OffsetField(2, grid=8, max_displacement=0.1)
    x = torch.randn(1, 2, 16, 16)
    assert torch.allclose(layer(x), x, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="grid"):
        OffsetField(2, grid=0)
    with pytest.raises(ValueError, match="max_displacement"):
        OffsetField(2, max_displacement=0.0)


# --- thin-plate spline -----------------------------------------------------------------


def test_control_grid_and_kernel():
    cp = tps_control_points(6)
    assert cp.shape == (36, 2)
    assert cp.min() == -1 and cp.max() == 1
    assert torch.equal(cp[1], torch.tensor([-0.6, -1.0]))  # row-major, (x, y)
    basis = tps_radial_basis(cp, cp)
    assert torch.equal(torch.diagonal(basis), torch.zeros(36))  # U(0) = 0
    r2 = torch.tensor(0.5)
    u = tps_radial_basis(torch.tensor([[0.5, 0.5]]), torch.zeros(1, 2))[0, 0]
    assert torch.isclose(u, r2 * torch.log(r2))
    L = tps_kernel_matrix(cp)
    assert L.shape == (39, 39) and torch.allclose(L, L.t())
    inv = tps_inverse_kernel(cp)
    assert torch.allclose(inv @ L, torch.eye(39, dtype=inv.dtype), atol=1e-9)


def test_tps_zero_displacement_is_identity_grid():
    cp = tps_control_points(6)
    inv = tps_inverse_kernel(cp)
    grid = tps_grid(torch.zeros(2, 36, 2), inv, cp, 12, 20)
    assert grid.shape == (2, 12, 20, 2) and grid.dtype == torch.float32
    assert torch.allclose(grid, identity_grid(2, 12, 20), atol=1e-5)


def test_tps_passes_through_its_control_points():
    torch.manual_seed(5)
    cp = tps_control_points(6)
    inv = tps_inverse_kernel(cp)
    d = (torch.rand(3, 36, 2) * 2 - 1) * 0.3
    mapped = tps_transform_points(cp, d, inv, cp)
    assert torch.allclose(mapped, cp + d, atol=1e-5, rtol=0)
    # A pure translation is reproduced everywhere by the affine part, not only at p_k.
    shift = torch.tensor([0.1, -0.05]).expand(1, 36, 2)
    pts = torch.rand(50, 2) * 2 - 1
    assert torch.allclose(tps_transform_points(pts, shift, inv, cp), pts + shift[:, :1], atol=1e-6)


def test_tps_grid_samples_control_point_from_displaced_location():
    # On an 11x11 map with align_corners=False, pixel centres hit no control point, so
    # check the grid via the points-map on the grid's own coordinates instead.
    torch.manual_seed(6)
    cp = tps_control_points(6)
    inv = tps_inverse_kernel(cp)
    d = (torch.rand(1, 36, 2) * 2 - 1) * 0.2
    grid = tps_grid(d, inv, cp, 11, 13)
    direct = tps_transform_points(pixel_centres(11, 13).reshape(-1, 2), d, inv, cp).view(1, 11, 13, 2)
    assert torch.allclose(grid, direct, atol=1e-6)


def test_tps_transformer_starts_as_identity_and_is_bounded():
    torch.manual_seed(7)
    tps = TPSTransformer(8, grid_size=6, max_displacement=0.2)
    latent, target = torch.randn(2, 8, 16, 16), torch.randn(2, 8, 16, 16)
    y = tps(latent, target)
    assert torch.equal(tps.last_displacements, torch.zeros(2, 36, 2))
    assert torch.allclose(y, latent, atol=1e-6, rtol=0)
    with torch.no_grad():
        tps.head.bias.fill_(100.0)
    tps(latent, target)
    assert tps.last_displacements.abs().max() <= 0.2 + 1e-6
    with pytest.raises(ValueError):
        tps(latent, torch.randn(2, 8, 8, 8))


# --- Deformation on a generator ----------------------------------------------------------


def test_deformation_structure():
    g = tiny_generator()
    deform = Deformation(g)
    assert list(deform.offsets.keys()) == ["stem", "down1", "down2", "block0", "block1"]
    assert deform.tps is not None and deform.tps.channels == 16
    assert len(list(deform.offset_parameters())) > 0 and len(list(deform.tps_parameters())) > 0
    ids = {id(p) for p in deform.parameters()}
    assert ids == {id(p) for p in deform.offset_parameters()} | {id(p) for p in deform.tps_parameters()}
    assert not ids & {id(p) for p in g.parameters()}  # theta_T is apart from theta
    with pytest.raises(ValueError, match="target_latent"):
        deform.hook()


def test_encode_is_the_latent_seen_by_the_hook():
    g = tiny_generator()
    x = torch.randn(2, 1, 32, 32)
    seen = {}

    def spy(stage, feats):
        seen[stage] = feats
        return feats

    with torch.no_grad():
        g(x, warp=spy)
        z = g.encode(x)
    assert z.shape == (2, 16, 8, 8)
    assert torch.allclose(z, seen["latent"], atol=1e-6, rtol=0)


def test_deformed_and_undeformed_passes_share_parameters():
    g = tiny_generator()
    deform = Deformation(g)
    torch.manual_seed(8)
    x, target = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        hook = deform.hook(g.encode(target))
        plain, deformed = g(x), g(x, warp=hook)
        assert torch.allclose(plain, deformed, atol=1e-6, rtol=0)
        torch.nn.init.normal_(deform.offsets["down1"].body[-1].weight, 0.0, 0.5)
        moved = g(x, warp=hook)
    assert (moved - plain).abs().max() > 1e-3
    # The undeformed pass never touches theta_T.
    with torch.no_grad():
        assert torch.equal(g(x), plain)


def test_gradients_reach_offset_and_tps_parameters():
    g = tiny_generator()
    deform = Deformation(g)
    torch.manual_seed(9)
    x, target = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    y = g(x, warp=deform.hook(g.encode(target)))
    (y - torch.randn_like(y)).pow(2).mean().backward()
    for name, field in deform.offsets.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in field.parameters()), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in deform.tps_parameters())
    assert all(p.grad is not None for p in g.parameters())


def test_offsets_only_deformation_needs_no_target():
    g = tiny_generator()
    deform = Deformation(g.warp_points, offsets=True, tps=False)
    assert deform.tps is None and list(deform.tps_parameters()) == []
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(g(x, warp=deform.hook()), g(x), atol=1e-6, rtol=0)


def test_tps_only_and_switches():
    g = tiny_generator()
    deform = Deformation(g, offsets=False, tps=True)
    assert len(deform.offsets) == 0
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        # With the TPS switched off for a pass, no target is needed.
        assert torch.allclose(g(x, warp=deform.hook(use_tps=False)), g(x), atol=1e-6, rtol=0)


def test_reset_identity_after_blanket_init():
    from dicyc.nets import init_weights

    g = tiny_generator()
    deform = init_weights(Deformation(g, tps=False))
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        deform.reset_identity()
        assert torch.allclose(g(x, warp=deform.hook()), g(x), atol=1e-6, rtol=0)


# --- the composed warp of a deformed pass ------------------------------------------------


def _smooth_image(n, size):
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = torch.sin(3.0 * xs + 1.0) * torch.cos(2.0 * ys) + 0.5 * xs * ys
    return image.expand(n, 1, size, size).clone()


def _smooth_field(n, size, ax, ay, phase):
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    dx = ax * torch.sin(2.0 * ys + phase)
    dy = ay * torch.cos(2.5 * xs - phase)
    return torch.stack((dx, dy)).expand(n, 2, size, size).clone()


def test_composed_grid_converts_each_field_from_its_own_pixels():
    """A 1-pixel field on a 16-pixel map moves a 32-pixel output by 2 pixels (0.125 normalised)."""
    field = torch.zeros(1, 2, 16, 16)
    field[:, 0] = 1.0
    grid = composed_grid(32, 32, [field])
    expected = pixel_centres(32, 32) + torch.tensor([0.125, 0.0])
    assert grid.shape == (1, 32, 32, 2)
    assert torch.allclose(grid[0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="at least one offset field or a TPS"):
        composed_grid(8, 8)


def test_composed_grid_is_the_warps_applied_in_turn_last_one_first():
    """Offset warps then a TPS, applied one after another, equal one resampling through the composed grid.

    Warps are backward maps, so the order matters: composing the fields the other way round
    gives a visibly worse match, which is what makes this test able to fail.
    """
    torch.manual_seed(0)
    n, size = 2, 64
    image = _smooth_image(n, size)
    d1 = _smooth_field(n, size, 3.0, -2.0, 0.3)
    d2 = _smooth_field(n, size // 2, -1.5, 2.0, 1.1)  # a half-resolution map, in its own pixels
    tps = TPSTransformer(4, grid_size=4, max_displacement=0.3)
    displacements = 0.15 * torch.randn(n, tps.n_control, 2)
    d2_full = F.interpolate(d2 * 2.0, size=(size, size), mode="bilinear", align_corners=False)
    in_turn = warp_image(warp_image(image, d1), d2_full)
    in_turn = F.grid_sample(in_turn, tps_grid(displacements, tps.inverse_kernel, tps.control_points, size, size),
                            mode="bilinear", padding_mode="border", align_corners=False)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    once = resample(image, composed_grid(size, size, [d1, d2], (tps, displacements)))
    swapped = resample(image, composed_grid(size, size, [d2, d1], (tps, displacements)))
    error = (once - in_turn)[inner].abs().mean()
    assert error < 1e-3  # bilinear resampling's own error on a smooth image
    assert (swapped - in_turn)[inner].abs().mean() > 10 * error
