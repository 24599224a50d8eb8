"""Choosing the checkpoint to roll back to, and the rollback command for it."""

from __future__ import annotations

import math
from typing import Any, Iterable

from trainer.control import CheckpointRecord


def is_good(c: CheckpointRecord) -> bool:
    """Finite weights, and no non-finite metric recorded with them."""
    return c.finite and all(v is None or math.isfinite(v) for v in (c.val_loss, c.diagonality))


def last_good_checkpoint(checkpoints: Iterable[CheckpointRecord], before_step: int,
                         min_diagonality: float | None = None) -> CheckpointRecord | None:
    """The newest good checkpoint saved strictly before ``before_step`` (the first step
    of the trouble: the record of step s was computed with the weights of step s - 1,
    so a checkpoint at s - 1 predates it). With ``min_diagonality``, only checkpoints
    whose recorded diagonality reached it qualify."""
    found = None
    for c in checkpoints:
        if c.step >= before_step or not is_good(c):
            continue
        if min_diagonality is not None and (c.diagonality is None or c.diagonality < min_diagonality):
            continue
        if found is None or c.step > found.step:
            found = c
    return found


def rollback_action(checkpoint: CheckpointRecord, skip_batches: int) -> dict[str, Any]:
    # Always name the step: Rollback(step=None) would take the newest loadable
    # checkpoint, which may have been saved after the trouble began.
    return {"kind": "rollback", "step": checkpoint.step, "skip_batches": skip_batches}
