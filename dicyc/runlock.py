"""One trainer per run folder: an OS file lock held for the whole life of a training.

Why: two ``dicyc train`` on one ``--out`` (a second click of Resume in Slicer, a script started
twice) would interleave their checkpoints, models and ``config.json`` and both report success.
The lock is an advisory OS lock on ``<folder>/.dicyc-train.lock`` (``fcntl.flock`` on POSIX,
``msvcrt.locking`` on Windows): the operating system releases it when the process ends, however
it ends (a crash, ``kill -9``, a power cut's reboot), so it can never go stale the way a pid file
can. The file also records the holder's pid and start time, for the refusal message only.

The lock is re-entrant within a process (``dicyc train`` takes it before writing
``config.json`` and :func:`dicyc.train.train` takes it again), and :func:`is_locked` lets a
caller (the Slicer module) ask whether a folder is in use without taking it.
"""

import json
import os
import threading
import time
from pathlib import Path

from dicyc.errors import DicycError

LOCK_NAME = ".dicyc-train.lock"

_held = {}  # resolved folder -> [file object, depth]
_guard = threading.Lock()


def _lock_file(fh):
    """Take an exclusive lock on the open file without waiting; False when someone else holds it."""
    try:
        if os.name == "nt":
            import msvcrt

            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _unlock_file(fh):
    try:
        if os.name == "nt":
            import msvcrt

            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    except OSError:
        pass


def _holder(path):
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
        return f" (pid {info['pid']}, since {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _in_use_sentence(folder):
    return (f"{folder} is in use by another training{_holder(Path(folder) / LOCK_NAME)}; "
            "wait for it to finish or stop it before training there.")


class RunLock:
    """Exclusive lock on a run folder; a context manager. ``acquire`` refuses in one sentence."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._key = None

    def acquire(self):
        key = str(self.folder.resolve())
        with _guard:
            if key in _held:  # this process already holds it
                _held[key][1] += 1
                self._key = key
                return self
            try:
                fh = open(self.path, "a+", encoding="utf-8")
            except OSError as exc:
                raise DicycError(f"cannot lock the run folder {self.folder}: {exc.strerror or exc}.") from None
            if not _lock_file(fh):
                fh.close()
                raise DicycError(_in_use_sentence(self.folder))
            try:
                fh.seek(0)
                fh.truncate()
                fh.write(json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
                fh.flush()
            except OSError:
                pass  # the lock is what counts; the note is for messages only
            _held[key] = [fh, 1]
            self._key = key
        return self

    def release(self):
        with _guard:
            entry = _held.get(self._key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                fh = entry[0]
                _unlock_file(fh)
                fh.close()
                del _held[self._key]
        self._key = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def is_locked(folder):
    """True when another process holds ``folder``'s training lock (this one's own hold is not counted)."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    if not path.is_file():
        return False
    if str(folder.resolve()) in _held:
        return False
    try:
        fh = open(path, "a+", encoding="utf-8")
    except OSError:
        return False
    try:
        if _lock_file(fh):
            _unlock_file(fh)
            return False
        return True
    finally:
        fh.close()


def in_use_message(folder):
    """The one sentence a second trainer on ``folder`` is refused with, or None while the folder is free."""
    return _in_use_sentence(Path(folder)) if is_locked(folder) else None
