"""The TTS objective of a trial (lower is better), from what the model says free-running.

With free-running evaluation (``eval.speech``, on by default)::

    objective = MCD-DTW + w_speech (1 - speech score) + w_read (1 - read share) + w_stop (1 - stop share)

* ``MCD-DTW``: mean mel-cepstral distortion (dB) between the synthesized validation
  utterances and their recordings (trainer/speech/mcd.py);
* ``1 - speech score``: the share of those utterances *not* spoken (stopped in range,
  attention read the text, sounds like its own sentence);
* ``1 - read share``: the share whose inference attention did not read the text to its
  end; it separates trials before any utterance is spoken, when the score is 0 for all;
* ``1 - stop share``: the share whose gate did not fire within the allowed range.

Without free-running figures (``eval.speech.enabled: false``) the teacher-forced
stand-in::

    objective = mel loss + w1 (1 - diagonality) + w2 (1 - gate accuracy)

where the mel term is the validation mel loss *without* the gate and guided-attention
terms (those are weighted by hyperparameters under search, so ``val_loss`` would
reward turning them down).

With ``multi_objective`` the study gets two values instead: ``(sound, penalty)``, the
first term and the weighted sum of the others, and Optuna keeps their Pareto front.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from agent.tuner.config import ObjectiveConfig


@dataclass(frozen=True)
class Score:
    sound: float  # MCD-DTW in dB, or the validation mel loss without free-running figures
    terms: dict[str, float] = field(default_factory=dict)  # the weighted penalty terms
    free_running: bool = True

    @property
    def penalty(self) -> float:
        return sum(self.terms.values())

    @property
    def total(self) -> float:
        return self.sound + self.penalty

    @property
    def finite(self) -> bool:
        return math.isfinite(self.total)

    def values(self, cfg: ObjectiveConfig) -> float | tuple[float, float]:
        """What the study is told: one number, or (sound, penalty) for multi-objective."""
        return (self.sound, self.penalty) if cfg.multi_objective else self.total

    def as_dict(self) -> dict[str, float]:
        name = "mcd_dtw" if self.free_running else "mel"
        return {"objective": self.total, name: self.sound, "penalty": self.penalty, **self.terms}


def _get(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def score(record: Any, cfg: ObjectiveConfig) -> Score:
    """The objective of one evaluation (an ``EvalRecord`` or a dict with its fields)."""
    speech = _get(record, "speech")
    if speech is not None and _get(speech, "score") is not None:
        n = _num(_get(speech, "synthesized"))
        return Score(sound=_num(_get(speech, "mcd_dtw")), terms={
            "speech_term": cfg.speech_weight * (1.0 - _num(_get(speech, "score"))),
            "read_term": cfg.read_weight * (1.0 - _num(_get(speech, "read")) / n),
            "stop_term": cfg.stop_weight * (1.0 - _num(_get(speech, "stopped")) / n),
        })
    return Score(sound=_num(_get(record, cfg.mel_metric)), free_running=False, terms={
        "diagonality_term": cfg.diagonality_weight * (1.0 - _num(_get(record, "diagonality"))),
        "gate_term": cfg.gate_weight * (1.0 - _num(_get(record, "gate_accuracy"))),
    })
