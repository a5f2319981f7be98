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
  started (``torchrun`` workers, data-loader processes) — and returns only once nothing is left;
* a child never outlives the process that started it (Slicer crashing or being killed must not
  leave a training running): the child calls :func:`end_with_parent`, which watches the parent
  named in its environment and ends the child when the parent is gone (a watchdog thread on
  every OS, plus ``PR_SET_PDEATHSIG`` on Linux); on Windows the child is also put in a Job
  Object that the OS kills when the parent's handle to it closes;
* on Windows no console window flashes up, for the child or for the cancel's ``taskkill``.

Contract: ``docs/engine-contracts.md``, "Background work".
"""

import collections
import ctypes
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

#: The child's environment names its parent, so that it can end when the parent is gone:
#: the parent's pid, its start time (Linux, against pid reuse) and whether the parent asks for a
#: parent-death signal (only when it starts the child from its main thread: Linux sends the
#: signal when the *thread* that started the child ends).
PARENT_PID_ENV = "DICYC_PARENT_PID"
PARENT_START_ENV = "DICYC_PARENT_START"
PARENT_DEATHSIG_ENV = "DICYC_PARENT_DEATHSIG"
#: How often the child's watchdog looks at its parent (seconds).
PARENT_WATCH_INTERVAL_S = 0.5
#: After the parent is gone: SIGTERM to the child's process group, SIGKILL after this many seconds.
ORPHAN_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1
#: Windows process-creation flags: no console window; a process group of its own.
_CREATE_NO_WINDOW = 0x08000000
_CREATE_NEW_PROCESS_GROUP = 0x00000200


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


def _proc_start_time(pid):
    """Linux: when ``pid`` started (clock ticks since boot, field 22 of /proc/PID/stat), as a
    string; None where it cannot be read. With the pid it names one process, even after pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


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


# ===================================================================== Windows: no console, a job
def hidden_window_options():
    """``subprocess`` keyword arguments that keep a console window from appearing on Windows
    (as ``slicer.util.launchConsoleProcess`` does); empty elsewhere."""
    if not _IS_WINDOWS:
        return {}
    info = subprocess.STARTUPINFO()
    info.dwFlags |= getattr(subprocess, "STARTF_USESHOWWINDOW", 1)
    info.wShowWindow = 0  # SW_HIDE
    return {"startupinfo": info, "creationflags": getattr(subprocess, "CREATE_NO_WINDOW", _CREATE_NO_WINDOW)}


class _BasicLimits(ctypes.Structure):  # JOBOBJECT_BASIC_LIMIT_INFORMATION
    _fields_ = [("PerProcessUserTimeLimit", ctypes.c_int64), ("PerJobUserTimeLimit", ctypes.c_int64),
                ("LimitFlags", ctypes.c_uint32), ("MinimumWorkingSetSize", ctypes.c_size_t),
                ("MaximumWorkingSetSize", ctypes.c_size_t), ("ActiveProcessLimit", ctypes.c_uint32),
                ("Affinity", ctypes.c_size_t), ("PriorityClass", ctypes.c_uint32), ("SchedulingClass", ctypes.c_uint32)]


class _IoCounters(ctypes.Structure):  # IO_COUNTERS
    _fields_ = [(name, ctypes.c_uint64) for name in ("ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
                                                     "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]


class _ExtendedLimits(ctypes.Structure):  # JOBOBJECT_EXTENDED_LIMIT_INFORMATION
    _fields_ = [("BasicLimitInformation", _BasicLimits), ("IoInfo", _IoCounters),
                ("ProcessMemoryLimit", ctypes.c_size_t), ("JobMemoryLimit", ctypes.c_size_t),
                ("PeakProcessMemoryUsed", ctypes.c_size_t), ("PeakJobMemoryUsed", ctypes.c_size_t)]


_JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
_JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9


def _windows_kill_on_close_job(process_handle):
    """Put a started process into a new Job Object that ends it (and what it starts afterwards)
    when the last handle to the job closes — at the latest when this process ends, however it
    ends. Returns the job handle, or None where that is not possible (the watchdog still works)."""
    try:
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.CreateJobObjectW.restype = ctypes.c_void_p
        kernel32.CreateJobObjectW.argtypes = (ctypes.c_void_p, ctypes.c_wchar_p)
        kernel32.SetInformationJobObject.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
        kernel32.AssignProcessToJobObject.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
        kernel32.CloseHandle.argtypes = (ctypes.c_void_p,)
        job = kernel32.CreateJobObjectW(None, None)
        if not job:
            return None
        limits = _ExtendedLimits()
        limits.BasicLimitInformation.LimitFlags = _JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        if not (kernel32.SetInformationJobObject(job, _JOB_OBJECT_EXTENDED_LIMIT_INFORMATION, ctypes.byref(limits),
                                                 ctypes.sizeof(limits))
                and kernel32.AssignProcessToJobObject(job, int(process_handle))):
            kernel32.CloseHandle(job)
            return None
        return job
    except (AttributeError, OSError, ValueError):
        return None


def _windows_close_handle(handle):
    try:
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.CloseHandle.argtypes = (ctypes.c_void_p,)
        kernel32.CloseHandle(handle)
    except (AttributeError, OSError):
        pass


# ===================================================================== the child: end with the parent
def parent_environment():
    """The variables that name this process as the parent of a child it is about to start."""
    env = {PARENT_PID_ENV: str(os.getpid())}
    start = _proc_start_time(os.getpid()) if os.path.isdir("/proc/self") else None
    if start:
        env[PARENT_START_ENV] = start
    if threading.current_thread() is threading.main_thread():
        env[PARENT_DEATHSIG_ENV] = "1"
    return env


def parent_alive(pid, start=None):
    """True while process ``pid`` lives and (where ``start`` is given and readable) is the same
    process that had that start time, not a later one that reuses the pid."""
    if not pid_alive(pid):
        return False
    if start:
        now = _proc_start_time(pid)
        if now is not None and now != str(start):
            return False
    return True


def _set_parent_death_signal():
    """Linux: ask the kernel for SIGTERM when the parent (the thread that started us) ends."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _wait_for_windows_parent(pid, interval):
    """Block until Windows process ``pid`` has ended (a handle to it is exact, whatever pid reuse)."""
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = ctypes.c_void_p
    kernel32.OpenProcess.argtypes = (ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32)
    kernel32.WaitForSingleObject.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
    handle = kernel32.OpenProcess(0x00100000, False, int(pid))  # SYNCHRONIZE
    if not handle:
        return  # already gone
    try:
        while kernel32.WaitForSingleObject(handle, int(interval * 1000)) != 0:  # 0: WAIT_OBJECT_0, it ended
            pass
    finally:
        _windows_close_handle(handle)


def _end_orphaned_process(parent_pid, grace=ORPHAN_GRACE_S):
    """The parent is gone: end this process and (when it leads one) its process group."""
    try:
        print(f"dicyc: the process that started this one (pid {parent_pid}) has ended; stopping.",
              file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
    if not _IS_WINDOWS:
        leader = os.getpgrp() == os.getpid()  # a BackgroundProcess child leads its own group
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                if leader:
                    os.killpg(os.getpid(), sig)
                else:
                    os.kill(os.getpid(), sig)
            except OSError:
                pass
            time.sleep(grace)  # SIGTERM ends us here unless a handler delays it
    os._exit(1)


def _watch_parent(pid, start, interval):
    if _IS_WINDOWS:
        try:
            _wait_for_windows_parent(pid, interval)
        except (AttributeError, OSError):
            while pid_alive(pid):
                time.sleep(interval)
    else:
        while parent_alive(pid, start):
            time.sleep(interval)
    _end_orphaned_process(pid)


def end_with_parent(environ=None, interval=PARENT_WATCH_INTERVAL_S):
    """In a child started by :class:`BackgroundProcess`: end this process when that parent ends.

    The parent puts its pid (and start time) in the child's environment
    (:func:`parent_environment`); without them this does nothing and returns None. Otherwise a
    daemon thread checks the parent every ``interval`` seconds and, once it is gone, ends this
    process (SIGTERM to its process group, SIGKILL after a grace period; ``os._exit`` on
    Windows). On Linux a parent-death signal is also requested, which ends the child at once
    when its direct parent dies. Works whether the parent is the direct parent or, as with
    Slicer's ``PythonSlicer`` launcher, a process further up. Returns the watchdog thread.
    """
    environ = os.environ if environ is None else environ
    text = str(environ.get(PARENT_PID_ENV, "")).strip()
    if not text.isdigit() or int(text) == os.getpid():
        return None
    pid = int(text)
    start = environ.get(PARENT_START_ENV) or None
    if environ.get(PARENT_DEATHSIG_ENV) == "1":
        _set_parent_death_signal()
    if not parent_alive(pid, start):  # it died before we got here
        _end_orphaned_process(pid)
    thread = threading.Thread(target=_watch_parent, args=(pid, start, interval), daemon=True,
                              name="dicyc-parent-watchdog")
    thread.start()
    return thread


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
        self._job = None

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
            kwargs.update(hidden_window_options())
            kwargs["creationflags"] = kwargs.get("creationflags", 0) | getattr(
                subprocess, "CREATE_NEW_PROCESS_GROUP", _CREATE_NEW_PROCESS_GROUP)
        else:
            kwargs["start_new_session"] = True  # own session and process group: the tree to kill
        env = dict(self.env or {})
        env.update(parent_environment())  # the child ends when this process ends (end_with_parent)
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_environment(env),
            cwd=self.cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        if _IS_WINDOWS:
            self._job = _windows_kill_on_close_job(getattr(self._proc, "_handle", 0))
        else:
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
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                           **hidden_window_options())
        try:
            self._proc.wait(max(float(timeout), 1.0))
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._job:  # closing the job ends anything of the tree that taskkill missed
            _windows_close_handle(self._job)
            self._job = None

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
