"""Abdominal MR/CT phantom with ground truth: the DiCyc paper's aorta-and-spine case, rebuilt.

Why: the 2021 DiCyc paper's clinical experiment is abdominal T2*-weighted MR ↔ CT of the same
patients on different tables and in different postures, scored inside the aorta and judged by
whether the aorta *and* the spine line up at once. No registry package holds such pairs, and the
paper's data are private. So this module builds pseudo-subjects with same-subject ground truth
from the one real abdominal CT that ships here.

What is REAL
    * The anatomy of one axial slice: ``explicit_VR-UN.dcm`` of PyPI ``pydicom-data`` (sample
      ``abdomen-ct-slice``): a contrast-enhanced abdominal CT at the renal hilum (liver, both
      kidneys, spleen, pancreas, bowel with gas, the aorta with the superior mesenteric artery,
      the inferior vena cava, a lumbar vertebra, lower ribs, and the curved CT table), 512 x 512,
      0.859 mm. It is segmented into tissue classes by HU plus connectivity and position
      (:func:`segment_slice`); the thresholds are documented there.
    * Every class's CT number is the median HU of that class on the real slice, and the CT keeps
      the real slice's texture (its deviation from the class median, clipped per class), so the
      CT looks like that scan, including the real table's shell and foam core.

What is SIMULATED
    * The third dimension. The real slice is extended into ``n_slices`` slices of 5 mm
      (default 32: from 55 mm above the real slice to 100 mm below it) by rules that follow
      abdominal anatomy (:func:`slice_labels`): the lumbar lordosis carries the spine (and the
      posterior body with it) anteriorly going down; the aorta runs on the vertebral bodies,
      drifts to the patient's left, widens into an infrarenal aneurysm (the paper's patients
      had abdominal aortic aneurysms) and may bifurcate into the common iliac arteries at the
      bottom; the kidneys, spleen and liver grow and shrink along ellipsoidal profiles and
      disappear (spleen and liver tip below, the kidneys' poles at both ends); the lower ribs
      end; bowel gas pockets come and go. Tissue a shrinking organ leaves is filled with its
      nearest surrounding tissue (fat or soft tissue).
    * Pseudo-subjects: per subject, random profiles (aneurysm size and level, lordosis, organ
      extents, gas), a smooth random 3-D anatomical warp, and contrast jitter, deterministic from
      ``(seed, subject)``, with a fixed train/test split — as the brain phantom
      (:mod:`dicyc.phantom`).
    * The T2*-weighted MR: a spoiled gradient echo from each class's published relaxation
      values (:data:`TISSUE_MR`, cited there), a smooth receive-coil bias field and Rician
      noise. Flow effects (inflow enhancement of the aorta) are not modelled: the lumen has the
      static-blood signal.
    * The domain-specific deformation (:func:`posture_field`): the MR is acquired on a flat
      table, with no table in the image, in another posture: the back flattens onto the table,
      the anterior abdominal wall moves, and the aorta shifts by a few mm relative to the spine,
      which stays rigid. No single affine aligns both the aorta and the spine (the tests check).

Per subject, in one grid (1.5625 x 1.5625 x 5 mm, the paper's 1.56 x 1.56 x 5 mm):
    ``ct`` (HU, CT geometry, curved table), ``mr`` (MR geometry, no table), the noise-free
    ground truths ``ct_clean``, ``mr_clean``, each modality in the other's geometry
    (``ct_in_mr``: the body's CT in the MR posture, no table — what a perfect T2*→CT synthesis
    gives; ``mr_in_ct``: the MR signal, bias- and noise-free, in the CT posture — what a perfect
    CT→T2* synthesis gives), the masks ``aorta_ct``, ``spine_ct``, ``body_ct``, ``table_ct``,
    ``aorta_mr``, ``spine_mr``, ``body_mr``, and the tissue ``labels_ct``/``labels_mr``.
"""

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from dicyc import cohort
from dicyc.errors import DicycError
from dicyc.volume import Volume, read_volume

#: Bumped whenever the simulation changes, so that cached cohorts are rebuilt.
ABDOMEN_VERSION = 1
#: the real slice everything is built from (dicyc.samples)
SOURCE_SAMPLE = "abdomen-ct-slice"

# ===================================================================== tissue classes
AIR, GAS, FAT, SOFT, LIVER, SPLEEN, KIDNEY, BLOOD, AORTA, MARROW, CORTEX, RIB_MARROW, RIB_CORTEX, CANAL, TABLE = range(15)
CLASSES = ("air", "gas", "fat", "soft", "liver", "spleen", "kidney", "blood", "aorta", "spine_marrow",
           "spine_cortex", "rib_marrow", "rib_cortex", "canal", "table")
#: classes that belong to the patient (everything but air and the table)
BODY_CLASSES = tuple(range(GAS, TABLE))
SPINE_CLASSES = (MARROW, CORTEX, CANAL)  # the vertebra with its canal: the "spine" structure
BONE_CLASSES = (MARROW, CORTEX, RIB_MARROW, RIB_CORTEX)

# HU thresholds of the segmentation (smoothed HU; see segment_slice)
HU_BODY = -400.0  # body and table versus air (the blanket around the patient is ~ -800 HU)
HU_GAS = -400.0  # bowel gas inside the body
HU_FAT = (-250.0, -40.0)  # adipose tissue
HU_CORTEX = 350.0  # cortical-bone seeds (vertebra, ribs)
HU_BONE = 140.0  # bone including cancellous marrow, grown from the cortical seeds
HU_CORTEX_CLASS = 400.0  # bone above this is rendered as cortex in MR, below as marrow
HU_ENHANCED = (160.0, 420.0)  # contrast-enhanced blood (aorta, IVC, SMA, renal and splenic vessels)
HU_KIDNEY = (125.0, 300.0)  # enhanced renal parenchyma (the liver, ~90 HU, stays out)
HU_RENAL_CORTEX = 160.0  # a kidney's brightest tenth (enhanced cortex) is above this; the spleen's is not
HU_LIVER = (80.0, 135.0)  # portal-venous-phase liver
HU_SPLEEN = (100.0, 160.0)


def _disk(radius_px):
    r = max(int(round(radius_px)), 0)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r + 0.5


def _components(mask):
    """(mask, area in pixels, centroid y, centroid x) of each connected component."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    out = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        local = labels[box] == i
        ys, xs = np.nonzero(local)
        m = np.zeros(mask.shape, dtype=bool)
        m[box] = local
        out.append((m, int(local.sum()), float(ys.mean() + box[0].start), float(xs.mean() + box[1].start)))
    return out


def _convex_hull_mask(mask):
    """The filled convex hull of a 2-D mask's pixels (the half-planes of scipy's ConvexHull)."""
    from scipy.spatial import ConvexHull

    ys, xs = np.nonzero(mask)
    hull = ConvexHull(np.column_stack([ys, xs]).astype(float))
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    gy, gx = np.mgrid[y0:y1, x0:x1]
    points = np.column_stack([gy.ravel(), gx.ravel()]).astype(float)
    inside = np.all(points @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9, axis=1)
    out = np.zeros(mask.shape, dtype=bool)
    out[y0:y1, x0:x1] = inside.reshape(gy.shape)
    return out | mask


def _union(masks, shape):
    out = np.zeros(shape, dtype=bool)
    for m in masks:
        out |= m
    return out


def segment_slice(hu, spacing_mm):
    """Tissue labels (:data:`CLASSES`) of a real axial abdominal CT slice in HU; ``(labels, landmarks)``.

    ``hu`` is one slice in the canonical orientation (rows anterior → posterior, columns the
    patient's right → left) with square pixels of ``spacing_mm``. HU alone cannot tell the
    organs apart (renal cortex, IVC, pancreas and the vertebral marrow all lie between 130 and
    250 HU in this portal-venous-phase scan), so each class is a HU band *and* a connected
    component *and* a position relative to the body and the spine:

    * body: HU > -400 after an opening of 2 mm (which drops the thin blanket around the patient),
      the largest component, holes filled; the table: the large components of HU > -500 behind
      the body, holes filled (shell and foam core);
    * gas: HU < -400 inside the body; fat: -250 ... -40 HU;
    * spine: the cortical components (HU >= 350) within 40 mm of the body's midline behind its
      centre; its bone is HU >= 140 inside their convex hull (which keeps out the aorta lying
      on the vertebral body), its canal the hole that bone encloses (after a 2 mm closing);
      ribs: the other cortical components, grown to HU >= 140; bone is cortex above 400 HU and
      marrow below;
    * aorta: the enhanced-blood component (160 ... 420 HU) nearest in front of the vertebral
      body, within 35 mm of the spine's midline;
    * kidneys: the components of 125 ... 300 HU (2 mm smoothing) beside the spine (35 ... 120 mm
      lateral, within 60 mm of its centre row), at least 800 mm², whose brightest tenth (the
      enhanced cortex) is above 160 HU, which keeps the spleen out; holes filled except fat
      (the renal sinus);
    * liver: the largest 80 ... 135 HU component on the patient's right after a 3 mm opening;
      spleen: the largest 100 ... 160 HU component more than 60 mm left of the spine, behind the
      body's centre, after a 3 mm opening;
    * other enhanced vessels (IVC, SMA, renal and splenic veins): the remaining enhanced-blood
      components of at least 10 mm²; soft tissue (muscle, bowel wall and content, pancreas): the rest.

    ``landmarks`` holds the spine's centroid and anterior edge and the aorta's centroid and
    equivalent radius (pixels). Raises :class:`DicycError` when a structure is not found.
    """
    from scipy import ndimage

    hu = np.asarray(hu, dtype=np.float32)
    px = float(spacing_mm)
    mm2 = px * px
    h1 = ndimage.gaussian_filter(hu, 0.85 / px)
    h2 = ndimage.gaussian_filter(hu, 1.7 / px)
    shape = hu.shape

    body_candidates = _components(ndimage.binary_opening(hu > HU_BODY, _disk(2.0 / px)))
    if not body_candidates:
        raise DicycError("the abdominal CT slice holds no body (nothing above -400 HU).")
    body = ndimage.binary_fill_holes(max(body_candidates, key=lambda c: c[1])[0])
    bys, bxs = np.nonzero(body)
    body_cy, body_cx = float(bys.mean()), float(bxs.mean())
    outside = ~ndimage.binary_dilation(body, _disk(3))
    table_parts = [c[0] for c in _components((hu > -500.0) & outside) if c[1] * mm2 >= 100.0 and c[2] > bys.max() - 40.0 / px]
    table = ndimage.binary_fill_holes(_union(table_parts, shape)) & outside

    gas = body & (h1 < HU_GAS)
    fat = body & (h1 >= HU_FAT[0]) & (h1 < HU_FAT[1])

    cortical = [c for c in _components(body & (h1 >= HU_CORTEX)) if c[1] * mm2 >= 5.0]
    spine_parts = [c for c in cortical if abs(c[3] - body_cx) <= 40.0 / px and c[2] > body_cy]
    if not spine_parts:
        raise DicycError("no vertebra found in the abdominal CT slice (no cortical bone behind the body's centre).")
    spine_seed = _union([c[0] for c in spine_parts], shape)
    hull = _convex_hull_mask(spine_seed)  # the vertebra's outline: the aorta lies outside it
    spine_bone = (hull & (h1 >= HU_BONE)) | spine_seed
    column = ndimage.binary_fill_holes(ndimage.binary_closing(spine_bone, _disk(2.0 / px)) | spine_bone)
    canal = ndimage.binary_opening(column & ~spine_bone, _disk(1.0 / px))
    spine_bone = ndimage.binary_opening(spine_bone, _disk(0.5 / px)) | spine_seed
    column = spine_bone | canal
    sys_, sxs = np.nonzero(column)
    spine_cx = float(sxs.mean())
    spine_cy = float(sys_.mean())
    near_mid = column[:, max(int(spine_cx - 5.0 / px), 0) : int(spine_cx + 5.0 / px) + 1]
    spine_top = float(np.nonzero(near_mid.any(axis=1))[0].min())

    rib_seed = _union([c[0] for c in cortical if not (c[0] & column).any()], shape)
    ribs = ndimage.binary_dilation(rib_seed, _disk(1.5 / px)) & (h1 >= HU_BONE) & ~column
    ribs |= rib_seed
    bone = spine_bone | ribs

    enhanced = body & (h1 >= HU_ENHANCED[0]) & (h1 <= HU_ENHANCED[1]) & ~bone & ~ndimage.binary_dilation(column, _disk(1))
    aorta_candidates = [
        c for c in _components(ndimage.binary_opening(enhanced, _disk(1.5 / px)))
        if abs(c[3] - spine_cx) <= 35.0 / px and spine_top - 45.0 / px <= c[2] < spine_top and c[1] * mm2 >= 50.0
    ]
    if not aorta_candidates:
        raise DicycError("no aorta found in the abdominal CT slice (no enhanced vessel in front of the vertebra).")
    aorta = max(aorta_candidates, key=lambda c: c[1] / (1.0 + abs(c[2] - (spine_top - 12.0 / px)) * px / 10.0))[0]
    aorta = ndimage.binary_fill_holes(aorta)
    ays, axs = np.nonzero(aorta)

    taken = bone | canal | aorta | gas | table
    kidney_parts = [
        c for c in _components(body & (h2 >= HU_KIDNEY[0]) & (h2 <= HU_KIDNEY[1]) & ~taken)
        if 35.0 / px <= abs(c[3] - spine_cx) <= 120.0 / px and abs(c[2] - spine_cy) <= 60.0 / px and c[1] * mm2 >= 800.0
        and np.percentile(h1[c[0]], 90) >= HU_RENAL_CORTEX
    ]
    kidneys = []
    for side in (-1, 1):
        parts = [c for c in kidney_parts if np.sign(c[3] - spine_cx) == side]
        if parts:
            kidneys.append(max(parts, key=lambda c: c[1])[0])
    if not kidneys:
        raise DicycError("no kidney found in the abdominal CT slice.")
    kidney = ndimage.binary_fill_holes(_union(kidneys, shape)) & ~fat & ~taken
    taken |= kidney

    liver_parts = [
        c for c in _components(ndimage.binary_opening(body & (h2 >= HU_LIVER[0]) & (h2 <= HU_LIVER[1]) & ~taken,
                                                      _disk(3.0 / px)))
        if c[3] < spine_cx - 20.0 / px
    ]
    if not liver_parts:
        raise DicycError("no liver found in the abdominal CT slice.")
    liver = ndimage.binary_fill_holes(max(liver_parts, key=lambda c: c[1])[0]) & ~taken & ~gas
    taken |= liver
    spleen_parts = [
        c for c in _components(ndimage.binary_opening(body & (h2 >= HU_SPLEEN[0]) & (h2 <= HU_SPLEEN[1]) & ~taken,
                                                      _disk(3.0 / px)))
        if c[3] > spine_cx + 60.0 / px and c[2] > body_cy and c[1] * mm2 >= 300.0
    ]
    spleen = (ndimage.binary_fill_holes(max(spleen_parts, key=lambda c: c[1])[0]) & ~taken) if spleen_parts else np.zeros(shape, bool)
    taken |= spleen
    vessels = [c[0] for c in _components(enhanced & ~taken) if c[1] * mm2 >= 10.0]
    blood = _union(vessels, shape)

    labels = np.full(shape, AIR, dtype=np.uint8)
    labels[body] = SOFT
    labels[fat] = FAT
    for cls, mask in ((BLOOD, blood), (SPLEEN, spleen), (LIVER, liver), (KIDNEY, kidney), (AORTA, aorta),
                      (CANAL, canal), (RIB_MARROW, ribs), (MARROW, spine_bone), (GAS, gas)):
        labels[mask & body] = cls
    labels[(labels == MARROW) & (h1 >= HU_CORTEX_CLASS)] = CORTEX
    labels[(labels == RIB_MARROW) & (h1 >= HU_CORTEX_CLASS)] = RIB_CORTEX
    labels[table] = TABLE
    landmarks = {
        "spine_center": (spine_cy, spine_cx), "spine_top": spine_top,
        "aorta_center": (float(ays.mean()), float(axs.mean())), "aorta_radius": float(np.sqrt(aorta.sum() / np.pi)),
        "body_center": (body_cy, body_cx),
    }
    return labels, landmarks


# ===================================================================== MR signal model
# T2*-weighted spoiled gradient echo at 1.5 T: 2-D, TR 150 ms, flip angle 30 deg, TE 13.8 ms (the
# third echo at which fat and water are in phase at 1.5 T, 4.6 ms apart, so no chemical-shift
# cancellation at fat/water borders). Signal per pure tissue (Ernst equation):
#     S = PD * sin(a) (1 - E1) / (1 - cos(a) E1) * exp(-TE / T2*),   E1 = exp(-TR / T1).
SEQUENCE = {"tr": 150.0, "te": 13.8, "flip_deg": 30.0, "field_t": 1.5}
#: Fully relaxed pure proton density (PD = 1) maps to this intensity (as dicyc.phantom).
SIGNAL_SCALE = 1000.0

# Relaxation at 1.5 T (T1, T2 in ms):
#   * liver, spleen, renal cortex, paravertebral muscle, vertebral (L4) bone marrow, subcutaneous
#     fat: C.M.J. de Bazelaire, G.D. Duhamel, N.M. Rofsky, D.C. Alsop, "MR imaging relaxation times
#     of abdominal and pelvic tissues measured in vivo at 3.0 T: preliminary results", Radiology
#     230(3):652-659, 2004 (its 1.5 T measurements);
#   * blood: G.J. Stanisz et al., "T1, T2 relaxation and magnetization transfer in tissue at 3T",
#     Magn. Reson. Med. 54(3):507-512, 2005 (1.5 T: T1 1441 ms, T2 290 ms);
#   * the spinal canal is rendered as CSF: BrainWeb's CSF (Kwan et al. 1999; see dicyc.phantom).
# T2* = 1 / (1/T2 + R2'): the reversible dephasing R2' is a modelling ASSUMPTION, not a published
# per-tissue value: 10 /s for soft tissue and fat (macroscopic field inhomogeneity in a body voxel
# at 1.5 T; it gives the liver T2* = 31.5 ms, inside the normal range measured at 1.5 T, e.g.
# Schwenzer et al., Invest. Radiol. 43(12):854-860, 2008), and 60 /s for vertebral marrow, whose
# trabeculae add susceptibility dephasing of tens per second at 1.5 T (T2* = 12 ms). Cortical bone
# (T2* well under 1 ms) and gas give no signal at TE 13.8 ms.
# PD (relative to water = 1): APPROXIMATE tissue water content (0.7-0.8 for the soft organs), 0.9
# for adipose tissue (its lipid protons count, as in fat-water imaging), 0.7 for marrow; the
# ordering matters more than the digits here, since the MR is normalised per volume.
R2P_SOFT = 10.0
R2P_MARROW = 60.0
TISSUE_MR = {
    "fat": {"t1": 343.0, "t2": 58.0, "r2p": R2P_SOFT, "pd": 0.90},
    "soft": {"t1": 856.0, "t2": 27.0, "r2p": R2P_SOFT, "pd": 0.76},  # paravertebral muscle
    "liver": {"t1": 586.0, "t2": 46.0, "r2p": R2P_SOFT, "pd": 0.71},
    "spleen": {"t1": 1057.0, "t2": 79.0, "r2p": R2P_SOFT, "pd": 0.79},
    "kidney": {"t1": 966.0, "t2": 87.0, "r2p": R2P_SOFT, "pd": 0.81},  # renal cortex
    "blood": {"t1": 1441.0, "t2": 290.0, "r2p": R2P_SOFT, "pd": 0.83},
    "aorta": {"t1": 1441.0, "t2": 290.0, "r2p": R2P_SOFT, "pd": 0.83},
    "spine_marrow": {"t1": 549.0, "t2": 49.0, "r2p": R2P_MARROW, "pd": 0.70},
    "rib_marrow": {"t1": 549.0, "t2": 49.0, "r2p": R2P_MARROW, "pd": 0.70},
    "canal": {"t1": 2569.0, "t2": 329.0, "r2p": R2P_SOFT, "pd": 1.00},
}
#: classes without MR signal
MR_SILENT = ("air", "gas", "spine_cortex", "rib_cortex", "table")

#: the real texture kept in the CT: a pixel's deviation from its class median, clipped to this many HU
RESIDUAL_CLIP = {"air": 30.0, "gas": 150.0, "fat": 60.0, "soft": 80.0, "liver": 40.0, "spleen": 40.0,
                 "kidney": 80.0, "blood": 60.0, "aorta": 30.0, "spine_marrow": 250.0, "spine_cortex": 500.0,
                 "rib_marrow": 250.0, "rib_cortex": 400.0, "canal": 40.0, "table": 3000.0}
#: CT contrast jitter per subject: class HU +- this (contrast timing moves enhanced blood most)
HU_JITTER = {"blood": 30.0, "aorta": 30.0, "kidney": 20.0, "liver": 10.0, "spleen": 10.0}
HU_JITTER_DEFAULT = 6.0

#: the grid: the paper's 1.56 x 1.56 x 5 mm; 256 x 208 pixels = 400 x 325 mm hold the body and the table
GRID_SPACING = (1.5625, 1.5625, 5.0)
GRID_SIZE = (256, 208)
#: the most superior slice centre lies this far above the real slice (mm)
Z_TOP = 55.0

DEFAULTS = {"n_slices": 32, "noise": 0.04, "inu": 0.3, "ct_noise_hu": 8.0, "jitter": 0.05, "warp_mm": 2.5,
            "warp_grid_mm": 40.0, "aorta_shift_mm": 6.0, "anterior_mm": 6.0, "flatten": 0.9}


def tissue_signal(params, sequence=SEQUENCE):
    """Spoiled-gradient-echo signal of one pure tissue (see the constants above), times SIGNAL_SCALE."""
    tr, te, flip = sequence["tr"], sequence["te"], np.deg2rad(sequence["flip_deg"])
    e1 = np.exp(-tr / params["t1"])
    t2s = 1.0 / (1.0 / params["t2"] + params["r2p"] / 1000.0)
    return float(SIGNAL_SCALE * params["pd"] * np.sin(flip) * (1.0 - e1) / (1.0 - np.cos(flip) * e1) * np.exp(-te / t2s))


def t2star(params):
    """T2* (ms) of a tissue: 1 / (1/T2 + R2')."""
    return 1.0 / (1.0 / params["t2"] + params["r2p"] / 1000.0)


# ===================================================================== template: the real slice
def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class Template:
    """The real slice, segmented and prepared once for :func:`slice_labels`.

    Fine grid: the real pixels (0.859 mm) over the phantom's field of view. Holds the HU, labels,
    per-class median HU, the clipped-free residual texture, the structures that grow and shrink
    along z (signed distances in mm), the nearest fat/soft tissue of every pixel (what a vacated
    pixel becomes), the aorta and spine landmarks, and the coarse output grid's geometry.
    """

    def __init__(self, hu, px, origin_xy, z0):
        from scipy import ndimage

        labels, lm = segment_slice(hu, px)
        self.px = float(px)
        self.z0 = float(z0)
        # ---- the output grid's field of view, centred on the body left-right, from above the body to below the table
        top = float(np.nonzero(np.isin(labels, BODY_CLASSES).any(axis=1))[0].min())
        width, height = GRID_SIZE[0] * GRID_SPACING[0], GRID_SIZE[1] * GRID_SPACING[1]
        x0_mm = origin_xy[0] + lm["body_center"][1] * px - width / 2.0 + GRID_SPACING[0] / 2.0
        y0_mm = origin_xy[1] + top * px - 12.0 + GRID_SPACING[1] / 2.0
        self.grid_origin_xy = (x0_mm, y0_mm)
        # ---- fine crop covering the grid (+ margin), padded with air where it leaves the real image
        margin = 6
        c0 = int(np.floor((x0_mm - GRID_SPACING[0] / 2 - origin_xy[0]) / px)) - margin
        r0 = int(np.floor((y0_mm - GRID_SPACING[1] / 2 - origin_xy[1]) / px)) - margin
        nc = int(np.ceil(width / px)) + 2 * margin
        nr = int(np.ceil(height / px)) + 2 * margin
        self.fine_origin_xy = (origin_xy[0] + c0 * px, origin_xy[1] + r0 * px)

        def crop(a, fill):
            out = np.full((nr, nc), fill, dtype=a.dtype)
            sr0, sr1 = max(r0, 0), min(r0 + nr, a.shape[0])
            sc0, sc1 = max(c0, 0), min(c0 + nc, a.shape[1])
            out[sr0 - r0 : sr1 - r0, sc0 - c0 : sc1 - c0] = a[sr0:sr1, sc0:sc1]
            return out

        self.hu = crop(np.asarray(hu, np.float32), np.float32(-1000.0))
        self.labels = crop(labels, np.uint8(AIR))
        shift = np.array([r0, c0], dtype=float)
        self.landmarks = {k: (tuple(np.asarray(v) - shift) if isinstance(v, tuple) else v - (r0 if k == "spine_top" else 0))
                          for k, v in lm.items()}
        self.landmarks["aorta_radius"] = lm["aorta_radius"]
        self.median_hu = {}
        for i, name in enumerate(CLASSES):
            m = self.labels == i
            self.median_hu[name] = float(np.median(self.hu[m])) if m.any() else -1000.0
        self.residual = self.hu - np.array([self.median_hu[n] for n in CLASSES], np.float32)[self.labels]
        self.table = self.labels == TABLE
        self.body = np.isin(self.labels, BODY_CLASSES)
        self.aorta = self.labels == AORTA
        # nearest fat or soft tissue of every pixel: what a vacated pixel becomes
        filler = np.isin(self.labels, (FAT, SOFT))
        _, (iy, ix) = ndimage.distance_transform_edt(~filler, return_indices=True)
        self.fill = self.labels[iy, ix]
        # structures whose cross-section follows a profile along z
        self.structures = []
        for name, cls in (("liver", (LIVER,)), ("spleen", (SPLEEN,)), ("ribs", (RIB_MARROW, RIB_CORTEX))):
            self._add_structure(name, np.isin(self.labels, cls), cls[0])
        sc = self.landmarks["spine_center"][1]
        kid = _components(self.labels == KIDNEY)
        for side, label in ((-1, "kidney_right"), (1, "kidney_left")):  # columns increase to the patient's left
            parts = [c[0] for c in kid if np.sign(c[3] - sc) == side]
            if parts:
                self._add_structure(label, _union(parts, self.labels.shape), KIDNEY)
        for k, comp in enumerate(c for c in _components(self.labels == GAS) if c[1] * px * px >= 20.0):
            self._add_structure(f"gas{k}", comp[0], GAS)
        # lordosis weight: 1 around the spine, fading with distance from it and to 0 at the skin
        rr, cc = np.indices(self.labels.shape, dtype=np.float32)
        sy, sx = self.landmarks["spine_center"]
        d2 = ((rr - sy) ** 2 + (cc - sx) ** 2) * px * px
        depth = ndimage.distance_transform_edt(self.body) * px
        self.spine_weight = (np.exp(-d2 / (2.0 * 45.0**2)) * _smoothstep(depth / 25.0)).astype(np.float32)
        self.grid_rc = None

    def _add_structure(self, name, mask, cls):
        from scipy import ndimage

        inside = ndimage.distance_transform_edt(mask) * self.px
        outside = ndimage.distance_transform_edt(~mask) * self.px
        self.structures.append({"name": name, "mask": mask, "cls": cls, "sdf": (outside - inside).astype(np.float32),
                                "radius": float(inside.max())})

    def fine_coordinates(self):
        """(rows, cols) of the coarse grid's pixel centres in fine-pixel units."""
        gx = self.grid_origin_xy[0] + np.arange(GRID_SIZE[0]) * GRID_SPACING[0]
        gy = self.grid_origin_xy[1] + np.arange(GRID_SIZE[1]) * GRID_SPACING[1]
        cols = (gx - self.fine_origin_xy[0]) / self.px
        rows = (gy - self.fine_origin_xy[1]) / self.px
        return np.meshgrid(rows, cols, indexing="ij")


_TEMPLATE_CACHE = {}


def load_template(log=None):
    """The :class:`Template` of the real abdominal CT slice (``dicyc samples abdomen-ct-slice``), cached per process."""
    from dicyc.preprocess import to_canonical
    from dicyc.samples import prepare

    path = prepare([SOURCE_SAMPLE], log=log or (lambda message: None))[SOURCE_SAMPLE]
    key = str(path)
    if key not in _TEMPLATE_CACHE:
        vol, _ = to_canonical(read_volume(path))
        if vol.shape[0] != 1 or abs(vol.spacing[0] - vol.spacing[1]) > 1e-6:
            raise DicycError(f"{path} is not a single axial slice with square pixels; it cannot seed the abdominal phantom.")
        if not np.allclose(vol.direction, np.eye(3), atol=1e-6):
            raise DicycError(f"{path} is not an axial slice; it cannot seed the abdominal phantom.")
        _TEMPLATE_CACHE[key] = Template(vol.array[0].astype(np.float32), vol.spacing[0], vol.origin[:2], vol.origin[2])
    return _TEMPLATE_CACHE[key]


# ===================================================================== along z: the rules
def draw_profile(rng):
    """One pseudo-subject's anatomy along z (mm; z = 0 is the real slice, negative is inferior)."""
    u = rng.uniform
    bif = u(-105.0, -90.0)
    aaa_half = u(20.0, 35.0)
    right_kidney = u(-15.0, 5.0)
    return {
        "lordosis_mm": u(8.0, 16.0),  # anterior drift of the spine 100 mm below the real slice
        "scoliosis_mm": u(-4.0, 4.0),  # lateral drift per 100 mm
        "flank": u(0.0, 0.06),  # lateral widening 100 mm below
        "liver_tip": u(45.0, 85.0), "spleen_tip": u(10.0, 35.0), "rib_end": u(25.0, 50.0),
        "kidney_right_center": right_kidney, "kidney_left_center": right_kidney + u(5.0, 20.0),
        "kidney_half_length": u(50.0, 60.0),
        "aorta_left_mm": u(4.0, 12.0),  # drift to the patient's left 100 mm below
        "aaa_diameter_mm": u(32.0, 50.0), "aaa_half_length": aaa_half,
        "aaa_center": u(max(bif + aaa_half + 5.0, -80.0), -45.0), "bifurcation": bif,
        "gas": [(u(40.0, 90.0), u(0.0, 2.0 * np.pi)) for _ in range(16)],
    }


def _ellipsoid(z, center, half):
    """Relative cross-section size of an organ spanning center +- half along z, 1 at z = 0."""
    ref = max(1.0 - (center / half) ** 2, 0.05)
    return float(np.sqrt(max(1.0 - ((z - center) / half) ** 2, 0.0) / ref))


def extent(name, z, p):
    """How large structure ``name``'s cross-section is at ``z`` relative to the real slice (0: gone)."""
    if name == "liver":
        return min(_ellipsoid(z, (150.0 - p["liver_tip"]) / 2.0, (150.0 + p["liver_tip"]) / 2.0), 1.35)
    if name == "spleen":
        return min(_ellipsoid(z, (110.0 - p["spleen_tip"]) / 2.0, (110.0 + p["spleen_tip"]) / 2.0), 1.3)
    if name.startswith("kidney"):
        return min(_ellipsoid(z, p[f"{name}_center"], p["kidney_half_length"]), 1.15)
    if name == "ribs":
        return float(np.clip(1.0 + z / p["rib_end"], 0.0, 1.0))
    if name.startswith("gas"):
        wavelength, phase = p["gas"][int(name[3:]) % len(p["gas"])]
        return float(np.clip(1.0 + 0.8 * np.sin(2.0 * np.pi * z / wavelength + phase) - 0.8 * np.sin(phase), 0.0, 1.3))
    return 1.0


def spine_drift(z, p):
    """(rows, cols) drift in mm of the spine at ``z``: lumbar lordosis (anterior = -rows) and a lateral tilt."""
    t = z / 100.0
    dy = -p["lordosis_mm"] * t * t if z < 0 else 0.3 * p["lordosis_mm"] * t * t
    return dy, p["scoliosis_mm"] * t


def aorta_geometry(z, p, r0):
    """The aortic lumen at ``z``: a list of (drow, dcol, radius) in mm, relative to the spine-carried centre."""
    base = r0 * (1.0 + 0.04 * z / 50.0) if z > 0 else r0 * (1.0 - 0.12 * (-z) / 100.0)
    bump = 0.0
    if abs(z - p["aaa_center"]) < p["aaa_half_length"]:
        bump = 0.5 * (1.0 + np.cos(np.pi * (z - p["aaa_center"]) / p["aaa_half_length"]))
    radius = base + (p["aaa_diameter_mm"] / 2.0 - base) * bump
    lateral = p["aorta_left_mm"] * (-z) / 100.0 if z < 0 else 0.0
    forward = -0.85 * (radius - base)  # an aneurysm grows forward: its back wall stays on the spine
    if z >= p["bifurcation"]:
        return [(forward, lateral, radius)]
    sep = 0.7 * base + 0.5 * (p["bifurcation"] - z)
    return [(forward, lateral - sep, 0.62 * base), (forward, lateral + sep, 0.62 * base)]


def slice_labels(template, z, p):
    """Fine labels and residual texture of the slice ``z`` mm from the real one, for profile ``p``."""
    from scipy import ndimage

    T = template
    lab = T.labels.copy()
    for s in T.structures:
        e = extent(s["name"], z, p)
        if abs(e - 1.0) < 1e-3:
            continue
        new = s["sdf"] < (e - 1.0) * s["radius"]
        vacated = s["mask"] & ~new
        lab[vacated] = T.fill[vacated]
        if e > 1.0 and s["cls"] != GAS:
            grow = new & ~s["mask"] & np.isin(lab, (FAT, SOFT))
            lab[grow] = s["cls"]
    lab[T.aorta] = T.fill[T.aorta]
    lab[T.table] = AIR
    # lordosis, lateral tilt and flank widening: a smooth pull-back of the whole slice
    dy, dx = spine_drift(z, p)
    sx = 1.0 + p["flank"] * max(-z, 0.0) / 100.0
    sy = 1.0 + 0.3 * (sx - 1.0)
    rows, cols = np.indices(lab.shape, dtype=np.float32)
    by, bx = T.landmarks["body_center"]
    w = T.spine_weight
    src_r = rows - (w * dy / T.px) - (sy - 1.0) / sy * (rows - by)
    src_c = cols - (w * dx / T.px) - (sx - 1.0) / sx * (cols - bx)
    lab = ndimage.map_coordinates(lab, [src_r, src_c], order=0, mode="constant", cval=AIR)
    res = ndimage.map_coordinates(T.residual, [src_r, src_c], order=1, mode="nearest")
    lab[T.table] = TABLE
    res[T.table] = T.residual[T.table]
    # the aorta, drawn where the spine carries it
    ay, ax = T.landmarks["aorta_center"]
    iy, ix = int(round(ay)), int(round(ax))
    wa = float(w[iy, ix])
    blocked = np.isin(lab, SPINE_CLASSES + (AIR, TABLE))
    for drow, dcol, radius in aorta_geometry(z, p, T.landmarks["aorta_radius"] * T.px):
        cy = ay + (wa * dy + drow) / T.px
        cx = ax + (wa * dx + dcol) / T.px
        r = radius / T.px
        y0, y1 = int(max(cy - r - 2, 0)), int(min(cy + r + 3, lab.shape[0]))
        x0, x1 = int(max(cx - r - 2, 0)), int(min(cx + r + 3, lab.shape[1]))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & ~blocked[y0:y1, x0:x1]
        lab[y0:y1, x0:x1][disk] = AORTA
    clip = np.array([RESIDUAL_CLIP[n] for n in CLASSES], np.float32)[lab]
    return lab, np.clip(res, -clip, clip)


# ===================================================================== one subject
def _coarse(template, fine, rows, cols):
    """A fine map averaged onto the output grid (Gaussian anti-aliasing, then linear sampling)."""
    from scipy import ndimage

    sigma = np.sqrt(max(GRID_SPACING[0] ** 2 - template.px**2, 0.0)) / 2.3548 / template.px
    smooth = ndimage.gaussian_filter(np.asarray(fine, np.float32), sigma)
    return ndimage.map_coordinates(smooth, [rows, cols], order=1, mode="nearest")


def grid_volume(template, n_slices, array=None):
    """A Volume on the phantom grid (identity direction: LPS axial; slice 0 is the most inferior)."""
    shape = (int(n_slices), GRID_SIZE[1], GRID_SIZE[0])
    z_origin = template.z0 + Z_TOP - GRID_SPACING[2] * (n_slices - 1)
    origin = (template.grid_origin_xy[0], template.grid_origin_xy[1], z_origin)
    return Volume(np.zeros(shape, np.float32) if array is None else array, GRID_SPACING, origin, np.eye(3))


def slice_positions(n_slices):
    """z (mm, relative to the real slice) of each slice, in array order (inferior first)."""
    return [Z_TOP - GRID_SPACING[2] * (n_slices - 1 - k) for k in range(int(n_slices))]


def _warp_stack(arrays, field, order=1):
    """Pull-back of each (nz, ny, nx) array through ``field`` (3, nz, ny, nx) in voxels."""
    from scipy import ndimage

    coords = np.indices(field.shape[1:], dtype=np.float32)
    coords += field
    return [ndimage.map_coordinates(a, coords, order=order, mode="nearest", prefilter=False) for a in arrays]


def _anatomical_warp(shape, rng, warp_mm, warp_grid_mm):
    """Smooth random displacement (3, nz, ny, nx) in voxels; through-plane a third of in-plane."""
    from dicyc.deform import smooth_field

    sp = np.array(GRID_SPACING[::-1], dtype=float)  # (z, y, x)
    ctrl = [max(2, int(np.ceil(n * s / warp_grid_mm)) + 1) for n, s in zip(shape, sp)]
    scale = np.array([warp_mm / 3.0, warp_mm, warp_mm]) / sp
    return smooth_field(rng.standard_normal((3, *ctrl)) * scale[:, None, None, None], shape)


def posture_field(body, spine, aorta, table_top, params):
    """The domain-specific deformation: CT posture → MR posture, a pull-back (3, nz, ny, nx) in voxels.

    ``MR_geometry[p] = CT_geometry[p + field[:, p]]``, in-plane on every slice. Three parts, each
    keeping the spine rigid (weight 0 within 2 mm of it, rising to 1 by 14 mm):

    * **flat table**: the CT table is curved and the MR table flat, so the back settles: where the
      back follows the CT table's curve (its rise above the back's lowest point, at most the
      table's own rise there and at most 12 mm), it moves back by ``flatten`` times that rise,
      fading to nothing at the body's front (over at least 40 mm);
    * **anterior wall**: the front of the abdomen moves forward by ``anterior_mm`` (another
      breath-hold and posture), fading to nothing at the aorta, strongest at the midline;
    * **aorta**: the aorta moves by ``aorta_shift`` (mm: rows, columns) relative to the spine:
      a Gaussian neighbourhood (sd = aortic radius + 12 mm) around it moves along.

    ``body``, ``spine``, ``aorta`` are boolean (nz, ny, nx) masks in CT geometry; ``table_top``
    the first table row of each column (nx,); ``params`` holds ``flatten``, ``anterior_mm``,
    ``aorta_shift`` (two numbers, mm).
    """
    from scipy import ndimage

    nz, ny, nx = body.shape
    px = GRID_SPACING[0]
    field = np.zeros((3, nz, ny, nx), np.float32)
    rows, cols = np.indices((ny, nx), dtype=np.float32)
    table_top = np.asarray(table_top, np.float32)
    shift = np.asarray(params["aorta_shift"], np.float32) / px  # (rows, cols) px
    for k in range(nz):
        b, s, a = body[k], spine[k], aorta[k]
        if not (b.any() and s.any() and a.any()):
            continue
        free = _smoothstep((ndimage.distance_transform_edt(~s) * px - 2.0) / 12.0)  # 0 at the spine
        has = b.any(axis=0)
        front = b.argmax(axis=0).astype(np.float32)
        back = (ny - 1 - b[::-1].argmax(axis=0)).astype(np.float32)
        idx = np.nonzero(has)[0]
        nearest = idx[np.abs(np.arange(nx)[:, None] - idx[None, :]).argmin(axis=1)]  # columns beside the body
        front, back = front[nearest], back[nearest]
        # flat table: the back's rise that the table's curve explains settles onto the flat table
        lowest = back[has].max()
        table_rise = np.clip(table_top[has].max() - table_top, 0.0, None)
        rise = np.where(has, np.minimum(np.minimum(lowest - back, table_rise), 12.0 / px), 0.0)
        rise = ndimage.gaussian_filter1d(rise, 3.0)
        ramp = np.maximum(back - front, 40.0 / px)  # at least 40 mm, so thin flanks do not fold
        down = _smoothstep((rows - back + ramp) / ramp)
        dy = -params["flatten"] * rise[None, :] * down
        # anterior wall: forward, fading to nothing at the aorta
        a_rows, a_cols = np.nonzero(a)
        a_cy, a_cx = float(a_rows.mean()), float(a_cols.mean())
        b_cols = np.nonzero(has)[0]
        centre, half = 0.5 * (b_cols.min() + b_cols.max()), 0.5 * (b_cols.max() - b_cols.min()) + 1.0
        top = float(front[has].min())
        wall = _smoothstep((a_cy - rows) / max(a_cy - top, 1.0))
        dy += (params["anterior_mm"] / px) * wall * np.exp(-(((cols - centre) / (0.6 * half)) ** 2))
        # the aorta against the spine
        sigma = np.sqrt(a.sum() / np.pi) + 12.0 / px
        g = np.exp(-(((rows - a_cy - shift[0]) ** 2 + (cols - a_cx - shift[1]) ** 2) / (2.0 * sigma**2)))
        dy -= shift[0] * g
        field[1, k] = dy * free
        field[2, k] = -shift[1] * g * free
    return field


def _table_maps(template):
    """The table's fraction and its HU (real texture) on the output grid: the same for every slice and subject."""
    if getattr(template, "_table_maps", None) is None:
        rows, cols = template.fine_coordinates()
        t = _coarse(template, template.table, rows, cols)
        hu = _coarse(template, np.where(template.table, template.hu, 0.0), rows, cols)
        template._table_maps = (np.clip(t, 0.0, 1.0), np.where(t > 1e-3, hu / np.maximum(t, 1e-3), -1000.0))
    return template._table_maps


def _compose(outer, inner):
    """The pull-back of applying ``inner`` and then ``outer``: p + outer(p) + inner(p + outer(p))."""
    from scipy import ndimage

    coords = np.indices(outer.shape[1:], dtype=np.float32)
    coords += outer
    out = outer.copy()
    for c in range(3):
        out[c] += ndimage.map_coordinates(inner[c], coords, order=1, mode="nearest", prefilter=False)
    return out


def simulate_subject(template, index, seed=0, n_slices=DEFAULTS["n_slices"], noise=DEFAULTS["noise"],
                     inu=DEFAULTS["inu"], ct_noise_hu=DEFAULTS["ct_noise_hu"], jitter=DEFAULTS["jitter"],
                     warp_mm=DEFAULTS["warp_mm"], warp_grid_mm=DEFAULTS["warp_grid_mm"],
                     aorta_shift_mm=DEFAULTS["aorta_shift_mm"], anterior_mm=DEFAULTS["anterior_mm"],
                     flatten=DEFAULTS["flatten"], return_field=False):
    """Pseudo-subject ``index`` of the cohort with ``seed``: ``(volumes, info)`` (see the module docstring).

    ``volumes`` maps every key of :data:`VOLUME_KEYS` to a Volume on the phantom grid (and
    ``"posture"`` to the CT→MR field, voxels, with ``return_field``); ``info`` records the seed,
    the anatomy profile, the jittered tissue values, the posture and the MR noise sigma.

    The slices are rendered on the fine grid (CT number and MR signal per class, plus the real
    texture), averaged onto the output grid, then moved by the subject's anatomical warp (CT
    geometry) or by that warp followed by the posture (MR geometry). The posture's systematic
    part, the same for every subject as one scanner's table and protocol, shifts the aorta
    ``aorta_shift_mm`` forward-left at 45 degrees, moves the anterior wall ``anterior_mm`` forward
    and settles the back by ``flatten``; each subject adds its own jitter (aorta shift sd 1 mm
    per axis, wall sd 1.5 mm, flattening +- 0.1).
    """
    from scipy import ndimage

    from dicyc.phantom import _inu_field, rician

    T = template
    rng = np.random.default_rng([int(seed), int(index), 0xAB])
    # fixed order of draws: profile, contrast, anatomical warp, posture, CT noise, INU, MR noise
    profile = draw_profile(rng)
    hu = {n: T.median_hu[n] + (rng.uniform(-1, 1) * HU_JITTER.get(n, HU_JITTER_DEFAULT) if n not in ("air", "table") else 0.0)
          for n in CLASSES}
    mr_params = {n: {k: (v * rng.uniform(1.0 - jitter, 1.0 + jitter) if k != "r2p" else v) for k, v in p.items()}
                 for n, p in TISSUE_MR.items()}
    signal = {n: (tissue_signal(mr_params[n]) if n in mr_params else 0.0) for n in CLASSES}
    hu_body = np.array([hu[n] if n != "table" else hu["air"] for n in CLASSES], np.float32)
    sig = np.array([signal[n] for n in CLASSES], np.float32)
    rows, cols = T.fine_coordinates()
    nz = int(n_slices)
    shape = (nz, GRID_SIZE[1], GRID_SIZE[0])
    maps = {k: np.zeros(shape, np.float32) for k in ("ct", "mr", "aorta", "spine", "body")}
    labels = np.zeros(shape, np.uint8)
    for k, z in enumerate(slice_positions(nz)):
        lab, res = slice_labels(T, z, profile)
        res = np.where(lab == TABLE, 0.0, res)
        maps["ct"][k] = _coarse(T, hu_body[lab] + res, rows, cols)
        maps["mr"][k] = _coarse(T, sig[lab], rows, cols)
        maps["aorta"][k] = _coarse(T, lab == AORTA, rows, cols)
        maps["spine"][k] = _coarse(T, np.isin(lab, SPINE_CLASSES), rows, cols)
        maps["body"][k] = _coarse(T, np.isin(lab, BODY_CLASSES), rows, cols)
        labels[k] = ndimage.map_coordinates(np.where(lab == TABLE, AIR, lab), [rows, cols], order=0, mode="nearest")
    keys = list(maps)
    anat = _anatomical_warp(shape, rng, warp_mm, warp_grid_mm) if warp_mm > 0 else np.zeros((3, *shape), np.float32)
    ct_geo = dict(zip(keys, _warp_stack([maps[k] for k in keys], anat)))
    ct_geo["labels"] = _warp_stack([labels], anat, order=0)[0]
    table_frac, table_hu = _table_maps(T)
    table = np.broadcast_to(table_frac, shape)
    masks_ct = {k: ct_geo[k] >= 0.5 for k in ("aorta", "spine", "body")}

    # ---- the MR posture
    ang = np.deg2rad(45.0)
    posture = {
        "aorta_shift": [float(-aorta_shift_mm * np.sin(ang) + rng.normal(0, 1.0)),  # rows: forward is -
                        float(aorta_shift_mm * np.cos(ang) + rng.normal(0, 1.0))],  # columns: patient's left is +
        "anterior_mm": float(anterior_mm + rng.normal(0, 1.5)),
        "flatten": float(np.clip(flatten + rng.uniform(-0.1, 0.1), 0.0, 1.0)),
    }
    tt = table_frac >= 0.5
    table_top = np.where(tt.any(axis=0), tt.argmax(axis=0), GRID_SIZE[1] - 1)
    field = posture_field(masks_ct["body"], masks_ct["spine"], masks_ct["aorta"], table_top, posture)
    total = _compose(field, anat)
    mr_geo = dict(zip(keys, _warp_stack([maps[k] for k in keys], total)))
    mr_geo["labels"] = _warp_stack([labels], total, order=0)[0]
    masks_mr = {k: mr_geo[k] >= 0.5 for k in ("aorta", "spine", "body")}

    ct_clean = ct_geo["ct"] * (1.0 - table) + table * table_hu
    labels_ct = np.where(table >= 0.5, TABLE, ct_geo["labels"]).astype(np.uint8)
    ct = ct_clean + rng.standard_normal(shape).astype(np.float32) * np.float32(ct_noise_hu)
    field_inu = _inu_field(shape, masks_mr["body"], rng, inu)
    sigma = float(noise * signal["fat"])
    mr = rician(mr_geo["mr"] * field_inu, sigma, rng)

    grid = grid_volume(T, nz)
    volumes = {
        "ct": ct, "mr": mr, "ct_clean": ct_clean, "mr_clean": mr_geo["mr"], "ct_in_mr": mr_geo["ct"],
        "mr_in_ct": ct_geo["mr"], "aorta_ct": masks_ct["aorta"], "spine_ct": masks_ct["spine"],
        "body_ct": masks_ct["body"], "table_ct": table >= 0.5, "labels_ct": labels_ct,
        "aorta_mr": masks_mr["aorta"], "spine_mr": masks_mr["spine"], "body_mr": masks_mr["body"],
        "labels_mr": mr_geo["labels"],
    }
    volumes = {k: grid.with_array(np.ascontiguousarray(v.astype(np.uint8) if v.dtype == bool else v.astype(v.dtype)))
               for k, v in volumes.items()}
    if return_field:
        volumes["posture"] = field
        volumes["anatomy"] = anat
    info = {"seed": [int(seed), int(index)], "profile": {k: v for k, v in profile.items() if k != "gas"},
            "hu": hu, "mr_params": mr_params, "mr_signal": signal, "posture": posture, "sigma_mr": sigma,
            "ct_noise_hu": float(ct_noise_hu)}
    return volumes, info


#: every volume a subject has (see the module docstring)
VOLUME_KEYS = ("ct", "mr", "ct_clean", "mr_clean", "ct_in_mr", "mr_in_ct", "aorta_ct", "spine_ct", "body_ct",
               "table_ct", "labels_ct", "aorta_mr", "spine_mr", "body_mr", "labels_mr")
#: the volumes stored as scanner-like integers (CT in HU, MR signal rounded; sigma >= 8 units)
INTEGER_KEYS = ("ct", "mr")


# ===================================================================== cohort
def _params(n_subjects, n_test, seed, options):
    return {"version": ABDOMEN_VERSION, "n_subjects": int(n_subjects), "n_test": int(n_test), "seed": int(seed),
            **{k: float(options[k]) for k in DEFAULTS}, "grid_spacing": list(GRID_SPACING), "grid_size": list(GRID_SIZE),
            "sequence": SEQUENCE, "tissue_mr": TISSUE_MR, "source": SOURCE_SAMPLE}


def cohort_name(n_subjects=16, n_test=8, seed=0, **options):
    """A folder name for a cohort: its main parameters plus a short hash of all of them."""
    opts = dict(DEFAULTS, **options)
    digest = hashlib.sha1(json.dumps(_params(n_subjects, n_test, seed, opts), sort_keys=True).encode()).hexdigest()
    return f"abdomen-n{int(n_subjects)}-test{int(n_test)}-z{int(opts['n_slices'])}-seed{int(seed)}-{digest[:8]}"


def load_cohort(out_dir):
    """The parsed ``cohort.json`` of a cohort folder."""
    return cohort.load(out_dir)


def cohort_files(out_dir, split="train", key="ct"):
    """Absolute paths of one volume kind (a key of :data:`VOLUME_KEYS`) of one split, in subject order."""
    return cohort.files(out_dir, split, key)


def make_cohort(out_dir, n_subjects=16, n_test=8, seed=0, log=None, **options):
    """Simulate ``n_subjects`` abdominal pseudo-subjects (the last ``n_test`` are the test split).

    Writes, per subject ``sub-XX``, one ``sub-XX_<key>.nii.gz`` per key of :data:`VOLUME_KEYS`,
    then ``cohort.json`` (parameters, split, per-subject profile, tissue values and posture) and
    list files ``{train,test}_<key>.txt`` (absolute paths, one per line) for ``dicyc train --a``;
    returns ``out_dir`` as a Path. Deterministic from ``seed``; every file is written atomically,
    and a folder whose ``cohort.json`` records the same parameters (with all its files) is reused.
    ``options`` override :data:`DEFAULTS`.
    """
    log = log or (lambda message: None)
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown abdominal phantom option(s): {', '.join(sorted(unknown))}")
    n_subjects, n_test = cohort.check_sizes(n_subjects, n_test)
    opts = dict(DEFAULTS, **options)
    if int(opts["n_slices"]) < 2:
        raise DicycError(f"the abdominal phantom needs at least 2 slices; got {opts['n_slices']}.")
    params = _params(n_subjects, n_test, seed, opts)
    out_dir = Path(out_dir).expanduser().resolve()
    if cohort.reuse(out_dir, params, VOLUME_KEYS):
        log(f"abdominal phantom cohort {out_dir} is up to date ({n_subjects} subjects)")
        return out_dir
    started = time.monotonic()
    log(f"simulating a {n_subjects}-subject abdominal MR/CT phantom cohort in {out_dir} ...")
    template = load_template(log=log)
    sim = {k: (int(v) if k == "n_slices" else v) for k, v in opts.items()}

    def on_disk(key, vol):  # the scans as scanner-like integers: CT in HU, MR signal rounded
        if key == "ct":
            return vol.with_array(np.clip(np.rint(vol.array), -1024, 3071).astype(np.int16))
        if key == "mr":
            return vol.with_array(np.clip(np.rint(vol.array), 0, 32767).astype(np.int16))
        return vol

    subjects = cohort.write_subjects(out_dir, n_subjects, n_test, VOLUME_KEYS,
                                     lambda index: simulate_subject(template, index, seed=seed, **sim), on_disk, log)
    record = cohort.manifest(
        params, subjects, grid_volume(template, int(opts["n_slices"])),
        classes=list(CLASSES), real_slice_hu=template.median_hu,
        source="real anatomy: one abdominal CT slice (pydicom-data explicit_VR-UN.dcm), segmented by HU; "
               "simulated: the third dimension, pseudo-subjects, the T2*-weighted MR (1.5 T relaxation: "
               "de Bazelaire et al. 2004, Stanisz et al. 2005) and the MR posture (dicyc.abdomen)",
    )
    return cohort.finish(out_dir, record, VOLUME_KEYS, started, log, "abdominal phantom cohort")
