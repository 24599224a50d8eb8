"""The supervisor: a `transitions` state machine over the run's phases.

Each ``tick()`` (the daemon calls it every ``supervisor.tick_seconds``) does one
round, reading and writing only the run journal:

1. read the newest telemetry, evaluations and the checkpoints still on disk;
2. move the phase (warmup -> aligning -> stable, -> diverging -> recovering, ...);
3. expire unanswered "ask" proposals; judge interventions whose probation is over,
   escalating after repeated failures (pause the run and call a human);
4. run the policies active in the phase and turn each proposal into a decision
   according to its kind's approval mode (auto / ask / notify).

Everything the supervisor knows lives in the journal (phase, policy memory, failure
count, cursors), so a restarted daemon resumes in the same phase with the same
pending proposals.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from transitions import EventData, Machine

from agent.config import SupervisorConfig
from agent.journal import Journal, ProposalRow
from agent.tuner.inrun import InRunTuning
from policies import Memory, Phase, Proposal, Window, propose
from policies.signals import is_aligned, is_collapsed, is_diverging, is_healthy, warmup_done
from trainer.control import CheckpointRecord, EvalRecord, Pause

STATES = [p.value for p in Phase]
_ACTIVE = ["warmup", "aligning", "stable", "recovering", "tuning"]
TRANSITIONS = [
    {"trigger": "warmup_over", "source": "warmup", "dest": "aligning"},
    {"trigger": "aligned", "source": "aligning", "dest": "stable"},
    {"trigger": "collapse", "source": "stable", "dest": "aligning"},
    {"trigger": "diverge", "source": _ACTIVE, "dest": "diverging"},
    {"trigger": "recovery_applied", "source": "diverging", "dest": "recovering"},
    {"trigger": "recovered", "source": "recovering", "dest": "stable", "conditions": "was_aligned"},
    {"trigger": "recovered", "source": "recovering", "dest": "aligning"},
    # From aligning only on request (smart-tuner tune-now): the plateau rule runs in stable.
    {"trigger": "start_tuning", "source": ["stable", "aligning"], "dest": "tuning"},
    {"trigger": "tuning_done", "source": "tuning", "dest": "stable", "conditions": "was_aligned"},
    {"trigger": "tuning_done", "source": "tuning", "dest": "aligning"},
]
# Aims judged on evaluations rather than steps; which direction is better.
_EVAL_AIMS = {"diagonality", "gate_accuracy", "val_loss", "speech_score", "mcd_dtw", "stop_in_range"}
_HIGHER_IS_BETTER = {"diagonality", "gate_accuracy", "speech_score", "stop_in_range"}


def aim_value(e: EvalRecord, aim: str) -> float:
    """An evaluation's figure for a probation aim (NaN: not measured at that evaluation)."""
    if aim == "stop_in_range":
        s = e.speech
        return s.stopped / s.synthesized if s is not None and s.synthesized else math.nan
    value = getattr(e, aim)
    return math.nan if value is None else float(value)
# Proposals that count as a recovery from divergence once applied.
_RECOVERY_KINDS = {"rollback", "set_lr", "set_grad_clip", "pause"}


def state_diagram() -> str:
    """The phase diagram as Mermaid (transitions' mermaid backend), for the docs."""
    from transitions.extensions import GraphMachine

    class _Model:
        was_aligned = staticmethod(lambda *a, **k: True)

    model = _Model()
    GraphMachine(model=model, states=STATES, transitions=TRANSITIONS, initial="warmup", graph_engine="mermaid",
                 auto_transitions=False, title="Smart Tuner phases")
    return model.get_graph().draw(None)


class Supervisor:
    def __init__(self, journal: Journal, cfg: SupervisorConfig, *, warmup_steps: int = 0,
                 clock: Callable[[], float] = time.time, log: Any = None,
                 data_hints: tuple[str, ...] = ()) -> None:
        self.journal = journal
        self.cfg = cfg
        # The warm-up phase lasts the trainer's LR warm-up unless the config says otherwise.
        if "warmup_steps" not in cfg.policies.model_fields_set:
            self.policy_cfg = cfg.policies.model_copy(update={"warmup_steps": warmup_steps})
        else:
            self.policy_cfg = cfg.policies
        self.clock = clock
        self.log = log
        self.data_hints = data_hints
        self.memory = Memory.model_validate(journal.get_state("memory", {}))
        self.failures: int = journal.get_state("failures", 0)
        initial = journal.current_phase() or "warmup"
        if journal.current_phase() is None:
            journal.record_phase("warmup", step=0, reason="run started")
        self.machine = Machine(model=self, states=STATES, transitions=TRANSITIONS, initial=initial,
                               auto_transitions=False, send_event=True, after_state_change="_persist_phase")
        self._window: Window | None = None
        # The tuning phase's work (agent/tuner): reads the run's run-config.yaml beside
        # the journal, validating its tuner section now.
        self.tuning = InRunTuning(journal, cfg.approvals, Path(journal.path).parent, notify=self._notify, log=log)

    # -- the round ------------------------------------------------------------------------
    def tick(self) -> None:
        window = self._read_window()
        self._window = window
        self._note_rollbacks(window)
        self._advance_phase(window)
        self._expire()
        self._finish_non_command_proposals(window)
        self._judge_probation(window)
        for proposal in propose(self.state, window, self.memory, self.policy_cfg):
            self._submit(proposal)
        self.journal.set_states({"memory": self.memory.model_dump(), "failures": self.failures})

    @property
    def phase(self) -> str:
        return self.state

    def note_child_event(self, kind: str, detail: str = "") -> None:
        """The daemon reports the trainer process's life: started, crashed, restarted, hung, finished, gave_up."""
        self.journal.audit("daemon", kind, detail)
        urgent = kind in ("crashed", "hung", "gave_up")
        self._notify(f"child_{kind}", f"trainer {kind}" + (f": {detail}" if detail else ""), urgent=urgent)

    # -- phases ---------------------------------------------------------------------------
    def was_aligned(self, event: EventData | None = None) -> bool:
        return self.memory.best_stable_diagonality is not None

    def _persist_phase(self, event: EventData) -> None:
        reason = event.kwargs.get("reason", event.event.name)
        step = event.kwargs.get("step")
        self.journal.record_phase(self.state, step=step, reason=reason,
                                  state={"memory": self.memory.model_dump()})
        self._log("phase", source=event.transition.source, dest=self.state, reason=reason, step=step)
        self._notify("phase", f"phase {event.transition.source} -> {self.state}: {reason}")

    def _since_phase_began(self, w: Window) -> Window:
        """The part of the window recorded in the current phase: transitions judge fresh
        evidence only (a NaN the trainer skipped stays in the window for a long time)."""
        since = self._phase_started_at()
        return Window(steps=tuple(s for s in w.steps if s.wall_time >= since),
                      evals=tuple(e for e in w.evals if e.wall_time >= since),
                      checkpoints=w.checkpoints, data_hints=w.data_hints)

    def _advance_phase(self, w: Window) -> None:
        step = w.step or 0
        evals = list(w.evals)
        fresh = self._since_phase_began(w)
        if self.state != "diverging" and self.state in _ACTIVE and is_diverging(fresh, self.policy_cfg):
            if self.state == "recovering":
                self._count_failure("diverged again during probation")
            self.diverge(reason="divergence: non-finite values, a loss spike or runaway validation loss", step=step)
            return
        if self.state == "warmup" and warmup_done(step, self.policy_cfg):
            self.warmup_over(reason=f"warm-up over at step {step}", step=step)
        elif self.state == "aligning" and is_aligned(evals, self.policy_cfg):
            e = evals[-1]
            self.memory = self.memory.with_stable_diagonality(e.diagonality)
            read = f", inference attention read {e.speech.read} of {e.speech.synthesized}" if e.speech else ""
            self.aligned(reason=f"aligned: diagonality {e.diagonality:.3f}, focus {e.focus:.3f}{read}", step=step)
            self._notify("aligned", f"attention aligned at step {step} (diagonality {e.diagonality:.3f})")
        elif self.state == "aligning" and self._approved("tune"):
            self.start_tuning(reason="tuning requested", step=step)
        elif self.state == "stable":
            if evals:
                self.memory = self.memory.with_stable_diagonality(evals[-1].diagonality)
            if is_collapsed(evals, self.memory.best_stable_diagonality, self.policy_cfg):
                self.collapse(reason=f"attention collapsed: diagonality {evals[-1].diagonality:.3f} vs best "
                                     f"{self.memory.best_stable_diagonality:.3f}", step=step)
            elif self._approved("tune"):
                self.start_tuning(reason="tuning approved", step=step)
        elif self.state == "diverging" and self._applied_since_phase(_RECOVERY_KINDS):
            self.recovery_applied(reason="recovery applied; on probation", step=step)
        elif self.state == "diverging" and self._probation_passed(w):
            # Nothing was applied (no checkpoint to roll back to, or a human declined),
            # yet the run is healthy again: probation decides the rest.
            self.recovery_applied(reason="healthy again without an intervention; on probation", step=step)
        elif self.state == "recovering" and self._probation_passed(w):
            self.failures = 0
            self.recovered(reason="healthy through probation", step=step)
        elif self.state == "tuning":
            done = self.tuning.advance(step)  # a round of trials, then the winner continues the run
            if done is not None:
                self.tuning_done(reason=done, step=step)

    def _phase_started_at(self) -> float:
        history = self.journal.phase_history(limit=1)
        return history[-1].wall_time if history else 0.0

    def _applied_since_phase(self, kinds: set[str]) -> bool:
        since = self._phase_started_at()
        return any(r.kind in kinds and (r.applied_at or 0) >= since for r in self.journal.proposals("applied", 20))

    def _approved(self, kind: str) -> bool:
        return any(r.kind == kind for r in self.journal.proposals("approved", 20))

    def _probation_passed(self, w: Window) -> bool:
        fresh = self._since_phase_began(w)
        return len(fresh.steps) >= self.cfg.probation.steps and is_healthy(fresh, self.policy_cfg)

    # -- proposals ------------------------------------------------------------------------
    def _submit(self, p: Proposal) -> None:
        # One open proposal per policy: a pending ask, or approved commands not yet acknowledged.
        open_rows = self.journal.proposals(("proposed", "approved"), 50)
        if any(r.policy == p.policy for r in open_rows):
            return
        mode = self.cfg.approvals.mode_for(p.kind)
        now = self.clock()
        row = self.journal.add_proposal(
            policy=p.policy, kind=p.kind, actions=p.actions, reason=p.reason, evidence=p.evidence, aim=p.aim,
            mode=mode, step=p.step, expires_at=now + self.cfg.approvals.timeout_seconds if mode == "ask" else None,
            approve_by="auto" if mode == "auto" else None)
        self.memory = self.memory.record(p)
        self._log("proposal", id=row.id, policy=p.policy, kind=p.kind, mode=mode, reason=p.reason,
                  evidence=p.evidence)
        if mode == "notify":
            self.journal.decide(row.id, "rejected", by="policy:notify-only", enqueue=False)
            self._notify("proposal_notify", f"#{row.id} {p.policy}: {p.reason} (notify-only: not applied)")
        elif mode == "auto":
            self._notify("intervention", f"#{row.id} {p.policy}: {p.reason} -> applying {p.kind}")
        else:
            self._notify("proposal_ask", f"#{row.id} {p.policy}: {p.reason} -> approve with "
                                         f"'smart-tuner approve {row.id}' or reject with 'smart-tuner reject {row.id}'",
                         payload={"proposal_id": row.id}, urgent=True)

    def _expire(self) -> None:
        default = self.cfg.approvals.on_timeout
        for row in self.journal.due_proposals(self.clock()):
            if default == "approve":
                won = self.journal.decide(row.id, "approved", by="expiry:default-approve")
            else:
                won = self.journal.decide(row.id, "expired", by="expiry")
            if won:
                self._log("expired", id=row.id, policy=row.policy, default=default)
                self._notify("proposal_expired", f"#{row.id} {row.policy} expired unanswered ({default})")

    def _finish_non_command_proposals(self, w: Window) -> None:
        # Approved proposals without trainer commands (ask_human) are done once decided.
        for row in self.journal.proposals("approved", 50):
            if not row.commands() and row.kind not in ("tune",):
                self.journal.finish_proposal(row.id, "applied", step=w.step, detail="acknowledged by a human")

    def _note_rollbacks(self, w: Window) -> None:
        """Tell the policy memory about applied rollbacks, once the trainer has stepped
        after them. Earlier, the window still ends with the pre-rollback steps, and
        forgetting their evidence then would make the same fault fire twice."""
        seen = self.journal.get_state("rollbacks_seen", 0)
        for row in sorted(self.journal.proposals("applied", 20), key=lambda r: r.id):
            if row.id <= seen or not any(a["kind"] == "rollback" for a in row.actions):
                continue
            if not any(s.wall_time > (row.applied_at or 0) for s in w.steps):
                break
            target = next(a for a in row.actions if a["kind"] == "rollback").get("step")
            self.memory = self.memory.rolled_back(target if target is not None else (row.step or 0))
            seen = row.id
        self.journal.set_state("rollbacks_seen", seen)

    # -- probation ------------------------------------------------------------------------
    def _judge_probation(self, w: Window) -> None:
        for row in self.journal.proposals(("applied", "failed"), 30):
            if row.outcome is not None or row.aim is None or row.applied_at is None:
                continue
            if row.status == "failed":
                self.journal.record_outcome(row.id, "failed", "the trainer could not apply it")
                self._count_failure(f"#{row.id} {row.policy} failed to apply")
                continue
            verdict = self._verdict(row, w)
            if verdict is None:
                continue  # probation not over yet
            improved, detail = verdict
            self.journal.record_outcome(row.id, "improved" if improved else "not_improved", detail)
            self._log("outcome", id=row.id, policy=row.policy, improved=improved, detail=detail)
            if improved:
                self.memory = self.memory.cleared(row.policy)
                if row.kind in _RECOVERY_KINDS:
                    self.failures = 0
            elif row.kind in _RECOVERY_KINDS:
                self._count_failure(f"#{row.id} {row.policy}: {detail}")

    def _verdict(self, row: ProposalRow, w: Window) -> tuple[bool, str] | None:
        aim = row.aim
        if aim in _EVAL_AIMS:
            before = [aim_value(e, aim) for e in w.evals if e.wall_time < row.applied_at]
            after = [aim_value(e, aim) for e in w.evals if e.wall_time >= row.applied_at]
            if len(after) < self.cfg.probation.evals:
                return None
            after = after[: self.cfg.probation.evals]
        else:
            field = "loss" if aim == "loss" else "grad_norm"
            before = [getattr(s, field) for s in w.steps if s.wall_time < row.applied_at][-self.cfg.probation.steps:]
            after_steps = [s for s in w.steps if s.wall_time >= row.applied_at]
            if len(after_steps) < self.cfg.probation.steps:
                return None
            after = [getattr(s, field) for s in after_steps[: self.cfg.probation.steps]]
        finite_after = [x for x in after if math.isfinite(x)]
        if len(finite_after) < len(after):
            return False, f"{aim} not finite during probation"
        finite_before = [x for x in before if math.isfinite(x)]
        if not finite_before:
            return True, f"{aim} finite again (median {statistics.median(finite_after):.4g})"
        b, a = statistics.median(finite_before), statistics.median(finite_after)
        if aim in _EVAL_AIMS:
            better = a > b if aim in _HIGHER_IS_BETTER else a < b
        else:
            # Step aims (loss, grad norm) judge a recovery: finite again and no worse
            # than before the trouble (within 5%: step losses are noisy) is a success.
            better = a <= b * 1.05
        return better, f"{aim} median {b:.4g} -> {a:.4g}"

    def _count_failure(self, why: str) -> None:
        self.failures += 1
        self._log("recovery_failed", failures=self.failures, why=why)
        if self.failures >= self.cfg.probation.max_failures:
            self.journal.enqueue_command(Pause(), source="supervisor")
            self._notify("human_needed", f"{self.failures} recoveries failed in a row ({why}); the run is paused. "
                                         "Inspect it, then 'smart-tuner resume'.", urgent=True)
            self.failures = 0

    # -- plumbing ---------------------------------------------------------------------------
    def _read_window(self) -> Window:
        checkpoints = [CheckpointRecord(step=c.step, path=c.path, wall_time=c.wall_time, reason=c.reason,
                                        val_loss=c.val_loss, diagonality=c.diagonality, finite=c.finite)
                       for c in self.journal.checkpoints(50) if Path(c.path).exists() and c.health == "good"]
        return Window(steps=tuple(self.journal.latest_steps(self.cfg.window_steps)),
                      evals=tuple(self.journal.latest_evals(self.cfg.window_evals)),
                      checkpoints=tuple(checkpoints), data_hints=self.data_hints)

    def _notify(self, kind: str, text: str, payload: dict | None = None, urgent: bool = False) -> None:
        self.journal.outbox_put(kind, text, {**(payload or {}), "urgent": urgent, "phase": self.state})

    def _log(self, event: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.info(event, phase=self.state, **fields)
