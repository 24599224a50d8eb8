"""Learning-rate schedule: linear warm-up, then optional exponential decay.

The schedule is a *shape* (a factor of step) times a base rate. A supervisor that
sets the learning rate changes the base so that the rate right now equals what it
asked for, and the shape carries on from there.
"""

from __future__ import annotations

from trainer.config import OptimConfig


class LRSchedule:
    def __init__(self, cfg: OptimConfig) -> None:
        self.base_lr = cfg.learning_rate
        self.warmup_steps = cfg.warmup_steps
        self.decay_start = cfg.decay_start
        self.decay_rate = cfg.decay_rate
        self.decay_steps = cfg.decay_steps
        self.min_lr = cfg.min_learning_rate

    def factor(self, step: int) -> float:
        f = 1.0
        if self.warmup_steps and step < self.warmup_steps:
            f = (step + 1) / self.warmup_steps
        if self.decay_start is not None and step > self.decay_start:
            f *= self.decay_rate ** ((step - self.decay_start) / self.decay_steps)
        return f

    def lr(self, step: int) -> float:
        value = self.base_lr * self.factor(step)
        # The floor applies to decay only; warm-up may start below it.
        if self.decay_start is not None and step > self.decay_start:
            value = max(value, self.min_lr)
        return value

    def set_current(self, step: int, lr: float) -> None:
        self.base_lr = lr / self.factor(step)

    def state_dict(self) -> dict[str, float | int | None]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
