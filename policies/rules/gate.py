"""Gate not learning (balanced accuracy low, probes never stop): raise its positive weight."""

from __future__ import annotations

from policies.config import PolicyConfig
from policies.phases import Phase
from policies.rules._common import fresh, g
from policies.signals import find_gate_stuck
from policies.types import Memory, Proposal, Window

NAME = "gate"


def gate(phase: Phase, window: Window, memory: Memory, cfg: PolicyConfig) -> list[Proposal]:
    c = cfg.gate
    judged = find_gate_stuck(window.evals, c)
    pos = window.gate_pos_weight
    if judged is None or pos is None or not fresh([e.step for e in judged], memory, NAME):
        return []
    latest = judged[-1]
    evidence: dict[str, float | int | str] = {
        "gate_accuracy": latest.gate_accuracy, "probe_stop_rate": latest.probe_stop_rate,
        "max_accuracy": c.max_accuracy, "max_probe_stop_rate": c.max_probe_stop_rate, "evals": len(judged),
        "gate_pos_weight": pos,
    }
    seen = (f"For {len(judged)} evaluations the gate's balanced accuracy stayed below {c.max_accuracy} (now "
            f"{latest.gate_accuracy:.3f}) and under {c.max_probe_stop_rate:.0%} of probes stopped (now "
            f"{latest.probe_stop_rate:.0%})")
    if pos >= c.max_pos_weight:
        return [Proposal(policy=NAME, kind="ask_human", evidence=evidence, aim="gate_accuracy", severity="medium",
                         step=latest.step,
                         reason=(f"{seen}, and the gate positive weight is already at its cap {g(c.max_pos_weight)}; "
                                 f"check that clips end cleanly (trailing silence) and the gate threshold."))]
    new = min(pos * c.factor, c.max_pos_weight)
    evidence["new_gate_pos_weight"] = new
    return [Proposal(policy=NAME, kind="set_gate_pos_weight", actions=({"kind": "set_gate_pos_weight", "value": new},),
                     evidence=evidence, aim="gate_accuracy", severity="medium", step=latest.step,
                     reason=f"{seen}; raising the gate positive weight from {g(pos)} to {g(new)}.")]
