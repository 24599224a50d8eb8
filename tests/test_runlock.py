"""One trainer per run folder: the train lock, and no `train` beside a live daemon.

The lock holders here are real processes: a `smart-tuner train` training the micro
model, and a daemon (stand-in supervisor, real trainer child) on the same folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from trainer.errors import UserError
from trainer.runlock import daemon_lock_path, hold_train_lock, lock_holder, train_lock_path

from conftest import kill_daemon_and_child, micro_config, wait_until

ROOT = Path(__file__).resolve().parent.parent


def _hold(path: Path, content: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, content.encode())
    return fd


# -- the lock itself (held from this process through another open file) ----------------------------
def test_train_lock_refuses_a_second_trainer_and_a_supervised_folder(tmp_path):
    run = tmp_path / "run"
    with hold_train_lock(run):
        assert lock_holder(train_lock_path(run)) == str(os.getpid())
        with pytest.raises(UserError, match=rf"already being trained by another process \(pid {os.getpid()}\)"):
            hold_train_lock(run, leftover_wait=0)
    assert lock_holder(train_lock_path(run)) is None  # released
    fd = _hold(daemon_lock_path(run), "4242\n")
    try:
        with pytest.raises(UserError, match=r"supervised by a running daemon \(pid 4242\)"):
            hold_train_lock(run)
        with hold_train_lock(run, supervised=True):  # the daemon's own child
            pass
    finally:
        os.close(fd)
    hold_train_lock(run).release()  # the daemon gone: free


def test_lock_left_to_forked_helpers_of_a_dead_trainer_is_waited_for(tmp_path):
    """A killed trainer's DataLoader workers share its lock for a few seconds."""
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    fd = _hold(train_lock_path(run), f"{dead}\n")
    threading.Timer(0.5, os.close, args=(fd,)).start()
    t0 = time.monotonic()
    with hold_train_lock(run):
        assert 0.4 < time.monotonic() - t0 < 5
        assert train_lock_path(run).read_text() == f"{os.getpid()}\n"


# -- real processes ----------------------------------------------------------------------------------
def _train_cmd(config_file: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", "train", "--config", str(config_file), "--no-mlflow", *extra]


# Were the second trainer admitted, it would stop soon (and the test fail, not hang).
_BRIEF = ("--set", "train.max_steps=1")


def _assert_refused(done: subprocess.CompletedProcess, pid: int, what: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{what} (pid {pid})" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def _checkpoints(run: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in (run / "checkpoints").glob("*.pt")}


@pytest.mark.slow
def test_second_train_on_a_folder_being_trained_is_refused(espeak_dataset, tmp_path):
    run = tmp_path / "run"
    cfg = micro_config(espeak_dataset, run, train__max_steps=100000, checkpoint__every_steps=2,
                       eval__every_steps=100000)
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    first = subprocess.Popen(_train_cmd(config_file), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in first.stdout:
            if line.startswith("step       3"):
                break
        for extra in (["--resume"], []):
            done = subprocess.run(_train_cmd(config_file, *extra, *_BRIEF), capture_output=True, text=True,
                                  cwd=ROOT, timeout=120)
            _assert_refused(done, first.pid, "is already being trained by another process")
        assert lock_holder(train_lock_path(run)) == str(first.pid)
        first.send_signal(signal.SIGTERM)
        rest, _ = first.communicate(timeout=60)
        assert first.returncode == 0, rest
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert lock_holder(train_lock_path(run)) is None  # gone with its process
    # Once it has stopped, --resume is welcome.
    cfg2 = micro_config(espeak_dataset, run, train__max_steps=1, eval__every_steps=100000)
    config_file.write_text(yaml.safe_dump(cfg2.model_dump(mode="json")))
    done = subprocess.run(_train_cmd(config_file, "--resume"), capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "resumed from" in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
def test_train_on_a_folder_a_live_daemon_supervises_is_refused(espeak_dataset, tmp_path):
    from agent.daemon import child_pid_path

    from test_daemon import _config, _daemon_script, _max_step

    run = tmp_path / "run"
    cfg = _config(espeak_dataset, run, max_steps=100000, process={"hang_seconds": 120}, checkpoint__every_steps=2,
                  eval__every_steps=100000)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    daemon = subprocess.Popen([sys.executable, str(_daemon_script(tmp_path, config_file))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        # The daemon's own child is admitted: it trains and checkpoints.
        wait_until(lambda: (run / "journal.sqlite").exists() and (_max_step(run) or 0) >= 3, 120, "the child trains")
        for extra in (["--resume"], []):
            done = subprocess.run(_train_cmd(config_file, *extra, *_BRIEF), capture_output=True, text=True,
                                  cwd=ROOT, timeout=120)
            _assert_refused(done, daemon.pid, "is supervised by a running daemon")
        child = json.loads(child_pid_path(run).read_text())["pid"]
        assert lock_holder(train_lock_path(run)) == str(child)
        assert lock_holder(daemon_lock_path(run)) == str(daemon.pid)
        assert daemon.poll() is None and (_max_step(run) or 0) >= 3
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=90) == 0
    finally:
        kill_daemon_and_child(daemon, run)


def test_daemon_refuses_a_folder_that_train_is_training(tmp_path):
    from agent.daemon import run_daemon

    from test_daemon import RecordingLog, _factory, _quick_config

    run = tmp_path / "run"
    run.mkdir()
    fd = _hold(train_lock_path(run), f"{os.getpid()}\n")
    try:
        with pytest.raises(UserError, match=rf"is being trained by another process \(pid {os.getpid()}\)"):
            run_daemon(_quick_config(tmp_path), log=RecordingLog(), supervisor_factory=_factory([]),
                       child_command=[sys.executable, "-c", "pass"])
    finally:
        os.close(fd)
