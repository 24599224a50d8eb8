"""The supervisor's state machine and decisions, on a real journal with synthetic telemetry."""

from __future__ import annotations

import time

import pytest
from transitions import MachineError

from agent.config import SupervisorConfig
from agent.journal import Journal
from agent.phase_machine import DOC, diagram_block, documented_block
from agent.supervisor import TRANSITIONS, Supervisor, state_diagram
from trainer.control import CheckpointRecord, CommandResult, EvalRecord, StepTelemetry

from journal_helpers import pending_commands

# Records carry the real time of their creation, as a live trainer's do: the
# supervisor compares them with its own phase and decision times.


def step(n: int, loss: float = 1.0, finite: bool = True, t: float | None = None) -> StepTelemetry:
    return StepTelemetry(step=n, epoch=0, wall_time=time.time() if t is None else t, lr=1e-3, loss=loss,
                         mel_loss=loss / 2, mel_postnet_loss=loss / 2, gate_loss=0.1, guided_attention_loss=0.0,
                         grad_norm=1.0 if finite else float("nan"), grad_clip=1.0, guided_attention_weight=0.0,
                         gate_pos_weight=5.0, step_seconds=1.0, skipped_steps=0, finite=finite)


def evaluation(n: int, diagonality: float, focus: float, val_loss: float = 1.0) -> EvalRecord:
    return EvalRecord(step=n, wall_time=time.time(), val_loss=val_loss, val_mel_loss=val_loss / 2,
                      val_mel_postnet_loss=val_loss / 2, val_gate_loss=0.1, val_guided_attention_loss=0.0,
                      diagonality=diagonality, focus=focus, aligned_fraction=0.0, gate_accuracy=0.9)


def cfg(**approval_modes) -> SupervisorConfig:
    c = SupervisorConfig.model_validate({"probation": {"steps": 5, "evals": 1, "max_failures": 2}})
    c.approvals.modes.update(approval_modes)
    return c


@pytest.fixture
def journal(tmp_path):
    with Journal(tmp_path / "journal.sqlite") as j:
        yield j


def test_transition_table_and_diagram():
    table = {(t["trigger"], src): t["dest"] for t in TRANSITIONS
             for src in (t["source"] if isinstance(t["source"], list) else [t["source"]])}
    assert table[("warmup_over", "warmup")] == "aligning"
    assert table[("aligned", "aligning")] == "stable"
    assert table[("collapse", "stable")] == "aligning"
    assert table[("recovery_applied", "diverging")] == "recovering"
    assert {src for (trig, src) in table if trig == "diverge"} == {"warmup", "aligning", "stable", "recovering",
                                                                  "tuning"}
    diagram = state_diagram()
    assert "stateDiagram" in diagram and "diverging --> recovering: recovery_applied" in diagram


def test_the_documented_state_diagram_is_the_machine():
    """docs/supervisor.md shows the diagram generated from the machine (regenerate with
    python -m agent.phase_machine --update-docs)."""
    assert documented_block(DOC.read_text(encoding="utf-8")) == diagram_block()
    assert "tuning_trials --> tuning_applying: trials_over [trials_finished & has_winner]" in state_diagram()


def test_invalid_transition_is_refused(journal):
    sup = Supervisor(journal, cfg())
    with pytest.raises(MachineError):
        sup.aligned()  # warmup cannot jump to stable


def test_phases_follow_telemetry_and_survive_a_restart(journal):
    sup = Supervisor(journal, cfg(), warmup_steps=5)
    assert sup.phase == "warmup"
    journal.add_steps([step(i) for i in range(1, 8)])
    sup.tick()
    assert sup.phase == "aligning"
    journal.add_eval(evaluation(7, 0.4, 0.2))
    sup.tick()
    assert sup.phase == "aligning"
    journal.add_steps([step(i) for i in range(8, 12)])
    journal.add_eval(evaluation(10, 0.93, 0.6))
    journal.add_eval(evaluation(11, 0.95, 0.62))
    sup.tick()
    assert sup.phase == "stable"
    assert [p.to_phase for p in journal.phase_history()] == ["warmup", "aligning", "stable"]
    assert any(m.kind == "aligned" for m in journal.outbox_pending())

    again = Supervisor(journal, cfg(), warmup_steps=5)  # a restarted daemon
    assert again.phase == "stable" and again.memory.best_stable_diagonality == pytest.approx(0.95)


def _checkpoint(journal, tmp_path, n: int) -> None:
    path = tmp_path / f"checkpoint_{n:08d}.pt"
    path.write_bytes(b"x")
    journal.add_checkpoint(CheckpointRecord(step=n, path=str(path), wall_time=time.time(), reason="periodic"))


def _ack_all(journal, step_no: int) -> None:
    for c in pending_commands(journal):
        journal.mark_delivered([c.id])
        journal.acknowledge(CommandResult(command_id=c.id, kind=c.kind, ok=True, detail="done", step=step_no))


def test_nan_rolls_back_automatically_then_recovers(journal, tmp_path):
    sup = Supervisor(journal, cfg(), warmup_steps=0)
    journal.add_steps([step(i) for i in range(1, 30)])
    _checkpoint(journal, tmp_path, 20)
    sup.tick()
    assert sup.phase == "aligning"
    journal.add_steps([step(30, float("nan"), finite=False)])
    sup.tick()
    assert sup.phase == "diverging"
    (proposal,) = journal.proposals()
    assert proposal.policy == "non_finite" and proposal.status == "approved" and proposal.mode == "auto"
    commands = pending_commands(journal)
    assert [c.kind for c in commands][0] == "rollback" and commands[0].command().step == 20

    _ack_all(journal, 20)
    assert journal.get_proposal(proposal.id).status == "applied"
    sup.tick()
    assert sup.phase == "recovering"
    journal.add_steps([step(20 + i) for i in range(1, 8)])
    sup.tick()
    assert sup.phase == "aligning"  # never aligned before: back to aligning
    assert journal.get_proposal(proposal.id).outcome == "improved"


def test_ask_mode_waits_and_expires_to_the_default(journal, tmp_path):
    c = cfg(rollback="ask")
    c.approvals.timeout_seconds = 60
    clock = [time.time()]
    sup = Supervisor(journal, c, clock=lambda: clock[0])
    journal.add_steps([step(i) for i in range(1, 30)])
    _checkpoint(journal, tmp_path, 20)
    journal.add_steps([step(30, float("nan"), finite=False)])
    sup.tick()
    (pending,) = journal.pending_proposals()
    assert pending.mode == "ask" and not pending_commands(journal)
    assert any(m.kind == "proposal_ask" and f"approve {pending.id}" in m.text for m in journal.outbox_pending())
    sup.tick()
    assert len(journal.proposals()) == 1  # not proposed twice while pending

    restarted = Supervisor(journal, c, clock=lambda: clock[0])
    assert [p.id for p in journal.pending_proposals()] == [pending.id] and restarted.phase == "diverging"
    clock[0] += 61
    restarted.tick()
    assert journal.get_proposal(pending.id).status == "expired" and not pending_commands(journal)


def test_repeated_failed_recoveries_pause_and_call_a_human(journal, tmp_path):
    sup = Supervisor(journal, cfg(), warmup_steps=0)
    journal.add_steps([step(i) for i in range(1, 30)])
    _checkpoint(journal, tmp_path, 20)
    for round_no in range(2):
        journal.add_steps([step(30, float("nan"), finite=False)])
        sup.tick()
        _ack_all(journal, 20)
        sup.tick()
        # Probation: still broken.
        journal.add_steps([step(20 + i, float("nan"), finite=False) for i in range(1, 7)])
        sup.tick()
    kinds = [c.kind for c in journal.commands()]
    assert "pause" in kinds
    assert any(m.kind == "human_needed" for m in journal.outbox_pending())


def test_one_nan_gives_one_rollback_even_when_a_tick_lands_before_the_next_step(journal, tmp_path):
    sup = Supervisor(journal, cfg(), warmup_steps=0)
    journal.add_steps([step(i) for i in range(1, 30)])
    _checkpoint(journal, tmp_path, 20)
    journal.add_steps([step(30, float("nan"), finite=False)])
    sup.tick()
    _ack_all(journal, 20)
    sup.tick()  # acknowledged, but no step since: the old NaN is not new evidence
    sup.tick()
    assert len([p for p in journal.proposals() if p.kind == "rollback"]) == 1
    journal.add_steps([step(21)])
    sup.tick()
    assert len([p for p in journal.proposals() if p.kind == "rollback"]) == 1
    assert sup.memory.last("non_finite") == 20


def test_diverging_is_left_when_healthy_again_without_an_intervention(journal):
    sup = Supervisor(journal, cfg(), warmup_steps=0)
    journal.add_steps([step(i) for i in range(1, 10)])
    journal.add_steps([step(10, float("nan"), finite=False)])  # no checkpoint: nothing to roll back to
    sup.tick()
    assert sup.phase == "diverging"
    assert all(p.kind != "rollback" for p in journal.proposals())
    journal.add_steps([step(10 + i) for i in range(1, 8)])
    sup.tick()
    sup.tick()
    assert sup.phase in ("recovering", "aligning")
    journal.add_steps([step(20 + i) for i in range(1, 8)])
    sup.tick()
    assert sup.phase == "aligning"


def test_partial_approval_modes_keep_the_other_defaults():
    c = SupervisorConfig.model_validate({"approvals": {"modes": {"rollback": "ask"}}})
    assert c.approvals.mode_for("rollback") == "ask" and c.approvals.mode_for("set_lr") == "auto"
    with pytest.raises(ValueError, match="unknown intervention kind"):
        SupervisorConfig.model_validate({"approvals": {"modes": {"rollbak": "ask"}}})


def test_paused_is_derived_from_applied_commands(journal):
    from trainer.control import Pause, Resume

    assert not journal.is_paused()
    for command, expected in ((Pause(), True), (Resume(), False), (Pause(), True)):
        journal.enqueue_command(command, source="supervisor")
        _ack_all(journal, 5)
        assert journal.is_paused() is expected
