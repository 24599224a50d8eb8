"""The supervisor's configuration: the ``supervisor:`` section of a run's YAML.

The trainer carries this section untouched (``RunConfig.supervisor``); the agent
validates it here, so a typo is reported with the same file/line precision.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from policies.config import PolicyConfig
from policies.types import KINDS

Mode = Literal["auto", "ask", "notify"]
# The policies' kinds plus the tuner's: "apply_winner" continues the run from a tuning
# round's best trial (agent/tuner/inrun.py).
APPROVAL_KINDS = (*KINDS, "apply_winner")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _default_modes() -> dict[str, Mode]:
    # Safe, reversible knobs apply themselves; rollbacks apply too (they restore a
    # known-good state) but are reported; ending or re-planning a run asks a human.
    return {
        "rollback": "auto",
        "set_lr": "auto",
        "set_grad_clip": "auto",
        "set_guided_attention": "auto",
        "set_gate_pos_weight": "auto",
        "pause": "auto",
        "early_stop": "ask",
        "tune": "ask",
        "ask_human": "ask",
        # The winner beat the current settings' own trial at equal steps; applying it
        # keeps its trained steps and can be judged (and undone) like any intervention.
        "apply_winner": "auto",
    }


class ApprovalConfig(_Section):
    # Only the kinds given change; the others keep their defaults.
    modes: dict[str, Mode] = Field(default_factory=_default_modes)

    @field_validator("modes", mode="before")
    @classmethod
    def _merge_with_defaults(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        unknown = sorted(set(value) - set(APPROVAL_KINDS))
        if unknown:
            raise ValueError(f"unknown intervention kind(s) {unknown}; known: {', '.join(APPROVAL_KINDS)}")
        return {**_default_modes(), **value}
    # An "ask" proposal nobody answers within this time gets ``on_timeout``.
    timeout_seconds: float = Field(3600.0, gt=0)
    on_timeout: Literal["reject", "approve"] = "reject"

    def mode_for(self, kind: str) -> Mode:
        return self.modes.get(kind, "ask")


class ProbationConfig(_Section):
    # Evaluations (or, for step-level aims, steps) after an intervention before its
    # outcome is judged.
    evals: int = Field(2, ge=1)
    steps: int = Field(50, ge=1)
    # After this many failed recoveries in a row the run is paused and a human called.
    max_failures: int = Field(3, ge=1)


class ProcessConfig(_Section):
    # No telemetry for this long (while not paused) counts as a hung trainer.
    hang_seconds: float = Field(600.0, gt=0)
    max_restarts: int = Field(5, ge=0)
    backoff_seconds: float = Field(5.0, ge=0)
    backoff_max_seconds: float = Field(300.0, ge=0)
    # SIGTERM -> grace period for the final checkpoint before SIGKILL.
    stop_grace_seconds: float = Field(120.0, gt=0)


class SupervisorConfig(_Section):
    policies: PolicyConfig = Field(default_factory=PolicyConfig)
    approvals: ApprovalConfig = Field(default_factory=ApprovalConfig)
    probation: ProbationConfig = Field(default_factory=ProbationConfig)
    process: ProcessConfig = Field(default_factory=ProcessConfig)
    # How often the supervisor reads the journal and decides.
    tick_seconds: float = Field(2.0, gt=0)
    # Periodic status digest to the notifiers (minutes; 0 = off).
    digest_minutes: float = Field(60.0, ge=0)
    # Steps and evaluations the policies see.
    window_steps: int = Field(2000, gt=0)
    window_evals: int = Field(30, gt=0)
