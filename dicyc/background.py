"""Long work in a child process that a GUI (or a test) follows without ever blocking.

Synthesis of a big volume and every training run go to a separate process, so 3D Slicer's
event loop keeps running. This module is plain Python — no Qt, no Slicer — so the Slicer
modules drive it from a ``QTimer`` and the test-suite drives it directly:

* :func:`dicyc_command` builds ``[python, "-m", "dicyc", ...]``;
* :class:`BackgroundProcess` starts it in its own session / process group, reads its stdout
  and stderr on daemon threads into a queue, and follows the JSON-lines events file the
  command writes (``--progress-jsonl``); :meth:`BackgroundProcess.poll` hands over whatever
  arrived since the last call, never waiting;
* :meth:`BackgroundProcess.cancel` ends the whole process *tree* — the command and anything it
  started (``torchrun`` workers, data-loader processes) — and returns only once nothing is left.

Contract: ``docs/engine-contracts.md``, "Background work".
"""

import collections
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dicyc.events import read_events

_IS_WINDOWS = os.name == "nt"
#: ``dicyc <command>: error: <sentence>`` — what the CLI (and argparse) print for a user error.
_ERROR_LINE = re.compile(r"^dicyc(?: [\w-]+)?: error: .+")
#: stderr/stdout lines kept for :meth:`BackgroundProcess.error_message` and the log tail.
_TAIL_LINES = 200


def dicyc_command(*args, python=None):
    """``[python, "-m", "dicyc", *args]`` with ``python`` defaulting to ``sys.executable``.

    Inside 3D Slicer pass the ``PythonSlicer`` executable (``shutil.which("PythonSlicer")``):
    there ``sys.executable`` may be the Slicer application itself.
    """
    return [str(python or sys.executable), "-m", "dicyc", *(str(a) for a in args)]


def engine_root():
    """The folder that holds the ``dicyc`` package (what a child process needs on PYTHONPATH)."""
    return str(Path(__file__).resolve().parents[1])


def child_environment(env=None):
    """The environment of a child: ours, plus ``env``, plus the engine on ``PYTHONPATH``.

    ``PYTHONUNBUFFERED=1`` makes log lines arrive as they are printed, and the folder holding
    ``dicyc`` is put first on ``PYTHONPATH`` so ``python -m dicyc`` finds the same engine the
    parent uses (inside Slicer the bundled copy is not on the child's default path).
    """
    full = dict(os.environ)
    full.update({str(k): str(v) for k, v in (env or {}).items()})
    full["PYTHONUNBUFFERED"] = "1"
    root = engine_root()
    parts = [p for p in full.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        full["PYTHONPATH"] = os.pathsep.join([root] + parts)
    return full


# ===================================================================== process tree helpers
def _proc_stat(pid):
    """(state, ppid, pgrp) of a Linux process from /proc, or None when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[1]), int(fields[2])
    except (IndexError, ValueError):
        return None


def _windows_pid_alive(pid):
    import ctypes

    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(0x1000, False, int(pid))  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        ok = kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        return bool(ok) and code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def pid_alive(pid):
    """True while ``pid`` is a live process (a zombie waiting to be reaped counts as dead)."""
    if _IS_WINDOWS:  # os.kill(pid, 0) would terminate the process there
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat(pid) if os.path.isdir("/proc") else None
    return not (stat is not None and stat[0] in ("Z", "X"))


def _group_members(pgid):
    """Live (non-zombie) pids of process group ``pgid``; None where that cannot be listed."""
    if not os.path.isdir("/proc/self"):
        return None
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _proc_stat(int(name))
        if stat is not None and stat[2] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(name))
    return members


def _group_alive(pgid):
    members = _group_members(pgid)
    if members is not None:
        return bool(members)
    try:  # no /proc (macOS): a group with any process left, zombies included, answers signal 0
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _descendants(pid):
    """``{pid: process group}`` of all descendants of ``pid`` (Linux /proc; empty elsewhere),
    to catch any that left the process group with a session of their own."""
    if not os.path.isdir("/proc/self"):
        return {}
    children, groups = collections.defaultdict(list), {}
    for name in os.listdir("/proc"):
        stat = _proc_stat(name) if name.isdigit() else None
        if stat is not None:
            children[stat[1]].append(int(name))
            groups[int(name)] = stat[2]
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found[child] = groups[child]
            todo.append(child)
    return found


def _signal_pids(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# ===================================================================== the runner
class BackgroundProcess:
    """Run ``command`` (a list of strings) in the background and follow it.

    ``events_path``: the JSON-lines file the command writes (e.g. its ``--progress-jsonl``);
    only events appended after :meth:`start` are reported (a file left by an earlier run, as
    when resuming a training run, is skipped up to its size at start). ``env``: variables
    added to the current environment (see :func:`child_environment`). ``cwd``: working folder.

    Typical use from a GUI timer::

        proc = BackgroundProcess(dicyc_command("synthesize", ..., "--progress-jsonl", ev), ev)
        proc.start()
        ...                       # every 200 ms:
        for event in proc.poll(): ...
        if not proc.running: done(proc.returncode, proc.error_message())
    """

    def __init__(self, command, events_path=None, env=None, cwd=None):
        self.command = [str(c) for c in command]
        self.events_path = Path(events_path) if events_path else None
        self.env = env
        self.cwd = str(cwd) if cwd else None
        self._proc = None
        self._queue = queue.Queue()
        self._threads = []
        self._offset = 0
        self._stderr_tail = collections.deque(maxlen=_TAIL_LINES)
        self._stdout_tail = collections.deque(maxlen=_TAIL_LINES)
        self._error_line = None
        self._lock = threading.Lock()
        self._cancelled = False
        self._pgid = None
        self._drained = False

    # ----------------------------------------------------------------- life cycle
    def start(self):
        """Start the process (once). Raises ``OSError`` if the executable cannot be run."""
        if self._proc is not None:
            raise RuntimeError("this BackgroundProcess was already started")
        if self.events_path is not None:
            try:
                self._offset = self.events_path.stat().st_size
            except OSError:
                self._offset = 0
        kwargs = {}
        if _IS_WINDOWS:
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)
        else:
            kwargs["start_new_session"] = True  # own session and process group: the tree to kill
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_environment(self.env),
            cwd=self.cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        if not _IS_WINDOWS:
            self._pgid = self._proc.pid  # session leader: its pid is the group id
        for stream, name in ((self._proc.stdout, "stdout"), (self._proc.stderr, "stderr")):
            thread = threading.Thread(target=self._reader, args=(stream, name), daemon=True,
                                      name=f"dicyc-{name}-reader")
            thread.start()
            self._threads.append(thread)
        return self

    def _reader(self, stream, name):
        try:
            for line in stream:
                # tqdm-like bars redraw with \r: keep only the last state of such a line
                text = line.rstrip("\r\n").split("\r")[-1].rstrip()
                if not text:
                    continue
                with self._lock:
                    (self._stderr_tail if name == "stderr" else self._stdout_tail).append(text)
                    if name == "stderr" and _ERROR_LINE.match(text):
                        self._error_line = text
                self._queue.put({"event": "log", "message": text, "stream": name})
        except (OSError, ValueError):
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    @property
    def pid(self):
        return self._proc.pid if self._proc is not None else None

    @property
    def started(self):
        return self._proc is not None

    @property
    def running(self):
        """True from :meth:`start` until the process has exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self):
        """The exit status once the process has exited (negative: killed by that signal), else None."""
        return None if self._proc is None else self._proc.poll()

    @property
    def cancelled(self):
        return self._cancelled

    def wait(self, timeout=None):
        """Block until the process exits (tests and scripts; never from a GUI thread). Returns
        the exit status; raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        if self._proc is None:
            raise RuntimeError("the process was not started")
        code = self._proc.wait(timeout)
        self._join_readers(5.0)
        return code

    # ----------------------------------------------------------------- following
    def poll(self):
        """New events since the last call, never blocking.

        The JSON-lines events appended to ``events_path`` (complete lines only; a partial last
        line waits for the next call), then ``{"event": "log", "message": line, "stream":
        "stdout"|"stderr"}`` for each new output line. Once the process has exited this
        first lets the reader threads finish, so the call after ``running`` turns False
        returns everything that is left.
        """
        if self._proc is None:
            return []
        if self._proc.poll() is not None and not self._drained:
            # once, briefly: a grandchild that outlives the command could hold the pipes open
            self._join_readers(1.0)
            self._drained = True
        events = self._read_new_events()
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return events

    def _read_new_events(self):
        if self.events_path is None:
            return []
        try:
            size = self.events_path.stat().st_size
        except OSError:
            return []
        if size < self._offset:  # the file was replaced: start again from its beginning
            self._offset = 0
        if size == self._offset:
            return []
        try:
            events, self._offset = read_events(self.events_path, self._offset)
        except OSError:
            return []
        return [e for e in events if isinstance(e, dict)]

    def _join_readers(self, timeout):
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def output_tail(self, n=20, stream="stderr"):
        """The last ``n`` lines of ``stream`` ("stderr" or "stdout")."""
        with self._lock:
            lines = list(self._stderr_tail if stream == "stderr" else self._stdout_tail)
        return lines[-n:]

    def error_message(self):
        """Why the process failed: the last ``dicyc …: error: …`` line of stderr, else the last
        lines of stderr, else a sentence with the exit status; None while running or after a
        successful exit without such a line."""
        code = self.returncode
        with self._lock:
            line = self._error_line
            tail = list(self._stderr_tail)[-5:]
        if line:
            return line
        if code is None or code == 0:
            return None
        if self._cancelled:
            return "cancelled by the user."
        if tail:
            return "\n".join(tail)
        if code < 0 and not _IS_WINDOWS:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the process was killed by {name}."
        return f"the process exited with status {code}."

    # ----------------------------------------------------------------- cancelling
    def cancel(self, timeout=5):
        """End the whole process tree; returns once nothing of it is left.

        POSIX: SIGTERM to the process group (the command started it as a new session, and its
        children — torchrun workers, data loaders — are in it), SIGKILL to whatever is left
        after ``timeout`` seconds. Descendants that moved to a session of their own are found
        through /proc (Linux) and signalled too. Windows: ``taskkill /T /F /PID``. Returns True
        if the process was still running, False if it had already ended.
        """
        if self._proc is None:
            return False
        was_running = self._proc.poll() is None
        if was_running:
            self._cancelled = True
        if _IS_WINDOWS:
            self._cancel_windows(timeout)
        else:
            self._cancel_posix(timeout)
        self._join_readers(2.0)
        return was_running

    def _cancel_windows(self, timeout):
        if self._proc.poll() is None:
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(self._proc.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        try:
            self._proc.wait(max(float(timeout), 1.0))
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def _cancel_posix(self, timeout):
        pgid = self._pgid
        strays = [p for p, group in _descendants(self._proc.pid).items() if group != pgid]

        def send(sig):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            _signal_pids([p for p in strays if pid_alive(p)], sig)

        def all_gone():
            return self._proc.poll() is not None and not _group_alive(pgid) and not any(pid_alive(p) for p in strays)

        if all_gone():
            return
        send(signal.SIGTERM)
        deadline = time.monotonic() + max(float(timeout), 0.0)
        while time.monotonic() < deadline and not all_gone():
            time.sleep(0.02)
        if not all_gone():
            send(signal.SIGKILL)
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and not all_gone():
                time.sleep(0.02)
        self._proc.wait()  # reap the direct child (it cannot survive SIGKILL)
