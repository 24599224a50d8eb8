"""Optuna plumbing shared by in-run rounds and offline studies: storage, sampler,
pruner, and the loop that asks for trials, runs them and tells the results.

Optuna is imported inside the functions: importing this module is free.

Storage: an embedded journal file by default (``JournalFileBackend``; several
processes on one machine may share it, and ``optuna-dashboard FILE`` opens it), or any
URL SQLAlchemy understands: ``sqlite:///study.db``, ``postgresql://user:pw@host/db``
(then many machines can work one study; each runs ``smart-tuner tune`` with the same
``--storage`` and ``--study-name``).
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from agent.procs import proc_alive
from agent.tuner.config import TunerConfig
from agent.tuner.objective import Score, score
from agent.tuner.space import clamp, suggest
from agent.tuner.trial_child import TrialSpec
from agent.tuner.trial_runner import TrialOutcome, run_trial


def open_storage(url: str | None, default_file: Path) -> Any:
    """An Optuna storage: the URL as given, a journal file path, or ``default_file``."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if url is not None and "://" in url:
        return url  # RDB (SQLAlchemy URL): sqlite, postgresql, mysql
    path = Path(url) if url is not None else default_file
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def dashboard_hint(url: str | None, default_file: Path) -> str:
    target = url if url is not None and "://" in url else str(Path(url) if url else default_file)
    return f"optuna-dashboard {target}"


def make_sampler(cfg: TunerConfig) -> Any:
    import optuna

    kind = cfg.sampler_kind
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=cfg.nsga2_population_size, seed=cfg.seed)
    return optuna.samplers.TPESampler(n_startup_trials=cfg.tpe_startup_trials, seed=cfg.seed)


def make_pruner(cfg: TunerConfig, steps: int) -> Any:
    import optuna

    kind = cfg.pruner_kind
    if kind == "median":
        p = cfg.pruner
        # +1: a trial's first `warmup_reports` reports never prune it.
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials,
                                           n_warmup_steps=p.warmup_reports * cfg.report_every + 1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.report_every, max_resource=max(steps, cfg.report_every),
                                              reduction_factor=cfg.pruner.reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(storage: Any, name: str, cfg: TunerConfig, steps: int) -> Any:
    """Create the study, or load it if it exists (a resumed study keeps its trials and numbering)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs: dict[str, Any] = ({"directions": ["minimize", "minimize"]} if cfg.objective.multi_objective
                              else {"direction": "minimize"})
    return optuna.create_study(storage=storage, study_name=name, sampler=make_sampler(cfg),
                               pruner=make_pruner(cfg, steps), load_if_exists=True, **kwargs)


def fail_stale_trials(study: Any) -> list[int]:
    """Trials left RUNNING by a process of this machine that is gone (killed mid-study):
    marked failed, so a resumed study does not count them as running. Trials of other
    machines (a shared PostgreSQL study) are left alone."""
    from optuna.trial import TrialState

    failed = []
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") != host or not isinstance(t.user_attrs.get("pid"), int):
            continue
        if t.user_attrs["pid"] != os.getpid() and not proc_alive(t.user_attrs["pid"]):
            study.tell(t.number, state=TrialState.FAIL)
            failed.append(t.number)
    return failed


def enqueue_baseline(study: Any, values: dict[str, float], cfg: TunerConfig) -> None:
    """The current hyperparameters always run as one trial (the first of a new study).

    Its recorded params are the values pulled into the search ranges (Optuna re-samples
    an enqueued value outside its distribution); the trial itself runs with the values
    as they are, unchanged (``baseline`` user attribute)."""
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(clamp(values, cfg.space), user_attrs={"baseline": True})


@dataclass
class TrialResult:
    number: int
    params: dict[str, float]
    baseline: bool
    folder: Path
    outcome: TrialOutcome
    score: Score | None = None  # of its last evaluation
    state: str = "failed"  # complete | pruned | failed (as told to Optuna)
    detail: str = ""


class TrialHooks(Protocol):
    """What the caller records about trials (journal rows, MLflow runs, console lines)."""

    def started(self, number: int, params: dict[str, float], baseline: bool, folder: Path) -> Any: ...
    def forked(self, handle: Any, pid: int, start: dict[str, Any]) -> None: ...
    def reported(self, handle: Any, progress: int, score: Score) -> None: ...
    def finished(self, handle: Any, result: TrialResult) -> None: ...


class NoHooks:
    def started(self, number: int, params: dict[str, float], baseline: bool, folder: Path) -> Any:
        return None

    def forked(self, handle: Any, pid: int, start: dict[str, Any]) -> None:
        pass

    def reported(self, handle: Any, progress: int, score: Score) -> None:
        pass

    def finished(self, handle: Any, result: TrialResult) -> None:
        pass


SpecBuilder = Callable[[int, dict[str, float], bool], tuple[TrialSpec, Path]]


def run_trials(study: Any, n_trials: int, cfg: TunerConfig, build: SpecBuilder, hooks: TrialHooks | None = None,
               stop: threading.Event | None = None) -> list[TrialResult]:
    """Ask, run and tell ``n_trials`` trials, one per slot at a time (``cfg.devices``).

    ``build(number, params, baseline)`` gives the trial's spec and folder. ``stop`` set:
    no new trials start (running ones finish).
    """
    hooks = hooks or NoHooks()
    lock = threading.Lock()
    results: list[TrialResult] = []
    left = [n_trials]

    def slot(device: str | None) -> None:
        while True:
            with lock:
                if left[0] <= 0 or (stop is not None and stop.is_set()):
                    return
                left[0] -= 1
            try:
                result = _run_one(study, cfg, build, hooks, device)
            except Exception as exc:  # noqa: BLE001 - Optuna or a hook broke: this trial is lost, the others go on
                from agent.logs import get_logger

                get_logger().error("trial lost", device=device, error=type(exc).__name__, message=str(exc))
                continue
            with lock:
                results.append(result)

    # Daemon threads (not a ThreadPoolExecutor, whose workers the interpreter joins at
    # exit): a daemon that is stopped must not wait for a round to finish.
    threads = [threading.Thread(target=slot, args=(device,), name=f"trial-slot-{i}", daemon=True)
               for i, device in enumerate(cfg.slots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results, key=lambda r: r.number)


def _run_one(study: Any, cfg: TunerConfig, build: SpecBuilder, hooks: TrialHooks, device: str | None) -> TrialResult:
    from optuna.trial import TrialState

    trial = study.ask()
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    params = suggest(trial, cfg.space)
    baseline = bool(trial.user_attrs.get("baseline"))
    spec, folder = build(trial.number, params, baseline)
    handle = hooks.started(trial.number, params, baseline, folder)
    diverged: list[int] = []

    def on_report(progress: int, record: dict[str, Any]) -> bool:
        s = score(record, cfg.objective)
        if not s.finite:
            diverged.append(progress)
            return True  # stop it: a non-finite loss will not come back within a short trial
        hooks.reported(handle, progress, s)
        if cfg.objective.multi_objective:
            return False
        trial.report(s.total, progress)
        return trial.should_prune()

    try:
        outcome = run_trial(spec, folder, on_report=on_report, device=device, timeout=cfg.trial_timeout_seconds,
                            on_start=lambda pid, msg: hooks.forked(handle, pid, msg))
    except Exception as exc:  # noqa: BLE001 - the round goes on; this trial failed
        outcome = TrialOutcome(status="failed", detail=f"{type(exc).__name__}: {exc}")
    result = TrialResult(number=trial.number, params=params, baseline=baseline, folder=folder, outcome=outcome)
    s = score(outcome.record, cfg.objective) if outcome.record else None
    result.score = s
    if diverged:
        result.state, result.detail = "failed", f"non-finite objective after {diverged[0]} steps (diverged)"
        study.tell(trial, state=TrialState.FAIL)
    elif outcome.status == "complete" and s is not None and s.finite:
        result.state, result.detail = "complete", outcome.detail
        study.tell(trial, s.values(cfg.objective))
    elif outcome.status == "pruned":
        result.state, result.detail = "pruned", outcome.detail
        study.tell(trial, state=TrialState.PRUNED)
    else:
        result.state = "failed"
        result.detail = outcome.detail or "no evaluation"
        study.tell(trial, state=TrialState.FAIL)
    hooks.finished(handle, result)
    return result


def pareto_front(results: list[TrialResult]) -> list[TrialResult]:
    """Completed trials no other completed trial beats on both mel and alignment."""
    done = [r for r in results if r.state == "complete" and r.score is not None]

    def dominates(a: Score, b: Score) -> bool:
        return (a.sound <= b.sound and a.penalty <= b.penalty
                and (a.sound < b.sound or a.penalty < b.penalty))

    return [r for r in done if not any(dominates(o.score, r.score) for o in done if o is not r)]


def best(results: list[TrialResult]) -> TrialResult | None:
    """The completed trial with the lowest composite objective (for multi-objective
    studies: the member of the Pareto front with the lowest composite, i.e. the same
    weights decide between front members)."""
    pool = pareto_front(results) if results else []
    pool = pool or [r for r in results if r.state == "complete" and r.score is not None]
    return min(pool, key=lambda r: r.score.total, default=None)


@dataclass
class RoundSummary:
    results: list[TrialResult] = field(default_factory=list)
    winner: TrialResult | None = None
    baseline: TrialResult | None = None
    front: list[TrialResult] = field(default_factory=list)
