"""Pure detectors over telemetry.

The ``find_*`` functions return what they found (with the numbers) or None; the
rules turn findings into proposals. The phase signals at the bottom (``is_*``,
``warmup_done``) are what the supervisor's state machine asks to choose transitions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median
from typing import Literal, Sequence

from policies.config import (
    AlignedConfig,
    AlignmentStallConfig,
    AttentionCollapseConfig,
    GateConfig,
    GradRunawayConfig,
    LossSpikeConfig,
    OverfitConfig,
    PlateauConfig,
    PolicyConfig,
)
from policies.types import Window
from trainer.control import EvalRecord, StepTelemetry


def step_is_finite(s: StepTelemetry) -> bool:
    return s.finite and math.isfinite(s.loss) and math.isfinite(s.grad_norm)


def spike_metric(s: StepTelemetry) -> float:
    """The training loss without the guided-attention term: the supervisor changes that
    term's weight itself (x2 can add more than the rest of the loss early on), and a
    change it made must not look like a spike."""
    return s.loss - s.guided_attention_weight * s.guided_attention_loss


# -- non-finite -------------------------------------------------------------------------
@dataclass(frozen=True)
class NonFinite:
    first_step: int       # the first bad record (step, evaluation or checkpoint)
    last_step: int        # the newest bad record
    bad_steps: int        # non-finite step records among the fresh ones
    bad_steps_total: int  # non-finite step records in the whole window
    weights_bad: bool     # an evaluation or checkpoint says the weights themselves are non-finite


def find_non_finite(window: Window, since: int | None = None) -> NonFinite | None:
    """Non-finite step records, evaluations or checkpoints newer than ``since``."""
    def fresh(step: int) -> bool:
        return since is None or step > since

    steps = [s.step for s in window.steps if not step_is_finite(s)]
    fresh_steps = [s for s in steps if fresh(s)]
    evals = [e.step for e in window.evals if fresh(e.step) and not math.isfinite(e.val_loss)]
    ckpts = [c.step for c in window.checkpoints if fresh(c.step) and not c.finite]
    found = fresh_steps + evals + ckpts
    if not found:
        return None
    return NonFinite(first_step=min(found), last_step=max(found), bad_steps=len(fresh_steps),
                     bad_steps_total=len(steps), weights_bad=bool(evals or ckpts))


# -- loss spike -------------------------------------------------------------------------
@dataclass(frozen=True)
class Spike:
    first_step: int   # first spiking step (the trouble began here)
    last_step: int    # newest step (the spike lasts until now)
    n_steps: int      # spiking steps in a row
    baseline: float   # median loss before the spike
    loss: float       # newest loss
    ratio: float      # smallest loss / baseline over the spiking steps


def find_spike(steps: Sequence[StepTelemetry], cfg: LossSpikeConfig) -> Spike | None:
    """A run of at least ``patience`` spiking finite steps that lasts until now."""
    # Only the tail matters: a spike older than a few baselines was answered long ago.
    tail = steps[-(4 * cfg.baseline_steps + cfg.patience):]
    recs = [s for s in tail if step_is_finite(s) and math.isfinite(spike_metric(s))]
    vals = [spike_metric(s) for s in recs]

    def baseline(start: int) -> float | None:
        base = vals[max(0, start - cfg.baseline_steps):start]
        return median(base) if len(base) >= cfg.min_baseline_steps else None

    start = len(vals) - cfg.patience
    if start < 0:
        return None
    base = baseline(start)
    if base is None or base <= 0 or not all(v > cfg.ratio * base for v in vals[start:]):
        return None
    # Walk back to where the spike began.
    while start > 0:
        b = baseline(start - 1)
        if b is None or b <= 0 or vals[start - 1] <= cfg.ratio * b:
            break
        start -= 1
    base = baseline(start) or base
    return Spike(first_step=recs[start].step, last_step=recs[-1].step, n_steps=len(vals) - start, baseline=base,
                 loss=vals[-1], ratio=min(vals[start:]) / base)


# -- gradient norm running away ---------------------------------------------------------
@dataclass(frozen=True)
class Runaway:
    first_step: int   # oldest step of the recent span
    last_step: int
    recent: float     # median grad norm of the recent span
    baseline: float   # median grad norm before it
    clip: float       # the clip threshold in force


def find_grad_runaway(steps: Sequence[StepTelemetry], cfg: GradRunawayConfig) -> Runaway | None:
    # The tail with room for some non-finite records among it.
    recs = [s for s in steps[-2 * (cfg.recent_steps + cfg.baseline_steps):] if step_is_finite(s)]
    if len(recs) < cfg.recent_steps + cfg.min_baseline_steps:
        return None
    recent = recs[-cfg.recent_steps:]
    base_recs = recs[-cfg.recent_steps - cfg.baseline_steps:-cfg.recent_steps]
    r = median(s.grad_norm for s in recent)
    b = median(s.grad_norm for s in base_recs)
    clip = recent[-1].grad_clip
    if b <= 0 or r <= cfg.ratio * b or r <= clip:
        return None
    return Runaway(first_step=recent[0].step, last_step=recent[-1].step, recent=r, baseline=b, clip=clip)


# -- alignment --------------------------------------------------------------------------
def read_share(e: EvalRecord) -> float | None:
    """Share of the free-running utterances whose inference attention read the text to
    its end (None: the evaluation had no free-running part)."""
    s = e.speech
    return s.read / s.synthesized if s is not None and s.synthesized else None


def eval_aligned(e: EvalRecord, cfg: AlignedConfig) -> bool:
    """Teacher-forced attention on the diagonal and sharp, *and* (when the evaluation
    synthesized free-running) the inference attention reading the text: teacher forcing
    can show a clean diagonal while inference skips half the words."""
    if not (e.diagonality >= cfg.diagonality and e.focus >= cfg.focus):
        return False
    read = read_share(e)
    return read is None or read >= cfg.min_read


@dataclass(frozen=True)
class Stall:
    first_step: int   # oldest of the judged evaluations
    last_step: int
    before: float     # diagonality of the evaluation before them
    best: float       # best diagonality among them
    latest: float
    n_evals: int
    focus_before: float = math.nan
    focus_best: float = math.nan
    read_before: float | None = None  # free-running read share, when measured
    read_best: float | None = None

    @property
    def gain(self) -> float:
        return self.best - self.before

    @property
    def focus_gain(self) -> float:
        return self.focus_best - self.focus_before


def find_stall(evals: Sequence[EvalRecord], cfg: AlignmentStallConfig, on_diagonal: float = math.inf
               ) -> Stall | None:
    """Alignment makes no progress over the newest ``cfg.evals`` evaluations.

    Alignment has two halves: attention moves onto the diagonal (diagonality), then
    sharpens there (focus). Below ``on_diagonal`` (the aligned diagonality threshold)
    progress is judged on diagonality alone, since diffuse, unaligned attention also
    sharpens a little; once the best diagonality is on the diagonal, progress is judged
    on focus. (On tiny-cpu diagonality sat at 0.97 for 200 steps while focus climbed
    0.33 -> 0.52; judging diagonality there raised guided attention twice for nothing.)
    """
    if len(evals) < cfg.evals + 1:
        return None
    judged = evals[-cfg.evals:]
    before, focus_before = evals[-cfg.evals - 1].diagonality, evals[-cfg.evals - 1].focus
    best, focus_best = max(e.diagonality for e in judged), max(e.focus for e in judged)
    if not (math.isfinite(before) and math.isfinite(best)):
        return None
    if best >= on_diagonal:
        if (not math.isfinite(focus_best) or not math.isfinite(focus_before)
                or focus_best - focus_before >= cfg.min_gain):
            return None
    elif best - before >= cfg.min_gain:
        return None
    # More free-running utterances read to the end is progress too, whatever teacher
    # forcing shows.
    read_before = read_share(evals[-cfg.evals - 1])
    reads = [r for r in map(read_share, judged) if r is not None]
    read_best = max(reads) if reads else None
    if read_before is not None and read_best is not None and read_best - read_before >= cfg.min_gain:
        return None
    return Stall(first_step=judged[0].step, last_step=judged[-1].step, before=before, best=best,
                 latest=judged[-1].diagonality, n_evals=cfg.evals, focus_before=focus_before,
                 focus_best=focus_best, read_before=read_before, read_best=read_best)


def best_diagonality(evals: Sequence[EvalRecord], best_stable: float | None) -> float | None:
    """The stable best the supervisor remembers, else the best in the window."""
    if best_stable is not None:
        return best_stable
    seen = [e.diagonality for e in evals if math.isfinite(e.diagonality)]
    return max(seen) if seen else None


@dataclass(frozen=True)
class Collapse:
    first_step: int   # first collapsed evaluation
    last_step: int
    best: float
    latest: float
    n_evals: int      # collapsed evaluations in a row, ending with the newest


def find_collapse(evals: Sequence[EvalRecord], best: float | None, cfg: AttentionCollapseConfig) -> Collapse | None:
    if best is None:
        return None
    run: list[EvalRecord] = []
    for e in reversed(evals):
        # A NaN diagonality is a collapse too (not (x >= y) holds for NaN).
        if not (e.diagonality >= best - cfg.drop):
            run.append(e)
        else:
            break
    if not run:
        return None
    run.reverse()
    return Collapse(first_step=run[0].step, last_step=run[-1].step, best=best, latest=run[-1].diagonality,
                    n_evals=len(run))


# -- gate -------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateTrouble:
    """What the stop gate does wrong in free-running inference, seen at ``evals`` evaluations.

    ``never_stops``: the gate misses the end (fires past ``runaway_ratio`` x the true
    length, or never) although the inference attention reached the end of the text;
    utterances whose attention never got there are the alignment's trouble, not the
    gate's. ``stops_early``: it fires before ``premature_ratio`` x the true length.
    They need opposite answers: a higher positive weight makes the gate fire sooner, a
    lower one later. Without free-running figures (``eval.speech`` off), a low
    teacher-forced balanced accuracy counts as ``never_stops``, the likelier of the two.
    """

    kind: Literal["never_stops", "stops_early"]
    evals: tuple[EvalRecord, ...]
    share: float  # of the newest evaluation's synthesized utterances
    free_running: bool


def _gate_share(e: EvalRecord, kind: str) -> float | None:
    s = e.speech
    if s is None or not s.synthesized:
        return None
    return (s.gate_missed_end if kind == "never_stops" else s.premature) / s.synthesized


def find_gate_trouble(evals: Sequence[EvalRecord], cfg: GateConfig) -> GateTrouble | None:
    """The newest ``cfg.evals`` evaluations all show the same gate trouble."""
    if len(evals) < cfg.evals:
        return None
    judged = tuple(evals[-cfg.evals:])
    if all(e.speech is not None for e in judged):
        for kind in ("stops_early", "never_stops"):
            shares = [_gate_share(e, kind) for e in judged]
            if all(x is not None and x >= cfg.min_share for x in shares):
                return GateTrouble(kind=kind, evals=judged, share=shares[-1], free_running=True)
        return None
    if all(e.gate_accuracy < cfg.max_accuracy for e in judged):
        return GateTrouble(kind="never_stops", evals=judged, share=math.nan, free_running=False)
    return None


# -- validation loss --------------------------------------------------------------------
@dataclass(frozen=True)
class Overfit:
    first_step: int       # the evaluation the rise is measured from
    last_step: int
    val_from: float
    val_to: float
    train_from: float     # training loss (median) at the first and the last evaluation
    train_to: float
    n_evals: int          # rising evaluations
    metric: str = "val_loss"  # what rose: val_loss, or mcd_dtw with free-running figures


def train_loss_at(steps: Sequence[StepTelemetry], step: int, n: int, min_records: int) -> float | None:
    vals = [spike_metric(s) for s in steps if s.step <= step and step_is_finite(s)][-n:]
    return median(vals) if len(vals) >= min_records else None


def has_speech(e: EvalRecord) -> bool:
    return e.mcd_dtw is not None and e.speech_score is not None and e.speech is not None


def comparable_speech(e: EvalRecord) -> bool:
    """An evaluation whose MCD-DTW can be compared with another's: most of its utterances
    stopped in range. A runaway's MCD-DTW is not (DTW picks the best of many babbled
    frames: tiny-cpu's runaways at step 150 scored 4.5 dB, its first real sentences 5.9)."""
    return has_speech(e) and e.speech.synthesized > 0 and e.speech.stopped / e.speech.synthesized >= 0.5


def _speech_evals(evals: Sequence[EvalRecord]) -> bool:
    """Every evaluation has comparable free-running figures."""
    return bool(evals) and all(comparable_speech(e) for e in evals)


def find_overfit(steps: Sequence[StepTelemetry], evals: Sequence[EvalRecord], cfg: OverfitConfig) -> Overfit | None:
    """The held-out utterances get worse while the training loss falls.

    With free-running figures: MCD-DTW rose at each of the newest ``rising_evals``
    evaluations, by ``min_mcd_rise`` (relative) in all, and the speech score did not
    rise. Without: the teacher-forced validation loss rose (by ``min_rise``).
    """
    if len(evals) < cfg.rising_evals + 1:
        return None
    span = evals[-cfg.rising_evals - 1:]
    speech = _speech_evals(span)
    if not speech and any(has_speech(e) for e in span):
        return None  # free-running figures, but not comparable yet: judge nothing on teacher forcing
    vals = [e.mcd_dtw if speech else e.val_loss for e in span]
    if not all(math.isfinite(v) for v in vals) or vals[0] <= 0:
        return None
    min_rise = cfg.min_mcd_rise if speech else cfg.min_rise
    if not all(b > a for a, b in zip(vals, vals[1:])) or vals[-1] < vals[0] * (1 + min_rise):
        return None
    if speech and span[-1].speech_score > span[0].speech_score:
        return None  # more utterances spoken: not getting worse at speaking
    t0 = train_loss_at(steps, span[0].step, cfg.train_loss_steps, cfg.min_train_records)
    t1 = train_loss_at(steps, span[-1].step, cfg.train_loss_steps, cfg.min_train_records)
    if t0 is None or t1 is None or not t1 < t0:
        return None
    return Overfit(first_step=span[0].step, last_step=span[-1].step, val_from=vals[0], val_to=vals[-1],
                   train_from=t0, train_to=t1, n_evals=cfg.rising_evals,
                   metric="mcd_dtw" if speech else "val_loss")


@dataclass(frozen=True)
class Plateau:
    first_step: int       # oldest of the judged evaluations
    last_step: int
    best_before: float    # best of the metric before them (lower is better)
    best_recent: float    # best among them
    n_evals: int
    metric: str = "val_loss"  # or "mcd_dtw"
    score_before: float | None = None  # best speech score before / among them (with mcd_dtw)
    score_recent: float | None = None

    @property
    def improvement(self) -> float:
        return (self.best_before - self.best_recent) / self.best_before


def find_plateau(evals: Sequence[EvalRecord], cfg: PlateauConfig) -> Plateau | None:
    """No progress over the newest ``cfg.evals`` evaluations.

    With free-running figures: neither the speech score rose above its earlier best
    nor the best MCD-DTW improved by ``min_improvement``. Without: the teacher-forced
    validation loss did not improve by ``min_improvement``.
    """
    if len(evals) < cfg.evals + 1:
        return None
    judged = evals[-cfg.evals:]
    earlier = evals[:-cfg.evals]
    speech = any(has_speech(e) for e in judged)
    if speech:
        # Only evaluations whose MCD-DTW means something; too few of them: too early to tell.
        if not _speech_evals(judged):
            return None
        earlier = [e for e in earlier if comparable_speech(e)]

    def metric(e: EvalRecord) -> float:
        return e.mcd_dtw if speech else e.val_loss

    before = [metric(e) for e in earlier if math.isfinite(metric(e))]
    recent = [metric(e) for e in judged]
    if not before or not all(math.isfinite(v) for v in recent):
        return None
    p = Plateau(first_step=judged[0].step, last_step=judged[-1].step, best_before=min(before),
                best_recent=min(recent), n_evals=cfg.evals, metric="mcd_dtw" if speech else "val_loss")
    if speech:
        p = Plateau(**{**p.__dict__, "score_before": max(e.speech_score for e in earlier),
                       "score_recent": max(e.speech_score for e in judged)})
        if p.score_recent > p.score_before:
            return None
    if p.best_before <= 0 or p.improvement >= cfg.min_improvement:
        return None
    return p


# -- phase signals ----------------------------------------------------------------------
def warmup_done(step: int, cfg: PolicyConfig) -> bool:
    return step >= cfg.warmup_steps


def is_aligned(evals: Sequence[EvalRecord], cfg: PolicyConfig) -> bool:
    """The newest ``aligned.evals`` evaluations all pass diagonality and focus."""
    k = cfg.aligned.evals
    return len(evals) >= k and all(eval_aligned(e, cfg.aligned) for e in evals[-k:])


def val_loss_runaway(evals: Sequence[EvalRecord], cfg: PolicyConfig) -> bool:
    vals = [e.val_loss for e in evals]
    if len(vals) < 2:
        return False
    if not math.isfinite(vals[-1]):
        return True
    best = min((v for v in vals[:-1] if math.isfinite(v)), default=None)
    return best is not None and best > 0 and vals[-1] > cfg.diverging.val_loss_ratio * best


def is_diverging(window: Window, cfg: PolicyConfig) -> bool:
    """Non-finite loss, a loss spike, gradients running away, or validation loss running
    away, anywhere in the window (the supervisor's window starts after a rollback
    automatically: see ``policies.types.lineage``)."""
    nf = find_non_finite(window)
    if nf is not None and (nf.bad_steps_total >= cfg.non_finite.min_bad_steps or nf.weights_bad):
        return True
    return (find_spike(window.steps, cfg.loss_spike) is not None
            or find_grad_runaway(window.steps, cfg.grad_runaway) is not None
            or val_loss_runaway(window.evals, cfg))


def is_healthy(window: Window, cfg: PolicyConfig) -> bool:
    """Not diverging and the newest step was finite: a recovery's probation may pass."""
    latest = window.latest
    return latest is not None and step_is_finite(latest) and not is_diverging(window, cfg)


def is_collapsed(evals: Sequence[EvalRecord], best_stable_diagonality: float | None, cfg: PolicyConfig) -> bool:
    """The newest evaluation's diagonality lies more than ``attention_collapse.drop``
    below the best seen while stable."""
    best = best_diagonality(evals, best_stable_diagonality)
    return find_collapse(evals, best, cfg.attention_collapse) is not None


def is_plateau(evals: Sequence[EvalRecord], cfg: PolicyConfig) -> bool:
    return find_plateau(evals, cfg.plateau) is not None


def is_stalled(evals: Sequence[EvalRecord], cfg: PolicyConfig) -> bool:
    return find_stall(evals, cfg.alignment_stall, cfg.aligned.diagonality) is not None and not is_aligned(evals, cfg)
