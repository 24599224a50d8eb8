"""``smart-tuner tune``: a study from scratch (TPE and pruning by default).

Every trial trains the config from step 0 for ``--steps`` steps with its sampled values
set as config keys, in ``RUN/study/trials/trial-NNNN`` (``RUN`` = the config's
``run_dir``). The study is stored in ``RUN/study/optuna.journal`` (Optuna's journal
file) unless ``--storage`` (or ``SMART_TUNER_TUNER_STORAGE``, or ``tuner.storage``)
names another: a journal file path or an SQLAlchemy URL such as
``postgresql://user:password@host/db``, which lets several machines work one study (each
runs the same command with the same storage and ``--study-name``). A URL's password is
masked in everything printed or written (``trainer.redact``).
Running the command again resumes the study: numbering continues, earlier trials count.

When it ends it writes ``RUN/study/best-config.yaml``: the config with the best
trial's values, a full RunConfig that ``smart-tuner train --config`` accepts (its
``run_dir`` is ``RUN/best``). With ``objective.multi_objective`` it prints the Pareto
front and writes one config per front member to ``RUN/study/pareto/``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from agent.tuner.config import TunerConfig, study_dir
from agent.tuner.objective import Score
from agent.tuner.rounds import NO_SAVES
from agent.tuner.space import apply_to_config, config_values, describe
from agent.tuner.study import (
    TrialResult,
    dashboard_hint,
    enqueue_baseline,
    fail_stale_trials,
    open_storage,
    open_study,
    run_trials,
    uses_heartbeat,
)
from agent.tuner.trial_child import TrialSpec
from trainer.config import RunConfig, parse_config
from trainer.errors import UserError
from trainer.fsutil import atomic_write
from trainer.redact import mask_text, mask_urls


@dataclass
class StudyOutcome:
    study_name: str
    storage: str
    results: list[TrialResult]  # this invocation's trials
    numbers: list[int]  # every trial number in the study after this invocation
    best_params: dict[str, float] | None = None
    best_value: float | None = None
    best_number: int | None = None
    best_config: Path | None = None
    pareto: list[dict[str, Any]] = field(default_factory=list)


def trial_config(config: RunConfig, params: dict[str, float] | None, folder: Path, steps: int,
                 cfg: TunerConfig) -> dict[str, Any]:
    raw = config.model_dump(mode="json")
    if params:
        raw = apply_to_config(raw, params)
    raw["run_dir"] = str(folder)
    raw["train"]["max_steps"] = steps
    raw["eval"]["every_steps"] = cfg.report_every
    raw["checkpoint"].update(every_steps=NO_SAVES, keep_last=1, keep_best=False)
    raw["tracking"]["enabled"] = False
    return mask_urls(raw)  # written to the trial's spec.json


def best_config_yaml(config: RunConfig, params: dict[str, float], run_dir: Path) -> str:
    """The user's config with the values set: validated as a RunConfig, dumped as YAML."""
    raw = mask_urls(apply_to_config(config.model_dump(mode="json"), params))  # no URL passwords in files
    raw["run_dir"] = str(run_dir)
    text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    parse_config(text, "<best config>")  # the file must load as it is
    return text


class _ConsoleHooks:
    """A line per trial; MLflow child runs under the study's parent run."""

    def __init__(self, tracker: Any, parent: str | None, out: Callable[[str], None]) -> None:
        self.tracker, self.parent, self.out = tracker, parent, out

    def started(self, number: int, params: dict[str, float], baseline: bool, folder: Path) -> dict[str, Any]:
        self.out(f"trial {number}: {'the config as it is' if baseline else describe(params)}")
        run = self.tracker.start(f"trial {number}", params, self.parent,
                                 tags={"smart_tuner.trial": str(number), "smart_tuner.baseline": str(baseline)})
        return {"run": run}

    def forked(self, handle: dict[str, Any], pid: int, start: dict[str, Any]) -> None:
        pass

    def reported(self, handle: dict[str, Any], progress: int, score: Score) -> None:
        self.tracker.report(handle["run"], progress, score.as_dict())

    def finished(self, handle: dict[str, Any], result: TrialResult) -> None:
        value = f"objective {result.score.total:.4f}" if result.score is not None else "no objective"
        self.out(f"trial {result.number}: {result.state}, {value} ({result.detail.splitlines()[0]})")
        self.tracker.finish(handle["run"], result.state, result.detail)


def run_study(config: RunConfig, cfg: TunerConfig, *, trials: int, steps: int, storage: str | None = None,
              study_name: str | None = None, out: Callable[[str], None] = print) -> StudyOutcome:
    from optuna.trial import TrialState

    from agent.tuner.tracking import TrialTracker

    if trials < 1 or steps < 1:
        raise UserError("--trials and --steps must be at least 1")
    folder = study_dir(config.run_dir)
    url = storage or cfg.storage
    default_file = folder / "optuna.journal"
    name = study_name or cfg.study_name or Path(config.run_dir).resolve().name
    study, created = open_study(open_storage(url, default_file, cfg), name, cfg, steps)
    # A database with a heartbeat fails (and re-queues) dead workers' trials itself, for
    # every machine; without one, this machine's dead trials are failed here.
    stale = [] if uses_heartbeat(url, cfg) else fail_stale_trials(study)
    if stale:
        out(f"trials {stale} were left running by a process that is gone; marked failed")
    before = len(study.get_trials(deepcopy=False))
    shown = mask_text(str(url or default_file))  # the real URL goes to Optuna only
    out(f"study {name!r} in {shown}: {before} earlier trial(s); running {trials} more of {steps} steps "
        f"({cfg.sampler_kind} sampler, {cfg.pruner_kind} pruner) on {socket.gethostname()}")
    if created:
        enqueue_baseline(study, config_values(config), cfg)
    tracker = TrialTracker(config.tracking, config.run_dir, log=out)
    parent = tracker.parent_run(f"study {name}", name)

    def build(number: int, params: dict[str, float], baseline: bool) -> tuple[TrialSpec, Path]:
        trial_dir = folder / "trials" / f"trial-{number:04d}"
        return TrialSpec(config=trial_config(config, None if baseline else params, trial_dir, steps, cfg),
                         steps=steps), trial_dir

    results = run_trials(study, trials, cfg, build, _ConsoleHooks(tracker, parent, out))
    all_trials = study.get_trials(deepcopy=False)
    result = StudyOutcome(study_name=name, storage=shown, results=results,
                          numbers=[t.number for t in all_trials])
    done = [t for t in all_trials if t.state == TrialState.COMPLETE]
    if not done:
        out("no trial has completed yet; no best config written")
        return result
    if cfg.objective.multi_objective:
        front = study.best_trials
        pareto_dir = folder / "pareto"
        pareto_dir.mkdir(parents=True, exist_ok=True)
        out(f"Pareto front ({len(front)} trials): mel loss vs alignment penalty")
        for t in sorted(front, key=lambda t: t.values[0]):
            path = pareto_dir / f"trial-{t.number:04d}.yaml"
            values = {} if t.user_attrs.get("baseline") else _params(t)
            _write(path, best_config_yaml(config, values, Path(config.run_dir) / "best"))
            out(f"  trial {t.number}: mel {t.values[0]:.4f}, alignment {t.values[1]:.4f} -> {path}")
            result.pareto.append({"number": t.number, "values": list(t.values), "params": _params(t),
                                  "config": str(path)})
        chosen = min(front, key=lambda t: sum(t.values))  # the composite decides between front members
        value = sum(chosen.values)
    else:
        chosen = study.best_trial
        value = chosen.value
    # The baseline trial ran the config unchanged (its recorded params may be clamped).
    params = {} if chosen.user_attrs.get("baseline") else _params(chosen)
    result.best_params, result.best_value, result.best_number = params, value, chosen.number
    result.best_config = folder / "best-config.yaml"
    _write(result.best_config, best_config_yaml(config, result.best_params, Path(config.run_dir) / "best"))
    out(f"best: trial {chosen.number}, objective {value:.4f} ({describe(params) or 'the config as it is'})")
    out(f"wrote {result.best_config}: smart-tuner train --config {result.best_config}")
    out(f"browse the study: {mask_text(dashboard_hint(url, default_file))}  (pip install optuna-dashboard)")
    return result


def _params(trial: Any) -> dict[str, float]:
    return {k: float(v) for k, v in trial.params.items()}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)
