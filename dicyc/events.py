"""Progress of long work: a terminal progress bar and the JSON-lines event stream.

The JSON-lines stream is the contract the Slicer training panel (and any script) follows:
one object per line, flushed at once, fields as in DESIGN.md — ``event`` (start, iteration,
epoch, checkpoint, preview, done, error) plus ``epoch``, ``iteration``, ``total_iterations``,
``losses``, ``lr``, ``elapsed_s``, ``eta_s``, ``path``, ``message`` where they apply.
"""

import json
import math
import os
import sys
import time


def format_duration(seconds):
    """'1:02:03' / '02:03' for a number of seconds; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """A one-line bar with rate and ETA on a terminal (stderr); silent elsewhere."""

    def __init__(self, total, label="", stream=None, width=28, enabled=None):
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last = 0.0

    def update(self, done, eta_s=None, rate=None, suffix=""):
        if not self.enabled:
            return
        now = time.monotonic()
        if done < self.total and now - self._last < 0.2:
            return
        self._last = now
        frac = min(max(done / self.total, 0.0), 1.0)
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        rate_s = f" {rate:.2f} it/s" if rate else ""
        line = f"\r{self.label} [{bar}] {100 * frac:5.1f}% {done}/{self.total}{rate_s} ETA {format_duration(eta_s)} {suffix}"
        self.stream.write(line[:160].ljust(100))
        self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


class EventLog:
    """Appends JSON-lines events to one or more files; a no-op where none are given.

    Each line goes to the file in one ``write`` call on a descriptor opened for appending, so a
    killed process leaves whole lines only. A write that fails or falls short (a full disk) is
    cut back to the last whole line and raises :class:`~dicyc.errors.DicycError` ("could not
    write …: no space left on …"): followers never meet a half line followed by more events.
    Readers still skip lines that do not parse (see :func:`read_events`).
    """

    def __init__(self, paths=()):
        self._files = []
        for path in paths:
            if path:
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
                except OSError as exc:
                    self.close()
                    from dicyc.atomic import write_error

                    raise write_error(path, exc) from None
                self._files.append((str(path), fd))

    def emit(self, event, **fields):
        record = {"event": event, "time": round(time.time(), 3)}
        record.update({k: v for k, v in fields.items() if v is not None})
        data = (json.dumps(_finite(record)) + "\n").encode("utf-8")
        for path, fd in self._files:
            _append_line(path, fd, data)
        return record

    def emit_quietly(self, event, **fields):
        """:meth:`emit` for the last word of a run that is already failing: a write error is ignored."""
        from dicyc.errors import DicycError

        try:
            return self.emit(event, **fields)
        except DicycError:
            return None

    def close(self):
        for _, fd in self._files:
            try:
                os.close(fd)
            except OSError:
                pass
        self._files = []


def _append_line(path, fd, data):
    """Append ``data`` with one write; on failure cut the file back to where it was, then raise."""
    from dicyc.atomic import write_error

    try:
        before = os.fstat(fd).st_size
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        written = os.write(fd, data)
    except OSError as exc:
        _cut_back(fd, before)
        raise write_error(path, exc, needed=len(data)) from None
    if written != len(data):
        _cut_back(fd, before)
        raise write_error(path, detail=f"only {written} of {len(data)} bytes of an event were written", needed=len(data))


def _cut_back(fd, size):
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass


def _finite(value):
    """JSON has no NaN/inf: turn them into None so every line parses everywhere."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_events(path, start=0):
    """Parse the complete lines of a JSON-lines file from byte offset ``start``.

    Returns (events, new_offset); an incomplete last line is left for the next call, which is
    how a reader follows a file another process is still writing.
    """
    events = []
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    for raw in data[:end].splitlines():
        try:
            events.append(json.loads(raw))
        except ValueError:
            continue
    return events, start + end
