"""Non-finite loss or gradients: roll back to the last good checkpoint at once."""

from __future__ import annotations

from policies.checkpoints import last_good_checkpoint, rollback_action
from policies.config import PolicyConfig
from policies.phases import Phase
from policies.rules._common import set_lr
from policies.signals import find_non_finite
from policies.types import Memory, Proposal, Window

NAME = "non_finite"


def non_finite(phase: Phase, window: Window, memory: Memory, cfg: PolicyConfig) -> list[Proposal]:
    c = cfg.non_finite
    found = find_non_finite(window, memory.last(NAME))
    if found is None or (found.bad_steps < c.min_bad_steps and not found.weights_bad):
        return []
    what = "the weights are non-finite" if found.weights_bad else \
        f"{found.bad_steps} step(s) had a non-finite loss or gradient"
    evidence: dict[str, float | int | str] = {
        "first_bad_step": found.first_step, "last_bad_step": found.last_step, "bad_steps": found.bad_steps,
        "bad_steps_in_window": found.bad_steps_total, "weights_bad": int(found.weights_bad),
    }
    if window.latest is not None:
        evidence["skipped_steps"] = window.latest.skipped_steps
    target = last_good_checkpoint(window.checkpoints, before_step=found.first_step)
    if target is not None:
        actions = [rollback_action(target, cfg.rollback.skip_batches)]
        reason = (f"Since step {found.first_step} {what}; rolling back to the checkpoint of step {target.step}, "
                  f"the newest finite one before it, and skipping {cfg.rollback.skip_batches} batches")
        if memory.count(NAME) >= 1:
            actions.append(set_lr(c.repeat_lr_factor))
            reason += f", with the learning rate x {c.repeat_lr_factor} because this is repeat {memory.count(NAME)}"
            evidence["lr_factor"] = c.repeat_lr_factor
        evidence.update(checkpoint_step=target.step, skip_batches=cfg.rollback.skip_batches,
                        discarded_steps=max(0, (window.step or target.step) - target.step))
        return [Proposal(policy=NAME, kind="rollback", actions=tuple(actions), reason=reason + ".",
                         evidence=evidence, aim="loss", severity="critical", step=found.last_step)]
    if found.weights_bad or found.bad_steps_total >= c.pause_after_steps:
        return [Proposal(
            policy=NAME, kind="pause", actions=({"kind": "pause"},), evidence=evidence, aim="loss",
            severity="critical", step=found.last_step,
            reason=(f"Since step {found.first_step} {what} ({found.bad_steps_total} non-finite steps in the "
                    f"window) and there is no finite checkpoint before it to roll back to; pausing for a human."))]
    return [Proposal(
        policy=NAME, kind="ask_human", evidence=evidence, aim="loss", severity="high", step=found.last_step,
        reason=(f"Step {found.first_step} had a non-finite loss or gradient (the trainer skipped that update) "
                f"and there is no finite checkpoint before it to roll back to; training goes on."))]
