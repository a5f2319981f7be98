"""Fault injection: full disks, truncated files, users' folders, resumes, unwritable places.

A medical tool must never report success on a broken file, lose a user's data, or answer a
mistake with a traceback. Each test here provokes one fault the way a careful user's bad day
would and checks the promise: one sentence on stderr, exit status 1, nothing published, and
whatever was there before still whole.

A full disk is a 2 MiB tmpfs (root only: those tests are skipped with the reason elsewhere); a
read-only place is a read-only tmpfs as root and a 0555 folder otherwise. The kill-and-resume
figures come from ``tools/fault-campaign.py`` (see the README).
"""

import contextlib
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dicyc.errors import DicycError
from dicyc.volume import Volume, read_mask, read_volume, write_volume

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
MODEL = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "head-mr2ct-cyclegan.safetensors"
TINY = ["--method", "cyclegan", "--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--slice-size", "32", "--spacing", "2"]


# ===================================================================== helpers
@contextlib.contextmanager
def _tmpfs(path, options):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, encoding="utf-8", errors="replace")
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB file system to fill up."""
    if not ROOT or not shutil.which("mount"):
        pytest.skip("a full disk is simulated with a 2 MiB tmpfs, and mounting one needs root")
    with _tmpfs(tmp_path / "disk", "size=2m") as disk:
        yield disk


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nothing can be written to (a read-only tmpfs as root, a 0555 folder otherwise)."""
    if ROOT and shutil.which("mount"):
        with _tmpfs(tmp_path / "ro", "size=1m,ro") as folder:
            yield folder
        return
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        pytest.skip("this system does not enforce folder permissions")
    try:
        yield folder
    finally:
        folder.chmod(0o755)


def _fill(disk, leave):
    """Fill ``disk`` until only ``leave`` bytes are free."""
    st = os.statvfs(disk)
    free = st.f_bfree * st.f_frsize
    with open(disk / "filler", "wb") as fh:
        fh.write(b"\0" * max(free - leave, 0))


def _noise_volume(shape=(8, 64, 64), seed=0):
    """Float noise: it does not compress, so its size on disk is predictable."""
    rng = np.random.default_rng(seed)
    return Volume(rng.normal(100, 30, shape).astype(np.float32), (2.0, 2.0, 3.0), (1.0, -2.0, 3.0))


@pytest.fixture(scope="module")
def small_mr(tmp_path_factory):
    """A small MR-like volume (4 slices of 32x32 at 2x2x3 mm): synthesis with the bundled model takes a moment."""
    folder = tmp_path_factory.mktemp("small")
    z, y, x = np.indices((4, 32, 32))
    body = ((y - 16) / 13.0) ** 2 + ((x - 16) / 11.0) ** 2 < 1
    mr = np.where(body, 300.0, 0.0) + np.random.default_rng(1).normal(0, 10, body.shape)
    path = folder / "mr.nii.gz"
    write_volume(Volume(mr.astype(np.float32), (2, 2, 3)), path)
    return path


def _cli(capsys, *args):
    """Run ``dicyc ARGS`` in this process; (exit status, stdout, stderr). A traceback fails the test."""
    from dicyc.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _refused(code, err, *fragments):
    """Exit status 1 and exactly one error sentence holding every fragment."""
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert code == 1, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _snapshot(folder):
    """{relative path: bytes} of every file under ``folder`` (hidden ones included)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _truncate(path, fraction):
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(int(size * fraction))


# ===================================================================== 1. full disk
def test_full_disk_synthesize_exits_1_publishes_nothing_and_keeps_the_good_file(small_disk, small_mr, capfd):
    from dicyc.cli import main

    good_volume = read_volume(small_mr)
    write_volume(good_volume, small_disk / "out.nii.gz")  # a good earlier result
    good = _snapshot(small_disk)
    _fill(small_disk, 4 * 1024)  # the 16 KiB of voxels cannot fit, a probe file can
    for name in ("out.nii.gz", "new.nii"):
        code = main(["synthesize", "--model", str(MODEL), "--input", str(small_mr), "--output", str(small_disk / name),
                     "--precision", "fp32"])
        err = capfd.readouterr().err
        _refused(code, err, f"could not write {small_disk / name}: no space left on the disk holding {small_disk}")
        assert "NWAD" not in err and "ERROR" not in err  # niftilib's own line stays off the terminal
    after = _snapshot(small_disk)
    del after["filler"]
    assert after == good  # the good output is untouched, nothing new or temporary appeared
    assert np.array_equal(read_volume(small_disk / "out.nii.gz").array, good_volume.array)


def test_full_disk_every_format_refused_without_leftovers_and_an_old_pair_survives(small_disk):
    old = _noise_volume(seed=1)
    write_volume(old, small_disk / "old.mhd")  # a two-file format: old.mhd + old.raw
    before = _snapshot(small_disk)
    _fill(small_disk, 16 * 1024)
    volume = _noise_volume()  # 128 KiB of voxels
    for name in ("x.nii", "x.nii.gz", "x.nrrd", "x.nhdr", "x.mha", "x.mhd", "old.mhd", "series"):
        with pytest.raises(DicycError, match=r"^could not write .*: no space left on the disk holding "):
            write_volume(volume, small_disk / name)
        after = _snapshot(small_disk)
        del after["filler"]
        assert after == before, name  # no temporary files, no partial results, old.mhd/old.raw whole
    assert np.array_equal(read_volume(small_disk / "old.mhd").array, old.array)


def test_full_disk_compare_exits_1_and_an_existing_report_stays_whole(small_disk, capsys):
    a, b = _noise_volume(seed=2), _noise_volume(seed=3)
    files = small_disk.parent / "inputs"
    files.mkdir()
    write_volume(a, files / "a.nii.gz")
    write_volume(b, files / "b.nii.gz")
    code, _, err = _cli(capsys, "compare", "--a", files / "a.nii.gz", "--b", files / "b.nii.gz", "--out", small_disk / "r")
    assert code == 0, err
    good = _snapshot(small_disk / "r")
    write_volume(_noise_volume(seed=4), files / "b.nii.gz")
    _fill(small_disk, 64 * 1024)
    code, _, err = _cli(capsys, "compare", "--a", files / "a.nii.gz", "--b", files / "b.nii.gz", "--out", small_disk / "r")
    _refused(code, err, "no space left on the disk holding")
    assert _snapshot(small_disk / "r") == good  # all four files of the old report, none of the new one


def test_full_disk_training_stops_in_one_sentence_with_whole_event_lines(small_disk, toy_pair, tmp_path, capsys,
                                                                         monkeypatch):
    from dicyc.events import read_events

    mr, ct = toy_pair
    monkeypatch.setenv("DICYC_CACHE", str(tmp_path / "cache"))
    _fill(small_disk, 40 * 1024)  # room for config.json and events, not for a checkpoint
    code, _, err = _cli(capsys, "train", *TINY, "--a", mr, "--b", ct, "--out", small_disk / "run", "--iterations", "2",
                        "--checkpoint-every", "1")
    _refused(code, err, "no space left on the disk holding")
    run = small_disk / "run"
    assert not [p for p in run.rglob(".*") if ".tmp" in p.name or ".part" in p.name]
    assert not (run / "checkpoint.safetensors").exists() and not (run / "model.safetensors").exists()
    raw = (run / "events.jsonl").read_bytes()
    assert raw.endswith(b"\n") and len(read_events(run / "events.jsonl")[0]) == raw.count(b"\n")


def test_event_log_on_a_full_disk_keeps_whole_lines_only(small_disk):
    from dicyc.events import EventLog

    log = EventLog([small_disk / "events.jsonl"])
    log.emit("start", message="first")
    first = (small_disk / "events.jsonl").read_bytes()
    _fill(small_disk, 0)
    with pytest.raises(DicycError, match="no space left on the disk holding"):
        log.emit("iteration", message="x" * 20000)
    log.close()
    assert (small_disk / "events.jsonl").read_bytes() == first  # the half line was cut back


# ===================================================================== 2. truncated files
@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha", "ct.mhd", "ct.nhdr"])
def test_a_truncated_file_is_refused_not_read_as_zeros(tmp_path, name):
    ct = _noise_volume().array.astype(np.int16)  # int16: no NaN check would ever read the data
    path = tmp_path / name
    write_volume(Volume(ct), path)
    data = {"ct.mhd": tmp_path / "ct.raw", "ct.nhdr": tmp_path / "ct.raw"}.get(name, path)
    _truncate(data, 0.6)
    with pytest.raises(DicycError, match=rf"{name} is incomplete: .*cut short( \(or its header is wrong\))?\.$"):
        read_volume(path)


@pytest.mark.parametrize("pixdim", [0.0, math.nan])
def test_a_nifti_with_an_invalid_voxel_size_is_refused_quietly(tmp_path, pixdim, capfd):
    import struct

    import nibabel

    nibabel.save(nibabel.Nifti1Image(np.arange(1000, dtype=np.float32).reshape(10, 10, 10), np.eye(4)),
                 str(tmp_path / "bad.nii"))
    with open(tmp_path / "bad.nii", "r+b") as fh:  # no qform or sform: the voxel size is pixdim alone
        fh.seek(80)
        fh.write(struct.pack("<f", pixdim))  # pixdim[1]: ITK and nibabel would read it as 1 mm
        fh.seek(252)
        fh.write(struct.pack("<hh", 0, 0))  # qform_code, sform_code
    capfd.readouterr()
    with pytest.raises(DicycError, match=r"bad\.nii has an invalid voxel size in its header"):
        read_volume(tmp_path / "bad.nii")
    assert capfd.readouterr().err == ""  # nibabel's and ITK's own lines stay off the terminal


def test_a_truncated_input_is_refused_by_evaluate_synthesize_and_train(toy_pair, tmp_path, capsys, monkeypatch):
    mr, ct = toy_pair
    cut = tmp_path / "cut.nii.gz"
    shutil.copy(ct, cut)
    _truncate(cut, 0.5)
    monkeypatch.setenv("DICYC_CACHE", str(tmp_path / "cache"))
    code, _, err = _cli(capsys, "evaluate", "--pred", cut, "--ref", ct)
    _refused(code, err, "cut.nii.gz is incomplete")
    code, _, err = _cli(capsys, "synthesize", "--model", MODEL, "--input", cut, "--output", tmp_path / "syn.nii.gz")
    _refused(code, err, "cut.nii.gz is incomplete")
    assert not (tmp_path / "syn.nii.gz").exists()
    code, _, err = _cli(capsys, "train", *TINY, "--a", mr, "--b", cut, "--out", tmp_path / "run", "--iterations", "2")
    _refused(code, err, "cut.nii.gz is incomplete")
    assert not (tmp_path / "run").exists()  # a refused train leaves no run folder, config.json or events.jsonl


def _malformed(tmp_path):
    import gzip
    import struct

    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_shape((10, 10, 10))
    header.set_data_dtype(np.float32)
    huge = bytearray(header.binaryblock + b"\0" * 4 + bytes(4000))
    struct.pack_into("<hhh", huge, 42, 30000, 30000, 30000)  # dims announcing 100 TB
    files = {
        "random.nii.gz": os.urandom(3000),
        "text.nii.gz": gzip.compress(b"not an image " * 100),
        "random.nrrd": b"NRRD0004\ntype: float\ndimension: 3\nsizes: 10 10 10\nencoding: gzip\n\n" + os.urandom(100),
        "huge.mha": b"ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\nElementType = MET_FLOAT\n"
                    b"ElementDataFile = LOCAL\n" + os.urandom(100),
        "nodata.mhd": b"ObjectType = Image\nNDims = 3\nDimSize = 5 10 10\nElementType = MET_FLOAT\nElementDataFile = x.raw\n",
        "huge.nii": bytes(huge),
        "fake.dcm": b"\0" * 128 + b"DICM" + os.urandom(200),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return sorted(files)


@pytest.mark.parametrize("command", ["evaluate", "compare", "synthesize"])
def test_malformed_files_are_one_sentence_in_every_command(tmp_path, command, capsys):
    good = tmp_path / "good.nii.gz"
    write_volume(_noise_volume(), good)
    for name in _malformed(tmp_path):
        bad = tmp_path / name
        args = {"evaluate": ["evaluate", "--pred", bad, "--ref", good],
                "compare": ["compare", "--a", bad, "--b", good, "--out", tmp_path / "report"],
                "synthesize": ["synthesize", "--model", MODEL, "--input", bad, "--output", tmp_path / "out.nii.gz"]}
        code, _, err = _cli(capsys, *args[command])
        _refused(code, err, name)
        assert not (tmp_path / "report").exists() and not (tmp_path / "out.nii.gz").exists()


def test_a_dicom_series_with_a_damaged_or_missing_slice_is_refused(tmp_path):
    volume = Volume(np.arange(6 * 8 * 8, dtype=np.int16).reshape(6, 8, 8), (1, 1, 2))
    write_volume(volume, tmp_path / "cut")
    _truncate(tmp_path / "cut" / "slice_00005.dcm", 0.5)  # the last slice: the spacing stays even
    with pytest.raises(DicycError, match=r"slice_00005\.dcm in the DICOM series folder .* is not a readable DICOM image"):
        read_volume(tmp_path / "cut")
    write_volume(volume, tmp_path / "gap")
    (tmp_path / "gap" / "slice_00002.dcm").unlink()
    with pytest.raises(DicycError, match=r"gap is not an evenly spaced DICOM series .* a slice is missing"):
        read_volume(tmp_path / "gap")


def test_the_samples_cache_rebuilds_a_damaged_file(tmp_path):
    from dicyc.imagecheck import check_image_file
    from dicyc.samples import prepare

    path = prepare(["brainweb-pd"], cache_dir=tmp_path, log=lambda m: None)["brainweb-pd"]
    whole = read_volume(path).array
    _truncate(path, 0.5)
    notes = []
    again = prepare(["brainweb-pd"], cache_dir=tmp_path, log=notes.append)["brainweb-pd"]
    assert again == path and any("damaged" in note for note in notes)
    check_image_file(path, strict=True)
    assert np.array_equal(read_volume(path).array, whole)


def test_a_truncated_model_or_checkpoint_is_refused_in_one_sentence(toy_pair, tmp_path, capsys, monkeypatch):
    mr, ct = toy_pair
    monkeypatch.setenv("DICYC_CACHE", str(tmp_path / "cache"))
    cut = tmp_path / "cut.safetensors"
    shutil.copy(MODEL, cut)
    _truncate(cut, 0.9)
    code, _, err = _cli(capsys, "synthesize", "--model", cut, "--input", mr, "--output", tmp_path / "x.nii.gz")
    _refused(code, err, "cut.safetensors is incomplete", "cut short")
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "train", *TINY, "--a", mr, "--b", ct, "--out", run, "--iterations", "1")
    assert code == 0, err
    _truncate(run / "checkpoint.safetensors", 0.9)
    code, _, err = _cli(capsys, "train", "--out", run, "--resume", "--iterations", "2")
    _refused(code, err, "checkpoint.safetensors is incomplete")


# ===================================================================== 3. users' folders
def test_synthesize_never_deletes_a_folder_of_the_users_files(tmp_path, small_mr, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    code, _, err = _cli(capsys, "synthesize", "--model", MODEL, "--input", small_mr, "--output", folder)
    _refused(code, err, "not a DICOM series written by DiCyc", "--overwrite")
    assert (folder / "notes.txt").read_text() == "my notes"
    series = tmp_path / "series"
    for _ in range(2):  # our own series is replaced without asking
        code, _, err = _cli(capsys, "synthesize", "--model", MODEL, "--input", small_mr, "--output", series,
                            "--precision", "fp32")
        assert code == 0, err
    assert sorted(p.name for p in series.iterdir()) == [f"slice_{k:05d}.dcm" for k in range(4)]
    code, _, err = _cli(capsys, "synthesize", "--model", MODEL, "--input", small_mr, "--output", folder, "--overwrite",
                        "--precision", "fp32")
    assert code == 0, err
    assert not (folder / "notes.txt").exists() and read_volume(folder).shape == (4, 32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "series"]  # nothing set aside is left over


# ===================================================================== 4. masks on another grid
def test_a_mask_on_another_grid_selects_only_what_it_covers(tmp_path, monkeypatch):
    reference = Volume(np.zeros((10, 20, 20), np.float32), (1, 1, 1), (0, 0, 0))
    box = Volume(np.ones((4, 6, 6), np.uint8), (1, 1, 1), (5, 5, 3))  # a cropped ROI: all ones, no zeros
    write_volume(box, tmp_path / "box.nii.gz")
    mask = read_mask(tmp_path / "box.nii.gz", reference)
    assert mask.sum() == 4 * 6 * 6 and mask[3:7, 5:11, 5:11].all()
    # a mask that truly covers the whole volume is accepted, on the same grid or on another
    write_volume(reference.with_array(np.ones((10, 20, 20), np.uint8)), tmp_path / "all.nii.gz")
    assert read_mask(tmp_path / "all.nii.gz", reference).all()
    write_volume(Volume(np.ones((6, 12, 12), np.uint8), (2, 2, 2), (-0.5, -0.5, -0.5)), tmp_path / "big.nii.gz")
    assert read_mask(tmp_path / "big.nii.gz", reference).all()
    # whole coverage that only resampling produced is refused (here: the old padding with the mask's minimum)
    import dicyc.preprocess as preprocess

    real = preprocess.resample_to_grid
    monkeypatch.setattr(preprocess, "resample_to_grid",
                        lambda v, ref, interpolation="linear", default_value=None: real(v, ref, interpolation, 1))
    with pytest.raises(DicycError, match="artefact of resampling"):
        read_mask(tmp_path / "box.nii.gz", reference)


# ===================================================================== 5. resume with a new configuration
def test_resume_honours_a_new_config_file_and_explicit_flags_beat_it(toy_pair, tmp_path, capsys, monkeypatch):
    from dicyc.train import checkpoint_progress, prepare_run

    mr, ct = toy_pair
    monkeypatch.setenv("DICYC_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "train", *TINY, "--a", mr, "--b", ct, "--out", run, "--iterations", "2",
                        "--checkpoint-every", "1")
    assert code == 0, err
    stale = run / ".checkpoint.0123abcd.tmp.safetensors"  # what a kill during a checkpoint write leaves
    stale.write_bytes(b"half a checkpoint")
    longer = tmp_path / "longer.json"
    longer.write_text(json.dumps({"iterations": 4}))
    code, _, err = _cli(capsys, "train", "--out", run, "--resume", "--config", longer)
    assert code == 0, err
    assert "resuming with iterations 4 (was 2)" in err
    assert checkpoint_progress(run / "checkpoint.safetensors")[0] == 4
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["iterations"] == 4
    assert saved["resumes"] == [{"iteration": 2, "changed": {"iterations": [2, 4]}}]
    assert not stale.exists()
    # a flag given explicitly beats the file; a schedule shorter than the work done is refused
    (tmp_path / "eight.json").write_text(json.dumps({"iterations": 8}))
    code, _, err = _cli(capsys, "train", "--out", run, "--resume", "--config", tmp_path / "eight.json",
                        "--iterations", "3")
    _refused(code, err, "iterations 3 is below the 4 iterations this run has already done")
    config, _, _ = prepare_run(run, None, None, None, config_file=tmp_path / "eight.json",
                               overrides={"iterations": 6, "lr": None, "seed": None}, resume=True)
    assert config["iterations"] == 6


# ===================================================================== 7. one sentence, never a traceback
def _cases(tmp_path, readonly, toy_pair):
    mr, ct = toy_pair
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x81")
    (tmp_path / "typed.json").write_text('{"augment": "no"}')
    train = ["train", *TINY, "--a", mr, "--b", ct, "--iterations", "2"]
    return {
        "train --out a file": (train + ["--out", a_file], {}, "is a file, not a folder"),
        "train --out inside a file": (train + ["--out", a_file / "run"], {}, "is a file, not a folder"),
        "train --out read-only": (train + ["--out", readonly / "run"], {}, str(readonly)),
        "compare --out read-only": (["compare", "--a", mr, "--b", mr, "--out", readonly / "cmp"], {}, str(readonly)),
        "synthesize --output read-only": (["synthesize", "--model", MODEL, "--input", mr, "--output",
                                           readonly / "x.nii.gz"], {}, str(readonly)),
        "samples --dir a file": (["samples", "brainweb-pd", "--dir", a_file], {}, "is a file, not a folder"),
        "samples --dir read-only": (["samples", "brainweb-pd", "--dir", readonly / "s"], {}, str(readonly)),
        "DICYC_CACHE a file (samples)": (["samples", "brainweb-pd"], {"DICYC_CACHE": str(a_file)}, "DICYC_CACHE"),
        "DICYC_CACHE a file (train)": (train + ["--out", tmp_path / "r1"], {"DICYC_CACHE": str(a_file)}, "DICYC_CACHE"),
        "train --lr -1": (train + ["--out", tmp_path / "r2", "--lr", "-1"], {}, "learning rate"),
        "train --lr nan": (train + ["--out", tmp_path / "r3", "--lr", "nan"], {}, "lr must be a finite number"),
        "train --config a folder": (train + ["--out", tmp_path / "r4", "--config", tmp_path], {}, "is a folder"),
        "bench --json read-only": (["bench", "speed", "--quick", "--json", readonly / "speed.json"], {}, str(readonly)),
        "train --progress-jsonl read-only": (train + ["--out", tmp_path / "r5", "--progress-jsonl",
                                                      readonly / "p.jsonl"], {}, str(readonly)),
        "train --a a binary list file": (["train", *TINY, "--a", tmp_path / "binary.txt", "--b", ct, "--out",
                                          tmp_path / "r6"], {}, "is not a text file"),
        "train --config with a wrong type": (train + ["--out", tmp_path / "r7", "--config", tmp_path / "typed.json"], {},
                                             "augment must be true or false"),
    }


CASES = ["train --out a file", "train --out inside a file", "train --out read-only", "compare --out read-only",
         "synthesize --output read-only", "samples --dir a file", "samples --dir read-only",
         "DICYC_CACHE a file (samples)", "DICYC_CACHE a file (train)", "train --lr -1", "train --lr nan",
         "train --config a folder", "bench --json read-only", "train --progress-jsonl read-only",
         "train --a a binary list file", "train --config with a wrong type"]


@pytest.mark.parametrize("case", CASES)
def test_unwritable_places_and_bad_numbers_are_one_sentence(case, tmp_path, readonly_dir, toy_pair, capsys,
                                                            monkeypatch):
    args, env, fragment = _cases(tmp_path, readonly_dir, toy_pair)[case]
    monkeypatch.setenv("DICYC_CACHE", str(tmp_path / "cache"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = _cli(capsys, *args)
    _refused(code, err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run folder, report or cache left behind


# ===================================================================== 8. smaller ones
def test_a_model_with_nan_weights_is_refused_at_load(tmp_path):
    import torch
    from safetensors.torch import load_file

    from dicyc.modelfile import load_model, read_card, save_model

    tensors = load_file(str(MODEL))
    key = sorted(k for k in tensors if k.startswith("G_AB.") and tensors[k].dtype.is_floating_point)[0]
    tensors[key] = tensors[key].float().clone()
    tensors[key].view(-1)[0] = float("nan")
    gens = {name: {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")} for name in ("G_AB", "G_BA")}
    save_model(tmp_path / "nan.safetensors", gens, read_card(MODEL))
    with pytest.raises(DicycError, match=r"nan\.safetensors holds NaN or infinite weights"):
        load_model(tmp_path / "nan.safetensors")
    assert torch.isfinite(load_file(str(MODEL))[key]).all()


def test_a_diverging_training_stops_before_a_nan_model_is_written(toy_pair, tmp_path, monkeypatch):
    import dicyc.train as train_module
    from dicyc.train import prepare_run, train

    mr, ct = toy_pair
    real = train_module.run_iteration
    calls = []

    def diverging(*args, **kwargs):
        logged = real(*args, **kwargs)
        calls.append(1)
        return dict(logged, G=math.nan) if len(calls) >= 2 else logged

    monkeypatch.setattr(train_module, "run_iteration", diverging)
    out = tmp_path / "run"
    config, a, b = prepare_run(out, "cyclegan", mr, ct, overrides={"ngf": 4, "n_blocks": 1, "ndf": 4, "slice_size": 32,
                                                                    "iterations": 4, "checkpoint_every": 1,
                                                                    "cache_dir": str(tmp_path / "cache")})
    with pytest.raises(DicycError, match=r"training diverged at iteration 2: the G loss became nan"):
        train(a, b, out, config, device="cpu")
    from dicyc.modelfile import load_model

    load_model(out / "model.safetensors")  # the model of the last good checkpoint (iteration 1) is whole and finite


def test_raw_itk_messages_stay_off_the_terminal(tmp_path, capfd):
    import nibabel

    from dicyc.cli import main

    image = nibabel.Nifti1Image(np.arange(1000, dtype=np.float32).reshape(10, 10, 10), np.eye(4))
    image.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    image.set_sform(np.eye(4), code=1)
    nibabel.save(image, str(tmp_path / "odd.nii.gz"))
    code = main(["evaluate", "--pred", str(tmp_path / "odd.nii.gz"), "--ref", str(tmp_path / "odd.nii.gz")])
    err = capfd.readouterr().err
    assert code == 0
    assert "WARNING: In" not in err and "0x" not in err and ".cxx" not in err
    assert "odd.nii.gz: its NIfTI sform matrix is not a rotation with spacing" in err


@pytest.mark.parametrize("kind,dtype", [("nifti1", "<f4"), ("nifti2", "<i2"), ("nifti1", ">f8"), ("nifti2", ">u2")])
def test_nifti_header_fields_match_nibabels_reading(tmp_path, kind, dtype):
    """The struct parser (what checks use, so no nibabel is needed) reads what nibabel reads,
    in both byte orders and both NIfTI versions, and the data size follows from it."""
    import nibabel

    from dicyc.imagecheck import check_image_file, nifti_header

    cls = nibabel.Nifti1Image if kind == "nifti1" else nibabel.Nifti2Image
    image = cls(np.zeros((5, 6, 7), dtype=np.dtype(dtype)), np.diag([2.0, 3.0, 4.0, 1.0]))
    image.set_data_dtype(np.dtype(dtype))
    path = tmp_path / "v.nii.gz"
    nibabel.save(image, str(path))
    ours, theirs = nifti_header(path), nibabel.load(str(path)).header
    assert list(ours["dim"]) == [int(v) for v in theirs["dim"]]
    assert np.allclose(ours["pixdim"], theirs["pixdim"])
    assert ours["sform_code"] == int(theirs["sform_code"]) and ours["datatype"] == int(theirs["datatype"])
    assert check_image_file(path) == 5 * 6 * 7 * np.dtype(dtype).itemsize
