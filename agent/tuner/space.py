"""The search space: Optuna suggestions, and where each hyperparameter lives.

A hyperparameter has one name everywhere: its entry in trainer/tunables.py, which is
the trainer's ``apply_hparams`` key (``learning_rate``, ``guided_attention_weight``, ...).
A trial forked from a checkpoint applies its values as that command; a trial from
scratch and the written-out best config set them as config keys (``CONFIG_KEYS``).
"""

from __future__ import annotations

from typing import Any, Mapping

from agent.tuner.config import Range, SearchSpace
from trainer import tunables
from trainer.tunables import TUNABLES

CONFIG_KEYS: dict[str, str] = {name: t.config_key for name, t in TUNABLES.items()}


def suggest(trial: Any, space: SearchSpace) -> dict[str, float]:
    """Ask an Optuna trial for a value of every hyperparameter in the space."""
    return {name: trial.suggest_float(name, r.low, r.high, log=r.log) for name, r in space.ranges().items()}


def clamp(values: Mapping[str, float], space: SearchSpace) -> dict[str, float]:
    """Values pulled into the space's ranges (an enqueued trial whose value is outside
    its distribution would be re-sampled by Optuna instead)."""
    out = {}
    for name, r in space.ranges().items():
        if name in values:
            out[name] = min(max(float(values[name]), r.low), r.high)
    return out


def config_values(config: Any) -> dict[str, float]:
    """The hyperparameters as a run config sets them (a ``RunConfig``)."""
    return tunables.config_values(config)


def as_overrides(values: Mapping[str, float]) -> dict[str, float]:
    """``{name: value}`` as dotted config overrides (``{"optim.learning_rate": ...}``)."""
    return {CONFIG_KEYS[name]: float(v) for name, v in values.items()}


def apply_to_config(raw: dict[str, Any], values: Mapping[str, float]) -> dict[str, Any]:
    """A copy of a config dict (``RunConfig.model_dump(mode="json")``) with the values set."""
    import copy

    out = copy.deepcopy(raw)
    for dotted, value in as_overrides(values).items():
        section, key = dotted.split(".")
        out.setdefault(section, {})[key] = value
    return out


def describe(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in values.items())


__all__ = ["CONFIG_KEYS", "Range", "apply_to_config", "as_overrides", "clamp", "config_values", "describe", "suggest"]
