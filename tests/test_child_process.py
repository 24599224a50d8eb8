"""ChildProcess: the one way the daemon stops a trainer (real processes, no trainer)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from agent.child_process import ChildProcess, LaunchError

# A process that says "up" once its SIGTERM handler is in place, then sleeps; with
# "ignore" it refuses SIGTERM (a trainer stuck in a step).
SLEEPER = ("import signal, sys, time\n"
           "signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[1] == 'ignore' else "
           "lambda *a: sys.exit(0))\n"
           "print('up', flush=True)\n"
           "time.sleep(60)\n")


def start(tmp_path, how: str) -> ChildProcess:
    log = tmp_path / "trainer.log"
    child = ChildProcess.start([sys.executable, "-c", SLEEPER, how], env={"PATH": "/usr/bin:/bin"}, log_path=log,
                               banner="--- started ---\n")
    deadline = time.monotonic() + 30
    while "up" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    return child


def test_a_child_that_obeys_sigterm_stops_with_it_and_its_output_goes_to_the_log(tmp_path):
    child = start(tmp_path, "obey")
    assert child.running() and child.returncode is None and child.wait(0.05) is None
    assert child.stop(10.0) == "SIGTERM"
    assert not child.running() and child.returncode == 0
    assert (tmp_path / "trainer.log").read_text() == "--- started ---\nup\n"
    assert child.stop(10.0) is None  # not running: nothing to do


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    child = start(tmp_path, "ignore")
    killing: list[float] = []
    t0 = time.monotonic()
    assert child.stop(0.5, on_kill=lambda: killing.append(time.monotonic() - t0)) == "SIGKILL"
    assert child.returncode == -signal.SIGKILL and len(killing) == 1 and killing[0] >= 0.5


def test_cancel_cuts_the_grace_short(tmp_path):
    child = start(tmp_path, "ignore")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    t0 = time.monotonic()
    assert child.stop(60.0, cancel=cancel) == "SIGKILL"
    assert time.monotonic() - t0 < 10 and child.returncode == -signal.SIGKILL


def test_an_adopted_process_stops_the_same_way(tmp_path):
    """An orphan of a dead daemon: known only by its pid, not this process's child to reap."""
    orphan = subprocess.Popen([sys.executable, "-c", SLEEPER, "ignore"], stdout=subprocess.PIPE, text=True)
    try:
        assert orphan.stdout.readline() == "up\n"
        adopted = ChildProcess.adopt(orphan.pid)
        assert adopted.running()
        # (the test is its parent: once killed it is a zombie until reaped, which proc_alive treats as gone)
        assert adopted.stop(0.3) == "SIGKILL"
        assert orphan.wait(timeout=10) == -signal.SIGKILL
    finally:
        orphan.kill()
        orphan.wait()


def test_a_command_that_cannot_start_is_a_launch_error(tmp_path):
    with pytest.raises(LaunchError, match="cannot start the trainer: /nonexistent/python: .*does not exist"):
        ChildProcess.start(["/nonexistent/python"], env={}, log_path=tmp_path / "trainer.log", banner="x\n")
