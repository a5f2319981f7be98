"""The background runner (dicyc.background) with real child processes.

A child that starts a grandchild stands in for ``torchrun`` and its workers: cancelling must
leave neither behind. The children are tiny ``python -c`` scripts, so these tests are light.
"""

import ctypes
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dicyc.background import BackgroundProcess, child_environment, dicyc_command, engine_root, pid_alive

PR_SET_CHILD_SUBREAPER = 36

#: A child that starts a long-sleeping grandchild, writes events (ending in a partial line) and waits.
CHILD = textwrap.dedent(
    """
    import json, signal, subprocess, sys, time
    events, ignore_term = sys.argv[1], sys.argv[2] == "1"
    grand = "import signal, time\\n"
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grand += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    grand += "time.sleep(600)\\n"
    gc = subprocess.Popen([sys.executable, "-c", grand])
    with open(events, "a") as fh:
        fh.write(json.dumps({"event": "start", "grandchild": gc.pid}) + "\\n")
        for i in range(1, 4):
            fh.write(json.dumps({"event": "iteration", "iteration": i, "total_iterations": 3}) + "\\n")
        fh.write('{"event": "itera')
        fh.flush()
    print("child ready", flush=True)
    print("a note on stderr", file=sys.stderr, flush=True)
    time.sleep(600)
    """
)


def _poll_until(proc, predicate, timeout=30.0):
    """Poll like a GUI timer until ``predicate(all events so far)`` holds; returns the events."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.extend(proc.poll())
        if predicate(seen):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s; events so far: {seen}")


class _Subreaper:
    """On Linux, adopt orphaned grandchildren so the test can reap them and see them gone
    (otherwise a container's PID 1 may leave them as zombies, which os.kill(pid, 0) still sees)."""

    def __enter__(self):
        self.on = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                self.on = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
                self.libc = libc
            except (OSError, AttributeError):
                self.on = False
        return self

    def reap(self, pid, timeout=10.0):
        if not self.on:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done:
                return
            time.sleep(0.02)

    def __exit__(self, *exc):
        if self.on:
            self.libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _assert_gone(pid):
    if sys.platform.startswith("linux") or sys.platform == "darwin":
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        assert not pid_alive(pid), f"process {pid} is still alive"
    else:
        assert not pid_alive(pid)


def test_dicyc_command_and_environment():
    cmd = dicyc_command("evaluate", "--pred", 3)
    assert cmd == [sys.executable, "-m", "dicyc", "evaluate", "--pred", "3"]
    assert dicyc_command("methods", python="/opt/PythonSlicer")[0] == "/opt/PythonSlicer"
    env = child_environment({"DICYC_X": 1})
    assert env["DICYC_X"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == engine_root()
    assert os.path.isdir(os.path.join(engine_root(), "dicyc"))


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "sigkill-fallback"])
def test_background_events_then_cancel_kills_tree(tmp_path, ignore_term):
    events_path = tmp_path / "events.jsonl"
    events_path.write_text(json.dumps({"event": "old run"}) + "\n")  # not reported: before start()
    proc = BackgroundProcess([sys.executable, "-c", CHILD, str(events_path), "1" if ignore_term else "0"],
                             events_path=events_path)
    with _Subreaper() as reaper:
        proc.start()
        assert proc.running and proc.returncode is None
        seen = _poll_until(
            proc,
            lambda ev: sum(e["event"] == "iteration" for e in ev) == 3
            and any(e.get("message") == "child ready" for e in ev)
            and any(e.get("stream") == "stderr" for e in ev),
        )
        kinds = [e["event"] for e in seen if e["event"] != "log"]
        assert kinds == ["start", "iteration", "iteration", "iteration"]  # no old run, no partial line
        assert [e["iteration"] for e in seen if e["event"] == "iteration"] == [1, 2, 3]
        grandchild = next(e["grandchild"] for e in seen if e["event"] == "start")
        child = proc.pid
        assert pid_alive(grandchild) and pid_alive(child)

        t0 = time.monotonic()
        assert proc.cancel(timeout=0.5) is True
        took = time.monotonic() - t0
        assert not proc.running
        assert proc.returncode in (-15, -9)
        assert proc.cancelled
        assert took < 15
        reaper.reap(grandchild)
        _assert_gone(grandchild)
        _assert_gone(child)
    assert proc.cancel() is False  # already over: nothing to do
    assert proc.error_message()  # a sentence, not None, for a cancelled run


def test_background_finished_process_delivers_everything(tmp_path):
    events_path = tmp_path / "ev.jsonl"
    script = textwrap.dedent(
        """
        import json, sys
        with open(sys.argv[1], "a") as fh:
            for i in range(5):
                fh.write(json.dumps({"event": "iteration", "iteration": i + 1, "total_iterations": 5}) + "\\n")
            fh.write(json.dumps({"event": "done", "path": "out.nii.gz"}) + "\\n")
        for i in range(50):
            print("line", i)
        """
    )
    proc = BackgroundProcess([sys.executable, "-c", script, str(events_path)], events_path=events_path).start()
    assert proc.wait(60) == 0
    events = proc.poll()
    assert [e["event"] for e in events if e["event"] != "log"] == ["iteration"] * 5 + ["done"]
    assert [e["message"] for e in events if e["event"] == "log"] == [f"line {i}" for i in range(50)]
    assert proc.poll() == []
    assert proc.returncode == 0 and not proc.running
    assert proc.error_message() is None
    assert proc.output_tail(2, "stdout") == ["line 48", "line 49"]


def test_background_failing_dicyc_gives_one_sentence(tmp_path):
    not_image = tmp_path / "notes.txt"
    not_image.write_text("this is not an image\n")
    proc = BackgroundProcess(dicyc_command("evaluate", "--pred", not_image, "--ref", not_image)).start()
    deadline = time.monotonic() + 120
    while proc.running and time.monotonic() < deadline:
        proc.poll()
        time.sleep(0.05)
    proc.poll()
    assert proc.returncode == 1
    message = proc.error_message()
    assert message.startswith("dicyc evaluate: error: ")
    assert "notes.txt is not an image file" in message
    assert "\n" not in message and "Traceback" not in message


def test_background_missing_executable_raises(tmp_path):
    with pytest.raises(OSError):
        BackgroundProcess([str(tmp_path / "no-such-program")]).start()


def test_background_exit_status_without_error_line():
    proc = BackgroundProcess([sys.executable, "-c", "import sys; sys.exit(3)"]).start()
    proc.wait(60)
    proc.poll()
    assert proc.returncode == 3
    assert "status 3" in proc.error_message()


def test_synthesize_cli_progress_jsonl(tmp_path):
    """`dicyc synthesize --progress-jsonl` writes start / iteration / done, and error on failure."""
    pytest.importorskip("torch")
    import numpy as np

    from dicyc.modelfile import save_model
    from dicyc.nets import build_generator
    from dicyc.volume import Volume, write_volume

    import torch

    arch = {"generator": "resnet", "ngf": 4, "n_blocks": 1, "upsample": "transpose", "input_nc": 1, "output_nc": 1}
    card = {
        "method": "cyclegan",
        "architecture": arch,
        "domains": {
            "a": {"name": "MR", "modality": "MR",
                  "normalization": {"kind": "mr-percentile", "low": 10.0, "high": 300.0, "percentiles": [0.5, 99.5]}},
            "b": {"name": "CT", "modality": "CT", "normalization": {"kind": "ct-window", "low": -1024.0, "high": 2000.0}},
        },
        "spacing": [2.0, 2.0],
        "slice_size": 32,
        "training": {"iterations_done": 0, "seed": 0},
    }
    torch.manual_seed(0)
    model = tmp_path / "m.safetensors"
    save_model(model, {"G_AB": build_generator(arch), "G_BA": build_generator(arch)}, card)
    rng = np.random.default_rng(0)
    arr = np.zeros((5, 24, 20), np.float32)
    arr[:, 6:18, 5:15] = 150 + rng.normal(0, 5, (5, 12, 10))
    write_volume(Volume(arr, (2.0, 2.0, 3.0)), tmp_path / "in.nii.gz")
    ev = tmp_path / "ev.jsonl"
    out = tmp_path / "out.nii.gz"
    proc = BackgroundProcess(
        dicyc_command("synthesize", "--model", model, "--input", tmp_path / "in.nii.gz", "--output", out,
                      "--device", "cpu", "--batch", "2", "--progress-jsonl", ev),
        events_path=ev,
    ).start()
    assert proc.wait(300) == 0, proc.error_message()
    events = [e for e in proc.poll() if e["event"] != "log"]
    assert events[0]["event"] == "start"
    iters = [e for e in events if e["event"] == "iteration"]
    assert iters and iters[-1]["iteration"] == iters[-1]["total_iterations"] == 5
    assert events[-1]["event"] == "done" and events[-1]["path"] == str(out)
    assert out.exists()

    bad = tmp_path / "bad.txt"
    bad.write_text("no image")
    ev2 = tmp_path / "ev2.jsonl"
    proc = BackgroundProcess(
        dicyc_command("synthesize", "--model", model, "--input", bad, "--output", tmp_path / "o2.nii.gz",
                      "--device", "cpu", "--progress-jsonl", ev2),
        events_path=ev2,
    ).start()
    assert proc.wait(300) == 1
    events = [e for e in proc.poll() if e["event"] != "log"]
    assert [e["event"] for e in events] == ["start", "error"]
    assert "bad.txt" in events[-1]["message"]
    assert proc.error_message().startswith("dicyc synthesize: error: ")


# ===================================================================== a child never outlives its parent
#: Stands in for 3D Slicer: starts a background command, says its pid, and waits to be killed.
SLICER_STAND_IN = textwrap.dedent(
    """
    import json, sys, time
    from dicyc.background import BackgroundProcess
    proc = BackgroundProcess(json.loads(sys.argv[1])).start()
    print(proc.pid, flush=True)
    time.sleep(600)
    """
)
#: Stands in for Slicer's PythonSlicer launcher: runs the real interpreter as a child and waits for it,
#: so the trainer's direct parent is not the process that must be watched. The trainer's output goes
#: to a file here, so a pipe broken by the parent's death cannot end it either: only its watchdog can.
LAUNCHER = textwrap.dedent(
    """
    import subprocess, sys
    with open(sys.argv[1], "w") as log:
        sys.exit(subprocess.call([sys.executable] + sys.argv[2:], stdout=log, stderr=log))
    """
)


def _signal_all(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _live_processes_mentioning(text):
    """Live (non-zombie) pids whose command line contains ``text`` (Linux /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmdline = fh.read().decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline and pid_alive(int(name)):
            found.append(int(name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the watchdog itself is portable")
@pytest.mark.parametrize("through_launcher", [False, True], ids=["direct-child", "through-launcher"])
def test_killing_the_parent_of_a_background_training_ends_the_training(tmp_path, toy_pair, through_launcher):
    """SIGKILL the process that started ``dicyc train`` in the background (Slicer crashing): the
    trainer must be gone within seconds and its run folder free for Resume."""
    from dicyc.runlock import LOCK_NAME, is_locked

    mr, ct = toy_pair
    out = tmp_path / "run"
    train = ["-m", "dicyc", "train", "--method", "cyclegan", "--a", mr, "--b", ct, "--out", str(out),
             "--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--slice-size", "32", "--spacing", "8",
             "--iterations", "100000", "--device", "cpu"]
    launcher = ["-c", LAUNCHER, str(tmp_path / "trainer.log")] if through_launcher else []
    command = [sys.executable] + launcher + train
    env = dict(os.environ, DICYC_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    with _Subreaper() as reaper:
        slicer = subprocess.Popen([sys.executable, "-c", SLICER_STAND_IN, json.dumps(command)],
                                  stdout=subprocess.PIPE, encoding="utf-8", errors="replace", env=env)
        child = int(slicer.stdout.readline())
        deadline = time.monotonic() + 180
        while not is_locked(out):  # the trainer is past start-up and holds its run folder
            assert time.monotonic() < deadline and pid_alive(child), "the training never started"
            time.sleep(0.1)
        trainer = json.loads((out / LOCK_NAME).read_text())["pid"]
        assert (trainer == child) != through_launcher
        assert pid_alive(trainer)

        slicer.kill()  # SIGKILL: no cleanup of any kind in the parent
        slicer.wait(10)
        t0 = time.monotonic()
        try:
            while pid_alive(trainer) or pid_alive(child):
                assert time.monotonic() - t0 < 10, "the training outlived its parent"
                time.sleep(0.05)
        finally:  # whatever happened, leave nothing running
            _signal_all([trainer, child], signal.SIGKILL)
            reaper.reap(trainer)
            reaper.reap(child)
    assert not is_locked(out)  # Resume can use the folder again
    assert _live_processes_mentioning(str(out)) == []
    if through_launcher:
        assert "has ended; stopping" in (tmp_path / "trainer.log").read_text()


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_the_watchdog_alone_ends_a_child_whose_parent_is_not_its_direct_parent():
    """No parent-death signal (the watched process is not the direct parent, as with a launcher):
    the watchdog thread sees the parent gone and ends the child."""
    from dicyc.background import PARENT_PID_ENV, PARENT_START_ENV, _proc_start_time

    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICYC_PARENT")}
    env[PARENT_PID_ENV] = str(parent.pid)
    start = _proc_start_time(parent.pid)
    if start:
        env[PARENT_START_ENV] = start
    watcher = subprocess.Popen(
        [sys.executable, "-c", "import time; from dicyc.background import end_with_parent; "
         "end_with_parent(interval=0.1); print('watching', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace", env=env)
    try:
        assert watcher.stdout.readline().strip() == "watching"
        time.sleep(0.3)
        assert watcher.poll() is None  # the parent lives: the child carries on
        parent.kill()
        parent.wait(10)
        code = watcher.wait(10)
    finally:
        for proc in (parent, watcher):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == -signal.SIGTERM
    assert "has ended; stopping" in watcher.stderr.read()


def test_parent_identity_survives_pid_reuse_and_a_plain_process_is_not_watched():
    from dicyc.background import PARENT_PID_ENV, _proc_start_time, end_with_parent, parent_alive, parent_environment

    assert end_with_parent({}) is None and end_with_parent({PARENT_PID_ENV: "not a pid"}) is None
    assert end_with_parent({PARENT_PID_ENV: str(os.getpid())}) is None  # never watches itself
    env = parent_environment()
    assert env[PARENT_PID_ENV] == str(os.getpid())
    assert parent_alive(os.getpid(), env.get("DICYC_PARENT_START"))
    if _proc_start_time(os.getpid()) is not None:
        assert not parent_alive(os.getpid(), "1")  # same pid, another process: gone


def test_windows_children_and_taskkill_get_no_console_window(monkeypatch):
    """The Windows code path, run on any OS with the calls recorded: the child and the cancel's
    taskkill are started with CREATE_NO_WINDOW and a hidden STARTUPINFO, as
    slicer.util.launchConsoleProcess does, and the child in its own process group."""
    import dicyc.background as background

    class StartupInfo:
        def __init__(self):
            self.dwFlags = 0
            self.wShowWindow = 1

    class FakeProc:
        pid, _handle = 4242, 0

        def __init__(self):
            self.code = None
            self.stdout, self.stderr = io.StringIO(""), io.StringIO("")

        def poll(self):
            return self.code

        def wait(self, timeout=None):
            self.code = 1
            return 1

    calls = []
    monkeypatch.setattr(background, "_IS_WINDOWS", True)
    monkeypatch.setattr(subprocess, "STARTUPINFO", StartupInfo, raising=False)
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: calls.append(("Popen", cmd, kw)) or FakeProc())
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(("run", cmd, kw)))
    monkeypatch.setattr(background, "_windows_kill_on_close_job", lambda handle: None)
    proc = background.BackgroundProcess(["PythonSlicer.exe", "-m", "dicyc", "train"])
    proc.start()
    proc.cancel(timeout=0)
    (_, cmd, popen), (_, kill, run) = calls
    assert cmd[0] == "PythonSlicer.exe" and kill[:4] == ["taskkill", "/T", "/F", "/PID"]
    for kwargs in (popen, run):
        assert kwargs["creationflags"] & 0x08000000  # CREATE_NO_WINDOW
        info = kwargs["startupinfo"]
        assert info.dwFlags & 1 and info.wShowWindow == 0  # STARTF_USESHOWWINDOW, SW_HIDE
    assert popen["creationflags"] & 0x00000200  # CREATE_NEW_PROCESS_GROUP: the tree taskkill ends
    assert "start_new_session" not in popen
    assert popen["env"]["DICYC_PARENT_PID"] == str(os.getpid())  # the child watches this process


def test_windows_job_limits_have_the_x64_layout():
    """JOBOBJECT_EXTENDED_LIMIT_INFORMATION is 144 bytes on 64-bit Windows; the ctypes mirror must match
    (its field types are fixed-width, so the layout is the same on any 64-bit OS)."""
    import ctypes

    from dicyc.background import _ExtendedLimits

    if ctypes.sizeof(ctypes.c_void_p) != 8:
        pytest.skip("64-bit layout")
    assert ctypes.sizeof(_ExtendedLimits) == 144
    assert _ExtendedLimits.BasicLimitInformation.offset == 0 and _ExtendedLimits.IoInfo.offset == 64
