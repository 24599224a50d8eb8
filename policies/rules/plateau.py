"""No progress while stable (speech score and MCD-DTW, or the validation loss without
free-running figures): propose a tuning round."""

from __future__ import annotations

from policies.config import PolicyConfig
from policies.phases import Phase
from policies.rules._common import fresh, three_digits
from policies.signals import find_overfit, find_plateau
from policies.types import Memory, Proposal, Window

NAME = "plateau"


def plateau(phase: Phase, window: Window, memory: Memory, cfg: PolicyConfig) -> list[Proposal]:
    c = cfg.plateau
    found = find_plateau(window.evals, c)
    if found is None or not fresh([e.step for e in window.evals[-c.evals:]], memory, NAME):
        return []
    if find_overfit(window.steps, window.evals, cfg.overfit) is not None:
        return []  # a rising validation loss is the overfitting rule's case, not a plateau
    evidence: dict[str, float | int | str] = {
        "metric": found.metric, "best_before": found.best_before, "best_recent": found.best_recent,
        "improvement": found.improvement, "min_improvement": c.min_improvement, "evals": found.n_evals}
    if found.metric == "mcd_dtw":
        evidence.update(speech_score_before=found.score_before, speech_score_recent=found.score_recent)
        seen = (f"Over the last {found.n_evals} evaluations no more utterances were spoken (best speech score "
                f"{found.score_recent:.0%}, {found.score_before:.0%} before) and the best MCD-DTW "
                f"({three_digits(found.best_recent)} dB) improves on the earlier best "
                f"({three_digits(found.best_before)} dB) by "
                f"{found.improvement:.2%} < {c.min_improvement:.0%}")
        aim = "mcd_dtw"
    else:
        seen = (f"The best validation loss of the last {found.n_evals} evaluations "
                f"({three_digits(found.best_recent)}) improves on the earlier best "
                f"({three_digits(found.best_before)}) by {found.improvement:.2%} < {c.min_improvement:.0%}")
        aim = "val_loss"
    return [Proposal(policy=NAME, kind="tune", aim=aim, severity="low", step=found.last_step, evidence=evidence,
                     reason=f"{seen}; proposing a tuning round.")]
