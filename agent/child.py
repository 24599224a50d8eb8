"""The trainer child: ``python -m agent.child --config RUN_CONFIG_YAML``.

The daemon (:mod:`agent.daemon`) starts this process and restarts it after a crash.
It trains with the run journal as its control port and always resumes: from the
newest good checkpoint of the run if there is one, from scratch otherwise.

SIGTERM or SIGINT: finish the current step, write a final checkpoint, exit 0.
Exit codes: 0 finished or stopped; 2 a user error (one line ``error: ...`` on stderr;
restarting will not help: a full disk or a run folder it cannot write is one, and is
also reported in ``child_status`` as status ``failed``, reason ``disk_full`` or
``unwritable``, with the message); 1 a crash (traceback on stderr, which the daemon sends to
the trainer log). Why it stopped (``max_steps``, ``max_minutes``, ``command``, or the
signal's name) goes to the journal (state ``child_status``) before it exits: the
daemon counts only the first three as the end of the run.

A run that is paused in the journal (the newest applied pause/resume command was a
pause, ``Journal.is_paused``) starts paused: a pause outlives restarts of the trainer
and of the daemon until someone resumes it.

``SMART_TUNER_FAULTS`` (see :mod:`agent.faults`) injects faults for tests and benchmarks.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sqlite3
import sys
import time
from typing import Any

from trainer.callbacks import BaseCallback
from trainer.errors import UserError
from trainer.fsutil import StorageError, storage_error

EXIT_OK, EXIT_CRASH, EXIT_USER_ERROR = 0, 1, 2
# Journal state key: {"pid", "status": "stopping", "reason", "step", "at"} once the loop has
# ended, so the daemon's stall watchdog allows the exit (MLflow flush, interpreter
# teardown) process.stop_grace_seconds instead of calling the silence a hang.
STATUS_KEY = "child_status"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.child", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the resolved run config the daemon wrote")
    args = parser.parse_args(argv)

    state: dict[str, Any] = {"trainer": None, "stop": None}

    def on_signal(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        trainer = state["trainer"]
        if trainer is None:  # still starting: stop as soon as the trainer exists
            state["stop"] = name
        else:
            trainer.request_stop(name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    try:
        return _train(args.config, state)
    except UserError as exc:
        if isinstance(exc, StorageError):
            report_failure(state, exc)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except (OSError, sqlite3.OperationalError) as exc:
        err = _unhealable(exc, state)
        if err is None:
            raise
        report_failure(state, err)
        print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR


def _unhealable(exc: BaseException, state: dict[str, Any]) -> StorageError | None:
    """A StorageError for a failure that no restart heals (disk full, a folder that cannot be
    written), else None. SQLite says "database or disk is full" for the run journal."""
    if isinstance(exc, OSError):
        if exc.errno in (errno.EACCES, errno.EPERM) and not isinstance(exc, StorageError):
            # Permission denied is unhealable where the trainer writes (the run folder), not
            # in general (a dataset file, say, is the data's problem).
            run_dir, name = state.get("run_dir"), exc.filename
            if run_dir is None or not isinstance(name, str) or not _inside(name, run_dir):
                return None
        return storage_error(exc)
    if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc) and state.get("run_dir"):
        from agent.paths import journal_path

        return storage_error(OSError(errno.ENOSPC, str(exc)), journal_path(state["run_dir"]))
    return None


def _inside(path: str, folder: Any) -> bool:
    from pathlib import Path

    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


def daemon_child_pid() -> int:
    """The pid the daemon started: this process, or under torchrun (several training
    processes) the torchrun process whose worker this is."""
    from trainer.distributed import under_torchrun

    return os.getppid() if under_torchrun() else os.getpid()


def report_failure(state: dict[str, Any], err: StorageError) -> None:
    """Tell the daemon (journal state ``child_status``: status ``failed``, reason ``disk_full``
    or ``unwritable``, the one-line message) that this failure cannot heal by a restart.
    Best effort: a journal that cannot be written either leaves the ``error:`` line."""
    run_dir = state.get("run_dir")
    if run_dir is None:
        return
    try:
        from agent.journal import Journal
        from agent.paths import journal_path

        path = journal_path(run_dir)
        if not path.exists():
            return
        trainer = state.get("trainer")
        with Journal(path) as journal:
            journal.set_state(STATUS_KEY, {"pid": daemon_child_pid(), "status": "failed", "reason": err.reason,
                                           "message": str(err), "step": getattr(trainer, "step", None),
                                           "at": time.time()})
    except Exception:  # noqa: BLE001 - the error line on stderr still says it
        pass


def _train(config_path: str, state: dict[str, Any]) -> int:
    from agent.faults import faults_from_env
    from agent.paths import journal_path
    from agent.port import JournalPort
    from trainer.config import load_config
    from trainer.runlock import hold_train_lock

    config = load_config(config_path)
    state["run_dir"] = config.run_dir
    if int(os.environ.get("RANK", "0")) > 0:
        # One of several torchrun processes, not the first: rank 0 holds the lock, talks to
        # the journal and reports; this one only trains (trainer/distributed.py).
        return _train_other_rank(config, state)
    # One trainer per run: a `smart-tuner train` on this folder is refused while this
    # child lives (and this child is refused while one trains it). Held until exit.
    state["lock"] = hold_train_lock(config.run_dir, supervised=True)
    # The daemon checkpoints the WAL from a periodic job: no 5-50 ms stalls in a step.
    port = JournalPort(journal_path(config.run_dir), autocheckpoint=False)
    try:
        from trainer.callbacks import ConsoleProgress
        from trainer.loop import Trainer

        callbacks: list = [_AnnounceStop(port), ConsoleProgress(config.train.log_every)]
        if config.tracking.enabled:
            from trainer.tracking import MlflowLogger

            callbacks.append(MlflowLogger(config.tracking, config.run_dir))
        faults = faults_from_env(port.journal)
        if faults is not None:
            callbacks.append(faults)
        trainer = Trainer(config, port=port, callbacks=callbacks, resume=True)
        state["trainer"] = trainer
        if state["stop"] is not None:
            print(f"stopped before training ({state['stop']})", flush=True)
            announce_stop(port, state["stop"], trainer.step)
            return EXIT_OK
        if port.journal.is_paused():
            # The pause was applied by an earlier trainer: this one keeps it (commands queued
            # since, a resume say, are applied at its first step boundary as usual).
            trainer.paused = True
            print(f"starting paused at step {trainer.step} (the run is paused; smart-tuner resume continues it)",
                  flush=True)
        trainer.train()
        return EXIT_OK
    finally:
        port.close()
        from trainer import distributed

        distributed.leave()


def _train_other_rank(config: Any, state: dict[str, Any]) -> int:
    from trainer import distributed
    from trainer.loop import Trainer

    try:
        trainer = Trainer(config, resume=True)
        state["trainer"] = trainer
        if state["stop"] is not None:  # signalled while starting: rank 0 does the same
            return EXIT_OK
        trainer.train()
        return EXIT_OK
    finally:
        distributed.leave()


def announce_stop(port: Any, reason: str, step: int) -> None:
    """Tell the daemon (journal state) that the loop ended, why, and that the exit is under way."""
    port.journal.set_state(STATUS_KEY, {"pid": daemon_child_pid(), "status": "stopping", "reason": reason,
                                        "step": step, "at": time.time()})


class _AnnounceStop(BaseCallback):
    """First callback: announces the stop (:func:`announce_stop`) as soon as the loop has ended."""

    def __init__(self, port: Any) -> None:
        self.port = port

    def on_train_end(self, trainer: Any, reason: str) -> None:
        announce_stop(self.port, reason, trainer.step)


if __name__ == "__main__":
    sys.exit(main())
