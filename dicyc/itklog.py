"""Keep ITK's raw messages off the user's terminal, and hand them to us to judge.

Why: ITK and the libraries under it (niftilib, GDCM, MetaIO, teem) print straight to the
process's stderr: multi-line ``WARNING: In /tmp/SimpleITK-build/...`` blocks with source paths
and object addresses, and worse, niftilib reports a short write (a full disk) *only* there
("** ERROR: NWAD: wrote only 0 of 1474560 bytes") and returns normally. Those lines mean
nothing to a user, and the one that matters was being missed. So every SimpleITK read and write
in the engine runs inside :func:`itk_messages`, which points file descriptor 2 at a pipe for
the duration of the call (a Python-level redirect cannot see what C++ writes) and gives back
what was printed. The caller decides: :func:`has_error` makes a write fail, and
:func:`summary` turns a warning into one line of ours.

The redirect is process-wide, so it is serialised by a lock and nested uses share the outer
capture. Where fd 2 cannot be redirected the call simply runs with its messages visible.
"""

import contextlib
import os
import re
import sys
import threading

_lock = threading.RLock()
_depth = 0
_captured = []


def _drain(fd, sink):
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        sink.append(chunk)
    os.close(fd)


@contextlib.contextmanager
def itk_messages():
    """Run the body with fd 2 captured; yields a list that holds the captured text afterwards."""
    global _depth, _captured
    out = []
    with _lock:
        if _depth:  # an outer capture is already running: it sees everything
            _depth += 1
            try:
                yield out
            finally:
                _depth -= 1
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        try:
            saved = os.dup(2)
            read_fd, write_fd = os.pipe()
        except OSError:
            yield out  # no redirect possible (no fd 2, fd limit): messages stay visible
            return
        chunks = []
        reader = threading.Thread(target=_drain, args=(read_fd, chunks), daemon=True)
        reader.start()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        _depth = 1
        try:
            yield out
        finally:
            _depth = 0
            os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees end of file
            os.close(saved)
            reader.join(timeout=5)
            out.append(b"".join(chunks).decode("utf-8", "replace"))


def text(messages):
    """The captured text of an :func:`itk_messages` list ('' when nothing was printed)."""
    return "".join(messages)


_ERROR = re.compile(r"(\*\* ERROR|ITK ERROR|\bERROR:|failed to write|wrote only|fail after write)", re.IGNORECASE)


def has_error(captured):
    """True where the captured text reports an error (a writer that failed but returned normally)."""
    return bool(_ERROR.search(captured or ""))


_NOISE = (
    re.compile(r"^(WARNING|ERROR): In .*, line \d+$"),  # "WARNING: In /tmp/SimpleITK-build/..., line 502"
    re.compile(r"^ITK (WARNING|ERROR): \w+\(0x[0-9a-f]+\):\s*$"),
)
_OBJECT = re.compile(r"^(?:ITK (?:WARNING|ERROR): )?\w+ ?\(0x[0-9a-f]+\):\s*")


def summary(captured):
    """The first informative line of captured ITK output, without source paths or object addresses."""
    for line in (captured or "").splitlines():
        line = line.strip()
        if not line or any(p.match(line) for p in _NOISE):
            continue
        line = _OBJECT.sub("", line).strip()
        line = re.sub(r"^\*\* ERROR \([^)]*\):\s*", "", line)
        line = re.sub(r"^\*\* ERROR:\s*|^ERROR:\s*|^WARNING:\s*", "", line)
        line = " ".join(line.split())
        if line:
            return line.rstrip(".")
    return ""


def clean_exception(exc):
    """One line from a SimpleITK RuntimeError (its last informative line, without paths and addresses)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("Exception thrown in SimpleITK") or re.match(r"^/.*:\d+:$", line):
            continue
        cleaned = summary(line)
        if cleaned:
            return cleaned
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
