"""Geometry apart from intensity: how far a synthesis has moved from its source's geometry.

Why: SSIM against a ground truth mixes two failures, a wrong appearance and a wrong geometry.
DiCyc exists for the second: a CycleGAN that reproduces a domain's deformation moves anatomy
away from where its source has it. To tell the two apart, the synthesis is registered to a
same-modality reference that sits in the source's geometry (its ground truth), and the
displacement that registration needs is the geometric error, whatever the contrast.

* :func:`displacement_field` -- a dense deformable registration: intensities matched by
  histogram, then SimpleITK's symmetric-forces demons (Vercauteren et al., NeuroImage 2009),
  which suits two images of one modality and is fast on benchmark-sized volumes.
* :func:`geometry_scores` -- inside a mask: the mean length of that displacement in mm and,
  when the domain's own deformation is known (the quality benchmark's scanner fields), the
  fraction of it the synthesis reproduced: the projection of the found displacement onto the
  known field, 1 for a synthesis that carries the full deformation and 0 for one aligned with
  its source.

* :func:`outline_dice` -- a cruder measure that survives a poor appearance, which registration
  does not: the Dice of the synthesis' outline (Otsu threshold, holes filled) with a mask. Set
  against the source's mask and the other domain's mask, it says which geometry the synthesis
  follows.

Fields are numpy arrays (3, nz, ny, nx) in voxels along the numpy axes, pull-backs as in
:mod:`dicyc.deform`: ``reference[p + u(p)]`` matches ``synthesis[p]``.
"""

import numpy as np

#: demons settings: enough iterations to converge on benchmark volumes; the Gaussian (voxels)
#: that regularises the field keeps it as smooth as the deformations being measured
DEMONS_ITERATIONS = 100
DEMONS_SIGMA_VOXELS = 2.0
HISTOGRAM_LEVELS = 64
HISTOGRAM_MATCH_POINTS = 7


def displacement_field(fixed, moving, iterations=DEMONS_ITERATIONS, sigma_voxels=DEMONS_SIGMA_VOXELS):
    """The displacement u (3, nz, ny, nx), in voxels, with ``moving[p + u(p)] ≈ fixed[p]``.

    ``fixed`` and ``moving`` are arrays on one grid, 3-D (or 2-D: then u is (2, ny, nx)). ``moving``'s intensities are first matched
    to ``fixed``'s histogram (so any monotone change of contrast between them costs nothing),
    then the symmetric-forces demons estimate u, smoothed by a Gaussian of ``sigma_voxels``.
    """
    import SimpleITK as sitk

    fixed = np.asarray(fixed, dtype=np.float32)
    moving = np.asarray(moving, dtype=np.float32)
    if fixed.shape != moving.shape or fixed.ndim not in (2, 3):
        raise ValueError(f"need two 2-D or 3-D arrays on one grid; got {fixed.shape} and {moving.shape}")
    f = sitk.GetImageFromArray(fixed)
    m = sitk.GetImageFromArray(moving)
    m = sitk.HistogramMatching(m, f, HISTOGRAM_LEVELS, HISTOGRAM_MATCH_POINTS, True)
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(int(iterations))
    demons.SetStandardDeviations(float(sigma_voxels))
    field = sitk.GetArrayFromImage(demons.Execute(f, m))  # (nz, ny, nx, 3), components (x, y, z) in ITK order
    return np.ascontiguousarray(np.moveaxis(field[..., ::-1], -1, 0)).astype(np.float32)


def _zscore(array, mask):
    values = array[mask]
    sd = float(values.std())
    return (array - float(values.mean())) / (sd if sd > 0 else 1.0)


def geometry_scores(synthesis, reference, mask, spacing=(1.0, 1.0, 1.0), known_field=None, sign=1.0):
    """Geometric error of ``synthesis`` against ``reference`` (same modality, source geometry).

    ``synthesis``, ``reference`` and ``mask`` (bool) are arrays on one grid; ``spacing`` is the
    voxel size (x, y, z) in mm. Both images are z-scored inside the mask and the background is set
    to 0, so only the anatomy drives the registration. Returns a dict:

    * ``displacement_mm`` -- mean length of the displacement inside the mask, in mm;
    * ``reproduced`` (with ``known_field``, a (3, nz, ny, nx) field in voxels) -- the fraction of
      ``sign * known_field`` the synthesis carries: ⟨u, sign·φ⟩ / ⟨φ, φ⟩ over the mask. Use
      ``sign`` +1 when reproducing the domain's deformation means applying φ (a synthesis into
      the deformed domain) and −1 when it means undoing it (out of the deformed domain).
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("the mask is empty")
    fixed = _zscore(np.asarray(synthesis, dtype=np.float64), mask) * mask
    moving = _zscore(np.asarray(reference, dtype=np.float64), mask) * mask
    u = displacement_field(fixed, moving)
    sp = np.asarray(spacing, dtype=np.float64)[::-1].reshape(3, 1, 1, 1)  # (z, y, x) order
    length = np.sqrt(((u * sp) ** 2).sum(axis=0))
    out = {"displacement_mm": float(length[mask].mean())}
    if known_field is not None:
        phi = np.asarray(known_field, dtype=np.float64)
        if phi.shape != u.shape:
            raise ValueError(f"the known field {phi.shape} does not match the grid {u.shape}")
        norm = float((phi * phi).sum(axis=0)[mask].sum())
        out["reproduced"] = float(sign * (u * phi).sum(axis=0)[mask].sum() / norm) if norm > 0 else 0.0
    return out


def otsu_threshold(values, bins=256):
    """Otsu's threshold of a sample of intensities: the one maximising the between-class variance."""
    values = np.asarray(values, dtype=np.float64).ravel()
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def outline(image):
    """The foreground of ``image``: above its Otsu threshold, holes filled slice by slice."""
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float64)
    fg = image > otsu_threshold(image)
    return np.stack([ndimage.binary_fill_holes(s) for s in fg]) if fg.ndim == 3 else ndimage.binary_fill_holes(fg)


def outline_dice(image, mask):
    """Dice of ``image``'s outline (:func:`outline`) with ``mask``."""
    fg = outline(image)
    mask = np.asarray(mask, dtype=bool)
    total = fg.sum() + mask.sum()
    return float(2.0 * (fg & mask).sum() / total) if total else 1.0
