"""Progress of long work: a terminal progress bar and the JSON-lines event stream.

The JSON-lines stream is the contract the Slicer training panel (and any script) follows:
one object per line, flushed at once, fields as in DESIGN.md — ``event`` (start, iteration,
epoch, checkpoint, preview, done, error) plus ``epoch``, ``iteration``, ``total_iterations``,
``losses``, ``lr``, ``elapsed_s``, ``eta_s``, ``path``, ``message`` where they apply.
"""

import json
import math
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

    A killed process can leave at most one partial last line; readers skip lines that do not
    parse (see :func:`read_events`).
    """

    def __init__(self, paths=()):
        self._files = []
        for path in paths:
            if path:
                self._files.append(open(path, "a", encoding="utf-8"))

    def emit(self, event, **fields):
        record = {"event": event, "time": round(time.time(), 3)}
        record.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(_finite(record)) + "\n"
        for fh in self._files:
            fh.write(line)
            fh.flush()
        return record

    def close(self):
        for fh in self._files:
            fh.close()
        self._files = []


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
