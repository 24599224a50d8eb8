"""End to end: real daemon, real supervisor, real trainer child on real espeak audio."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cli import main as cli_main
from agent.daemon import run_daemon
from agent.journal import Journal
from agent.paths import journal_path

from conftest import micro_config, wait_until

ROOT = Path(__file__).resolve().parent.parent
FAST = {"tick_seconds": 0.3, "digest_minutes": 0, "probation": {"steps": 3, "evals": 1},
        "process": {"backoff_seconds": 0.5, "hang_seconds": 120}}


@pytest.mark.slow
def test_injected_nan_is_rolled_back_automatically_and_the_run_finishes(espeak_dataset, tmp_path, monkeypatch):
    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=14, checkpoint__every_steps=3,
                       eval__every_steps=100, supervisor=FAST)
    monkeypatch.setenv("SMART_TUNER_FAULTS", json.dumps([{"step": 7, "kind": "nan_batch"}]))
    assert run_daemon(cfg, echo_child=False) == 0
    with Journal(journal_path(tmp_path / "run")) as j:
        rollbacks = [p for p in j.proposals() if p.kind == "rollback"]
        assert rollbacks and rollbacks[-1].status == "applied" and rollbacks[-1].mode == "auto"
        acks = [c for c in j.commands() if c.kind == "rollback"]
        assert acks and acks[0].ok and "rolled back to checkpoint_00000006.pt" in acks[0].detail
        phases = [p.to_phase for p in j.phase_history()]
        assert "diverging" in phases and "recovering" in phases
        assert j.latest_steps(1)[0].step == 14


@pytest.mark.slow
def test_ask_proposal_approved_through_the_cli_is_applied_once_and_survives_a_daemon_restart(
        espeak_dataset, tmp_path):
    run = tmp_path / "run"
    sup = {**FAST, "approvals": {"modes": {"rollback": "ask"}, "timeout_seconds": 600}}
    cfg = micro_config(espeak_dataset, run, train__max_steps=400, checkpoint__every_steps=3,
                       eval__every_steps=1000, supervisor=sup)
    config_file = tmp_path / "c.yaml"
    import yaml

    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "SMART_TUNER_FAULTS": json.dumps([{"step": 7, "kind": "nan_batch"}]),
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "agent.cli", "run", "--config", str(config_file)]
    daemon = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        pending = _wait(lambda: _pending(run), 120)
        assert pending.kind == "rollback" and pending.mode == "ask"
        # The daemon dies (kill -9) while the proposal waits; a new one takes over.
        os.killpg(daemon.pid, signal.SIGKILL)
        with Journal(journal_path(run)) as j:
            phases_before = j.phase_history()
            assert phases_before[-1].to_phase == "diverging"
        daemon.wait(10)
        daemon = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        time.sleep(3)
        with Journal(journal_path(run)) as j:
            assert [p.id for p in j.pending_proposals()] == [pending.id]
            # The phase was restored, not restarted: anything recorded since goes on from
            # "diverging" (the resumed trainer may already be healthy again: "recovering").
            since = j.phase_history()[len(phases_before):]
            assert all(c.to_phase != "warmup" for c in since), since
            assert not since or since[0].from_phase == "diverging", since
        assert cli_main(["approve", str(pending.id), "--run-dir", str(run)]) == 0
        assert cli_main(["approve", str(pending.id), "--run-dir", str(run)]) == 1
        applied = _wait(lambda: _applied(run, pending.id), 120)
        assert applied.decided_by.startswith("cli:")
        with Journal(journal_path(run)) as j:
            rollback_cmds = [c for c in j.commands(proposal_id=pending.id) if c.kind == "rollback"]
            assert len(rollback_cmds) == 1 and rollback_cmds[0].ok and not rollback_cmds[0].duplicate
        assert cli_main(["stop", "--run-dir", str(run)]) == 0
        assert daemon.wait(120) == 0
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-f", str(run)], check=False)


def _wait(fn, seconds):
    return wait_until(fn, seconds, every=0.3)


def _pending(run: Path):
    if not journal_path(run).exists():
        return None
    with Journal(journal_path(run)) as j:
        rows = j.pending_proposals()
    return rows[0] if rows else None


def _applied(run: Path, pid: int):
    with Journal(journal_path(run)) as j:
        row = j.get_proposal(pid)
        # A command the trainer could not apply settles the proposal as failed: say why at once.
        assert row.status != "failed", (row, [(c.kind, c.ok, c.detail) for c in j.commands(proposal_id=pid)])
    return row if row.status == "applied" else None
