"""The stop gate misbehaves in free-running inference: it never stops (raise its
positive weight) or it stops too early (lower it). Opposite troubles, opposite fixes."""

from __future__ import annotations

from policies.config import PolicyConfig
from policies.phases import Phase
from policies.rules._common import fresh, three_digits
from policies.signals import find_gate_trouble
from policies.types import Memory, Proposal, Window

NAME = "gate"


def gate(phase: Phase, window: Window, memory: Memory, cfg: PolicyConfig) -> list[Proposal]:
    c = cfg.gate
    trouble = find_gate_trouble(window.evals, c)
    pos = window.gate_pos_weight
    if trouble is None or pos is None or not fresh([e.step for e in trouble.evals], memory, NAME):
        return []
    latest = trouble.evals[-1]
    n = len(trouble.evals)
    evidence: dict[str, float | int | str] = {
        "trouble": trouble.kind, "evals": n, "gate_pos_weight": pos, "gate_accuracy": latest.gate_accuracy,
    }
    if trouble.free_running:
        s = latest.speech
        evidence.update(share=trouble.share, min_share=c.min_share, synthesized=s.synthesized,
                        premature=s.premature, runaway=s.runaway, gate_missed_end=s.gate_missed_end)
        if trouble.kind == "never_stops":
            seen = (f"For {n} evaluations the stop gate missed the end in free-running inference: now "
                    f"{s.gate_missed_end} of {s.synthesized} utterances read their text to the end and ran on past "
                    f"twice their length or to the limit")
        else:
            seen = (f"For {n} evaluations the stop gate fired too early in free-running inference: now "
                    f"{s.premature} of {s.synthesized} utterances stopped before half their length")
    else:
        evidence["max_accuracy"] = c.max_accuracy
        seen = (f"For {n} evaluations the gate's balanced accuracy stayed below {c.max_accuracy} (now "
                f"{latest.gate_accuracy:.3f}; no free-running figures to tell a gate that never fires from one "
                f"that fires early)")
    aim = "stop_in_range" if trouble.free_running else "gate_accuracy"
    if trouble.kind == "never_stops":
        if pos >= c.max_pos_weight:
            return [_ask(evidence, aim, latest.step,
                         f"{seen}, and the gate positive weight is already at its cap "
                         f"{three_digits(c.max_pos_weight)}; check "
                         f"that clips end cleanly (trailing silence) and the gate threshold.")]
        new = min(pos * c.factor, c.max_pos_weight)
        verb = "raising"
    else:
        if pos <= c.min_pos_weight:
            return [_ask(evidence, aim, latest.step,
                         f"{seen}, and the gate positive weight is already at its floor "
                         f"{three_digits(c.min_pos_weight)}; check "
                         f"for long pauses inside clips and for clips cut short, and consider a higher "
                         f"model.gate_threshold.")]
        new = max(pos / c.factor, c.min_pos_weight)
        verb = "lowering"
    evidence["new_gate_pos_weight"] = new
    return [Proposal(policy=NAME, kind="set_gate_pos_weight", actions=({"kind": "set_gate_pos_weight", "value": new},),
                     evidence=evidence, aim=aim, severity="medium", step=latest.step,
                     reason=(f"{seen}; {verb} the gate positive weight from {three_digits(pos)} to "
                             f"{three_digits(new)}."))]


def _ask(evidence: dict, aim: str, step: int, reason: str) -> Proposal:
    return Proposal(policy=NAME, kind="ask_human", evidence=evidence, aim=aim, severity="medium", step=step,
                    reason=reason)
