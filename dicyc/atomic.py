"""Atomic, verified file writes: write a temporary file beside the target, check it, then rename.

A killed process therefore leaves either the old file or the new one, never half of one.
The temporary name keeps the target's extension (``.nii.gz``, ``.png``) because writers such
as SimpleITK and matplotlib choose the format from it.

A rename is only as good as the bytes it publishes, and writers do not all say when the disk
filled up: SimpleITK's NIfTI writer reports a short write on stderr only and returns normally.
So before the rename the temporary file is checked (:func:`verify_file`: the voxel data an
image's header announces are all there, a PNG ends with its IEND chunk, a safetensors file is
as long as its header says, JSON parses), and any failure becomes one sentence naming the
target and the cause (:func:`write_error`: "no space left on the disk holding …", a read-only
file system, a file where a folder should be). The temporary file is removed and an existing
target is left untouched.
"""

import contextlib
import errno
import os
import re
import shutil
import uuid
from pathlib import Path

from dicyc.errors import DicycError

#: Below this much free space a failed write is reported as a full disk.
LOW_SPACE_BYTES = 1 << 20


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


# ===================================================================== diagnosis
def _existing_ancestor(path):
    path = Path(os.path.abspath(path))
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor)


def _file_in_the_way(path):
    """The first ancestor of ``path`` that exists but is not a folder, or None."""
    path = Path(os.path.abspath(path))
    for candidate in reversed((path, *path.parents)):
        if candidate.exists() and not candidate.is_dir():
            return candidate
        if not candidate.exists():
            return None
    return None


def free_bytes(folder):
    """Bytes this process may still write on the file system holding ``folder`` (None if unknown)."""
    where = _existing_ancestor(folder)
    try:
        if hasattr(os, "statvfs"):
            st = os.statvfs(where)
            blocks = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
            return blocks * st.f_frsize
        return shutil.disk_usage(where).free
    except OSError:
        return None


def disk_is_full(folder, needed=0):
    """True where the file system holding ``folder`` has (almost) no room left, or less than ``needed``."""
    free = free_bytes(folder)
    return free is not None and free < max(LOW_SPACE_BYTES, int(needed or 0))


def _reason(code, target, folder):
    """The cause of an OS error ``code`` while writing ``target``, as a phrase."""
    if code == errno.ENOSPC:
        return f"no space left on the disk holding {folder}"
    if code == getattr(errno, "EDQUOT", -1):
        return f"the disk quota for {folder} is used up"
    if code == errno.EROFS:
        return f"{folder} is on a read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied in {folder}"
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_in_the_way(target)
        if blocker is not None:
            return f"{blocker} is a file, not a folder"
    if code == errno.EISDIR:
        return f"{target} is a folder"
    if code == errno.ENAMETOOLONG:
        return "the file name is too long"
    if code == errno.EIO:
        return f"the disk holding {folder} reported an input/output error"
    return None


def _probe(folder):
    """Create and delete a one-byte file in ``folder`` (or its nearest existing ancestor); the OSError that stops it, or None."""
    probe = _existing_ancestor(folder) / f".dicyc-probe-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"0")
            fh.flush()
            os.fsync(fh.fileno())
        return None
    except OSError as exc:
        return exc
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def _errno_of(exc):
    """The OS error code behind ``exc``: an ``OSError``'s, or one a library quoted ("os error 28", "[Errno 28]")."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    found = re.search(r"os error (\d+)|\[Errno (\d+)\]", str(exc or ""))
    return int(found.group(1) or found.group(2)) if found else None


def write_error(target, exc=None, detail=None, needed=0):
    """A :class:`DicycError` saying in one sentence why writing ``target`` failed.

    ``exc`` is what the writer raised (an ``OSError`` names its cause exactly); ``detail`` what
    it said otherwise. Without an OS error code, a (nearly) full disk is named first, then what a
    probe file in the folder runs into (read-only, permissions), then the writer's own words.
    """
    target = Path(target)
    folder = target.parent
    code = _errno_of(exc)
    reason = _reason(code, target, folder) if code else None
    if reason is None and disk_is_full(folder, needed):
        reason = f"no space left on the disk holding {folder}"
    if reason is None and not isinstance(exc, OSError):
        probe = _probe(folder)
        if probe is not None:
            reason = _reason(getattr(probe, "errno", None), target, folder) or (probe.strerror or str(probe))
    if reason is None:
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
        else:
            reason = detail or (str(exc).strip().splitlines()[-1] if exc is not None and str(exc).strip() else None)
            reason = reason or "the writer failed"
    return DicycError(f"could not write {target}: {reason.rstrip('.')}.")


def prepare_folder(folder, what="folder"):
    """Create ``folder`` (and its parents) or refuse in one sentence; a file in the way is named."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        code = getattr(exc, "errno", None)
        blocker = _file_in_the_way(folder)
        if blocker is not None:
            which = "it" if blocker == Path(os.path.abspath(folder)) else str(blocker)
            raise DicycError(f"cannot use {folder} as the {what}: {which} is a file, not a folder.") from None
        reason = _reason(code, folder, _existing_ancestor(folder)) or exc.strerror or str(exc)
        raise DicycError(f"cannot create the {what} {folder}: {reason}.") from None
    return folder


def check_writable(folder, what="folder", target=None):
    """Refuse now, in one sentence, a folder no file can be written to (before minutes of work).

    Nothing is created: a folder that does not exist yet is judged by its nearest existing
    ancestor, so a refused command leaves no empty folder behind. ``target``, where given, is
    the file the sentence names.
    """
    folder = Path(folder)
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        if target is not None:
            raise DicycError(f"could not write {target}: {blocker} is a file, not a folder.")
        which = "it" if blocker == Path(os.path.abspath(folder)) else str(blocker)
        raise DicycError(f"cannot use {folder} as the {what}: {which} is a file, not a folder.")
    probe = _probe(folder)
    if probe is not None:
        where = _existing_ancestor(folder)
        reason = _reason(getattr(probe, "errno", None), where / "x", where) or probe.strerror or str(probe)
        raise DicycError(f"could not write {target}: {reason}." if target is not None
                         else f"cannot write to the {what} {folder}: {reason}.")
    return folder


# ===================================================================== verification
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def verify_file(path, target=None):
    """Raise :class:`DicycError` unless the written file ``path`` is complete for its kind.

    The kind comes from ``target``'s name (the final name; ``path`` may be a temporary one).
    Images: every voxel byte the header announces (:mod:`dicyc.imagecheck`); PNG: ends with
    IEND; safetensors: as long as its header's tensors; JSON: parses. Other kinds: non-empty.
    """
    import json

    from dicyc.imagecheck import IncompleteImage, check_image_file

    path = Path(path)
    target = Path(target or path)
    name = target.name.lower()
    size = path.stat().st_size
    try:
        if name.endswith((".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")):
            check_image_file(path, strict=True)
        elif name.endswith(".png"):
            with open(path, "rb") as fh:
                fh.seek(max(size - len(_PNG_END), 0))
                if size < 8 + len(_PNG_END) or fh.read() != _PNG_END:
                    raise IncompleteImage("the PNG ends before its IEND chunk")
        elif name.endswith(".safetensors"):
            _check_safetensors_length(path, size)
        elif name.endswith(".json"):
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                raise IncompleteImage("the JSON text is cut short") from None
    except IncompleteImage as exc:
        raise write_error(target, detail=f"the written file is incomplete ({exc})") from None


def _check_safetensors_length(path, size):
    import json
    import struct

    from dicyc.imagecheck import IncompleteImage

    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise IncompleteImage("the safetensors header is missing")
        length = struct.unpack("<Q", head)[0]
        if length > size - 8:
            raise IncompleteImage("the safetensors header is cut short")
        try:
            header = json.loads(fh.read(length))
        except ValueError:
            raise IncompleteImage("the safetensors header is cut short") from None
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if size < 8 + length + end:
        raise IncompleteImage(f"it holds {size - 8 - length} bytes of tensor data where its header announces {end}")


# ===================================================================== writing
def _fsync_folder(folder):
    """Make a rename durable (POSIX); harmless where folders cannot be opened (Windows)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target, verify=True, needed=0):
    """Yield a temporary path next to ``target``; verify it and rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left untouched. An
    ``OSError`` (and any writer error on a full disk) becomes a :class:`DicycError` naming
    ``target`` and the cause. ``verify=False`` skips :func:`verify_file` for writers that
    verify themselves; ``needed`` is the size the write needs (for the full-disk diagnosis).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(target, exc) from None
    if target.is_dir():
        raise DicycError(f"could not write {target}: it is a folder.")
    stem, ext = split_extension(target)
    tmp = target.parent / f".{stem}.{uuid.uuid4().hex[:8]}.tmp{ext}"
    try:
        try:
            yield tmp
            if not tmp.exists():
                raise RuntimeError(f"writer produced no file for {target}")
            if tmp.is_file():
                if verify:
                    verify_file(tmp, target)
                with open(tmp, "rb+") as fh:  # make the bytes durable before the rename publishes them
                    os.fsync(fh.fileno())
                # some writers create private (0600) files; published results follow the umask
                os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
        except DicycError:
            raise
        except OSError as exc:
            raise write_error(target, exc, needed=needed) from None
        except Exception as exc:  # a writer's own error type (SimpleITK, safetensors) quoting an OS error
            if _errno_of(exc) or disk_is_full(target.parent, needed):
                raise write_error(target, exc, needed=needed) from None
            raise
        _fsync_folder(target.parent)
    finally:
        if tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                pass


#: Names of this module's temporary files: ``.<stem>.<8 hex>.tmp<ext>`` and ``.<stem>.<8 hex>.part<ext>``.
TEMPORARY_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.(tmp|part)(\.[^/\\]+)?$")


def remove_stale_temporaries(folder, recursive=True):
    """Remove temporary files a killed writer left in ``folder``; returns their names.

    ``kill -9`` in the middle of an atomic write leaves its temporary file behind (the target
    itself is intact). Only the owner of a folder may call this, while no other writer can be
    at work there: ``dicyc train`` does, under its run-folder lock.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    walker = folder.rglob(".*") if recursive else folder.glob(".*")
    for path in sorted(walker):
        if path.is_file() and TEMPORARY_NAME.match(path.name):
            try:
                path.unlink()
                removed.append(str(path.relative_to(folder)))
            except OSError:
                pass
    return removed


@contextlib.contextmanager
def atomic_group(targets):
    """All-or-nothing for several files: yield ``{key: temporary path}``, publish them all or none.

    Each temporary file is written (and verified) by the body, for instance with
    :func:`write_bytes` or :func:`dicyc.volume.write_volume` onto the temporary path; only when
    every one of them succeeded are they renamed onto their targets, in the given order. A
    failure half-way (a full disk at the third file) therefore leaves an existing set of
    results (a comparison report) whole instead of half old and half new.
    """
    targets = {key: Path(t) for key, t in targets.items()}
    tmps = {}
    for key, target in targets.items():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(target, exc) from None
        if target.is_dir():
            raise DicycError(f"could not write {target}: it is a folder.")
        stem, ext = split_extension(target)
        tmps[key] = target.parent / f".{stem}.{uuid.uuid4().hex[:8]}.part{ext}"
    try:
        try:
            yield dict(tmps)
        except DicycError as exc:  # the writers named the temporary files: name the results instead
            message = str(exc)
            for key, tmp in tmps.items():
                message = message.replace(str(tmp), str(targets[key]))
            raise DicycError(message) from None
        for key, tmp in tmps.items():
            if not tmp.is_file():
                raise RuntimeError(f"the writer produced no file for {targets[key]}")
        for key, tmp in tmps.items():
            try:
                os.replace(tmp, targets[key])
            except OSError as exc:
                raise write_error(targets[key], exc) from None
        for folder in {t.parent for t in targets.values()}:
            _fsync_folder(folder)
    finally:
        for tmp in tmps.values():
            if tmp.exists():
                try:
                    tmp.unlink()
                except OSError:
                    pass


def write_bytes(target, data):
    """Atomically write ``data`` (bytes) to ``target``, checking every byte reached the disk."""
    with atomic_path(target, verify=False, needed=len(data)) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
        if os.path.getsize(tmp) != len(data):
            raise write_error(target, detail=f"only {os.path.getsize(tmp)} of {len(data)} bytes were written")
        verify_file(tmp, target)


def write_text(target, text):
    """Atomically write ``text`` (UTF-8) to ``target``."""
    write_bytes(target, text.encode("utf-8"))
