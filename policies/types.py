"""The value types of the policies: what they see (:class:`Window`), what the
supervisor remembers for them (:class:`Memory`) and what they say (:class:`Proposal`).

All three are frozen pydantic models so that the supervisor can store them in its
journal as JSON (``model_dump_json``) and read them back (``model_validate_json``).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainer.control import CheckpointRecord, Command, EvalRecord, StepTelemetry, parse_command

# Intervention kinds: the key under which the supervisor's approval config holds a
# mode (auto / ask / notify). "early_stop" carries a stop command, "pause" a pause
# command; "tune" and "ask_human" carry no command (the supervisor acts on them).
KINDS = ("rollback", "set_lr", "set_grad_clip", "set_guided_attention", "set_gate_pos_weight", "pause",
         "early_stop", "tune", "ask_human")
Kind = Literal["rollback", "set_lr", "set_grad_clip", "set_guided_attention", "set_gate_pos_weight", "pause",
               "early_stop", "tune", "ask_human"]

# What an intervention should improve, for the supervisor's probation check:
# loss, grad_norm (lower), diagonality, gate_accuracy (higher), val_loss (lower),
# and from the free-running evaluation: speech_score (higher), mcd_dtw (lower),
# stop_in_range (higher: the share of utterances whose gate fired in range).
AIMS = ("loss", "grad_norm", "diagonality", "gate_accuracy", "val_loss", "speech_score", "mcd_dtw", "stop_in_range")
Aim = Literal["loss", "grad_norm", "diagonality", "gate_accuracy", "val_loss", "speech_score", "mcd_dtw",
              "stop_in_range"]

SEVERITIES = ("critical", "high", "medium", "low")
Severity = Literal["critical", "high", "medium", "low"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Proposal(_Frozen):
    """One intervention a policy proposes, with the numbers that made it do so."""

    policy: str
    kind: Kind
    # Command payloads in order, as ``trainer.control.parse_command`` accepts them,
    # without ids: the supervisor gives each command its id once, when it issues it.
    actions: tuple[dict[str, Any], ...] = ()
    reason: str  # one human sentence, with the numbers
    evidence: dict[str, float | int | str] = Field(default_factory=dict)
    aim: Aim
    severity: Severity = "medium"
    # The newest telemetry step the proposal is based on. Memory.record() keeps it so
    # that the policy does not propose again on the same evidence.
    step: int

    @field_validator("actions")
    @classmethod
    def _parse(cls, actions: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        for action in actions:
            if "id" in action:
                raise ValueError("actions carry no command id; the supervisor assigns it when issuing")
            parse_command(action)  # raises if the trainer would not accept it
        return actions

    def commands(self) -> list[Command]:
        """The actions as commands, each with a *new* id: call once, then store them."""
        return [parse_command(a) for a in self.actions]


_R = TypeVar("_R", StepTelemetry, EvalRecord)


def lineage(records: Sequence[_R]) -> tuple[_R, ...]:
    """The records of the current weights' history, in arrival order.

    A rollback (or a restart from a checkpoint) sets the trainer's step back, so the
    step numbers of what follows repeat those of the abandoned branch. A record whose
    step is not above the previous one's therefore drops every earlier record at or
    above its step.
    """
    out: list[_R] = []
    for r in records:
        while out and out[-1].step >= r.step:
            out.pop()
        out.append(r)
    return tuple(out)


def restarts(steps: Sequence[StepTelemetry]) -> tuple[tuple[int, float], ...]:
    """(step, wall_time) of each step record that came after a step set back."""
    return tuple((b.step, b.wall_time) for a, b in zip(steps, steps[1:]) if b.step <= a.step)


def abandoned(step: int, wall_time: float, points: Sequence[tuple[int, float]]) -> bool:
    """Was a record (evaluation, checkpoint) made on a branch that a later rollback left?
    Its step lies at or after the first step of the new branch, and it is older."""
    return any(step >= s and wall_time < w for s, w in points)


class Window(_Frozen):
    """The telemetry the policies see.

    ``steps`` may be thinned out (every k-th record) for long spans; the rules work
    with whatever records there are, by their step numbers. Keep at least the
    largest span a rule needs: ``grad_runaway.baseline_steps + recent_steps`` step
    records, ``overfit.train_loss_steps`` records before the oldest evaluation the
    overfitting rule compares, and about ten evaluations. Records may straddle a
    rollback: the window keeps only the current branch (see :func:`lineage` and
    :func:`abandoned`). Checkpoints are deduplicated by step, newest record wins (a
    re-saved step overwrites the file). The supervisor passes only checkpoints that
    still exist on disk (the trainer prunes all but ``checkpoint.keep_last``).
    """

    steps: tuple[StepTelemetry, ...] = ()
    evals: tuple[EvalRecord, ...] = ()
    checkpoints: tuple[CheckpointRecord, ...] = ()
    # What the data audit suspects, one human phrase each, e.g.
    # "12% of clips have > 0.5 s leading silence".
    data_hints: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _normalise(self) -> "Window":
        # The step stream shows where rollbacks happened; evaluations and checkpoints of
        # the abandoned branches go too (by the trainer's wall clock, which all records share).
        points = restarts(self.steps)
        by_step: dict[int, CheckpointRecord] = {}
        for c in self.checkpoints:
            by_step.pop(c.step, None)
            if not abandoned(c.step, c.wall_time, points):
                by_step[c.step] = c
        self.__dict__["steps"] = lineage(self.steps)
        self.__dict__["evals"] = lineage([e for e in self.evals if not abandoned(e.step, e.wall_time, points)])
        self.__dict__["checkpoints"] = tuple(sorted(by_step.values(), key=lambda c: c.step))
        return self

    @property
    def latest(self) -> StepTelemetry | None:
        return self.steps[-1] if self.steps else None

    @property
    def step(self) -> int | None:
        """The newest step in the window (step records or evaluations)."""
        known = [r.step for r in (self.latest, self.evals[-1] if self.evals else None) if r is not None]
        return max(known) if known else None

    # The trainer's current knobs, as reported by the newest step record.
    @property
    def lr(self) -> float | None:
        return self.latest.lr if self.latest else None

    @property
    def grad_clip(self) -> float | None:
        return self.latest.grad_clip if self.latest else None

    @property
    def guided_attention_weight(self) -> float | None:
        return self.latest.guided_attention_weight if self.latest else None

    @property
    def gate_pos_weight(self) -> float | None:
        return self.latest.gate_pos_weight if self.latest else None


class Memory(_Frozen):
    """What the supervisor remembers of the policies' history, so that escalation
    stays a pure function. The supervisor keeps one, replaces it with the result of
    these methods, and persists it with the phase.

    * ``fired``: how many times each policy fired in its current episode. The
      supervisor clears a policy's count (:meth:`cleared`) when the episode is over,
      e.g. when the run has been healthy through a probation window or changed phase.
    * ``last_step``: the step of the evidence each policy last fired on; a rule only
      fires on evidence newer than that.
    * ``best_stable_diagonality``: the best diagonality seen while stable (collapse
      is measured from it); None before the run was ever stable.
    """

    fired: dict[str, int] = Field(default_factory=dict)
    last_step: dict[str, int] = Field(default_factory=dict)
    best_stable_diagonality: float | None = None

    def count(self, policy: str) -> int:
        return self.fired.get(policy, 0)

    def last(self, policy: str) -> int | None:
        return self.last_step.get(policy)

    def record(self, proposal: Proposal) -> "Memory":
        """After a proposal was made (whatever its fate: a rejected one is not
        proposed again on the same evidence)."""
        return self.model_copy(update={
            "fired": {**self.fired, proposal.policy: self.count(proposal.policy) + 1},
            "last_step": {**self.last_step, proposal.policy: proposal.step},
        })

    def cleared(self, policy: str) -> "Memory":
        """The policy's episode is over: its next firing is a first one again."""
        return self.model_copy(update={"fired": {k: v for k, v in self.fired.items() if k != policy}})

    def rolled_back(self, step: int) -> "Memory":
        """After a rollback to ``step`` was applied. Must be called: the step numbers
        that follow repeat those of the abandoned branch, and evidence there is new."""
        return self.model_copy(update={"last_step": {k: min(v, step) for k, v in self.last_step.items()}})

    def with_stable_diagonality(self, diagonality: float) -> "Memory":
        """Call with each evaluation's diagonality while the phase is stable."""
        best = self.best_stable_diagonality
        if not math.isfinite(diagonality) or (best is not None and best >= diagonality):
            return self
        return self.model_copy(update={"best_stable_diagonality": diagonality})
