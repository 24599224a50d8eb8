"""Failures no restart heals: a full disk, a run folder that cannot be written, a trainer
that cannot be launched. Each is one line naming what to fix, the daemon gives up at
once (exit 2) and the journal records why; nothing half-written is left behind.

The full disk is injected at the OS boundary (a file whose write fails with ENOSPC once
past a size), or, as root where ``mount -t tmpfs`` works, is a real 1 MB tmpfs.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from agent.journal import Journal
from agent.paths import journal_path
from trainer.checkpoint import CheckpointManager
from trainer.errors import UserError
from trainer.fsutil import StorageError

from test_daemon import RecordingLog, _factory, _quick_config

ROOT = Path(__file__).resolve().parent.parent


def _payload() -> dict:
    return {"state_dict": {"w": torch.zeros(100_000)}, "optimizer": {"state": {}}, "iteration": 10}


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def _daemon_audit(run_dir: Path) -> list[tuple[str, str]]:
    with Journal(journal_path(run_dir)) as j:
        return [(a.action, a.detail) for a in j.audit_log(limit=None) if a.actor == "daemon"]


class _FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, fh, room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def fileno(self) -> int:
        return self.fh.fileno()

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def test_checkpoint_on_a_full_disk_is_one_line_with_free_and_needed_space_and_no_temp_file(tmp_path, monkeypatch):
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **kw: _FullDisk(real_fdopen(fd, *a, **kw), room=4096))
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=2, keep_best=True)
    with pytest.raises(StorageError) as caught:
        manager.save(_payload(), 10)
    err = caught.value
    line = _one_line(str(err))
    assert line.startswith(f"{manager.path_for(10)}: no space left on device: "), line
    assert f" free in {tmp_path / 'checkpoints'}, about 390.6 KB needed;" in line, line
    assert "another disk" in line
    assert err.errno == errno.ENOSPC and err.reason == "disk_full" and isinstance(err, UserError)
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no temp file, no checkpoint


def _small_tmpfs(tmp_path: Path, size: str) -> Path:
    """A real, tiny file system (the caller unmounts it), or a skip where mounting is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the injected full disk covers the message")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {done.stderr.strip()}")
    return mnt


def test_checkpoint_on_a_real_full_tmpfs(tmp_path):
    mnt = _small_tmpfs(tmp_path, "256k")
    try:
        manager = CheckpointManager(mnt / "checkpoints", keep_last=2, keep_best=True)
        with pytest.raises(StorageError, match=r": no space left on device: .* free in .*, about 390.6 KB needed;"):
            manager.save(_payload(), 10)
        assert list((mnt / "checkpoints").iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("failure, reason", [
    ("enospc", "disk_full"),
    ("storage_error", "disk_full"),
    ("eacces_in_run", "unwritable"),
    ("erofs", "unwritable"),
])
def test_child_reports_an_unhealable_failure_in_the_journal_and_exits_2(tmp_path, monkeypatch, capsys, failure, reason):
    import agent.child
    from trainer.fsutil import storage_error

    run = tmp_path / "run"
    run.mkdir()
    Journal(journal_path(run)).close()
    target = run / "checkpoints" / "checkpoint_00000010.pt"
    errors = {
        "enospc": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run / "mlflow" / "x")),
        "storage_error": storage_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), target, needed=1 << 20),
        "eacces_in_run": PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target)),
        "erofs": OSError(errno.EROFS, os.strerror(errno.EROFS), str(target)),
    }

    def fake_train(config_path, state):
        state["run_dir"] = run
        raise errors[failure]

    monkeypatch.setattr(agent.child, "_train", fake_train)
    assert agent.child.main(["--config", "unused.yaml"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: ") and "Traceback" not in line
    with Journal(journal_path(run)) as j:
        status = j.get_state("child_status")
    assert status["pid"] == os.getpid() and status["status"] == "failed" and status["reason"] == reason
    assert status["message"] == line[len("error: "):]
    if reason == "disk_full":
        assert "no space left on device" in line and " free in " in line
    else:
        assert "cannot write there" in line and "another run_dir" in line


def test_child_permission_error_outside_the_run_folder_stays_a_crash(tmp_path, monkeypatch):
    import agent.child

    def fake_train(config_path, state):
        state["run_dir"] = tmp_path / "run"
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/clip.wav")

    monkeypatch.setattr(agent.child, "_train", fake_train)
    with pytest.raises(PermissionError):
        agent.child.main(["--config", "unused.yaml"])


@pytest.mark.parametrize("exit_code", [1, 2])
def test_daemon_gives_up_at_once_when_the_child_reports_a_full_disk(tmp_path, exit_code):
    """As the real child reports it (child_status failed/disk_full); exit 1 too: a crash
    after the report (e.g. in teardown) is not retried three times either."""
    message = f"{tmp_path}/run/checkpoints/checkpoint_00000010.pt: no space left on device: 1.0 MB free in x"
    script = tmp_path / "full_disk_child.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from agent.journal import Journal
        with Journal({str(journal_path(tmp_path / "run"))!r}) as j:
            j.set_state("child_status", {{"pid": os.getpid(), "status": "failed", "reason": "disk_full",
                                          "message": {message!r}}})
        print("error: " + {message!r}, file=sys.stderr)
        print("some noise from a teardown", file=sys.stderr)
        sys.exit({exit_code})
    """))
    sups: list = []
    rc = run_daemon_quick(tmp_path, sups, [sys.executable, str(script)])
    assert rc == 2
    kinds = [k for k, _ in sups[0].events]
    assert kinds == ["started", "crashed", "gave_up"], sups[0].events
    detail = sups[0].events[-1][1]
    assert detail == f"the trainer cannot write its files (disk_full); a restart cannot fix this: {message}"
    assert _daemon_audit(tmp_path / "run")[-1] == ("gave_up", detail)
    assert not (tmp_path / "run" / "trainer.pid").exists()


def run_daemon_quick(tmp_path: Path, sups: list, command: list[str]) -> int:
    from agent.daemon import run_daemon

    return run_daemon(_quick_config(tmp_path, max_restarts=3), log=RecordingLog(), supervisor_factory=_factory(sups),
                      echo_child=False, child_command=command)


@pytest.mark.parametrize("kind", ["missing", "not_executable"])
def test_trainer_that_cannot_be_launched_is_one_line_recorded_and_not_retried(tmp_path, kind):
    program = tmp_path / "python3"
    if kind == "not_executable":
        program.write_text("#!/bin/sh\n")
        program.chmod(0o644)
    sups: list = []
    with pytest.raises(UserError) as caught:
        run_daemon_quick(tmp_path, sups, [str(program), "-m", "agent.child"])
    line = _one_line(str(caught.value))
    why = "No such file or directory" if kind == "missing" else "Permission denied"
    assert line.startswith(f"cannot start the trainer: {program}: {why} ("), line
    assert [k for k, _ in sups[0].events] == ["gave_up"]
    assert _daemon_audit(tmp_path / "run")[-1] == ("gave_up", line)
    assert not (tmp_path / "run" / "trainer.pid").exists()


def test_cli_run_with_a_python_that_cannot_run_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    import agent.cli

    program = tmp_path / "python3"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o644)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_quick_config(tmp_path).model_dump(mode="json")))
    monkeypatch.setattr(sys, "executable", str(program))
    assert agent.cli.main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot start the trainer: {program}: Permission denied" in err and "Traceback" not in err
    assert _daemon_audit(tmp_path / "run")[-1][0] == "gave_up"
    assert not (tmp_path / "run" / "trainer.pid").exists()


def test_read_only_run_folder_is_one_error_exit_2_and_no_pid_file(tmp_path):
    """chmod 0555 on the run folder (as root, which file modes do not stop: run as nobody)."""
    public = Path(tempfile.mkdtemp(prefix="smart-tuner-ro-"))  # not under pytest's 0700 folder
    run = public / "run"
    proc = None
    try:
        public.chmod(0o755)
        config = public / "c.yaml"
        config.write_text(yaml.safe_dump(_quick_config(tmp_path).model_dump(mode="json") | {"run_dir": str(run)}))
        config.chmod(0o644)
        run.mkdir()
        run.chmod(0o555)
        code = "\n".join([
            "import os, sys",
            "import agent.cli, agent.daemon, agent.logs, agent.journal, agent.supervisor, trainer.config",
            "agent.cli.build_parser()",
            "if os.geteuid() == 0:  # after the imports: nobody may not read the Python installation",
            "    os.setgroups([]); os.setgid(65534); os.setuid(65534)",
            f"sys.exit(agent.cli.main(['run', '--config', {str(config)!r}]))",
        ])
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (out, err)
        assert "Traceback" not in out + err, (out, err)
        line = _one_line(err)
        assert line.startswith(f"error: {run}: cannot write there (permission denied): make it writable for "), line
        assert f"chmod u+w {run}" in line and "another run_dir" in line
        assert sorted(p.name for p in run.iterdir()) == []  # no pid file, no lock, nothing
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, 9)  # the daemon and, were one started, its trainer (same session)
            proc.wait()
        pid_file = run / "trainer.pid"
        if pid_file.exists():
            import json
            try:
                os.kill(int(json.loads(pid_file.read_text())["pid"]), 9)
            except (OSError, ValueError, KeyError):
                pass
        run.chmod(0o755)
        shutil.rmtree(public, ignore_errors=True)


@pytest.mark.slow
def test_real_trainer_on_a_full_tmpfs_gives_up_at_once_with_one_line(espeak_dataset, tmp_path):
    """End to end, as root where mount works: the real child fills a 400 KB run folder at
    its first checkpoint; the daemon does not restart it."""
    from agent.daemon import run_daemon

    from test_daemon import _config

    mnt = _small_tmpfs(tmp_path, "400k")
    try:
        sups: list = []
        rc = run_daemon(_config(espeak_dataset, mnt / "run", max_steps=6), log=RecordingLog(),
                        supervisor_factory=_factory(sups), echo_child=False)
        assert rc == 2
        assert [k for k, _ in sups[0].events] == ["started", "crashed", "gave_up"], sups[0].events
        detail = sups[0].events[-1][1]
        assert "(disk_full); a restart cannot fix this: " in detail and ": no space left on device: " in detail
        assert "\n" not in detail
        assert [p.name for p in (mnt / "run" / "checkpoints").iterdir() if p.name.endswith(".tmp")] == []
        assert not (mnt / "run" / "trainer.pid").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_train_in_a_read_only_run_folder_is_one_line_exit_2(tmp_path):
    """The unsupervised trainer takes the run's train lock first: a folder it may not write
    is one line naming it, not a traceback."""
    public = Path(tempfile.mkdtemp(prefix="smart-tuner-ro-"))
    run = public / "run"
    try:
        public.chmod(0o755)
        run.mkdir()
        run.chmod(0o555)
        code = "\n".join([
            "import os, sys",
            "import agent.cli, trainer.cli_train, trainer.runlock, trainer.fsutil",
            "agent.cli.build_parser()",
            "if os.geteuid() == 0:  # file modes do not stop root: be nobody",
            "    os.setgroups([]); os.setgid(65534); os.setuid(65534)",
            "from trainer.runlock import hold_train_lock",
            "from trainer.errors import UserError",
            "try:",
            f"    hold_train_lock({str(run)!r})",
            "except UserError as exc:",
            "    print(f'error: {exc}', file=sys.stderr); sys.exit(2)",
        ])
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert _one_line(done.stderr).startswith(f"error: {run}: cannot write there (permission denied)")
        assert list(run.iterdir()) == []
    finally:
        run.chmod(0o755)
        shutil.rmtree(public, ignore_errors=True)
