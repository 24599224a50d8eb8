"""The phases of a supervised run (see docs: DESIGN.md, "Phases").

Pause, resume and stop are commands, not phases: a paused run keeps its phase.
"""

from __future__ import annotations

from enum import Enum


class Phase(str, Enum):
    WARMUP = "warmup"          # first steps, learning rate ramping
    ALIGNING = "aligning"      # attention not yet monotonic (low diagonality)
    STABLE = "stable"          # aligned and improving
    DIVERGING = "diverging"    # spike, non-finite loss, exploding gradients, runaway validation loss
    RECOVERING = "recovering"  # rolled back or changed, on probation
    TUNING = "tuning"          # running forked trials to pick new hyperparameters

    def __str__(self) -> str:
        return self.value
