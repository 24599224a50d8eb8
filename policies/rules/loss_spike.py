"""Loss spike: roll back to a checkpoint before it, skip batches, cut the LR."""

from __future__ import annotations

from policies.checkpoints import last_good_checkpoint, rollback_action
from policies.config import PolicyConfig
from policies.phases import Phase
from policies.rules._common import fresh, set_lr, three_digits
from policies.signals import find_spike
from policies.types import Memory, Proposal, Window

NAME = "loss_spike"


def loss_spike(phase: Phase, window: Window, memory: Memory, cfg: PolicyConfig) -> list[Proposal]:
    c = cfg.loss_spike
    spike = find_spike(window.steps, c)
    # Once per spike: a spike that began before the last firing was already answered.
    if spike is None or not fresh([spike.first_step], memory, NAME):
        return []
    repeat = memory.count(NAME) >= 1
    factor = c.repeat_lr_factor if repeat else c.lr_factor
    evidence: dict[str, float | int | str] = {
        "first_spike_step": spike.first_step, "spike_steps": spike.n_steps, "baseline_loss": spike.baseline,
        "loss": spike.loss, "ratio": spike.ratio, "threshold_ratio": c.ratio, "lr_factor": factor,
        "repeat": memory.count(NAME),
    }
    seen = (f"The loss has been above {three_digits(c.ratio)}x its median of {three_digits(spike.baseline)} for "
            f"{spike.n_steps} steps "
            f"since step {spike.first_step} (now {three_digits(spike.loss)})")
    why = " (repeat spike)" if repeat else ""
    target = last_good_checkpoint(window.checkpoints, before_step=spike.first_step)
    if target is None:
        return [Proposal(
            policy=NAME, kind="set_lr", actions=(set_lr(factor),), evidence=evidence, aim="loss", severity="high",
            step=spike.last_step,
            reason=f"{seen}; no finite checkpoint predates it, so only the learning rate goes x {factor}{why}.")]
    evidence.update(checkpoint_step=target.step, skip_batches=cfg.rollback.skip_batches,
                    discarded_steps=spike.last_step - target.step)
    return [Proposal(
        policy=NAME, kind="rollback", actions=(rollback_action(target, cfg.rollback.skip_batches), set_lr(factor)),
        evidence=evidence, aim="loss", severity="high", step=spike.last_step,
        reason=(f"{seen}; rolling back to the checkpoint of step {target.step}, skipping "
                f"{cfg.rollback.skip_batches} batches, learning rate x {factor}{why}."))]
