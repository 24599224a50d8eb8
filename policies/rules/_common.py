"""Small helpers shared by the rules."""

from __future__ import annotations

from typing import Any, Iterable

from policies.types import Memory


def fresh(steps: Iterable[int], memory: Memory, policy: str) -> bool:
    """Every step is newer than the evidence the policy last fired on."""
    since = memory.last(policy)
    return since is None or all(s > since for s in steps)


def set_lr(factor: float) -> dict[str, Any]:
    # A factor, not a value: after a rollback it applies to the restored rate and keeps
    # the schedule's shape (an absolute value set during warm-up would not).
    return {"kind": "set_lr", "factor": factor}


def three_digits(x: float) -> str:
    """A number for a reason sentence, to three significant digits."""
    return f"{x:.3g}"
