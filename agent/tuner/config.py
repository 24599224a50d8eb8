"""The ``tuner:`` section of a run's YAML (validated here; the trainer carries it untouched).

Each part of the engine takes the slice it needs: the objective its weights, the
suggestion code the search space, the study its sampler and pruner, a round its budget.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from trainer.errors import UserError
from trainer.tunables import TUNABLES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ObjectiveConfig(_Section):
    """objective = MCD-DTW + w_speech (1 - speech score) + w_read (1 - read share) + w_stop (1 - stop share);
    without free-running figures: mel loss + w1 (1 - diagonality) + w2 (1 - gate accuracy).

    See agent/tuner/objective.py. An MCD-DTW difference of 1 dB is large (espeak-ng's
    same sentence at another rate is about 1.1 dB away, a different sentence 5.9 dB), so
    speaking one more of eight utterances (1/8 x 5 = 0.6) weighs like 0.6 dB.
    """

    speech_weight: float = Field(5.0, ge=0)
    read_weight: float = Field(2.0, ge=0)
    stop_weight: float = Field(1.0, ge=0)
    # The teacher-forced stand-in, for runs with eval.speech off. The postnet output
    # is the spectrogram a vocoder receives.
    mel_metric: Literal["val_mel_postnet_loss", "val_mel_loss"] = "val_mel_postnet_loss"
    diagonality_weight: float = Field(1.0, ge=0)  # w1
    gate_weight: float = Field(0.5, ge=0)  # w2
    # Two objectives instead of one sum: (MCD-DTW or mel loss, the weighted rest);
    # NSGA-II by default, no pruning (Optuna prunes single-objective studies only).
    multi_objective: bool = False


class Range(_Section):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> "Range":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scaled range needs low > 0")
        return self


def _default_range(name: str) -> Range | None:
    d = TUNABLES[name].search
    return None if d is None else Range(low=d.low, high=d.high, log=d.log)


# One optional range per tunable of trainer/tunables.py, its default range from there.
_SpaceFields = create_model(
    "_SpaceFields", __base__=_Section,
    **{name: (Range | None, Field(default_factory=partial(_default_range, name))) for name in TUNABLES},
)


class SearchSpace(_SpaceFields):  # type: ignore[misc, valid-type]
    """What a trial may change, each a range (``null`` leaves it out of the search).

    One field per tunable (trainer/tunables.py), named by its ``apply_hparams`` key;
    the registry gives its config key for studies from scratch and for the written-out
    best config, and its default range.
    """

    def ranges(self) -> dict[str, Range]:
        return {name: getattr(self, name) for name in type(self).model_fields if getattr(self, name) is not None}


class PrunerConfig(_Section):
    kind: Literal["median", "hyperband", "none"] = "median"
    # median: trials finished before any is pruned, and reports a trial makes before
    # it can be pruned (the first evaluation after a fork says little).
    startup_trials: int = Field(2, ge=0)
    warmup_reports: int = Field(1, ge=0)
    # hyperband: keep 1/reduction_factor of the trials at each rung.
    reduction_factor: int = Field(3, ge=2)


class RoundConfig(_Section):
    """One in-run tuning round (PBT-like: all trials fork from one checkpoint)."""

    trials: int = Field(6, ge=1)  # including the one with the current hyperparameters
    steps: int = Field(500, ge=1)  # each trial's step budget


class TunerConfig(_Section):
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    space: SearchSpace = Field(default_factory=SearchSpace)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    # None: TPE, or NSGA-II when objective.multi_objective.
    sampler: Literal["tpe", "random", "nsga2"] | None = None
    seed: int | None = None
    # TPE samples at random until this many trials have finished (Optuna's default, 10,
    # would make TPE random search for every round of a few trials).
    tpe_startup_trials: int = Field(4, ge=1)
    # NSGA-II's generation size (Optuna's default of 50 suits long studies only).
    nsga2_population_size: int = Field(8, ge=2)
    # Steps between a trial's evaluations; each reports the objective to the pruner.
    report_every: int = Field(100, ge=1)
    # One trial slot per entry, the entry becoming that trial's CUDA_VISIBLE_DEVICES
    # ("0", "1", ...): trials run side by side. Empty: one slot, the environment as is.
    devices: list[str] = Field(default_factory=list)
    # A trial running longer than this is killed and marked failed.
    trial_timeout_seconds: float = Field(6 * 3600.0, gt=0)
    round: RoundConfig = Field(default_factory=RoundConfig)
    # Offline studies: Optuna storage URL (None: a journal file in the run folder) and
    # study name (None: the run folder's name). ``smart-tuner tune --storage`` overrides.
    storage: str | None = None
    study_name: str | None = None
    # Database storages (an SQLAlchemy URL): every running trial beats this often; a trial
    # whose worker stopped beating for heartbeat_grace_seconds (killed, machine lost) is
    # failed by the next worker that asks for a trial, and re-queued with the same values
    # up to max_retries times (Optuna's heartbeat and RetryFailedTrialCallback).
    # 0 turns the heartbeat off. Journal files have no heartbeat (see fail_stale_trials).
    heartbeat_seconds: int = Field(60, ge=0)
    heartbeat_grace_seconds: int | None = Field(None, gt=0)  # None: 3 x heartbeat_seconds
    max_retries: int = Field(2, ge=0)

    @property
    def sampler_kind(self) -> str:
        return self.sampler or ("nsga2" if self.objective.multi_objective else "tpe")

    @property
    def pruner_kind(self) -> str:
        # Optuna's Trial.report / should_prune are single-objective only.
        return "none" if self.objective.multi_objective else self.pruner.kind

    @property
    def slots(self) -> list[str | None]:
        return list(self.devices) or [None]


def tuner_config(raw: dict[str, Any] | None) -> TunerConfig:
    """Validate a run config's ``tuner`` section; a UserError names each bad key."""
    try:
        return TunerConfig.model_validate(raw or {})
    except ValidationError as exc:
        problems = "\n  ".join(f"tuner.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise UserError(f"invalid tuner section in the config:\n  {problems}") from None


def tuning_dir(run_dir: str | Path) -> Path:
    """Where a run's tuning rounds keep their trials and Optuna storage."""
    return Path(run_dir) / "tuning"


def study_dir(run_dir: str | Path) -> Path:
    """Where an offline study keeps its trials, storage and best config."""
    return Path(run_dir) / "study"
