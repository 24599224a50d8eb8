"""Optuna plumbing shared by in-run rounds and offline studies: storage, sampler,
pruner, and the loop that asks for trials, runs them and tells the results.

Optuna is imported inside the functions: importing this module is free.

Storage: an embedded journal file by default (``JournalFileBackend``; several
processes on one machine may share it, and ``optuna-dashboard FILE`` opens it), or any
URL SQLAlchemy understands: ``sqlite:///study.db``, ``postgresql://user:pw@host/db``
(then many machines can work one study; each runs ``smart-tuner tune`` with the same
storage and ``--study-name``). A database storage runs Optuna's heartbeat: a trial whose
worker died is failed by the next worker that asks for a trial and re-queued
(``RetryFailedTrialCallback``). Every trial runs through ``Study.optimize``, which keeps
the heartbeat and tells Optuna the outcome.
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


def open_storage(url: str | None, default_file: Path, cfg: TunerConfig | None = None) -> Any:
    """An Optuna storage: a database URL, a journal file path, or ``default_file``."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if url is not None and "://" in url:
        return database_storage(url, cfg or TunerConfig())
    path = Path(url) if url is not None else default_file
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def database_storage(url: str, cfg: TunerConfig) -> Any:
    """``RDBStorage`` (sqlite, postgresql, mysql) with Optuna's heartbeat and retries."""
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import DBAPIError
    from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

    beat: dict[str, Any] = {}
    if cfg.heartbeat_seconds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # "experimental" since Optuna 2.8
            retry_stale = RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retries)
        beat = {"heartbeat_interval": cfg.heartbeat_seconds,
                "grace_period": cfg.heartbeat_grace_seconds or 3 * cfg.heartbeat_seconds,
                "heartbeat_stale_trial_callback": retry_stale}

    # Workers that start together on a new database race to create Optuna's tables (one
    # gets "already exists"); creating them again is harmless once the winner is done.
    @retry(retry=retry_if_exception_type(DBAPIError), stop=stop_after_attempt(5),
           wait=wait_exponential_jitter(multiplier=0.2, max=3.0), reraise=True)
    def connect() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeat and its callback are "experimental"
            # pool_pre_ping: a worker that waited hours on a trial finds its connection dropped.
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **beat)

    return connect()


def uses_heartbeat(url: str | None, cfg: TunerConfig) -> bool:
    """Does ``open_storage(url, ..., cfg)`` give a storage with Optuna's heartbeat?"""
    return url is not None and "://" in url and cfg.heartbeat_seconds > 0


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


def open_study(storage: Any, name: str, cfg: TunerConfig, steps: int) -> tuple[Any, bool]:
    """Create the study, or load it if it exists (a resumed study keeps its trials and
    numbering). Returns (study, created): of several workers starting one study at once,
    exactly one creates it (the storage refuses a second study of that name)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: the hooks say it, without a traceback
    kwargs: dict[str, Any] = ({"directions": ["minimize", "minimize"]} if cfg.objective.multi_objective
                              else {"direction": "minimize"})
    sampler, pruner = make_sampler(cfg), make_pruner(cfg, steps)
    try:
        return optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                   load_if_exists=False, **kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner), False


def fail_stale_trials(study: Any) -> list[int]:
    """Journal-file studies: trials left RUNNING by a process of this machine that is gone
    (killed mid-study) are marked failed, so a resumed study does not count them as
    running. (A journal file has no heartbeat; database storages use Optuna's, which
    also covers other machines.)"""
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
    """The current hyperparameters always run as one trial (the first of a new study):
    call this only as the worker that created the study (see ``open_study``), so that
    workers starting together enqueue it once.

    Its recorded params are the values pulled into the search ranges (Optuna re-samples
    an enqueued value outside its distribution); the trial itself runs with the values
    as they are, unchanged (``baseline`` user attribute)."""
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
    import optuna

    # Optuna warns with a traceback about every failed trial; the hooks report them.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    hooks = hooks or NoHooks()
    lock = threading.Lock()
    results: list[TrialResult] = []
    left = [n_trials]

    def lost(device: str | None, exc: BaseException) -> None:
        from agent.logs import get_logger

        get_logger().error("trial lost", device=device, error=type(exc).__name__, message=str(exc))

    def objective(trial: Any, device: str | None) -> Any:
        try:
            result = _run_one(trial, cfg, build, hooks, device)
        except Exception as exc:  # noqa: BLE001 - a hook or the spec broke: Optuna records FAIL, the others go on
            lost(device, exc)
            raise TrialFailed(f"{type(exc).__name__}: {exc}") from None
        with lock:
            results.append(result)
        if result.state == "complete":
            assert result.score is not None
            return result.score.values(cfg.objective)
        if result.state == "pruned":
            raise optuna.TrialPruned(result.detail)
        raise TrialFailed(result.detail)

    def slot(device: str | None) -> None:
        while True:
            with lock:
                if left[0] <= 0 or (stop is not None and stop.is_set()):
                    return
                left[0] -= 1
            try:
                # One trial per call: Optuna asks it, beats its heartbeat (database
                # storages), fails stale trials of dead workers first, and tells the outcome.
                study.optimize(lambda trial: objective(trial, device), n_trials=1, catch=(TrialFailed,),
                               gc_after_trial=False, show_progress_bar=False)
            except Exception as exc:  # noqa: BLE001 - Optuna broke: this trial is lost, the others go on
                lost(device, exc)

    # Daemon threads (not a ThreadPoolExecutor, whose workers the interpreter joins at
    # exit): a daemon that is stopped must not wait for a round to finish.
    threads = [threading.Thread(target=slot, args=(device,), name=f"trial-slot-{i}", daemon=True)
               for i, device in enumerate(cfg.slots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results, key=lambda r: r.number)


class TrialFailed(Exception):
    """A trial that ran and failed (diverged, crashed, no evaluation): Optuna records FAIL."""


def _run_one(trial: Any, cfg: TunerConfig, build: SpecBuilder, hooks: TrialHooks, device: str | None) -> TrialResult:
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
    elif outcome.status == "complete" and s is not None and s.finite:
        result.state, result.detail = "complete", outcome.detail
    elif outcome.status == "pruned":
        result.state, result.detail = "pruned", outcome.detail
    else:
        result.state = "failed"
        result.detail = outcome.detail or "no evaluation"
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
