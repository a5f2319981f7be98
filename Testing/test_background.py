"""The background runner (dicyc.background) with real child processes.

A child that starts a grandchild stands in for ``torchrun`` and its workers: cancelling must
leave neither behind. The children are tiny ``python -c`` scripts, so these tests are light.
"""

import ctypes
import json
import os
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
