"""Gradient norm running away: tighten the clip, then cut the LR."""

from __future__ import annotations

from policies.config import PolicyConfig
from policies.phases import Phase
from policies.rules._common import set_lr, three_digits
from policies.signals import find_grad_runaway
from policies.types import Memory, Proposal, Window

NAME = "grad_runaway"


def grad_runaway(phase: Phase, window: Window, memory: Memory, cfg: PolicyConfig) -> list[Proposal]:
    c = cfg.grad_runaway
    found = find_grad_runaway(window.steps, c)
    if found is None:
        return []
    since = memory.last(NAME)
    if since is not None and found.last_step < since + c.cooldown_steps:
        return []
    evidence: dict[str, float | int | str] = {
        "grad_norm_median": found.recent, "baseline_median": found.baseline, "ratio": found.recent / found.baseline,
        "threshold_ratio": c.ratio, "grad_clip": found.clip, "since_step": found.first_step,
        "repeat": memory.count(NAME),
    }
    seen = (f"The median gradient norm of steps {found.first_step}-{found.last_step} is {three_digits(found.recent)}, "
            f"{three_digits(found.recent / found.baseline)}x its earlier {three_digits(found.baseline)} and above "
            f"the clip {three_digits(found.clip)}")
    if memory.count(NAME) == 0 and found.clip > c.min_clip:
        new = max(c.min_clip, found.clip * c.clip_factor)
        evidence["new_grad_clip"] = new
        return [Proposal(policy=NAME, kind="set_grad_clip", actions=({"kind": "set_grad_clip", "value": new},),
                         evidence=evidence, aim="grad_norm", severity="high", step=found.last_step,
                         reason=f"{seen}; tightening the gradient clip to {three_digits(new)}.")]
    evidence["lr_factor"] = c.lr_factor
    after = ("the clip was already tightened" if memory.count(NAME)
             else f"the clip is at its minimum {three_digits(c.min_clip)}")
    return [Proposal(policy=NAME, kind="set_lr", actions=(set_lr(c.lr_factor),), evidence=evidence,
                     aim="grad_norm", severity="high", step=found.last_step,
                     reason=f"{seen}; {after}, so the learning rate goes x {c.lr_factor}.")]
