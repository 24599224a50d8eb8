"""The supervisor: a `transitions` state machine over the run's phases.

Each ``tick()`` (the daemon calls it every ``supervisor.tick_seconds``) does one
round, reading and writing only the run journal:

1. read the newest telemetry, evaluations and the checkpoints still on disk;
2. move the phase (warmup -> aligning -> stable, -> diverging -> recovering, ...) and,
   in ``tuning``, the round's stage: by trying the machine's triggers in a fixed order
   (agent/phase_machine.py holds the machine: states, guards, effects, that order);
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

from transitions import EventData
from transitions.extensions.nesting import HierarchicalMachine

from agent import phase_machine
from agent.config import SupervisorConfig
from agent.journal import Journal, ProposalRow
from agent.phase_machine import STATES, TRANSITIONS, phase_of, state_diagram
from agent.tuner import inrun
from agent.tuner.inrun import InRunTuning
from policies import Memory, Proposal, Window, propose, signals
from trainer.control import CheckpointRecord, EvalRecord, Pause

__all__ = ["STATES", "TRANSITIONS", "Supervisor", "aim_value", "state_diagram"]

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


class Supervisor:
    """The model of the phase machine (agent/phase_machine.py): its methods are the
    transitions' guards and effects. ``tuning`` is the run's in-run tuner, built by the
    daemon (None: the run has no run config to fork trials from)."""

    def __init__(self, journal: Journal, cfg: SupervisorConfig, *, warmup_steps: int = 0,
                 clock: Callable[[], float] = time.time, log: Any = None,
                 data_hints: tuple[str, ...] = (), tuning: InRunTuning | None = None) -> None:
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
        self.tuning = tuning
        self.memory = Memory.model_validate(journal.get_state("memory", {}))
        self.failures: int = journal.get_state("failures", 0)
        phase = journal.current_phase()
        if phase is None:
            journal.record_phase("warmup", step=0, reason="run started")
        stage = (inrun.round_state(journal) or {}).get("stage")
        self.machine = HierarchicalMachine(model=self, states=STATES, transitions=TRANSITIONS,
                                           initial=phase_machine.initial_state(phase, stage),
                                           auto_transitions=False, send_event=True)
        self._window = Window(steps=(), evals=(), checkpoints=(), data_hints=data_hints)
        self._round_outcome = ""

    # -- the round ------------------------------------------------------------------------
    def tick(self) -> None:
        window = self._read_window()
        self._window = window
        self._note_rollbacks(window)
        self._advance_phase(window)
        self._expire()
        self._finish_non_command_proposals(window)
        self._judge_probation(window)
        for proposal in propose(self.phase, window, self.memory, self.policy_cfg):
            self._submit(proposal)
        self.journal.set_states({"memory": self.memory.model_dump(), "failures": self.failures})

    @property
    def phase(self) -> str:
        """The phase (``tuning`` while the machine is in one of the round's stages)."""
        return phase_of(self.state)

    def note_child_event(self, kind: str, detail: str = "") -> None:
        """The daemon reports the trainer process's life: started, crashed, restarted, hung, finished, gave_up."""
        self.journal.audit("daemon", kind, detail)
        urgent = kind in ("crashed", "hung", "gave_up")
        self._notify(f"child_{kind}", f"trainer {kind}" + (f": {detail}" if detail else ""), urgent=urgent)

    # -- moving the phase -----------------------------------------------------------------
    def _advance_phase(self, w: Window) -> None:
        """Try the machine's triggers in phase_machine's order; the guards decide."""
        step = w.step or 0
        if self._fire_first(phase_machine.PHASE_TRIGGERS, step):
            return
        self._fire_first(phase_machine.STAGE_TRIGGERS, step)
        self._fire_first(phase_machine.END_TRIGGERS, step)

    def _fire_first(self, triggers: tuple[str, ...], step: int) -> bool:
        """Fire the first of ``triggers`` possible now (from this state, guards passing)."""
        for name in triggers:
            if getattr(self, f"may_{name}")(step=step):
                return bool(self.trigger(name, step=step))  # type: ignore[attr-defined]
        return False

    # guards: the phases
    def is_diverging(self, event: EventData) -> bool:
        return signals.is_diverging(self._since_phase_began(self._window), self.policy_cfg)

    def warmup_done(self, event: EventData) -> bool:
        return signals.warmup_done(self._window.step or 0, self.policy_cfg)

    def is_aligned(self, event: EventData) -> bool:
        return signals.is_aligned(list(self._window.evals), self.policy_cfg)

    def is_collapsed(self, event: EventData) -> bool:
        return signals.is_collapsed(list(self._window.evals), self.memory.best_stable_diagonality, self.policy_cfg)

    def tune_approved(self, event: EventData) -> bool:
        return any(r.kind == "tune" for r in self.journal.proposals("approved", 20))

    def recovery_was_applied(self, event: EventData) -> bool:
        """A recovery (rollback, new LR or clip, pause) was applied since divergence began."""
        since = self._phase_started_at()
        return any(r.kind in _RECOVERY_KINDS and (r.applied_at or 0) >= since
                   for r in self.journal.proposals("applied", 20))

    def probation_passed(self, event: EventData) -> bool:
        fresh = self._since_phase_began(self._window)
        return len(fresh.steps) >= self.cfg.probation.steps and signals.is_healthy(fresh, self.policy_cfg)

    def was_aligned(self, event: EventData | None = None) -> bool:
        return self.memory.best_stable_diagonality is not None

    # effects: the phases
    def _enter_phase(self, event: EventData) -> None:
        """Entering a phase: a journal row (with the memory), a log event, a notification."""
        reason = event.kwargs.get("reason", event.event.name)
        step = event.kwargs.get("step")
        source = phase_of(event.transition.source)
        self.journal.record_phase(self.phase, step=step, reason=reason,
                                  state={"memory": self.memory.model_dump()})
        self._log("phase", source=source, dest=self.phase, reason=reason, step=step)
        self._notify("phase", f"phase {source} -> {self.phase}: {reason}")

    def _count_failed_recovery(self, event: EventData) -> None:
        self._count_failure("diverged again during probation")

    def _why_warmup_over(self, event: EventData) -> None:
        event.kwargs["reason"] = f"warm-up over at step {event.kwargs.get('step')}"

    def _remember_alignment(self, event: EventData) -> None:
        e = self._window.evals[-1]
        self.memory = self.memory.with_stable_diagonality(e.diagonality)
        read = f", inference attention read {e.speech.read} of {e.speech.synthesized}" if e.speech else ""
        event.kwargs["reason"] = f"aligned: diagonality {e.diagonality:.3f}, focus {e.focus:.3f}{read}"

    def _announce_alignment(self, event: EventData) -> None:
        e = self._window.evals[-1]
        self._notify("aligned", f"attention aligned at step {event.kwargs.get('step')} "
                                f"(diagonality {e.diagonality:.3f})")

    def _track_stable_diagonality(self, event: EventData) -> None:
        if self._window.evals:
            self.memory = self.memory.with_stable_diagonality(self._window.evals[-1].diagonality)

    def _why_collapse(self, event: EventData) -> None:
        event.kwargs["reason"] = (f"attention collapsed: diagonality {self._window.evals[-1].diagonality:.3f} vs "
                                  f"best {self.memory.best_stable_diagonality:.3f}")

    def _reset_failures(self, event: EventData) -> None:
        self.failures = 0

    # guards: the tuning round (agent/tuner/inrun.py does the work)
    def round_requested(self, event: EventData) -> bool:
        return inrun.requested_round(self.journal) is not None

    def has_tuner(self, event: EventData) -> bool:
        return self.tuning is not None

    def base_acknowledged(self, event: EventData) -> bool:
        return self.tuning is None or self.tuning.base_acknowledged()

    def base_usable(self, event: EventData) -> bool:
        return self.tuning is not None and self.tuning.base_problem() is None

    def trials_finished(self, event: EventData) -> bool:
        return self.tuning is None or self.tuning.trials_finished()

    def has_winner(self, event: EventData) -> bool:
        return self.tuning is not None and self.tuning.trials_problem() is None

    def winner_decided(self, event: EventData) -> bool:
        return self.tuning is not None and self.tuning.winner_decided()

    # effects: the tuning round
    def _begin_round(self, event: EventData) -> None:
        round_id = inrun.requested_round(self.journal)
        assert self.tuning is not None and round_id is not None  # start_round's guards
        self.tuning.begin(round_id)

    def _fork_trials(self, event: EventData) -> None:
        assert self.tuning is not None  # base_saved's guards
        self.tuning.fork_trials()

    def _propose_winner(self, event: EventData) -> None:
        assert self.tuning is not None  # trials_over's guards
        self.tuning.propose_winner(event.kwargs.get("step"))

    def _abandon_without_tuner(self, event: EventData) -> None:
        round_id = inrun.requested_round(self.journal)
        self._round_outcome = inrun.abandon(self.journal, {"round": round_id}, inrun.NO_RUN_CONFIG,
                                            event.kwargs.get("step"), resume=False, log=self.log)

    def _abandon_without_base(self, event: EventData) -> None:
        self._abandon(event, self.tuning.base_problem() if self.tuning is not None else None)

    def _abandon_without_winner(self, event: EventData) -> None:
        self._abandon(event, self.tuning.trials_problem() if self.tuning is not None else None)

    def _abandon(self, event: EventData, why: str | None) -> None:
        step = event.kwargs.get("step")
        if self.tuning is None:
            st = inrun.round_state(self.journal) or {}
            self._round_outcome = inrun.abandon(self.journal, st, inrun.NO_RUN_CONFIG, step, log=self.log)
        else:
            self._round_outcome = self.tuning.abandon(why or "the round stopped", step)

    def _settle_winner(self, event: EventData) -> None:
        assert self.tuning is not None  # winner_decided's guard
        self._round_outcome = self.tuning.settle_winner()

    def _note_nothing_to_run(self, event: EventData) -> None:
        self._round_outcome = "no tuning round to run"

    def _why_tuning_done(self, event: EventData) -> None:
        event.kwargs["reason"] = self._round_outcome or "no tuning round to run"

    # -- phase history --------------------------------------------------------------------
    def _since_phase_began(self, w: Window) -> Window:
        """The part of the window recorded in the current phase: transitions judge fresh
        evidence only (a NaN the trainer skipped stays in the window for a long time)."""
        since = self._phase_started_at()
        return Window(steps=tuple(s for s in w.steps if s.wall_time >= since),
                      evals=tuple(e for e in w.evals if e.wall_time >= since),
                      checkpoints=w.checkpoints, data_hints=w.data_hints)

    def _phase_started_at(self) -> float:
        history = self.journal.phase_history(limit=1)
        return history[-1].wall_time if history else 0.0

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
        self.journal.outbox_put(kind, text, {**(payload or {}), "urgent": urgent, "phase": self.phase})

    def _log(self, event: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.info(event, phase=self.phase, **fields)
