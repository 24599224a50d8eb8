"""One in-run tuning round (PBT-like, one checkpoint at a time).

Every trial forks from the same base checkpoint of the main run: it resumes it in its
own folder (``RUN/tuning/round-R/trial-NNN``), applies its sampled values with the
trainer's ``apply_hparams`` command and trains ``round.steps`` steps, reporting the
objective every ``report_every`` steps. One trial always runs the current values
unchanged (the baseline). The winner is the completed trial with the best objective;
its final checkpoint is what the main run continues from, so its steps are kept.

The round's Optuna study lives in ``RUN/tuning/optuna.journal`` (one study per round,
named ``RUNNAME-round-R``): trials of different rounds start from different weights,
so their objectives are not comparable.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from agent.tuner.config import TunerConfig, tuning_dir
from agent.tuner.study import (
    RoundSummary,
    TrialHooks,
    best,
    enqueue_baseline,
    open_storage,
    open_study,
    pareto_front,
    run_trials,
)
from agent.tuner.trial_child import TrialSpec

NO_SAVES = 10**9  # periodic checkpoints out of reach: a trial saves its final one only


def trial_config(main: dict[str, Any], folder: Path, cfg: TunerConfig) -> dict[str, Any]:
    """The main run's config for a trial: its own folder, evaluations every report_every
    steps, no periodic checkpoints, no MLflow of its own (the tuner logs the trial as a
    child run)."""
    import copy

    raw = copy.deepcopy(main)
    raw["run_dir"] = str(folder)
    raw.setdefault("eval", {})["every_steps"] = cfg.report_every
    raw.setdefault("checkpoint", {}).update({"every_steps": NO_SAVES, "keep_last": 1, "keep_best": False})
    raw.setdefault("tracking", {})["enabled"] = False
    return raw


def study_name(run_dir: str | Path, round_id: int) -> str:
    return f"{Path(run_dir).resolve().name}-round-{round_id}"


def run_round(main_config: dict[str, Any], cfg: TunerConfig, base_checkpoint: str | Path, current: dict[str, float],
              round_id: int, hooks: TrialHooks | None = None, stop: threading.Event | None = None,
              trials: int | None = None, steps: int | None = None) -> RoundSummary:
    """Run the round's trials and pick the winner (``main_config``: the main run's
    ``RunConfig.model_dump(mode="json")``; ``current``: its hyperparameters now)."""
    run_dir = Path(main_config["run_dir"])
    n_trials = trials or cfg.round.trials
    n_steps = steps or cfg.round.steps
    folder = tuning_dir(run_dir) / f"round-{round_id:04d}"
    storage = open_storage(None, tuning_dir(run_dir) / "optuna.journal")
    study, created = open_study(storage, study_name(run_dir, round_id), cfg, n_steps)
    if created:  # a round resumed after a daemon restart has its baseline already
        enqueue_baseline(study, current, cfg)
    base = str(Path(base_checkpoint).resolve())

    def build(number: int, params: dict[str, float], baseline: bool) -> tuple[TrialSpec, Path]:
        trial_dir = folder / f"trial-{number:03d}"
        # The baseline applies nothing: it runs with the main run's values exactly as they are.
        spec = TrialSpec(config=trial_config(main_config, trial_dir, cfg), base_checkpoint=base,
                         overrides={} if baseline else params, steps=n_steps)
        return spec, trial_dir

    results = run_trials(study, n_trials, cfg, build, hooks, stop)
    return RoundSummary(results=results, winner=best(results),
                        baseline=next((r for r in results if r.baseline), None), front=pareto_front(results))
