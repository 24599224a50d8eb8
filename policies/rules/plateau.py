"""Validation loss on a plateau while stable: propose a tuning round."""

from __future__ import annotations

from policies.config import PolicyConfig
from policies.phases import Phase
from policies.rules._common import fresh, g
from policies.signals import find_overfit, find_plateau
from policies.types import Memory, Proposal, Window

NAME = "plateau"


def plateau(phase: Phase, window: Window, memory: Memory, cfg: PolicyConfig) -> list[Proposal]:
    c = cfg.plateau
    found = find_plateau(window.evals, c)
    if found is None or not fresh([e.step for e in window.evals[-c.evals:]], memory, NAME):
        return []
    if find_overfit(window.steps, window.evals, cfg.overfit) is not None:
        return []  # a rising validation loss is the overfitting rule's case, not a plateau
    return [Proposal(
        policy=NAME, kind="tune", aim="val_loss", severity="low", step=found.last_step,
        evidence={"best_val_loss_before": found.best_before, "best_val_loss_recent": found.best_recent,
                  "improvement": found.improvement, "min_improvement": c.min_improvement, "evals": found.n_evals},
        reason=(f"The best validation loss of the last {found.n_evals} evaluations ({g(found.best_recent)}) improves "
                f"on the earlier best ({g(found.best_before)}) by {found.improvement:.2%} < "
                f"{c.min_improvement:.0%}; proposing a tuning round."))]
