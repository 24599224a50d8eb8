"""One pure function per policy: ``(phase, window, memory, cfg) -> list[Proposal]``.

A rule does not check the phase table (``policies.table.ACTIVE``); ``propose`` does.
"""

from __future__ import annotations

from typing import Callable

from policies.config import PolicyConfig
from policies.phases import Phase
from policies.rules.alignment import alignment_stall, attention_collapse, attention_decay
from policies.rules.gate import gate
from policies.rules.grad_runaway import grad_runaway
from policies.rules.loss_spike import loss_spike
from policies.rules.non_finite import non_finite
from policies.rules.overfit import overfit
from policies.rules.plateau import plateau
from policies.types import Memory, Proposal, Window

Rule = Callable[[Phase, Window, Memory, PolicyConfig], list[Proposal]]

RULES: dict[str, Rule] = {
    "non_finite": non_finite,
    "loss_spike": loss_spike,
    "grad_runaway": grad_runaway,
    "attention_collapse": attention_collapse,
    "alignment_stall": alignment_stall,
    "gate": gate,
    "overfit": overfit,
    "attention_decay": attention_decay,
    "plateau": plateau,
}

__all__ = ["RULES", "Rule", *RULES]
