"""The :class:`Volume` type: a 3-D array plus the geometry that places it in the patient.

Conventions (the same as ITK/SimpleITK, which reads and writes every format here):

* ``array`` is indexed ``[z, y, x]`` (k, j, i) like Slicer's ``arrayFromVolume``.
* ``spacing`` and ``origin`` are in ``(x, y, z)`` order, millimetres.
* ``direction`` is a 3x3 matrix whose *columns* are the directions of the i, j, k axes in
  LPS patient coordinates (ITK's physical space). Slicer works in RAS: use :meth:`ijk_to_ras`.

A synthetic volume must overlay its input voxel for voxel, so every function that produces a
volume from another keeps this geometry exactly, and every write is atomic.
"""

import glob
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicyc.errors import DicycError

#: File extensions written through SimpleITK, lower case.
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _sitk():
    import SimpleITK as sitk  # lazy: keeps ``import dicyc`` and the CLI fast

    return sitk


@dataclass
class Volume:
    """A 3-D image with its geometry. See the module docstring for the conventions."""

    array: np.ndarray
    spacing: tuple = (1.0, 1.0, 1.0)
    origin: tuple = (0.0, 0.0, 0.0)
    direction: np.ndarray = None

    def __post_init__(self):
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise ValueError(f"Volume arrays are 3-D (z, y, x); got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.eye(3) if self.direction is None else np.array(self.direction, dtype=float).reshape(3, 3)
        if len(self.spacing) != 3 or len(self.origin) != 3:
            raise ValueError("spacing and origin need three values (x, y, z)")
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive; got {self.spacing}")

    # ----------------------------------------------------------------- geometry
    @property
    def shape(self):
        """Array shape (z, y, x)."""
        return self.array.shape

    @property
    def size(self):
        """Voxel counts in ITK order (x, y, z)."""
        return tuple(reversed(self.array.shape))

    def with_array(self, array):
        """A new volume on the same grid holding ``array`` (shape must match)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match the grid {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction.copy())

    def ijk_to_lps(self):
        """4x4 matrix mapping voxel (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras(self):
        """4x4 matrix mapping voxel (i, j, k, 1) to RAS millimetres, as Slicer's IJKToRAS."""
        m = self.ijk_to_lps()
        m[:3, :] = LPS_TO_RAS @ m[:3, :]
        return m

    @classmethod
    def from_ijk_to_ras(cls, array, ijk_to_ras):
        """Build a volume from an array (z, y, x) and Slicer's 4x4 IJKToRAS matrix."""
        m = np.asarray(ijk_to_ras, dtype=float)
        lin = LPS_TO_RAS @ m[:3, :3]
        spacing = np.linalg.norm(lin, axis=0)
        return cls(array, tuple(spacing), tuple(LPS_TO_RAS @ m[:3, 3]), lin / spacing)

    def corners_lps(self):
        """The eight corner voxel centres in LPS millimetres, shape (8, 3)."""
        nx, ny, nz = self.size
        idx = np.array([[i, j, k, 1.0] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)])
        return (self.ijk_to_lps() @ idx.T).T[:, :3]

    def bounds_lps(self):
        """Axis-aligned physical bounding box (min xyz, max xyz), including half a voxel border."""
        nx, ny, nz = self.size
        idx = np.array([[i, j, k, 1.0] for i in (-0.5, nx - 0.5) for j in (-0.5, ny - 0.5) for k in (-0.5, nz - 0.5)])
        pts = (self.ijk_to_lps() @ idx.T).T[:, :3]
        return pts.min(axis=0), pts.max(axis=0)

    def same_grid(self, other, tol=1e-4):
        """True where both volumes have the same size and (within ``tol`` mm) the same geometry."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    def overlaps(self, other):
        """True where the physical bounding boxes of the two volumes intersect."""
        a_lo, a_hi = self.bounds_lps()
        b_lo, b_hi = other.bounds_lps()
        return bool(np.all(a_lo < b_hi) and np.all(b_lo < a_hi))

    # ----------------------------------------------------------------- SimpleITK
    def to_sitk(self):
        """The volume as a SimpleITK image (array copied)."""
        sitk = _sitk()
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image):
        """A volume from a 3-D scalar SimpleITK image."""
        sitk = _sitk()
        return cls(
            sitk.GetArrayFromImage(image),
            image.GetSpacing(),
            image.GetOrigin(),
            np.array(image.GetDirection()).reshape(3, 3),
        )

    def __repr__(self):
        return (
            f"Volume(size={self.size}, dtype={self.array.dtype}, spacing={tuple(round(s, 4) for s in self.spacing)}, "
            f"origin={tuple(round(o, 3) for o in self.origin)})"
        )


# ===================================================================== reading
def _display(path):
    return str(path)


def _reduce_components(image, path):
    """Grey images stored as RGB(A) become scalar; real colour images are refused."""
    sitk = _sitk()
    n = image.GetNumberOfComponentsPerPixel()
    if n == 1:
        return image
    arr = sitk.GetArrayViewFromImage(image)
    colour = arr[..., :3] if n >= 3 else arr
    if not np.all(colour == colour[..., :1]):
        raise DicycError(f"{_display(path)} is a colour image with {n} channels; DiCyc needs a greyscale image.")
    scalar = sitk.VectorIndexSelectionCast(image, 0)
    return scalar


def _to_3d(image, path, allow_2d):
    sitk = _sitk()
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 4:
        if size[3] == 1:
            return sitk.Extract(image, (size[0], size[1], size[2], 0), (0, 0, 0, 0))
        raise DicycError(
            f"{_display(path)} is a 4-D image ({'x'.join(map(str, size))}); DiCyc needs a single 3-D volume, "
            "so extract one frame first."
        )
    if dim == 2:
        if not allow_2d:
            raise DicycError(
                f"{_display(path)} is a 2-D image ({size[0]}x{size[1]}); a 3-D volume is needed here "
                "(save it as a single-slice NIfTI if that is what you mean)."
            )
        return sitk.JoinSeries(image)
    if dim != 3:
        raise DicycError(f"{_display(path)} is a {dim}-D image; DiCyc needs a 3-D volume.")
    return image


def _itk_call(call):
    """Run a SimpleITK call with ITK's raw messages captured: (result or None, RuntimeError or None, text)."""
    from dicyc.itklog import itk_messages, text

    with itk_messages() as captured:
        try:
            result, error = call(), None
        except RuntimeError as exc:
            result, error = None, exc
    return result, error, text(captured)


#: What ITK says about a file, said in our words (matched on ITK's message; None: not worth a word).
_READ_NOTES = (
    ("unexpected scales in sform", "its NIfTI sform matrix is not a rotation with spacing, so the geometry comes "
                                   "from its qform instead (as ITK reads it); check the volume's orientation"),
    ("non uniform sampling", None),  # DICOM series spacing: checked by _check_series_spacing
)


def _relay_reader_messages(path, said):
    """Turn what the reader printed into at most one warning of ours, naming the file."""
    from dicyc.itklog import summary

    if not said.strip():
        return
    lowered = said.lower()
    for key, note in _READ_NOTES:
        if key in lowered:
            if note:
                warnings.warn(f"{_display(path)}: {note}.", stacklevel=3)
            return
    line = summary(said)
    if line:
        warnings.warn(f"{_display(path)}: the image reader noted: {line}.", stacklevel=3)


def _looks_like_dicom(path):
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_dicom_folder(folder):
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    series, error, said = _itk_call(lambda: reader.GetGDCMSeriesIDs(str(folder)) or ())
    series = series or ()
    if not series:
        names = [p for p in Path(folder).iterdir() if not p.name.startswith(".")] if Path(folder).is_dir() else []
        if not names:
            raise DicycError(f"{_display(folder)} is an empty folder; give an image file or a DICOM series folder.")
        raise DicycError(f"{_display(folder)} is a folder with no DICOM series in it.")
    files_per_series = {}
    for sid in series:
        files, _, _ = _itk_call(lambda sid=sid: reader.GetGDCMSeriesFileNames(str(folder), sid))
        files_per_series[sid] = tuple(files or ())
    # GDCM leaves a file it cannot parse out of every series without a word: a truncated slice
    # would silently vanish from the volume. Refuse instead, naming it.
    listed = {os.path.abspath(f) for files in files_per_series.values() for f in files}
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR" and _looks_like_dicom(p):
            if os.path.abspath(p) not in listed:
                raise DicycError(
                    f"{_display(p)} in the DICOM series folder {_display(folder)} is not a readable DICOM image "
                    "(truncated or damaged), so the series would be read without it; repair or remove it."
                )
    sid = max(files_per_series, key=lambda s: len(files_per_series[s]))
    if len(series) > 1:
        warnings.warn(
            f"{folder} holds {len(series)} DICOM series; reading the largest ({len(files_per_series[sid])} files, "
            f"series {sid}).",
            stacklevel=3,
        )
    reader.SetFileNames(files_per_series[sid])
    reader.MetaDataDictionaryArrayUpdateOn()
    image, error, said = _itk_call(reader.Execute)
    if error is not None:
        from dicyc.itklog import clean_exception

        raise DicycError(f"{_display(folder)} holds a DICOM series that cannot be read ({clean_exception(error)}).")
    _check_series_spacing(folder, reader, image, len(files_per_series[sid]))
    _relay_reader_messages(folder, said)
    return image


#: A DICOM series whose slice gaps differ from their mean by more than this fraction is refused.
SERIES_GAP_TOLERANCE = 0.1


def _check_series_spacing(folder, reader, image, n):
    """Refuse a series with a missing, damaged or doubled slice: ITK would spread the gap evenly."""
    if n < 3:
        return
    normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
    positions = []
    for i in range(n):
        try:
            values = [float(v) for v in reader.GetMetaData(i, "0020|0032").replace(",", "\\").split("\\")]
        except (RuntimeError, ValueError):
            return  # no positions (e.g. secondary captures): nothing to check against
        if len(values) != 3:
            return
        positions.append(float(np.dot(values, normal)))
    gaps = np.abs(np.diff(np.sort(positions)))
    mean = float(gaps.mean())
    if mean <= 0 or float(np.abs(gaps - mean).max()) > SERIES_GAP_TOLERANCE * mean:
        worst = float(gaps.max()) if mean > 0 else 0.0
        raise DicycError(
            f"{_display(folder)} is not an evenly spaced DICOM series (slice gaps from {gaps.min():.4g} to "
            f"{worst:.4g} mm), so a slice is missing, damaged or repeated; the volume would be distorted."
        )


def _slice_thickness(image):
    """SliceThickness of a single DICOM slice, where present: SimpleITK reports 1 mm otherwise."""
    try:
        value = float(image.GetMetaData("0018|0050").strip())
    except (RuntimeError, ValueError):
        return None
    return value if value > 0 else None


def check_complete(path):
    """Refuse (one sentence) an image file whose voxel data are cut short or damaged.

    ITK's NIfTI reader fills a truncated file's missing voxels with 0 without a word, so the
    check reads the file's own header and data stream (:mod:`dicyc.imagecheck`).
    """
    from dicyc.imagecheck import IncompleteImage, check_image_file

    try:
        check_image_file(path)
    except IncompleteImage as exc:
        raise DicycError(f"{_display(path)} is incomplete: {exc}.") from None
    except OSError as exc:
        raise DicycError(f"{_display(path)} cannot be read: {exc.strerror or exc}.") from None


def read_volume(path, allow_2d=False, check_finite=True):
    """Read a 3-D volume from NIfTI, NRRD, MHA/MHD, a single DICOM file or a DICOM series folder.

    Raises :class:`DicycError` with one sentence naming the file for anything unusable:
    a missing path, a non-image file, a truncated or damaged file, 4-D or (unless
    ``allow_2d``) 2-D data, colour images, empty volumes and NaN/Inf voxels.
    """
    sitk = _sitk()
    path = Path(path)
    if not path.exists():
        raise DicycError(f"{_display(path)} does not exist.")
    if path.is_dir():
        image = _read_dicom_folder(path)
    else:
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise DicycError(f"{_display(path)} cannot be read: {exc.strerror or exc}.") from None
        if path.stat().st_size == 0:
            raise DicycError(f"{_display(path)} is an empty file, not an image.")
        check_complete(path)
        if str(path).lower().endswith((".nii", ".nii.gz")):
            _check_nifti_header(path)
        image, error, said = _itk_call(lambda: sitk.ReadImage(str(path)))
        if error is not None:
            raise DicycError(
                f"{_display(path)} is not an image file DiCyc can read (NIfTI, NRRD, MHA/MHD, DICOM or PNG)."
            )
        _relay_reader_messages(path, said)
    image = _reduce_components(image, path)
    image = _to_3d(image, path, allow_2d)
    if min(image.GetSize()) == 0:
        raise DicycError(f"{_display(path)} is an empty image (size {image.GetSize()}).")
    if image.GetSize()[2] == 1 and path.is_file() and path.suffix.lower() in ("", ".dcm", ".ima"):
        thickness = _slice_thickness(image)
        if thickness:
            spacing = list(image.GetSpacing())
            spacing[2] = thickness
            image.SetSpacing(spacing)
    volume = Volume.from_sitk(image)
    if check_finite:
        check_finite_values(volume, path)
        if path.is_file() and str(path).lower().endswith((".nii", ".nii.gz")):
            _check_nifti_finite(path)
    return volume


def _nibabel_load(path):
    """``nibabel.load`` with nibabel's own log lines ("pixdim[1,2,3] should be non-zero") kept off the terminal."""
    import logging

    import nibabel

    logger = logging.getLogger("nibabel")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return nibabel.load(str(path))
    finally:
        logger.setLevel(level)


def _check_nifti_header(path):
    """Refuse a NIfTI whose geometry comes from a voxel size (pixdim) of zero or not a number.

    Without an sform matrix the voxel size is pixdim alone, and ITK (and nibabel) quietly read a
    zero or NaN there as 1 mm: every distance, overlay and resampling of the volume would then be
    wrong without a word.
    """
    from dicyc.imagecheck import nifti_header

    header = nifti_header(path)
    if header is None:
        return  # not a NIfTI header we can parse: ITK's reader gives the refusal
    try:
        ndim = min(int(header["dim"][0]), 3)
        pixdim = [float(v) for v in header["pixdim"][1 : ndim + 1]]
        has_sform = int(header["sform_code"]) > 0
    except (TypeError, ValueError, KeyError):
        return
    if not has_sform and not all(np.isfinite(v) and v != 0 for v in pixdim):
        raise DicycError(
            f"{_display(path)} has an invalid voxel size in its header (pixdim {', '.join(f'{v:g}' for v in pixdim)}), "
            "so its geometry is unknown."
        )


def _check_nifti_finite(path):
    """ITK's NIfTI reader silently turns NaN and Inf into 0, so look at the raw data with nibabel."""
    image = _nibabel_load(path)
    if not np.issubdtype(image.get_data_dtype(), np.floating):
        return
    data = np.asanyarray(image.dataobj)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise DicycError(f"{_display(path)} contains {bad} NaN or infinite voxels.")


def check_finite_values(volume, name):
    """Refuse volumes holding NaN or Inf: every metric and network would silently propagate them."""
    arr = volume.array
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise DicycError(f"{_display(name)} contains {bad} NaN or infinite voxels.")


def check_not_constant(volume, name):
    """Refuse a volume in which every voxel has the same value (no contrast to compare or learn)."""
    arr = volume.array
    if arr.size and arr.min() == arr.max():
        raise DicycError(f"{_display(name)} is constant (every voxel is {arr.flat[0]}); it holds no image.")


def read_mask(path, reference, reference_name="the reference"):
    """Read a mask (label map, any non-zero voxel counts) onto ``reference``'s grid.

    A mask on another grid is resampled with nearest-neighbour interpolation, and reference
    voxels outside the mask's own extent are outside the mask (padding with 0: padding with the
    mask's minimum made a cropped all-ones ROI select the whole reference). Refuses a mask with
    no voxels, one that does not overlap the reference, one left empty after resampling, and
    one that would cover voxels beyond its own extent (an artefact of resampling).
    """
    from dicyc.preprocess import resample_to_grid

    mask = read_volume(path, allow_2d=True)
    if not np.any(mask.array):
        raise DicycError(f"{_display(path)} is an empty mask: it has no non-zero voxels.")
    if not mask.same_grid(reference):
        if not mask.overlaps(reference):
            raise DicycError(f"{_display(path)} lies entirely outside {reference_name}: the mask and the volume do not overlap.")
        resampled = resample_to_grid(mask.with_array((mask.array != 0).astype(np.uint8)), reference,
                                     interpolation="nearest", default_value=0)
        out = resampled.array != 0
        if out.all() and not _covers(mask, reference):
            raise DicycError(
                f"{_display(path)} covers all of {reference_name} only as an artefact of resampling it onto that grid: "
                "the mask does not extend over the whole volume."
            )
    else:
        out = mask.array != 0
    if not out.any():
        raise DicycError(f"{_display(path)} has no mask voxels inside {reference_name}.")
    return out


def _covers(mask, reference):
    """True where every voxel centre of ``reference`` lies inside ``mask``'s grid (half a voxel of slack)."""
    inverse = np.linalg.inv(mask.ijk_to_lps())
    corners = reference.corners_lps()
    ijk = (inverse @ np.c_[corners, np.ones(len(corners))].T).T[:, :3]
    upper = np.array(mask.size, dtype=float) - 0.5
    return bool(np.all(ijk >= -0.5 - 1e-6) and np.all(ijk <= upper + 1e-6))


# ===================================================================== writing
def volume_format(path):
    """'dicom-folder' for a path without an image extension, else the matching extension."""
    name = str(path).lower()
    for ext in IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    if Path(path).suffix == "" or str(path).endswith(os.sep):
        return "dicom-folder"
    raise DicycError(
        f"{_display(path)} has an unknown image extension; use one of {', '.join(IMAGE_EXTENSIONS)} "
        "or a folder name for a DICOM series."
    )


#: Files of a DICOM series written by :func:`write_volume` (and nothing else may be in its folder).
DICOM_SLICE_NAME = re.compile(r"^slice_\d{5}\.dcm$")
DICOM_PATIENT_NAME = "DiCyc^Export"


def is_dicyc_series(folder):
    """True where ``folder`` holds exactly a DICOM series that DiCyc wrote (so replacing it loses nothing else)."""
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return False
    if not entries or not all(p.is_file() and DICOM_SLICE_NAME.match(p.name) for p in entries):
        return False
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(entries[0]))
    _, error, _ = _itk_call(reader.ReadImageInformation)
    if error is not None:
        return False
    try:
        return reader.GetMetaData("0010|0010").strip() == DICOM_PATIENT_NAME
    except RuntimeError:
        return False


def check_output_path(path, overwrite=False, what="output"):
    """Refuse now (one sentence) an output path that cannot or must not be written.

    Called before minutes of work: a folder with the user's files in it is never replaced by a
    DICOM series unless ``overwrite`` (only a series DiCyc wrote, or an empty folder, is), an
    image file name that is an existing folder is refused, and the folder must be writable.
    """
    from dicyc.atomic import check_writable

    fmt = volume_format(path)
    path = Path(str(path).rstrip(os.sep))
    if fmt == "dicom-folder":
        if path.is_file() and not overwrite:
            raise DicycError(
                f"{_display(path)} is an existing file; a name without an extension is written as a DICOM series "
                "folder, so choose another name (or allow overwriting it with --overwrite)."
            )
        if path.is_dir() and any(path.iterdir()) and not overwrite and not is_dicyc_series(path):
            first = sorted(p.name for p in path.iterdir())[0]
            raise DicycError(
                f"{_display(path)} is an existing folder holding files that are not a DICOM series written by DiCyc "
                f"(such as {first}); choose another {what}, or pass --overwrite to replace the folder and all its files."
            )
    elif path.is_dir():
        raise DicycError(f"{_display(path)} is a folder; give a file name for the {what} (e.g. {path.name or 'out'}.nii.gz).")
    check_writable(path.parent, target=path)
    return fmt


def _itk_write(call, target, needed):
    """Run a SimpleITK write; a raised error or one only printed (niftilib's short write) becomes one sentence."""
    from dicyc.atomic import write_error
    from dicyc.itklog import clean_exception, has_error, summary

    _, error, said = _itk_call(call)
    if error is not None:
        raise write_error(target, error, detail=clean_exception(error), needed=needed)
    if has_error(said):
        raise write_error(target, detail=summary(said) or "the image writer reported an error", needed=needed)


def write_volume(volume, path, modality=None, overwrite=False):
    """Write ``volume`` atomically to ``path``; the format follows the extension.

    A path without an extension becomes a DICOM series folder (one file per slice); an existing
    folder there is replaced only if it is a series DiCyc wrote, is empty, or ``overwrite``.
    DICOM stores integers: integer-valued data within int16 are stored exactly, anything else
    with a rescale slope/intercept (DICOM's own way of storing real values).

    ``modality`` (e.g. "CT", "MR", "T2"), where given, is recorded in the file so that later
    comparisons know what it holds without guessing (:func:`read_modality`): see
    :func:`modality_note` for where each format keeps it.

    Every file is checked before it is published (all the voxel bytes its header announces are
    on disk); a failure, such as a full disk, raises :class:`DicycError` ("could not write …: no
    space left on …"), leaves no temporary file and leaves an existing ``path`` untouched.
    """
    from dicyc.atomic import atomic_path, verify_file

    sitk = _sitk()
    fmt = volume_format(path)
    note = modality_note(modality) if modality else None  # a bad name fails before anything is written
    path = Path(str(path).rstrip(os.sep))
    if fmt == "dicom-folder":
        _write_dicom_series(volume, path, modality=modality, overwrite=overwrite)
        return path
    if fmt == ".dcm" and volume.shape[0] != 1:
        raise DicycError(
            f"{_display(path)}: a single DICOM file holds one slice; give a folder name to write a "
            f"{volume.shape[0]}-slice DICOM series."
        )
    if fmt == ".dcm":
        _write_dicom_series(volume, path, single_file=True, modality=modality, overwrite=overwrite)
        return path
    image = volume.to_sitk()
    if note:
        image.SetMetaData(FILE_NOTES_KEY, note)
    needed = int(volume.array.nbytes)
    with atomic_path(path, verify=False, needed=needed) as tmp:
        tmp_stem = tmp.name[: -len(fmt)]
        try:
            # .mhd/.nhdr write a second (raw) data file named after the header: write both under the
            # temporary name, check them, then publish the data file under the final name too.
            _itk_write(lambda: sitk.WriteImage(image, str(tmp), useCompression=fmt in (".nii.gz", ".nrrd", ".mha")),
                       path, needed)
            del image
            verify_file(tmp, path)
            if fmt in (".mhd", ".nhdr"):
                _publish_detached_data(tmp, path, fmt)
        finally:
            for leftover in tmp.parent.glob(glob.escape(tmp_stem) + ".*"):
                if leftover != tmp:
                    try:
                        leftover.unlink()
                    except OSError:
                        pass
    return path


# ===================================================================== recorded modality
#: SimpleITK's metadata key that NIfTI writes as its 80-character ``descrip`` field and NRRD,
#: MetaImage (.mha/.mhd) write as a header line; read back the same way by each
FILE_NOTES_KEY = "ITK_FileNotes"
_MODALITY_TOKEN = re.compile(r"\bmodality=([A-Za-z0-9*+_-]{1,16})")


def modality_note(modality):
    """The text recording ``modality`` in a file: ``"dicyc modality=CT"``.

    Why a token in a free-text field: it is the one place every format we write keeps (NIfTI's
    ``descrip``, a NRRD or MetaImage header key, DICOM's SeriesDescription), survives being
    copied, renamed or opened and saved by other tools that keep headers, and is short enough for
    NIfTI's 80 characters. DICOM output also gets the matching Modality tag (CT or MR).
    """
    text = str(modality).strip()
    if not re.fullmatch(r"[A-Za-z0-9*+_-]{1,16}", text):
        raise DicycError(f"{modality!r} is not a modality name such as CT, MR, T1 or T2.")
    return f"dicyc modality={text}"


def _modality_from_note(text):
    match = _MODALITY_TOKEN.search(str(text or ""))
    return match.group(1) if match else None


def _dicom_modality(reader_or_image):
    """The modality a DICOM header gives: our SeriesDescription token, else its Modality tag (CT/MR)."""
    get = reader_or_image.GetMetaData
    has = reader_or_image.HasMetaDataKey
    if has("0008|103e"):
        found = _modality_from_note(get("0008|103e"))
        if found:
            return found
    if has("0008|0060"):
        tag = get("0008|0060").strip().upper()
        if tag in ("CT", "MR"):
            return tag
    return None


def read_modality(path):
    """The modality recorded in the header of ``path`` (a file or DICOM series folder), else None.

    Reads only the header. Sources: the ``modality=`` token that :func:`write_volume` writes
    (every format), and for DICOM also the standard Modality tag, which scanners fill in (CT, MR).
    Files that record nothing, or that cannot be read as images, give None: the caller falls
    back on other evidence.
    """
    sitk = _sitk()
    path = Path(path)

    def header():
        nonlocal path
        if path.is_dir():
            series_reader = sitk.ImageSeriesReader()
            series = series_reader.GetGDCMSeriesIDs(str(path)) or ()
            if not series:
                return None
            names = max((series_reader.GetGDCMSeriesFileNames(str(path), sid) for sid in series), key=len)
            path = Path(names[0])
        file_reader = sitk.ImageFileReader()
        file_reader.SetFileName(str(path))
        file_reader.ReadImageInformation()
        return file_reader

    # ITK's remarks on the file (an odd sform) are the volume reader's to relay, once: drop them here
    reader, error, _ = _itk_call(header)
    if error is not None or reader is None:
        return None
    if reader.HasMetaDataKey("0008|0060") or reader.HasMetaDataKey("0008|103e"):
        return _dicom_modality(reader)
    for key in (FILE_NOTES_KEY, "descrip"):
        if reader.HasMetaDataKey(key):
            found = _modality_from_note(reader.GetMetaData(key))
            if found:
                return found
    return None


def record_modality(path, modality):
    """Make the file at ``path`` record ``modality``; returns True if it had to be rewritten.

    A no-op (header read only) when the file already records it. Otherwise the image is read and
    written again, atomically, with the note added and everything else kept: for volumes
    written by code that did not pass ``modality`` to :func:`write_volume`.
    """
    from dicyc.atomic import atomic_path

    note = modality_note(modality)
    current = read_modality(path)
    if current is not None and current.upper() == note.split("=", 1)[1].upper():
        return False
    if volume_format(path) in ("dicom-folder", ".dcm"):
        write_volume(read_volume(path, allow_2d=True, check_finite=False), path, modality=modality)
        return True
    sitk = _sitk()
    path = Path(path)
    image = sitk.ReadImage(str(path))
    image.SetMetaData(FILE_NOTES_KEY, note)
    fmt = volume_format(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=fmt in (".nii.gz", ".nrrd", ".mha"))
        if fmt in (".mhd", ".nhdr"):
            _publish_detached_data(tmp, path, fmt)
    return True


def _publish_detached_data(tmp, path, fmt):
    """Point the temporary header at the final data file name, then rename the data file there.

    The header is rewritten first, so a failure (a full disk) leaves only temporary files; the
    header itself is published by the caller's atomic rename right after the data file.
    """
    tmp = Path(tmp)
    key = "ElementDataFile" if fmt == ".mhd" else "data file"
    lines = tmp.read_text().splitlines()
    out, moves = [], []
    for line in lines:
        stripped = line.split("=" if fmt == ".mhd" else ":", 1)
        if len(stripped) == 2 and stripped[0].strip().lower() == key.lower():
            data_name = stripped[1].strip()
            data_tmp = tmp.parent / data_name
            data_ext = data_name[len(tmp.name) - len(fmt):] if data_name.startswith(tmp.name[: -len(fmt)]) else Path(data_name).suffix
            final_data = path.parent / (path.name[: -len(fmt)] + data_ext)
            moves.append((data_tmp, final_data))
            sep = " = " if fmt == ".mhd" else ": "
            line = f"{stripped[0].strip()}{sep}{final_data.name}"
        out.append(line)
    text = "\n".join(out) + "\n"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    for data_tmp, final_data in moves:
        with open(data_tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(data_tmp, final_data)


def _dicom_storage(array):
    """(pixel array to hand to GDCM, slope, intercept) for DICOM's integer pixel data.

    Integer-valued data within int16 are stored exactly. Real values are handed over as float64
    with a rescale slope/intercept, and GDCM maps them onto int16 (it needs an integer intercept).
    """
    arr = np.asarray(array, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if np.all(arr == np.round(arr)) and lo >= -32768 and hi <= 32767:
        return arr.astype(np.int16), 1.0, 0.0
    intercept = float(round((hi + lo) / 2.0))
    half_range = max(hi - intercept, intercept - lo, 1e-12)
    slope = float(f"{half_range / 32000.0:.6g}")
    return arr, slope, intercept


def _write_dicom_series(volume, path, single_file=False, modality=None, overwrite=False):
    """Write a DICOM series (one file per slice) with positions, orientation and spacing.

    The slices are written into a staging folder beside the target, each checked on disk, then
    the folder is renamed into place (the old one moved aside first and removed last). GDCM
    says "DICOM does not support this component type" when the disk is full: any writer error
    is diagnosed here (full disk, read-only place) before its own words are used.

    ``modality`` sets the Modality tag (CT, or MR for any MR weighting; OT when unknown) and a
    SeriesDescription carrying :func:`modality_note`, which keeps the weighting.
    """
    import shutil
    import tempfile
    import time

    from dicyc.atomic import prepare_folder, write_error

    sitk = _sitk()
    target = Path(path)
    if not single_file:
        check_output_path(target, overwrite=overwrite)
    elif target.is_dir():
        raise DicycError(f"could not write {_display(target)}: it is a folder.")
    stored, slope, intercept = _dicom_storage(volume.array)
    d = volume.direction
    orientation = "\\".join(f"{v:.10g}" for v in (*d[:, 0], *d[:, 1]))
    uid_root = "1.2.826.0.1.3680043.2.1125." + str(int(time.time() * 1000) % 10**12)
    study_uid, series_uid, frame_uid = uid_root + ".1", uid_root + ".2", uid_root + ".3"
    base = stored
    parent = prepare_folder(target.parent, "output folder")
    slice_bytes = int(base.shape[1] * base.shape[2] * 2)
    needed = slice_bytes * base.shape[0]
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    except OSError as exc:
        raise write_error(target, exc, needed=needed) from None
    try:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        m = volume.ijk_to_lps()
        for k in range(base.shape[0]):
            sl = sitk.GetImageFromArray(base[k])
            sl.SetSpacing(volume.spacing[:2])
            pos = m @ np.array([0.0, 0.0, k, 1.0])
            tags = {
                "0008|0060": ("CT" if str(modality).upper() == "CT" else "MR") if modality else "OT",
                "0010|0010": DICOM_PATIENT_NAME,
                "0020|000d": study_uid,
                "0020|000e": series_uid,
                "0020|0052": frame_uid,
                "0008|0018": f"{uid_root}.{100 + k}",
                "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{v:.10f}" for v in pos[:3]),
                "0020|0037": orientation,
                "0018|0050": f"{volume.spacing[2]:.10g}",
                "0018|0088": f"{volume.spacing[2]:.10g}",
                "0028|1052": f"{intercept:.10g}",
                "0028|1053": f"{slope:.10g}",
                "0028|1054": "US",
            }
            if modality:
                tags["0008|103e"] = modality_note(modality)
            if base.dtype != np.int16:
                tags.update({"0028|0100": "16", "0028|0101": "16", "0028|0102": "15", "0028|0103": "1"})
            for key, value in tags.items():
                sl.SetMetaData(key, value)
            name = staging / (target.name if single_file else f"slice_{k:05d}.dcm")
            writer.SetFileName(str(name))
            _itk_write(lambda: writer.Execute(sl), target, needed)
            try:
                size = name.stat().st_size
            except OSError as exc:
                raise write_error(target, exc, needed=needed) from None
            if size < slice_bytes:
                raise write_error(target, detail=f"slice {k} holds {size} bytes, less than its {slice_bytes} bytes of "
                                                 "pixel data", needed=needed)
        try:
            for name in staging.iterdir():
                with open(name, "rb+") as fh:
                    os.fsync(fh.fileno())
            if single_file:
                os.replace(staging / target.name, target)
            else:
                aside = None
                if target.exists():  # checked above: ours, empty, or overwrite allowed
                    aside = parent / f".{target.name}.old-{os.getpid()}-{int(time.time() * 1000) % 10**9}"
                    os.replace(target, aside)
                try:
                    os.replace(staging, target)
                except OSError:
                    if aside is not None:
                        os.replace(aside, target)
                    raise
                if aside is not None:
                    if aside.is_dir():
                        shutil.rmtree(aside, ignore_errors=True)
                    else:
                        aside.unlink()
        except OSError as exc:
            raise write_error(target, exc, needed=needed) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
