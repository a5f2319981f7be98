"""Atomic file writes: write to a temporary file beside the target, then rename.

A killed process therefore leaves either the old file or the new one, never half of one.
The temporary name keeps the target's extension (``.nii.gz``, ``.png``) because writers such
as SimpleITK and matplotlib choose the format from it.
"""

import contextlib
import os
import uuid
from pathlib import Path


def split_extension(path):
    """Return (stem, extension) where the extension keeps double suffixes like ``.nii.gz``."""
    name = Path(path).name
    for double in (".nii.gz", ".tar.gz", ".safetensors.tmp"):
        if name.lower().endswith(double):
            return name[: -len(double)], name[-len(double):]
    stem, ext = os.path.splitext(name)
    return stem, ext


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target):
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stem, ext = split_extension(target)
    tmp = target.parent / f".{stem}.{uuid.uuid4().hex[:8]}.tmp{ext}"
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"writer produced no file for {target}")
        if tmp.is_file():
            with open(tmp, "rb+") as fh:  # make the bytes durable before the rename publishes them
                os.fsync(fh.fileno())
            # some writers create private (0600) files; published results follow the umask
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(target, data):
    """Atomically write ``data`` (bytes) to ``target``."""
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(data)


def write_text(target, text):
    """Atomically write ``text`` (UTF-8) to ``target``."""
    write_bytes(target, text.encode("utf-8"))
