"""Pure decision rules: (phase, telemetry window, memory) -> proposals.

No I/O, no torch, no clocks: every function here is a function of its arguments,
so the supervisor can replay a journal through it and tests can feed it numbers.
Imports only the standard library, pydantic, ``trainer.control`` and ``trainer.plugins``
(and the custom rules a user installs, see ``policies.custom``).
"""

from __future__ import annotations

from policies.config import PolicyConfig
from policies.custom import CustomRule
from policies.phases import Phase
from policies.rules import RULES
from policies.settings import RuleSettings
from policies.signals import (
    is_aligned,
    is_collapsed,
    is_diverging,
    is_healthy,
    is_plateau,
    is_stalled,
    warmup_done,
)
from policies.table import ACTIVE, URGENCY, active
from policies.types import AIMS, KINDS, Memory, Proposal, Window

_SEVERITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}
# A rollback restores the learning rate, loss weights and clip of its checkpoint, so a
# change computed from the current values would be wrong after it; pause and stop end
# the step loop. After one of these, only proposals without commands remain.
_EXCLUSIVE = {"rollback", "pause", "stop"}


def _resolve(proposals: list[Proposal]) -> list[Proposal]:
    """Most urgent first; a later proposal that turns a knob an earlier one turns
    (or any after a rollback, pause or stop) is left out: it comes again next time if
    it still holds."""
    ordered = sorted(proposals, key=lambda p: (_SEVERITY_RANK[p.severity], URGENCY.index(p.policy)
                                               if p.policy in URGENCY else len(URGENCY)))
    kept: list[Proposal] = []
    taken: set[str] = set()
    for p in ordered:
        kinds = {a["kind"] for a in p.actions}
        if kinds and (taken & (kinds | _EXCLUSIVE) or kinds & _EXCLUSIVE and taken):
            continue
        kept.append(p)
        taken |= kinds
    return kept


def propose(phase: Phase | str, window: Window, memory: Memory | None = None,
            cfg: PolicyConfig | None = None) -> list[Proposal]:
    """Run the policies active in ``phase``, built-in and custom; most urgent proposal first,
    at most one per knob."""
    phase = Phase(phase)
    memory = memory if memory is not None else Memory()
    cfg = cfg if cfg is not None else PolicyConfig()
    out: list[Proposal] = []
    for name in active(phase):
        if cfg.policy(name).enabled:
            out.extend(RULES[name](phase, window, memory, cfg))
    for name, rule in cfg.loaded_custom_rules().items():
        settings = cfg.policy(name)
        if phase in rule.phases and settings.enabled:
            out.extend(rule.run(phase, window, memory, settings))
    return _resolve(out)


__all__ = [
    "ACTIVE", "AIMS", "KINDS", "CustomRule", "Memory", "Phase", "PolicyConfig", "Proposal", "RULES", "RuleSettings",
    "URGENCY", "Window", "active",
    "is_aligned", "is_collapsed", "is_diverging", "is_healthy", "is_plateau", "is_stalled", "propose", "warmup_done",
]
