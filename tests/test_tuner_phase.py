"""The tuning phase's stages on a real journal, with the round itself faked (fast):
a rejected winner falls back to the current settings, a round cut short by a daemon
restart ends with the run resumed."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from agent.config import SupervisorConfig
from agent.journal import Journal
from agent.paths import child_config_path
from agent.supervisor import Supervisor
from agent.tuner.inrun import InRunTuning
from agent.tuner.objective import Score
from agent.tuner.study import RoundSummary, TrialResult
from agent.tuner.trial_runner import TrialOutcome
from trainer.config import RunConfig
from trainer.control import CheckpointRecord, CommandResult, StepTelemetry

from journal_helpers import pending_commands


def _step(n: int) -> StepTelemetry:
    return StepTelemetry(step=n, epoch=0, wall_time=time.time(), lr=1e-3, loss=1.0, mel_loss=0.5, mel_postnet_loss=0.5,
                         gate_loss=0.1, guided_attention_loss=0.0, grad_norm=1.0, grad_clip=1.0,
                         guided_attention_weight=0.0, gate_pos_weight=5.0, step_seconds=0.1, skipped_steps=0,
                         finite=True)


def _result(number: int, baseline: bool, total: float, folder: Path) -> TrialResult:
    ckpt = folder / f"trial-{number}.pt"
    ckpt.write_bytes(b"x")
    return TrialResult(number=number, params={"learning_rate": 1e-3 * (number + 1)}, baseline=baseline, folder=folder,
                       outcome=TrialOutcome(status="complete", progress=10, checkpoint=str(ckpt)),
                       score=Score(sound=total), state="complete")


def _setup(tmp_path, modes):
    run = tmp_path / "run"
    run.mkdir()
    child_config_path(run).write_text(yaml.safe_dump(RunConfig(run_dir=run).model_dump(mode="json")))
    journal = Journal(run / "journal.sqlite")
    cfg = SupervisorConfig.model_validate({"approvals": {"modes": modes}})
    sup = Supervisor(journal, cfg, warmup_steps=0, tuning=InRunTuning.for_run(journal, cfg.approvals, run))
    journal.add_steps([_step(i) for i in range(1, 6)])
    sup.tick()  # warmup -> aligning
    journal.add_proposal(policy="cli", kind="tune", actions=[], reason="test.", aim="val_loss", approve_by="cli:t")
    sup.tick()  # aligning -> tuning
    assert sup.phase == "tuning"
    sup.tick()  # checkpoint + pause queued
    base = run / "checkpoints" / "checkpoint_00000005.pt"
    base.parent.mkdir()
    base.write_bytes(b"base")
    journal.add_checkpoint(CheckpointRecord(step=5, path=str(base), wall_time=time.time(), reason="command"))
    _ack(journal, 5)
    return run, journal, sup


def _ack(journal, step):
    for c in pending_commands(journal):
        journal.mark_delivered([c.id])
        journal.acknowledge(CommandResult(command_id=c.id, kind=c.kind, ok=True, detail="done", step=step))


def _wait_round(sup):
    deadline = time.time() + 10
    while sup.tuning._thread is not None and sup.tuning._thread.is_alive() and time.time() < deadline:
        time.sleep(0.01)


def test_a_rejected_winner_continues_from_the_baseline_trial(tmp_path, monkeypatch):
    import agent.tuner.rounds as rounds

    folder = tmp_path / "trials"
    folder.mkdir()
    summary = RoundSummary(results=[_result(0, True, 2.0, folder), _result(1, False, 1.0, folder)])
    summary.winner, summary.baseline = summary.results[1], summary.results[0]
    monkeypatch.setattr(rounds, "run_round", lambda *a, **k: summary)
    run, journal, sup = _setup(tmp_path, {"apply_winner": "ask"})
    sup.tick()  # base found: the round starts
    _wait_round(sup)
    sup.tick()  # the round is over: apply_winner proposed (ask)
    (ask,) = journal.pending_proposals()
    assert ask.kind == "apply_winner" and ask.evidence["baseline_objective"] == 2.0
    assert [a["kind"] for a in ask.actions] == ["continue_from", "resume"]
    assert ask.actions[0]["path"].endswith("trial-1.pt")
    sup.tick()
    assert sup.phase == "tuning"  # waits for the human, the trainer stays paused
    journal.decide(ask.id, "rejected", by="cli:t")
    sup.tick()
    assert sup.phase == "aligning"
    kinds = [(c.kind, (c.payload or {}).get("path")) for c in pending_commands(journal)]
    assert kinds == [("continue_from", str(folder / "trial-0.pt")), ("resume", None)]
    journal.close()


def test_a_round_cut_short_by_a_daemon_restart_resumes_the_run(tmp_path):
    run, journal, sup = _setup(tmp_path, {})
    journal.add_trial(round=1, study="s", number=0, params={}, baseline=True)
    journal.set_state("tuning_round", {**journal.get_state("tuning_round"), "stage": "trials", "base_step": 5,
                                       "base_path": str(run / "checkpoints" / "checkpoint_00000005.pt")})
    cfg = SupervisorConfig()
    again = Supervisor(journal, cfg, warmup_steps=0,  # a new daemon: no round thread
                       tuning=InRunTuning.for_run(journal, cfg.approvals, run))
    assert again.phase == "tuning" and again.state == "tuning_trials"
    again.tick()
    assert again.phase == "aligning"
    (trial,) = journal.trials()
    assert trial.status == "failed" and "daemon restarted" in trial.detail
    tune = next(p for p in journal.proposals() if p.kind == "tune")
    assert tune.status == "failed"
    assert [c.kind for c in pending_commands(journal)] == ["resume"]
    assert (run / "checkpoints" / "checkpoint_00000005.pt").read_bytes() == b"base"
    journal.close()


def test_a_run_without_a_tuner_abandons_a_requested_round(tmp_path):
    with Journal(tmp_path / "journal.sqlite") as journal:
        sup = Supervisor(journal, SupervisorConfig(), warmup_steps=0, tuning=None)
        journal.add_steps([_step(i) for i in range(1, 6)])
        sup.tick()  # warmup -> aligning
        tune = journal.add_proposal(policy="cli", kind="tune", actions=[], reason="test.", aim="val_loss",
                                    approve_by="cli:t")
        sup.tick()  # aligning -> tuning
        assert sup.state == "tuning_requested"
        sup.tick()  # no tuner: the round ends at once, and the phase with it
        assert sup.phase == "aligning"
        assert journal.get_proposal(tune.id).status == "failed"
        assert journal.phase_history()[-1].reason == "tuning round abandoned: no run config (run-config.yaml) to " \
                                                     "fork trials from"
        assert not pending_commands(journal)  # nothing was paused, so nothing resumes
        assert any(m.kind == "tuning_failed" for m in journal.outbox_pending())


def test_a_bad_tuner_section_stops_the_supervisor_at_start(tmp_path):
    import pytest

    from agent.daemon import default_supervisor
    from trainer.errors import UserError

    run = tmp_path / "run"
    run.mkdir()
    raw = RunConfig(run_dir=run).model_dump(mode="json")
    raw["tuner"] = {"round": {"trails": 3}}
    child_config_path(run).write_text(yaml.safe_dump(raw))
    with Journal(run / "journal.sqlite") as journal:
        with pytest.raises(UserError, match=r"tuner\.round\.trails"):
            default_supervisor(journal, SupervisorConfig(), warmup_steps=0)
