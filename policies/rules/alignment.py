"""Attention alignment: stalled while aligning, reached (decay guided attention),
collapsed after it was reached."""

from __future__ import annotations

from policies.checkpoints import last_good_checkpoint, rollback_action
from policies.config import PolicyConfig
from policies.phases import Phase
from policies.rules._common import fresh, set_lr, three_digits
from policies.signals import best_diagonality, eval_aligned, find_collapse, find_stall, is_aligned
from policies.types import Memory, Proposal, Window

STALL = "alignment_stall"
DECAY = "attention_decay"
COLLAPSE = "attention_collapse"


def alignment_stall(phase: Phase, window: Window, memory: Memory, cfg: PolicyConfig) -> list[Proposal]:
    """Raise the guided-attention weight, then cut the LR, then ask a human."""
    c = cfg.alignment_stall
    if is_aligned(window.evals, cfg):
        return []
    start = _guide_from_start(window, memory, cfg)
    if start:
        return start
    stall = find_stall(window.evals, c, cfg.aligned.diagonality)
    if stall is None:
        return []
    # Judge only evaluations made after the last answer had a chance to act.
    if not fresh([e.step for e in window.evals[-c.evals:]], memory, STALL):
        return []
    evidence: dict[str, float | int | str] = {
        "diagonality_before": stall.before, "diagonality_best": stall.best, "diagonality": stall.latest,
        "gain": stall.gain, "min_gain": c.min_gain, "evals": stall.n_evals, "stage": memory.count(STALL),
        "focus_before": stall.focus_before, "focus_best": stall.focus_best,
    }
    seen = (f"Diagonality went from {stall.before:.3f} to at best {stall.best:.3f} and focus from "
            f"{stall.focus_before:.3f} to at best {stall.focus_best:.3f} over the last {stall.n_evals} "
            f"evaluations (gains below {c.min_gain})")
    ga = window.guided_attention_weight
    stage = min(memory.count(STALL), 2)
    if stage == 0 and ga is not None and ga < c.max_guided_attention_weight:
        new = min(ga * c.guided_attention_factor if ga > 0 else c.initial_guided_attention_weight,
                  c.max_guided_attention_weight)
        evidence.update(guided_attention_weight=ga, new_guided_attention_weight=new)
        return [Proposal(policy=STALL, kind="set_guided_attention",
                         actions=({"kind": "set_guided_attention", "weight": new},), evidence=evidence,
                         aim="diagonality", severity="medium", step=stall.last_step,
                         reason=(f"{seen}; raising the guided-attention weight from {three_digits(ga)} to "
                                 f"{three_digits(new)}."))]
    if stage <= 1:
        evidence["lr_factor"] = c.lr_factor
        return [Proposal(policy=STALL, kind="set_lr", actions=(set_lr(c.lr_factor),), evidence=evidence,
                         aim="diagonality", severity="medium", step=stall.last_step,
                         reason=f"{seen} despite more guided attention; learning rate x {c.lr_factor}.")]
    hints = window.data_hints
    suspect = ("the data audit suspects: " + "; ".join(hints)) if hints else (
        "the data audit flagged nothing, so check for long clips, long leading or trailing silences and "
        "transcripts that do not match their audio")
    evidence["data_hints"] = " | ".join(hints)
    return [Proposal(policy=STALL, kind="ask_human", evidence=evidence, aim="diagonality", severity="medium",
                     step=stall.last_step,
                     reason=f"{seen} even after raising guided attention and cutting the learning rate; {suspect}.")]


def _guide_from_start(window: Window, memory: Memory, cfg: PolicyConfig) -> list[Proposal]:
    """Guided attention on at the first evaluation of the aligning phase, if it is off."""
    c = cfg.alignment_stall
    ga = window.guided_attention_weight
    if not c.guide_from_start or ga != 0 or memory.count(STALL) or not window.evals:
        return []
    latest = window.evals[-1]
    if not fresh([latest.step], memory, STALL) or latest.step < cfg.warmup_steps:
        return []
    new = c.initial_guided_attention_weight
    return [Proposal(
        policy=STALL, kind="set_guided_attention", actions=({"kind": "set_guided_attention", "weight": new},),
        evidence={"diagonality": latest.diagonality, "focus": latest.focus, "guided_attention_weight": 0.0,
                  "new_guided_attention_weight": new, "stage": "start"},
        aim="diagonality", severity="medium", step=latest.step,
        reason=(f"Attention is not aligned after warm-up (diagonality {latest.diagonality:.3f}, focus "
                f"{latest.focus:.3f}) and guided attention is off; Tacotron2 from scratch can take thousands of "
                f"steps to align without it. Turning it on at weight {three_digits(new)} (it is decayed to 0 once "
                f"aligned)."))]


def attention_decay(phase: Phase, window: Window, memory: Memory, cfg: PolicyConfig) -> list[Proposal]:
    """Once aligned, halve guided attention per evaluation while diagonality holds."""
    c = cfg.attention_decay
    ga = window.guided_attention_weight
    if not ga or not window.evals:
        return []
    latest = window.evals[-1]
    if not fresh([latest.step], memory, DECAY):
        return []
    best = best_diagonality(window.evals, memory.best_stable_diagonality)
    best = max(best, latest.diagonality) if best is not None else latest.diagonality

    def holds(e) -> bool:
        return eval_aligned(e, cfg.aligned) and e.diagonality >= best - c.hold_tolerance

    if not holds(latest):
        return []
    if c.min_speech_score and latest.speech_score is not None and latest.speech_score < c.min_speech_score:
        return []  # not speaking yet: keep guiding
    collapsed_at = memory.last(COLLAPSE)
    if collapsed_at is not None:
        since_collapse = [e for e in window.evals if e.step > collapsed_at]
        if len(since_collapse) < c.after_collapse_evals or not all(holds(e) for e in since_collapse):
            return []
    new = ga * c.factor
    if new < c.zero_below:
        new = 0.0
    return [Proposal(
        policy=DECAY, kind="set_guided_attention", actions=({"kind": "set_guided_attention", "weight": new},),
        evidence={"diagonality": latest.diagonality, "best_diagonality": best, "focus": latest.focus,
                  "hold_tolerance": c.hold_tolerance, "guided_attention_weight": ga,
                  "new_guided_attention_weight": new},
        aim="diagonality", severity="low", step=latest.step,
        reason=(f"Attention is aligned and holding (diagonality {latest.diagonality:.3f}, best {best:.3f}, "
                f"focus {latest.focus:.3f}){_speaking(latest)}; guided-attention weight {three_digits(ga)} -> "
                f"{three_digits(new)}."))]


def _speaking(e) -> str:
    return f" and {e.speech.spoken} of {e.speech.utterances} utterances are spoken" if e.speech else ""


def attention_collapse(phase: Phase, window: Window, memory: Memory, cfg: PolicyConfig) -> list[Proposal]:
    """Restore guided attention at once; roll back if the collapse persists."""
    c = cfg.attention_collapse
    if phase != Phase.STABLE and memory.best_stable_diagonality is None:
        return []  # outside stable only for a run that was stable before (and fell back to aligning)
    best = best_diagonality(window.evals, memory.best_stable_diagonality)
    found = find_collapse(window.evals, best, c)
    if found is None:
        return []
    since = memory.last(COLLAPSE)
    ga = window.guided_attention_weight or 0.0
    restore = max(ga, c.restore_guided_attention_weight)
    evidence: dict[str, float | int | str] = {
        "diagonality": found.latest, "best_diagonality": found.best, "drop": found.best - found.latest,
        "max_drop": c.drop, "collapsed_evals": found.n_evals, "first_collapsed_step": found.first_step,
        "guided_attention_weight": ga,
    }
    seen = (f"Diagonality fell to {found.latest:.3f} from a stable best of {found.best:.3f} "
            f"for {found.n_evals} evaluation(s) since step {found.first_step}")
    if found.n_evals >= c.persist_evals:
        persisted_at = window.evals[len(window.evals) - found.n_evals + c.persist_evals - 1].step
        if since is not None and since >= persisted_at:
            return []  # the rollback for this collapse was already proposed
        target = last_good_checkpoint(window.checkpoints, before_step=found.first_step,
                                      min_diagonality=found.best - c.drop)
        if target is None:
            return [Proposal(policy=COLLAPSE, kind="ask_human", evidence=evidence, aim="diagonality",
                             severity="high", step=found.last_step,
                             reason=f"{seen}; no checkpoint with good attention predates it to roll back to.")]
        evidence.update(checkpoint_step=target.step, checkpoint_diagonality=target.diagonality or 0.0,
                        skip_batches=cfg.rollback.skip_batches, new_guided_attention_weight=restore)
        # The rollback restores the checkpoint's loss weights; set guided attention after it.
        return [Proposal(
            policy=COLLAPSE, kind="rollback", evidence=evidence, aim="diagonality", severity="high",
            step=found.last_step,
            actions=(rollback_action(target, cfg.rollback.skip_batches),
                     {"kind": "set_guided_attention", "weight": restore}),
            reason=(f"{seen}; rolling back to the checkpoint of step {target.step} (diagonality "
                    f"{target.diagonality:.3f}) with guided-attention weight {three_digits(restore)}."))]
    if (since is not None and since >= found.first_step) or ga >= restore:
        return []  # already answered this collapse, or nothing to restore
    evidence["new_guided_attention_weight"] = restore
    return [Proposal(policy=COLLAPSE, kind="set_guided_attention",
                     actions=({"kind": "set_guided_attention", "weight": restore},), evidence=evidence,
                     aim="diagonality", severity="high", step=found.last_step,
                     reason=(f"{seen}; restoring the guided-attention weight from {three_digits(ga)} to "
                             f"{three_digits(restore)}."))]
