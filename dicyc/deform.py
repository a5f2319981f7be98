"""Smooth displacement fields: the "scanner" deformations of the quality benchmark, and their tools.

BENCHMARKS.md §1 rebuilds the seed papers' protocol: every T2 volume is deformed by a smooth
nonlinear in-plane deformation drawn from one "scanner" distribution, PD stays undeformed, and
a synthesis is scored against ground truth in the source's geometry. This module provides

* :class:`ScannerDeformation` — the scanner distribution. Its draw for subject ``k`` is a fixed
  *systematic* component (drawn once from ``seed``: what every volume from this scanner shares)
  plus a per-subject *jitter* component (drawn from ``seed`` and ``k``). Both are smooth fields
  given on a coarse control grid (``grid`` x ``grid`` points over the slice plane) and
  interpolated to the volume with cubic splines. The field is **in-plane** (it moves voxels
  within their axial slice only) and, by default, **the same for every axial slice**
  (``grid_z=1``): the networks see 2-D axial slices, so what matters is a consistent 2-D
  distortion per slice; ``grid_z > 1`` makes it vary smoothly along z through ``grid_z`` control
  planes. ``magnitude_px`` is the largest displacement length anywhere on the volume's grid, in
  pixels of that grid, exactly.
* :func:`deform_volume` — resample a volume through a field onto its own grid (linear for images,
  nearest for masks).
* :func:`smooth_field` / :func:`interpolation_matrix` — cubic-spline interpolation of control
  values to a grid (separable, so a 3-D field costs a few matrix products), also used by
  :mod:`dicyc.phantom` for the pseudo-subjects' anatomical warps.
* :func:`jacobian_determinant` — det(I + grad u), to check that a field does not fold.

A field is a float32 array of shape ``(3, nz, ny, nx)``: the displacement, in voxels, along the
numpy axes (z, y, x) of the volume. It is a pull-back: ``out[p] = in[p + field[:, p]]``.
"""

import numpy as np

from dicyc.errors import DicycError
from dicyc.volume import Volume


# ===================================================================== control-grid interpolation
def interpolation_matrix(n, c):
    """The (n, c) matrix that interpolates ``c`` control values to ``n`` samples along one axis.

    Control point ``j`` sits at sample position ``j * (n - 1) / (c - 1)`` (first and last control
    points on the first and last samples); between them the interpolant is a cubic spline (quadratic
    for 3 points, linear for 2; constant for 1). Column ``j`` is the interpolant of the ``j``-th
    unit vector, so ``M @ values`` interpolates any control values.
    """
    from scipy import ndimage

    n, c = int(n), int(c)
    if n < 1 or c < 1:
        raise ValueError(f"need at least one sample and one control point; got n={n}, c={c}")
    if c == 1:
        return np.ones((n, 1))
    coords = np.linspace(0.0, c - 1.0, n)[None, :]
    order = min(3, c - 1)
    m = np.empty((n, c))
    for j in range(c):
        unit = np.zeros(c)
        unit[j] = 1.0
        m[:, j] = ndimage.map_coordinates(unit, coords, order=order, mode="mirror")
    return m


def smooth_field(control, shape):
    """Interpolate control values ``(C, c0, c1, c2)`` to a ``(C, *shape)`` float32 field.

    Each of the three axes uses :func:`interpolation_matrix`; the tensor-product spline is
    evaluated as three small matrix products, so even a full-resolution 3-D field is cheap.
    """
    control = np.asarray(control, dtype=np.float64)
    if control.ndim != 4:
        raise ValueError(f"control values need shape (C, c0, c1, c2); got {control.shape}")
    m0, m1, m2 = (interpolation_matrix(n, c) for n, c in zip(shape, control.shape[1:]))
    out = np.einsum("ai,Cijk->Cajk", m0, control)
    out = np.einsum("bj,Cajk->Cabk", m1, out)
    out = np.einsum("ck,Cabk->Cabc", m2, out)
    return out.astype(np.float32)


def jacobian_determinant(field):
    """det(I + grad u) at every voxel of a ``(3, nz, ny, nx)`` field (voxel units).

    Positive everywhere means the deformation does not fold; 1 means no local volume change.
    """
    field = np.asarray(field, dtype=np.float64)
    if field.ndim != 4 or field.shape[0] != 3:
        raise ValueError(f"a field has shape (3, nz, ny, nx); got {field.shape}")
    jac = np.empty(field.shape[1:] + (3, 3))
    for i in range(3):
        for j in range(3):
            d = np.gradient(field[i], axis=j) if field.shape[1 + j] > 1 else 0.0
            jac[..., i, j] = d + (1.0 if i == j else 0.0)
    return np.linalg.det(jac)


def field_magnitude(field):
    """Length of the displacement at every voxel (voxel units)."""
    field = np.asarray(field, dtype=np.float64)
    return np.sqrt(np.sum(field * field, axis=0))


# ===================================================================== warping a volume
def deform_volume(volume, field, interpolation="linear", fill=None):
    """``volume`` resampled through ``field`` on its own grid: ``out[p] = volume[p + field[:, p]]``.

    ``interpolation`` is ``"linear"`` (images; the result is float32) or ``"nearest"`` (masks and
    label maps; the dtype is kept). Samples falling outside the volume get ``fill`` (default: the
    volume's minimum, i.e. the background). The geometry is unchanged, so the result overlays
    every other volume on that grid voxel for voxel.
    """
    from scipy import ndimage

    field = np.asarray(field)
    if field.shape != (3,) + tuple(volume.shape):
        raise ValueError(f"field shape {field.shape} does not match the volume grid (3, {', '.join(map(str, volume.shape))})")
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"unknown interpolation {interpolation!r} (use 'linear' or 'nearest')")
    arr = np.asarray(volume.array)
    if fill is None:
        fill = float(arr.min()) if arr.size else 0.0
    order = 1 if interpolation == "linear" else 0
    src = arr.astype(np.float32) if order == 1 else arr
    coords = np.indices(arr.shape, dtype=np.float32)
    coords += field.astype(np.float32, copy=False)
    out = ndimage.map_coordinates(src, coords, order=order, mode="constant", cval=fill, prefilter=False)
    if order == 0:
        out = out.astype(arr.dtype, copy=False)
    return volume.with_array(out)


# ===================================================================== the scanner distribution
def _slice_axis(volume_or_shape):
    """(shape, numpy axis along which the axial slices are stacked)."""
    if isinstance(volume_or_shape, Volume):
        from dicyc.preprocess import canonical_axes

        itk_axis = canonical_axes(volume_or_shape.direction)[2][0]  # the image axis nearest S
        return tuple(volume_or_shape.shape), 2 - itk_axis
    shape = tuple(int(n) for n in volume_or_shape)
    if len(shape) != 3:
        raise ValueError(f"a volume shape has three numbers (nz, ny, nx); got {shape}")
    return shape, 0


class InPlaneDeformation:
    """A "scanner" distribution of smooth in-plane deformations: what its families share.

    A family draws, for subject ``k``, a 2-D displacement of the axial plane (:meth:`plane_field`,
    in pixels); this class lays it into a 3-D field along the volume's own slice axis, checks
    that it does not fold, and applies it. Every family has a systematic component (what all
    volumes of the scanner share, fixed by ``seed``) and a per-subject one.
    """

    #: the family's name in :data:`FAMILIES` and in the benchmarks' records
    family = ""

    def to_dict(self):
        raise NotImplementedError

    def plane_field(self, shape, axis, subject_index):
        """In-plane displacement (2, *shape'), in pixels, along the two in-plane numpy axes in order.

        ``shape'`` is ``shape`` with 1 along ``axis`` when the field is the same on every slice.
        """
        raise NotImplementedError

    def field_for(self, volume, subject_index):
        """The displacement field (3, nz, ny, nx), in voxels, for subject ``subject_index``.

        ``volume`` is a :class:`Volume` (its direction decides which axis is the slice axis) or a
        shape (nz, ny, nx) with axial slices along the first axis. The same index always gives the
        same field; the component along the slice axis is zero. Raises :class:`DicycError` if the
        deformation is too strong for this slice (the field would fold).
        """
        shape, axis = _slice_axis(volume)
        in_plane = [a for a in range(3) if a != axis]
        plane = self.plane_field(shape, axis, subject_index)
        full = np.zeros((3,) + tuple(plane.shape[1:]), dtype=np.float32)
        full[in_plane[0]] = plane[0]
        full[in_plane[1]] = plane[1]
        if self.magnitude_px > 0:
            det_min = float(jacobian_determinant(full).min())
            if det_min <= 0.05:
                raise DicycError(
                    f"a {self.magnitude_px:g}-pixel {self.describe()} folds on a "
                    f"{shape[in_plane[0]]}x{shape[in_plane[1]]} slice (smallest Jacobian determinant {det_min:.2f}); "
                    "use a smaller magnitude" + (" or a coarser grid." if self.family == "bspline" else ".")
                )
        if full.shape[1:] != shape:
            full = np.ascontiguousarray(np.broadcast_to(full, (3,) + shape))
        return full

    def describe(self):
        return f"{self.family} scanner deformation"

    def deform(self, volume, subject_index, interpolation="linear"):
        """``volume`` deformed with subject ``subject_index``'s field (see :func:`deform_volume`)."""
        return deform_volume(volume, self.field_for(volume, subject_index), interpolation=interpolation)

    def __repr__(self):
        return type(self).__name__ + "(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "family") + ")"


class ScannerDeformation(InPlaneDeformation):
    """The ``bspline`` family: smooth random local distortions on a coarse control grid.

    ``seed`` fixes the systematic component; ``magnitude_px`` is the largest displacement (pixels of
    the volume's grid) of every draw; ``grid`` is the number of control points along each in-plane
    axis (4: a 4 x 4 cubic B-spline-like grid spanning the slice); ``jitter`` weighs the
    per-subject component against the systematic one (0: every subject gets the same field;
    1: as much subject-specific as systematic deformation); ``grid_z`` control planes along the
    slice axis (1: the same 2-D field for every slice).

    Each component is drawn as independent standard-normal control displacements, interpolated to
    the grid and scaled to a largest length of 1; the subject's field is
    ``magnitude_px * u / max|u|`` with ``u = systematic + jitter * subject``.
    """

    family = "bspline"

    def __init__(self, seed=0, magnitude_px=6.0, grid=4, jitter=0.5, grid_z=1):
        self.seed = int(seed)
        self.magnitude_px = float(magnitude_px)
        self.grid = int(grid)
        self.jitter = float(jitter)
        self.grid_z = int(grid_z)
        if self.magnitude_px < 0:
            raise ValueError(f"magnitude_px must be >= 0; got {magnitude_px}")
        if self.grid < 2 or self.grid_z < 1:
            raise ValueError(f"need grid >= 2 and grid_z >= 1; got grid={grid}, grid_z={grid_z}")
        if self.jitter < 0:
            raise ValueError(f"jitter must be >= 0; got {jitter}")

    def to_dict(self):
        """The distribution's parameters as plain numbers (for a benchmark's config record)."""
        return {"family": self.family, "seed": self.seed, "magnitude_px": self.magnitude_px, "grid": self.grid,
                "jitter": self.jitter, "grid_z": self.grid_z}

    @classmethod
    def from_dict(cls, data):
        return cls(**{k: data[k] for k in ("seed", "magnitude_px", "grid", "jitter", "grid_z") if k in data})

    def describe(self):
        return f"scanner deformation on a {self.grid}x{self.grid} control grid"

    # ----------------------------------------------------------------- draws
    def _control(self, rng):
        """Standard-normal in-plane control displacements, shape (2, grid_z, grid, grid)."""
        return rng.standard_normal((2, self.grid_z, self.grid, self.grid))

    def _unit_plane_field(self, control, shape, axis):
        """Interpolated in-plane components (2, *shape') scaled to a largest length of 1.

        With ``grid_z == 1`` the field is computed on one slice (shape' has 1 along ``axis``) and
        broadcast later; otherwise on the whole grid.
        """
        # control is laid out (component, slice, first in-plane, second in-plane) in numpy order
        ctrl = np.moveaxis(control, 1, 1 + axis)
        work_shape = list(shape)
        if self.grid_z == 1:
            work_shape[axis] = 1
        u = smooth_field(ctrl, work_shape).astype(np.float64)
        biggest = float(field_magnitude(u).max())
        return u / biggest if biggest > 0 else u

    def plane_field(self, shape, axis, subject_index):
        u_sys = self._unit_plane_field(self._control(np.random.default_rng([self.seed, 0x5CA22E7])), shape, axis)
        subj_rng = np.random.default_rng([self.seed, 0x5CA22E7, 1 + int(subject_index)])
        u_sub = self._unit_plane_field(self._control(subj_rng), shape, axis)
        u = u_sys + self.jitter * u_sub
        biggest = float(field_magnitude(u).max())
        return u * (self.magnitude_px / biggest) if biggest > 0 else u * 0.0


class RadialDistortion(InPlaneDeformation):
    """The ``radial`` family: MR gradient non-linearity, a global barrel or pincushion distortion.

    Real MR scanners distort geometry away from the gradient isocentre, more the further from it
    (Doran et al., Phys. Med. Biol. 50:1343, 2005; Janke et al., MRM 52:115, 2004). Unlike the
    ``bspline`` family's local bumps, this is one global field, zero at the isocentre and largest
    at the edges of the field of view. With q = (p − c) / R (R half the larger in-plane size, c
    the isocentre):

        u(p) = s · R · (k₁ q₁, k₂ q₂) · |q|        (the two in-plane numpy axes)

    Its length grows with the square of the distance, a simplification: the scanners' own
    leading term is cubic, which at the sizes of this benchmark would move only the brain's rim.

    The scanner (``seed``) fixes the isocentre's offset from the slice centre (up to ±0.15 R per
    axis), the anisotropy k₁, k₂ ∈ [0.6, 1] and the sign s (barrel −1 or pincushion +1); each
    subject moves the isocentre by ``jitter`` · 0.1 R (standard deviation per axis) and scales
    k₁, k₂ by 1 + ``jitter`` · 0.2 · N(0, 1), as a head placed differently in the same scanner.
    ``magnitude_px`` is the largest displacement inside the central ellipse spanning 3/4 of the
    slice's width and height, where the anatomy is; the edges beyond it move more.
    """

    family = "radial"

    def __init__(self, seed=0, magnitude_px=4.0, jitter=0.5):
        self.seed = int(seed)
        self.magnitude_px = float(magnitude_px)
        self.jitter = float(jitter)
        if self.magnitude_px < 0:
            raise ValueError(f"magnitude_px must be >= 0; got {magnitude_px}")
        if self.jitter < 0:
            raise ValueError(f"jitter must be >= 0; got {jitter}")

    def to_dict(self):
        return {"family": self.family, "seed": self.seed, "magnitude_px": self.magnitude_px, "jitter": self.jitter}

    @classmethod
    def from_dict(cls, data):
        return cls(**{k: data[k] for k in ("seed", "magnitude_px", "jitter") if k in data})

    def plane_field(self, shape, axis, subject_index):
        rng = np.random.default_rng([self.seed, 0x4AD1A1])
        centre = rng.uniform(-0.15, 0.15, 2)
        k = rng.uniform(0.6, 1.0, 2)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        sub = np.random.default_rng([self.seed, 0x4AD1A1, 1 + int(subject_index)])
        centre = centre + self.jitter * 0.1 * sub.standard_normal(2)
        k = k * (1.0 + self.jitter * 0.2 * sub.standard_normal(2))
        in_plane = [a for a in range(3) if a != axis]
        n = np.array([shape[a] for a in in_plane], dtype=np.float64)
        radius = n.max() / 2.0
        idx = [np.arange(m, dtype=np.float64) for m in n]
        q = [(i - (m - 1) / 2.0) / radius - c for i, m, c in zip(idx, n, centre)]
        q1, q2 = np.meshgrid(q[0], q[1], indexing="ij")
        r = np.sqrt(q1 * q1 + q2 * q2)
        u = np.stack((sign * k[0] * q1 * r, sign * k[1] * q2 * r))
        # the central ellipse over 3/4 of the slice, where the anatomy is
        e1, e2 = np.meshgrid((idx[0] - (n[0] - 1) / 2.0) / (0.375 * n[0]), (idx[1] - (n[1] - 1) / 2.0) / (0.375 * n[1]),
                             indexing="ij")
        inside = e1 * e1 + e2 * e2 <= 1.0
        biggest = float(np.sqrt((u * u).sum(0))[inside].max())
        u = u * (self.magnitude_px / biggest) if biggest > 0 else u * 0.0
        plane_shape = [1, 1, 1]
        for a, m in zip(in_plane, n):
            plane_shape[a] = int(m)
        return u.reshape((2, *plane_shape))


#: the scanner-deformation families of the quality benchmark, by name
FAMILIES = {cls.family: cls for cls in (ScannerDeformation, RadialDistortion)}


def scanner_deformation(family="bspline", **params):
    """A family's distribution by name (``params`` as its constructor takes them)."""
    try:
        cls = FAMILIES[family]
    except KeyError:
        raise DicycError(f"unknown deformation family {family!r}; choose one of {', '.join(FAMILIES)}.") from None
    return cls(**params)


def deformation_from_dict(data):
    """The distribution a ``to_dict()`` record describes (``bspline`` when it names no family)."""
    return FAMILIES[data.get("family", "bspline")].from_dict(data)
