"""Validation loss rising while the training loss falls: cut the LR, then propose an early stop."""

from __future__ import annotations

from policies.config import PolicyConfig
from policies.phases import Phase
from policies.rules._common import fresh, g, set_lr
from policies.signals import find_overfit
from policies.types import Memory, Proposal, Window

NAME = "overfit"


def overfit(phase: Phase, window: Window, memory: Memory, cfg: PolicyConfig) -> list[Proposal]:
    c = cfg.overfit
    found = find_overfit(window.steps, window.evals, c)
    if found is None or not fresh([e.step for e in window.evals[-c.rising_evals:]], memory, NAME):
        return []
    evidence: dict[str, float | int | str] = {
        "val_loss_from": found.val_from, "val_loss": found.val_to, "rise": found.val_to / found.val_from - 1,
        "train_loss_from": found.train_from, "train_loss": found.train_to, "rising_evals": found.n_evals,
        "from_step": found.first_step, "repeat": memory.count(NAME),
    }
    seen = (f"Validation loss rose at each of the last {found.n_evals} evaluations ({g(found.val_from)} -> "
            f"{g(found.val_to)}) while the training loss fell ({g(found.train_from)} -> {g(found.train_to)})")
    if memory.count(NAME) == 0:
        evidence["lr_factor"] = c.lr_factor
        return [Proposal(policy=NAME, kind="set_lr", actions=(set_lr(c.lr_factor),), evidence=evidence,
                         aim="val_loss", severity="medium", step=found.last_step,
                         reason=f"{seen}; learning rate x {c.lr_factor}.")]
    best = min((k for k in window.checkpoints if k.val_loss is not None), key=lambda k: k.val_loss, default=None)
    where = ""
    if best is not None:
        evidence.update(best_checkpoint_step=best.step, best_val_loss=best.val_loss)
        where = f" (the best validation loss, {g(best.val_loss)}, is in the checkpoint of step {best.step})"
    return [Proposal(policy=NAME, kind="early_stop", actions=({"kind": "stop"},), evidence=evidence,
                     aim="val_loss", severity="medium", step=found.last_step,
                     reason=f"{seen} even after cutting the learning rate; proposing to stop training{where}.")]
