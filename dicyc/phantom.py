"""Multi-sequence brain phantom: PD-, T2- and T1-weighted spin-echo volumes from real MNI152 anatomy.

Why: the seed papers measured synthesis quality on IXI PD/T2 pairs, which cannot be had here. Same-
subject ground truth is rebuilt from the MNI152 2009a template and its tissue probability maps
(``dicyc samples mni-t1 mni-gm mni-wm``; Fonov et al., NeuroImage 2011) in the way BrainWeb builds
its simulated database: tissue fractions, the spin-echo signal equation with published relaxation
parameters, a smooth intensity non-uniformity (INU) and Rician noise.

Tissue fractions (1 mm, then resampled to the cohort's spacing)
    * **brain region** ``B``: the template's own brain mask, i.e. the voxels where the skull-stripped
      MNI T1 is non-zero (its holes filled). It holds the brain with its sulcal and ventricular CSF
      and a thin rim of outer CSF.
    * **GM**, **WM**: the probability maps (stored 0-255 = 0-1) inside ``B``, scaled down where
      their sum exceeds 1 (partial volume never exceeds one voxel).
    * **CSF** = ``B - GM - WM`` (clipped at 0): whatever of the brain region is neither grey nor
      white matter — the ventricles, sulci and the outer rim. Background is 0 in every map.
    Before resampling the maps are smoothed with a Gaussian whose FWHM matches the new voxel
    (anti-aliasing), so a coarse voxel holds the partial-volume mixture of its 1 mm voxels.

Signal
    Spin echo, per tissue ``t``: ``S_t = PD_t * (1 - exp(-TR/T1_t)) * exp(-TE/T2_t)``; a voxel's
    signal is the sum of ``S_t`` weighted by its tissue fractions (fully relaxed pure PD = 1000).

Pseudo-subjects (subject ``k``, random generator seeded with ``[seed, k]``)
    * anatomy: a smooth random 3-D displacement (cubic spline through standard-normal control
      displacements every ~32 mm, ``warp_mm`` = 2 mm standard deviation per component: inside the
      brain about 2.8 mm RMS and up to ~7 mm, Jacobian determinant ~0.55 ... 1.5, no folding) applied
      to the tissue fractions; the brain mask is the warped brain region >= 0.5.
    * contrast: every tissue's T1, T2 and PD multiplied by its own factor, uniform in ``1 ± jitter``.
    * one multiplicative INU field per subject, shared by its three sequences (like a receive-coil
      sensitivity in one session): a random second-order polynomial mapped linearly onto the range
      ``1 ± inu/2`` over the brain (BrainWeb's convention: "20 % INU" spans 0.90 ... 1.10).
    * independent Rician noise per sequence: ``|S + n_re + i n_im|`` with ``n ~ N(0, sigma^2)``,
      ``sigma = noise * S_ref`` where ``S_ref`` is the subject's pure-tissue signal of BrainWeb's
      noise reference tissue (white matter for T1-weighted, CSF for T2- and PD-weighted).
    The three sequences of a subject share one anatomy: pixel-aligned ground truth for each other.

Outputs of :func:`make_cohort`: ``sub-XX_{pd,t2,t1}.nii.gz`` (int16: the signal rounded, as a scanner
stores it; the noise sigma is 10 or more units), ``sub-XX_{pd,t2,t1}_clean.nii.gz`` (float32: the
same signal without noise and INU, the ground truth a synthesis is scored against as well),
``sub-XX_mask.nii.gz`` (uint8), ``cohort.json`` (parameters, split, seeds, per-subject tissue
parameters and noise sigma) and list files ``{train,test}_{pd,t2,t1,...,mask}.txt`` (absolute paths,
one per line) for ``dicyc train --a``.
"""

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from dicyc import cohort
from dicyc.volume import Volume, read_volume

#: Bumped whenever the simulation changes, so that cached cohorts are rebuilt.
PHANTOM_VERSION = 3

TISSUES = ("csf", "gm", "wm")

# Tissue parameters at 1.5 T: BrainWeb's published values for its normal-brain phantom
# (T1 and T2 in ms, PD relative to CSF = 1), as used to simulate BrainWeb's Simulated Brain Database:
#   R.K.-S. Kwan, A.C. Evans, G.B. Pike, "MRI simulation-based evaluation of image-processing and
#   classification methods", IEEE Trans. Med. Imaging 18(11):1085-1097, 1999;
#   C.A. Cocosco, V. Kollokian, R.K.-S. Kwan, A.C. Evans, "BrainWeb: online interface to a 3D MRI
#   simulated brain database", NeuroImage 5(4):S425, 1997;
#   D.L. Collins et al., "Design and construction of a realistic digital brain phantom",
#   IEEE Trans. Med. Imaging 17(3):463-468, 1998 (the fuzzy tissue model these values drive).
#        tissue   T1 (ms)  T2 (ms)  PD
TISSUE_PARAMS = {
    "csf": {"t1": 2569.0, "t2": 329.0, "pd": 1.00},
    "gm": {"t1": 833.0, "t2": 83.0, "pd": 0.86},
    "wm": {"t1": 500.0, "t2": 70.0, "pd": 0.77},
}

# Spin-echo sequences (TR, TE in ms). PD- and T2-weighted: the two echoes of BrainWeb's SBD dual-echo
# spin-echo protocol (TR 3300 ms; early echo TE 35 ms = PD-weighted, late echo TE 120 ms =
# T2-weighted; Cocosco et al. 1997, BrainWeb SBD pages). T1-weighted: a conventional short-TR/short-TE
# spin echo (TR 500 ms, TE 15 ms) — BrainWeb's own T1 volumes use a spoiled gradient echo, which the
# spin-echo equation here does not model. With the values above the pure-tissue signals order as
# PD-w: CSF > GM > WM; T2-w: CSF > GM > WM; T1-w: WM > GM > CSF.
SEQUENCES = {
    "pd": {"tr": 3300.0, "te": 35.0, "noise_reference": "csf"},
    "t2": {"tr": 3300.0, "te": 120.0, "noise_reference": "csf"},
    "t1": {"tr": 500.0, "te": 15.0, "noise_reference": "wm"},
}

#: Fully relaxed pure proton density (PD = 1) maps to this intensity.
SIGNAL_SCALE = 1000.0

# Defaults of the simulation (see the module docstring). noise: BrainWeb's default SBD noise level
# (3 % of the reference tissue); inu: BrainWeb's 20 % INU level (0.90 ... 1.10 over the brain).
DEFAULTS = {"noise": 0.03, "inu": 0.20, "jitter": 0.05, "warp_mm": 2.0, "warp_grid_mm": 32.0}


# ===================================================================== signal equation
def tissue_signal(params, tr, te):
    """Spin-echo signal of one pure tissue: PD (1 - exp(-TR/T1)) exp(-TE/T2), times SIGNAL_SCALE."""
    return SIGNAL_SCALE * params["pd"] * (1.0 - np.exp(-tr / params["t1"])) * np.exp(-te / params["t2"])


def spin_echo(fractions, tissue_params, tr, te):
    """Noise-free signal: the tissue fractions (dict of arrays) weighted by each tissue's signal."""
    out = None
    for tissue in TISSUES:
        term = np.float32(tissue_signal(tissue_params[tissue], tr, te)) * np.asarray(fractions[tissue], np.float32)
        out = term if out is None else out + term
    return out


def rician(signal, sigma, rng):
    """Magnitude of the signal plus complex Gaussian noise of standard deviation ``sigma`` per channel."""
    signal = np.asarray(signal, dtype=np.float32)
    if sigma <= 0:
        return signal.copy()
    re = signal + rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    im = rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    return np.hypot(re, im)


# ===================================================================== template
class Template:
    """The MNI152 tissue fractions on one grid: ``grid`` (a Volume geometry) and ``fractions``."""

    def __init__(self, grid, fractions, brain):
        self.grid = grid  # a Volume whose array is the brain fraction
        self.fractions = fractions  # {"csf", "gm", "wm"}: float32 arrays on the grid
        self.brain = brain  # float32 brain-region fraction (>= 0.5: the brain mask)


def _smooth_resample(volume, spacing):
    """Gaussian anti-aliasing (FWHM of the new voxel) then linear resampling to ``spacing``."""
    import SimpleITK as sitk

    from dicyc.preprocess import resample_to_spacing

    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    sigmas = [float(np.sqrt(max(t * t - s * s, 0.0)) / 2.3548) for s, t in zip(volume.spacing, spacing)]
    if max(sigmas) > 0:
        image = sitk.SmoothingRecursiveGaussian(image, sigmas)
    smooth = Volume.from_sitk(image)
    return resample_to_spacing(smooth, spacing, interpolation="linear", default_value=0.0)


def load_template(spacing=1.8, log=None):
    """The MNI152 tissue fractions (CSF, GM, WM) and brain region at ``spacing`` mm isotropic."""
    from scipy import ndimage

    from dicyc.samples import prepare

    paths = prepare(["mni-t1", "mni-gm", "mni-wm"], log=log or (lambda message: None))
    t1 = read_volume(paths["mni-t1"])
    gm = read_volume(paths["mni-gm"]).array.astype(np.float32) / 255.0
    wm = read_volume(paths["mni-wm"]).array.astype(np.float32) / 255.0
    brain = ndimage.binary_fill_holes(t1.array > 0).astype(np.float32)
    gm *= brain
    wm *= brain
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    spacing = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    maps = {}
    for name, arr in (("brain", brain), ("gm", gm), ("wm", wm)):
        res = _smooth_resample(t1.with_array(arr), spacing)
        a = np.clip(res.array.astype(np.float32), 0.0, 1.0)
        a[a < 1e-3] = 0.0  # the recursive Gaussian's far tails: exactly empty background
        maps[name] = a
    grid = res.with_array(maps["brain"])
    fractions = {"gm": maps["gm"], "wm": maps["wm"], "csf": np.clip(maps["brain"] - maps["gm"] - maps["wm"], 0.0, 1.0)}
    return Template(grid, fractions, maps["brain"])


# ===================================================================== one subject
def _anatomical_warp(shape, spacing, rng, warp_mm, warp_grid_mm):
    """Smooth random 3-D displacement (3, *shape) in voxels: cubic spline through control points."""
    from dicyc.deform import smooth_field

    # spacing is (x, y, z); numpy axes are (z, y, x)
    sp = np.array(spacing[::-1], dtype=float)
    ctrl_shape = [max(2, int(np.ceil(n * s / warp_grid_mm)) + 1) for n, s in zip(shape, sp)]
    control = rng.standard_normal((3, *ctrl_shape)) * (warp_mm / sp)[:, None, None, None]
    return smooth_field(control, shape)


def _warp(array, coords):
    from scipy import ndimage

    return ndimage.map_coordinates(array, coords, order=1, mode="constant", cval=0.0, prefilter=False)


def _inu_field(shape, brain_mask, rng, level):
    """Multiplicative INU: a random 2nd-order polynomial mapped onto 1 ± level/2 over the brain."""
    if level <= 0:
        return np.ones(shape, dtype=np.float32)
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    coef = rng.standard_normal(len(terms))
    p = np.zeros(shape, dtype=np.float32)
    for c, t in zip(coef, terms):
        p += np.float32(c) * t
    inside = p[brain_mask] if brain_mask.any() else p.ravel()
    lo, hi = float(inside.min()), float(inside.max())
    if hi <= lo:
        return np.ones(shape, dtype=np.float32)
    return (1.0 + level * ((p - lo) / (hi - lo) - 0.5)).astype(np.float32)


def jittered_params(rng, jitter):
    """Every tissue's T1, T2 and PD times its own factor, uniform in [1 - jitter, 1 + jitter]."""
    return {t: {k: float(v * rng.uniform(1.0 - jitter, 1.0 + jitter)) for k, v in TISSUE_PARAMS[t].items()}
            for t in TISSUES}


def simulate_subject(template, index, seed=0, noise=DEFAULTS["noise"], inu=DEFAULTS["inu"],
                     jitter=DEFAULTS["jitter"], warp_mm=DEFAULTS["warp_mm"], warp_grid_mm=DEFAULTS["warp_grid_mm"],
                     return_fractions=False):
    """Pseudo-subject ``index`` of the cohort with ``seed``: ``(volumes, info)``.

    ``volumes`` maps ``"pd"``, ``"t2"``, ``"t1"`` (float32), their noise-free, bias-free signals
    ``"pd_clean"``, ``"t2_clean"``, ``"t1_clean"`` (the ground truth a synthesis is best scored
    against: the noise of a scanner-like reference caps SSIM) and ``"mask"`` (uint8) to Volumes on the
    template grid (and ``"fractions"`` to the warped tissue fractions with ``return_fractions``);
    ``info`` records the seed, the jittered tissue parameters, and each sequence's noise sigma.
    Set ``noise=0``, ``inu=0`` for the noise-free, uniform signal.
    """
    grid = template.grid
    shape = grid.shape
    rng = np.random.default_rng([int(seed), int(index)])
    # fixed order of draws: warp, tissue parameters, INU, noise per sequence
    if warp_mm > 0:
        disp = _anatomical_warp(shape, grid.spacing, rng, warp_mm, warp_grid_mm)
        coords = np.indices(shape, dtype=np.float32)
        coords += disp
        del disp
        fractions = {t: _warp(template.fractions[t], coords) for t in ("gm", "wm")}
        brain = _warp(template.brain, coords)
        del coords
    else:
        fractions = {t: template.fractions[t].copy() for t in ("gm", "wm")}
        brain = template.brain.copy()
    fractions["csf"] = np.clip(brain - fractions["gm"] - fractions["wm"], 0.0, 1.0)
    mask = brain >= 0.5
    params = jittered_params(rng, jitter)
    field = _inu_field(shape, mask, rng, inu)
    volumes, sigmas = {}, {}
    for seq, spec in SEQUENCES.items():
        signal = spin_echo(fractions, params, spec["tr"], spec["te"])
        sigma = float(noise * tissue_signal(params[spec["noise_reference"]], spec["tr"], spec["te"]))
        volumes[seq] = grid.with_array(rician(signal * field, sigma, rng).astype(np.float32))
        volumes[f"{seq}_clean"] = grid.with_array(signal.astype(np.float32))
        sigmas[seq] = sigma
    volumes["mask"] = grid.with_array(mask.astype(np.uint8))
    if return_fractions:
        volumes["fractions"] = fractions
    info = {"seed": [int(seed), int(index)], "tissue_params": params, "sigma": sigmas}
    return volumes, info


# ===================================================================== cohort
def _params(n_subjects, n_test, spacing, seed, options):
    return {"version": PHANTOM_VERSION, "n_subjects": int(n_subjects), "n_test": int(n_test),
            "spacing": float(spacing), "seed": int(seed), **{k: float(options[k]) for k in DEFAULTS},
            "tissue_params": TISSUE_PARAMS, "sequences": SEQUENCES, "signal_scale": SIGNAL_SCALE}


def cohort_name(n_subjects=12, n_test=4, spacing=1.8, seed=0, **options):
    """A folder name for a cohort: its main parameters plus a short hash of all of them."""
    opts = dict(DEFAULTS, **options)
    digest = hashlib.sha1(json.dumps(_params(n_subjects, n_test, spacing, seed, opts), sort_keys=True).encode()).hexdigest()
    return f"mni-{float(spacing):g}mm-n{int(n_subjects)}-test{int(n_test)}-seed{int(seed)}-{digest[:8]}"


#: every volume a subject has: the three sequences, their noise-free signals and the brain mask
VOLUME_KEYS = (*SEQUENCES, *(f"{seq}_clean" for seq in SEQUENCES), "mask")


def load_cohort(out_dir):
    """The parsed ``cohort.json`` of a cohort folder."""
    return cohort.load(out_dir)


def cohort_files(out_dir, split="train", sequence="pd"):
    """Absolute paths of one sequence (``pd``, ``t2``, ``t1``, ``mask``) of one split, in subject order."""
    return cohort.files(out_dir, split, sequence)


def make_cohort(out_dir, n_subjects=12, n_test=4, spacing=1.8, seed=0, log=None, **options):
    """Simulate a cohort of ``n_subjects`` pseudo-subjects (the last ``n_test`` are the test split).

    Writes, per subject ``sub-XX``, ``sub-XX_pd``, ``_t2``, ``_t1`` and ``_mask`` ``.nii.gz`` at
    ``spacing`` mm isotropic, then ``cohort.json`` and the list files; returns ``out_dir`` as a
    Path. Deterministic from ``seed``; every file is written atomically, and a folder whose
    ``cohort.json`` already records the same parameters (and whose files are all there and
    complete) is reused as it is. ``options`` override :data:`DEFAULTS` (``noise``, ``inu``, ``jitter``, ``warp_mm``,
    ``warp_grid_mm``).
    """
    log = log or (lambda message: None)
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown phantom option(s): {', '.join(sorted(unknown))}")
    n_subjects, n_test = cohort.check_sizes(n_subjects, n_test)
    opts = dict(DEFAULTS, **options)
    params = _params(n_subjects, n_test, spacing, seed, opts)
    out_dir = Path(out_dir).expanduser().resolve()
    if cohort.reuse(out_dir, params, VOLUME_KEYS):
        log(f"phantom cohort {out_dir} is up to date ({n_subjects} subjects)")
        return out_dir
    started = time.monotonic()
    log(f"simulating a {n_subjects}-subject phantom cohort at {float(spacing):g} mm in {out_dir} ...")
    template = load_template(spacing, log=log)

    def on_disk(key, vol):  # scanner-like integers; sigma is >= 10 units, so rounding is immaterial
        if key not in SEQUENCES:
            return vol
        return vol.with_array(np.clip(np.rint(vol.array), 0, 32767).astype(np.int16))

    subjects = cohort.write_subjects(out_dir, n_subjects, n_test, VOLUME_KEYS,
                                     lambda index: simulate_subject(template, index, seed=seed, **opts), on_disk, log)
    record = cohort.manifest(
        params, subjects, template.grid,
        source="MNI152 2009a symmetric T1 + GM/WM probability maps (nilearn; Fonov et al. 2011), "
               "BrainWeb 1.5 T tissue parameters (Kwan et al. 1999; Cocosco et al. 1997)",
    )
    return cohort.finish(out_dir, record, VOLUME_KEYS, started, log, "phantom cohort")
