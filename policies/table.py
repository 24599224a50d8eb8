"""Which policies are active in which phase, and which is most urgent."""

from __future__ import annotations

from policies.phases import Phase

# Most urgent first: broken numbers, then a run going off the rails, then attention,
# then slow trends.
URGENCY: tuple[str, ...] = (
    "non_finite", "loss_spike", "grad_runaway", "attention_collapse", "alignment_stall", "gate", "overfit",
    "attention_decay", "plateau",
)

_GUARDS = ("non_finite", "loss_spike", "grad_runaway")

ACTIVE: dict[Phase, frozenset[str]] = {
    Phase.WARMUP: frozenset(_GUARDS),
    # attention_collapse acts in aligning only for a run that was stable before and
    # fell back here on a collapse: it must still roll back if the collapse persists.
    Phase.ALIGNING: frozenset((*_GUARDS, "alignment_stall", "gate", "attention_collapse")),
    Phase.STABLE: frozenset((*_GUARDS, "attention_collapse", "attention_decay", "gate", "overfit", "plateau")),
    Phase.DIVERGING: frozenset(_GUARDS),
    Phase.RECOVERING: frozenset((*_GUARDS, "attention_decay")),
    # Trials run as forks; the main run only needs to stay finite.
    Phase.TUNING: frozenset(("non_finite",)),
}


def active(phase: Phase | str) -> tuple[str, ...]:
    """The phase's policies, most urgent first."""
    on = ACTIVE[Phase(phase)]
    return tuple(name for name in URGENCY if name in on)


def markdown() -> str:
    """The table for the docs."""
    phases = list(Phase)
    rows = ["| policy | " + " | ".join(p.value for p in phases) + " |", "| --- |" + " --- |" * len(phases)]
    for name in URGENCY:
        rows.append(f"| {name} | " + " | ".join("x" if name in ACTIVE[p] else "" for p in phases) + " |")
    return "\n".join(rows)
