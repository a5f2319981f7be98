"""A simulated cohort on disk: one folder of pseudo-subjects, a manifest, and list files.

The brain phantom (:mod:`dicyc.phantom`) and the abdominal phantom (:mod:`dicyc.abdomen`)
simulate different anatomy but keep it the same way, written once here:

* per subject ``sub-XX``, one ``sub-XX_<key>.nii.gz`` per volume key, written atomically;
* ``{train,test}_<key>.txt``: absolute paths, one per line, for ``dicyc train --a``;
* ``cohort.json`` last, so that its presence marks a complete cohort. A folder whose manifest
  records the same parameters, with every file there and whole, is reused as it is; any other
  manifest is removed before anything is rebuilt, so rebuilt files never pass as the old cohort.
"""

import json
import time
from pathlib import Path

from dicyc.atomic import write_text
from dicyc.errors import DicycError


def check_sizes(n_subjects, n_test):
    """(n_subjects, n_test) as integers, refused in one sentence unless 1 <= n_subjects and 0 <= n_test <= n_subjects."""
    n_subjects, n_test = int(n_subjects), int(n_test)
    if n_subjects < 1 or not 0 <= n_test <= n_subjects:
        raise DicycError(f"a cohort needs n_subjects >= 1 and 0 <= n_test <= n_subjects; got {n_subjects} and {n_test}.")
    return n_subjects, n_test


def load(out_dir):
    """The parsed ``cohort.json`` of a cohort folder."""
    return json.loads((Path(out_dir) / "cohort.json").read_text(encoding="utf-8"))


def files(out_dir, split, key):
    """Absolute paths of one volume key of one split (``None`` or ``"all"``: every subject), in subject order."""
    out_dir = Path(out_dir).resolve()
    return [out_dir / s[key] for s in load(out_dir)["subjects"] if split in (None, "all", s["split"])]


def write_lists(out_dir, subjects, keys):
    """The ``{train,test}_<key>.txt`` list files, rewritten only where they changed."""
    for split in ("train", "test"):
        for key in keys:
            lines = "".join(f"{out_dir / s[key]}\n" for s in subjects if s["split"] == split)
            path = out_dir / f"{split}_{key}.txt"
            if not path.is_file() or path.read_text(encoding="utf-8") != lines:
                write_text(path, lines)


def _complete(path):
    """A cohort file is reused only whole: one cut short (a full disk, a copy) makes the cohort rebuilt."""
    from dicyc.imagecheck import IncompleteImage, check_image_file

    try:
        check_image_file(path, strict=True)
        return path.is_file()
    except (IncompleteImage, OSError):
        return False


def reuse(out_dir, params, keys):
    """True if ``out_dir`` already holds this cohort (its list files refreshed); else clears its manifest."""
    path = out_dir / "cohort.json"
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if old and old.get("params") == json.loads(json.dumps(params)) and all(
        _complete(out_dir / s[k]) for s in old["subjects"] for k in keys
    ):
        write_lists(out_dir, old["subjects"], keys)
        return True
    path.unlink()  # the folder no longer matches it: rebuilt files must never pass as the old cohort
    return False


def write_subjects(out_dir, n_subjects, n_test, keys, simulate, on_disk, log):
    """Simulate and write every subject; the last ``n_test`` form the test split.

    ``simulate(index)`` returns (volumes by key, info); ``on_disk(key, volume)`` returns the
    volume as stored (e.g. scanner-like integers). Returns the manifest's subject entries.
    """
    from dicyc.volume import write_volume

    out_dir.mkdir(parents=True, exist_ok=True)
    subjects = []
    for index in range(n_subjects):
        name = f"sub-{index:02d}"
        split = "test" if index >= n_subjects - n_test else "train"
        volumes, info = simulate(index)
        names = {key: f"{name}_{key}.nii.gz" for key in keys}
        for key, filename in names.items():
            write_volume(on_disk(key, volumes[key]), out_dir / filename)
        subjects.append({"name": name, "split": split, **names, **info})
        log(f"  {name} ({split}) written")
    return subjects


def finish(out_dir, record, keys, started, log, label):
    """Write the list files, then the manifest ``record`` (last: it marks the cohort complete)."""
    write_lists(out_dir, record["subjects"], keys)
    write_text(out_dir / "cohort.json", json.dumps(record, indent=1) + "\n")
    log(f"{label} ready in {time.monotonic() - started:.1f} s: {out_dir}")
    return out_dir


def manifest(params, subjects, grid, **extra):
    """The ``cohort.json`` record: parameters, split, subjects, the grid, and ``extra`` facts."""
    return {
        "params": params,
        "split": {s: [x["name"] for x in subjects if x["split"] == s] for s in ("train", "test")},
        "subjects": subjects,
        "grid": {"size": list(grid.size), "spacing": list(grid.spacing), "origin": list(grid.origin),
                 "direction": grid.direction.ravel().tolist()},
        **extra,
    }
