"""The composite TTS objective (lower is better).

    objective = mel + w1 * (1 - diagonality) + w2 * (1 - gate accuracy) + w3 * (1 - probe stop rate)

* ``mel``: the validation mel loss (``objective.mel_metric``; postnet output by
  default). Not ``val_loss``, which adds the gate BCE and guided-attention terms whose
  weights are under search: a trial could lower ``val_loss`` just by turning them down.
* ``1 - diagonality``: attention mass off the diagonal band; a model whose attention
  does not follow the text cannot be used, however low its mel loss (teacher forcing
  hides that).
* ``1 - gate accuracy``: the gate's balanced accuracy; a gate that never fires scores
  0.5 here, not 0.99.
* ``1 - probe stop rate``: the share of free-running probe sentences whose inference
  never stopped by itself, i.e. ran to ``max_decoder_steps``.

With ``multi_objective`` the study gets two values instead: ``(mel, alignment)`` where
``alignment`` is the weighted sum of the other three terms, and Optuna keeps the
Pareto front of the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from agent.tuner.config import ObjectiveConfig


@dataclass(frozen=True)
class Score:
    mel: float
    diagonality_term: float  # w1 * (1 - diagonality)
    gate_term: float  # w2 * (1 - gate accuracy)
    stop_term: float  # w3 * (share of probes that fail to stop)

    @property
    def alignment(self) -> float:
        return self.diagonality_term + self.gate_term + self.stop_term

    @property
    def total(self) -> float:
        return self.mel + self.alignment

    @property
    def finite(self) -> bool:
        return math.isfinite(self.total)

    def values(self, cfg: ObjectiveConfig) -> float | tuple[float, float]:
        """What the study is told: one number, or (mel, alignment) for multi-objective."""
        return (self.mel, self.alignment) if cfg.multi_objective else self.total

    def as_dict(self) -> dict[str, float]:
        return {"objective": self.total, "mel": self.mel, "alignment": self.alignment,
                "diagonality_term": self.diagonality_term, "gate_term": self.gate_term, "stop_term": self.stop_term}


def _get(record: Any, key: str) -> float:
    value = record[key] if isinstance(record, Mapping) else getattr(record, key)
    return float("nan") if value is None else float(value)


def score(record: Any, cfg: ObjectiveConfig) -> Score:
    """The objective of one evaluation (an ``EvalRecord`` or a dict with its fields)."""
    return Score(
        mel=_get(record, cfg.mel_metric),
        diagonality_term=cfg.diagonality_weight * (1.0 - _get(record, "diagonality")),
        gate_term=cfg.gate_weight * (1.0 - _get(record, "gate_accuracy")),
        stop_term=cfg.stop_weight * (1.0 - _get(record, "probe_stop_rate")),
    )
