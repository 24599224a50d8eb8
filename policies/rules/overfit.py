"""Held-out speech getting worse (MCD-DTW, or the validation loss without free-running
figures) while the training loss falls: cut the LR, then propose an early stop."""

from __future__ import annotations

from policies.config import PolicyConfig
from policies.phases import Phase
from policies.rules._common import fresh, set_lr, three_digits
from policies.signals import find_overfit
from policies.types import Memory, Proposal, Window

NAME = "overfit"


def overfit(phase: Phase, window: Window, memory: Memory, cfg: PolicyConfig) -> list[Proposal]:
    c = cfg.overfit
    found = find_overfit(window.steps, window.evals, c)
    if found is None or not fresh([e.step for e in window.evals[-c.rising_evals:]], memory, NAME):
        return []
    evidence: dict[str, float | int | str] = {
        "metric": found.metric, "from": found.val_from, "to": found.val_to, "rise": found.val_to / found.val_from - 1,
        "train_loss_from": found.train_from, "train_loss": found.train_to, "rising_evals": found.n_evals,
        "from_step": found.first_step, "repeat": memory.count(NAME),
    }
    what = "Free-running MCD-DTW (dB)" if found.metric == "mcd_dtw" else "Validation loss"
    seen = (f"{what} rose at each of the last {found.n_evals} evaluations ({three_digits(found.val_from)} -> "
            f"{three_digits(found.val_to)}) while the training loss fell ({three_digits(found.train_from)} -> "
            f"{three_digits(found.train_to)})")
    aim = "mcd_dtw" if found.metric == "mcd_dtw" else "val_loss"
    if memory.count(NAME) == 0:
        evidence["lr_factor"] = c.lr_factor
        return [Proposal(policy=NAME, kind="set_lr", actions=(set_lr(c.lr_factor),), evidence=evidence,
                         aim=aim, severity="medium", step=found.last_step,
                         reason=f"{seen}; learning rate x {c.lr_factor}.")]
    where = " (best.pt holds the best evaluation so far)"
    return [Proposal(policy=NAME, kind="early_stop", actions=({"kind": "stop"},), evidence=evidence,
                     aim=aim, severity="medium", step=found.last_step,
                     reason=f"{seen} even after cutting the learning rate; proposing to stop training{where}.")]
