"""Which modality a volume holds, and whether two volumes hold one modality.

Why: MSE, PSNR and SSIM compare intensities voxel for voxel, which means something only when
both volumes are of one modality (a synthetic CT against a CT). Across modalities (a synthetic
CT against its source MR) they measure the contrast difference between CT and MR, not the
synthesis; the measures that are valid there are NMI (an intensity *relation*) and the agreement
of the body outlines (:func:`dicyc.metrics.cross_modality_metrics`). So a comparison first
settles the two modalities, taking each from the most reliable evidence there is:

1. what the user says (``--modality-a/--modality-b``, ``--cross-modality``);
2. what the file records: ``dicyc synthesize`` writes its model card's target modality into the
   output (``modality=CT`` in NIfTI's ``descrip``, a NRRD/MetaImage header key or DICOM's
   SeriesDescription; :func:`dicyc.volume.read_modality`), and scanners' DICOM has a Modality tag;
3. a CT recognised by its Hounsfield units (:func:`looks_like_ct`; the rule is one-sided: it can
   say "CT", never "MR");
4. otherwise unknown.

Then (:func:`same_modality`): CT against CT, or one MR weighting against itself, is one
modality; CT against anything else is cross-modality, and so is one MR weighting against
another (T1 against T2); a generic "MR" matches any MR weighting. An unknown volume did not look
like CT, so against a CT it is cross-modality, and against anything else it is taken to be the
same modality (what every comparison did before modalities were known, e.g. a synthetic T2
against a real T2).
"""

import numpy as np

from dicyc.errors import DicycError

#: HU rule (:func:`looks_like_ct`): air around -1000 HU (-1024 is the usual padding and the
#: bottom of the model window; scanner noise spreads real air by tens of HU) ...
CT_AIR_HU = (-1100.0, -900.0)
#: ... and soft tissue near water (fat -100, CSF 0, brain, muscle and blood 20-60 HU) ...
CT_SOFT_TISSUE_HU = (-200.0, 200.0)
#: ... each in at least this fraction of the voxels ...
CT_MIN_FRACTION = 0.02
#: ... and nothing far below air: scanners pad outside the field of view at -1024, -2048 or
#: -3024 HU, so values below this mean another intensity scale altogether.
CT_LOWEST_HU = -3100.0
#: voxels looked at by the HU rule (an even stride through the volume)
_SAMPLE = 2_000_000

SOURCES = ("option", "file", "HU statistics", "unknown")


def normalize(modality):
    """Canonical spelling of a modality name ("ct" → "CT", "t2" → "T2"); None stays None."""
    if modality is None:
        return None
    text = str(modality).strip().upper()
    if not text:
        return None
    if not all(ch.isalnum() or ch in "*+_-" for ch in text) or len(text) > 16:
        raise DicycError(f"{modality!r} is not a modality name such as CT, MR, T1 or T2.")
    return text


def is_ct(modality):
    return normalize(modality) == "CT"


def looks_like_ct(array):
    """True where ``array`` has the intensity statistics of a CT in Hounsfield units.

    The rule: at least :data:`CT_MIN_FRACTION` of the voxels are air (:data:`CT_AIR_HU`) *and* at
    least as many are soft tissue (:data:`CT_SOFT_TISSUE_HU`), and none lies below
    :data:`CT_LOWEST_HU`. Both peaks at once sit at fixed places only on the HU scale: an MR
    (no absolute unit, background near 0, no values near -1000), an MR normalised to [-1, 1] or
    z-scored, and a CT stored without its rescale (0…4095) all fail it. It can fail on a CT
    cropped so tightly that no air is left: then the file's record or a flag must say so.
    """
    arr = np.asarray(array)
    if arr.size == 0:
        return False
    sample = arr.reshape(-1)[:: max(1, arr.size // _SAMPLE)].astype(np.float32, copy=False)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0 or float(sample.min()) < CT_LOWEST_HU:
        return False
    air = np.count_nonzero((sample >= CT_AIR_HU[0]) & (sample <= CT_AIR_HU[1])) / sample.size
    soft = np.count_nonzero((sample >= CT_SOFT_TISSUE_HU[0]) & (sample <= CT_SOFT_TISSUE_HU[1])) / sample.size
    return bool(air >= CT_MIN_FRACTION and soft >= CT_MIN_FRACTION)


def detect(volume, given=None, path=None):
    """``{"modality": NAME or None, "source": one of SOURCES}`` of one volume.

    ``given`` (the user's word) wins, then what the file at ``path`` records, then the HU rule.
    """
    if given:
        return {"modality": normalize(given), "source": "option"}
    if path is not None:
        from dicyc.volume import read_modality

        recorded = read_modality(path)
        if recorded:
            return {"modality": normalize(recorded), "source": "file"}
    if volume is not None and looks_like_ct(volume.array if hasattr(volume, "array") else volume):
        return {"modality": "CT", "source": "HU statistics"}
    return {"modality": None, "source": "unknown"}


def same_modality(a, b):
    """True/False where the two modality names settle it, None where one is unknown (see the module notes)."""
    a, b = normalize(a), normalize(b)
    if a is None or b is None:
        return None
    if a == "CT" or b == "CT":
        return a == b
    return a == b or "MR" in (a, b)


def resolve(a_vol, b_vol, modality_a=None, modality_b=None, cross_modality=None, path_a=None, path_b=None):
    """Settle the modalities of A and B and whether comparing them is cross-modality.

    Returns ``{"a": detect(...), "b": detect(...), "cross_modality": bool, "decided_by": text}``.
    ``cross_modality`` True or False (the ``--cross-modality`` flag) overrides the evidence.
    """
    a = detect(a_vol, modality_a, path_a)
    b = detect(b_vol, modality_b, path_b)
    if cross_modality is not None:
        return {"a": a, "b": b, "cross_modality": bool(cross_modality), "decided_by": "option"}
    same = same_modality(a["modality"], b["modality"])
    if same is not None:
        return {"a": a, "b": b, "cross_modality": not same, "decided_by": "modalities"}
    known = a["modality"] or b["modality"]
    # an unknown volume failed the HU rule: it is not a CT
    cross = is_ct(known)
    return {"a": a, "b": b, "cross_modality": cross,
            "decided_by": "CT against a volume that is not CT-like" if cross else "no evidence of two modalities"}
