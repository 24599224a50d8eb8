"""Per-utterance verdicts and the run-level speech score.

An utterance is **spoken** when all three hold:

1. it *stopped in range*: the gate fired at no less than ``premature_ratio`` and no
   more than ``runaway_ratio`` times the true length;
2. its inference attention *read the text* to the end without skips, repeats or
   getting stuck (:mod:`trainer.speech.attention`);
3. it sounds like its sentence: its MCD-DTW to its recording is under
   ``max_mcd_dtw`` dB (:mod:`trainer.speech.mcd`), *and* under ``max_mcd_contrast``
   times its mean MCD-DTW to the other recordings of the set.

Each check fails a different fooling: a gate that fires at step 1 fails (1); a
model that babbles for the right length fails (2); attention that runs across the
text while the mel is noise or a memorised other sentence fails (3). The contrast
in (3) is there because an absolute distance alone can be fooled: an early
Tacotron2 that runs on past its text (tiny-cpu at step 100: 3.1-4.3 dB) is closer to
every recording than two different espeak-ng sentences are to each other (4.7-6.6 dB),
because DTW picks whichever of its many smooth frames fit best; what tells speech
from babble is being much closer to one's own sentence than to the others. An utterance
without a recording (a probe sentence nobody recorded) is judged on (1), against the
length its text should have, and (2), and is left out of the score.

The **speech score** is the share of utterances with a recording that are spoken.
"""

from __future__ import annotations

import math
import statistics
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from trainer.config import SpeechEvalConfig
from trainer.control import SpeechSummary
from trainer.speech.attention import AttentionLimits, attention_health
from trainer.speech.mcd import mcd_dtw

Stop = Literal["stopped", "premature", "runaway"]


class UtteranceSpeech(BaseModel):
    """The verdict on one free-running utterance, with the numbers behind it."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    name: str
    kind: Literal["validation", "probe"]
    text: str
    frames: int  # generated mel frames (to the stop, or to the cap)
    expected_frames: int  # the recording's, or estimated from the text for a probe without one
    has_reference: bool
    duration_ratio: float
    gate_fired: bool
    stop: Stop
    coverage: float
    monotonic: float
    reached_end: bool
    # Read the text to its end without skips or repeats (holding on a token allowed): a
    # runaway that did so is the gate's trouble, not the attention's.
    read_through: bool
    max_skip: int
    max_repeat: int
    longest_hold: int
    focus: float
    read: bool
    attention_problems: list[str]
    mcd_dtw: float | None
    # MCD-DTW to its recording / mean MCD-DTW to the set's other recordings (< 1: closer to its own)
    mcd_contrast: float | None
    spoken: bool | None  # None: no recording to judge the sound against

    def describe(self) -> str:
        """One line for a person."""
        parts = [f"{self.duration_ratio:.2f}x length", self.stop]
        parts.append("read to the end" if self.read else "; ".join(self.attention_problems))
        if self.mcd_dtw is not None:
            contrast = f" ({self.mcd_contrast:.2f} of the others')" if self.mcd_contrast is not None else ""
            parts.append(f"MCD-DTW {self.mcd_dtw:.2f} dB{contrast}")
        verdict = {True: "spoken", False: "not spoken", None: "no recording"}[self.spoken]
        return f"{verdict}: {', '.join(parts)}"


def attention_limits(cfg: SpeechEvalConfig, frames_per_step: int, frames_per_second: float) -> AttentionLimits:
    hold_steps = max(1, math.ceil(cfg.max_hold_seconds * frames_per_second / frames_per_step))
    return AttentionLimits(end_tokens=cfg.end_tokens, min_coverage=cfg.min_coverage,
                           min_monotonic=cfg.min_monotonic, max_skip_tokens=cfg.max_skip_tokens,
                           max_repeat_tokens=cfg.max_repeat_tokens, max_hold_steps=hold_steps)


def stop_verdict(frames: int, expected_frames: int, gate_fired: bool, cfg: SpeechEvalConfig) -> Stop:
    if not gate_fired or frames > cfg.runaway_ratio * expected_frames:
        return "runaway"
    if frames < cfg.premature_ratio * expected_frames:
        return "premature"
    return "stopped"


def judge(*, name: str, kind: Literal["validation", "probe"], text: str, mel: np.ndarray, alignment: np.ndarray,
          gate_fired: bool, expected_frames: int, reference: np.ndarray | None, cfg: SpeechEvalConfig,
          limits: AttentionLimits, other_references: Sequence[np.ndarray] = ()) -> UtteranceSpeech:
    """Judge one utterance.

    ``mel``: the generated log-mel ``[n_mels, frames]`` up to the stop (or the cap);
    ``alignment``: its inference alignment ``[decoder steps, real tokens]``;
    ``reference``: the recording's log-mel, or None; ``other_references``: the
    recordings of the set's other sentences (for the contrast).
    """
    frames = int(mel.shape[1])
    expected = max(int(expected_frames), 1)
    health = attention_health(alignment, limits.end_tokens)
    problems = health.problems(limits)
    stop = stop_verdict(frames, expected, gate_fired, cfg)
    distance = contrast = None
    if reference is not None:
        # A runaway is judged on what it said within the runaway limit: past it, DTW
        # would pick whichever of many babbled frames fits best.
        heard = mel[:, :max(1, math.ceil(cfg.runaway_ratio * expected))]
        distance = mcd_dtw(heard, reference)
        if other_references:
            others = statistics.fmean(mcd_dtw(heard, other) for other in other_references)
            contrast = distance / others if others > 0 else math.nan
    spoken = None
    if reference is not None:
        sounds_right = (distance is not None and math.isfinite(distance) and distance < cfg.max_mcd_dtw
                        and (contrast is None or contrast < cfg.max_mcd_contrast))
        spoken = bool(stop == "stopped" and not problems and sounds_right)
    return UtteranceSpeech(
        name=name, kind=kind, text=text, frames=frames, expected_frames=expected, has_reference=reference is not None,
        duration_ratio=frames / expected, gate_fired=gate_fired, stop=stop, coverage=health.coverage,
        monotonic=health.monotonic, reached_end=health.reached_end,
        read_through=not health.problems(limits, hold=False), max_skip=health.max_skip,
        max_repeat=health.max_repeat, longest_hold=health.longest_hold, focus=health.focus, read=not problems,
        attention_problems=problems, mcd_dtw=distance, mcd_contrast=contrast, spoken=spoken)


def summarize(utterances: Sequence[UtteranceSpeech], seconds: float) -> SpeechSummary:
    judged = [u for u in utterances if u.has_reference]
    spoken = sum(1 for u in judged if u.spoken)
    return SpeechSummary(
        synthesized=len(utterances), utterances=len(judged), spoken=spoken,
        score=spoken / len(judged) if judged else None,
        # Non-finite weights give a NaN distance, and the mean says so.
        mcd_dtw=statistics.fmean(u.mcd_dtw if u.mcd_dtw is not None else math.nan for u in judged) if judged else None,
        stopped=sum(u.stop == "stopped" for u in utterances), premature=sum(u.stop == "premature" for u in utterances),
        runaway=sum(u.stop == "runaway" for u in utterances),
        gate_missed_end=sum(u.stop == "runaway" and u.read_through for u in utterances),
        read=sum(u.read for u in utterances),
        gate_fired=sum(u.gate_fired for u in utterances),
        duration_ratio=statistics.median(u.duration_ratio for u in utterances) if utterances else math.nan,
        seconds=seconds)


def speech_rank(summary: SpeechSummary | None) -> float | None:
    """Lower is better; None when there is nothing to rank (no recordings to compare with).

    Lexicographic, packed into one float: first the share of utterances spoken, then
    the share whose inference attention read the text to the end, then the mean
    MCD-DTW. Until something is spoken, reading the text is worth more than sounding
    close on average: a model that babbles in the voice's timbre can have a lower
    MCD-DTW than one that reads the words in a rough voice.
    """
    if summary is None or summary.score is None or summary.synthesized == 0:
        return None
    mcd = summary.mcd_dtw if summary.mcd_dtw is not None and math.isfinite(summary.mcd_dtw) else 99.0
    unread = 1.0 - summary.read / summary.synthesized
    return (1.0 - summary.score) * 10_000 + round(unread, 4) * 100 + min(mcd, 99.0)
