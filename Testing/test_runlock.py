"""One trainer per run folder: an OS lock, released however its holder ends."""

import os
import signal
import subprocess
import sys
import time

import pytest

from dicyc.errors import DicycError
from dicyc.runlock import LOCK_NAME, RunLock, is_locked

HOLD = """
import sys, time
from dicyc.runlock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def _holder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, encoding="utf-8", errors="replace")
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_in_one_sentence_and_a_killed_holder_frees_the_folder(tmp_path):
    proc = _holder(tmp_path)
    try:
        assert is_locked(tmp_path)
        with pytest.raises(DicycError, match=r"is in use by another training \(pid \d+"):
            RunLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert not is_locked(tmp_path)  # the OS released it: no stale lock after kill -9
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).exists()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    outer = RunLock(tmp_path).acquire()
    inner = RunLock(tmp_path).acquire()
    assert not is_locked(tmp_path)  # our own hold does not count as "another training"
    inner.release()
    proc = subprocess.run([sys.executable, "-c", "import sys; from dicyc.runlock import is_locked; "
                           "print(is_locked(sys.argv[1]))", str(tmp_path)], capture_output=True, encoding="utf-8", errors="replace")
    assert proc.stdout.strip() == "True"  # still held by the outer acquire
    outer.release()
    assert not is_locked(tmp_path)


def test_dicyc_train_refuses_a_locked_folder(tmp_path, run_dicyc, toy_pair):
    mr, ct = toy_pair
    proc = _holder(tmp_path / "run")
    try:
        r = run_dicyc("train", "--method", "cyclegan", "--a", mr, "--b", ct, "--out", tmp_path / "run",
                      "--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--slice-size", "32", "--iterations", "2")
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert r.returncode == 1
    assert "is in use by another training" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "config.json").exists()
