"""The daemon: runs the trainer as a child process and keeps it (and the supervisor) going.

``run_daemon(config, log=...)`` is what ``smart-tuner run --config C`` calls. It

1. validates the ``supervisor:`` section, creates the run folder, takes the run's
   daemon lock (one daemon per run), writes the resolved config for the child
   (atomically) and opens the run journal. A journal that is missing or empty beside
   checkpoints is refused (a user error: the run's history is gone; ``new_journal``
   starts a new one deliberately), and so is one SQLite cannot read;
2. builds the supervisor (``agent.supervisor.Supervisor``), which restores its phase
   and pending proposals from the journal, and hands it the run's in-run tuner
   (``agent.tuner.inrun.InRunTuning``, from the config it wrote);
3. stops an orphaned trainer left by a daemon that was killed (``kill -9``): the pid
   file names it, ``/proc/PID/cmdline`` confirms it is this run's ``agent.child``; and
   refuses a run another process trains (``smart-tuner train`` holds ``RUN/train.lock``);
4. starts the child ``python -m agent.child --config RUN/run-config.yaml`` (it
   resumes from the newest good checkpoint), its output appended to ``RUN/trainer.log``
   and echoed to the console by a thread that follows that file;
5. runs APScheduler jobs: the supervisor's tick, the stall watchdog, the status
   digest, and WAL checkpoints of the journal;
6. waits for the child. Exit 0 after a stop the child reported (journal state
   ``child_status``) as ``max_steps``, ``max_minutes`` or ``command`` (a stop command):
   the run is over, the daemon exits 0. Exit 0 after any other stop (a SIGTERM that did
   not come from this daemon), a crash (non-zero exit, a signal) or a hang (no
   telemetry for ``process.hang_seconds`` while not paused; the watchdog SIGKILLs it):
   restart with exponential backoff, and give up (exit 1) after
   ``process.max_restarts`` consecutive failures without progress. Exit 2 from the
   child (a user error: the config, the data) is not retried, and neither is a failure
   no restart heals, which the child reports as ``child_status`` status ``failed``,
   reason ``disk_full`` or ``unwritable`` (exit 2, the child's one-line message in the
   ``gave_up`` event). A run folder this user cannot write, or a trainer command that
   cannot be started, is a UserError (one line, exit 2), recorded as ``gave_up`` where
   the journal can be written. A paused run stays paused across restarts: the new
   child reads the pause from the journal.

SIGTERM/SIGINT to the daemon: SIGTERM to the child (it finishes the step and writes a
final checkpoint), SIGKILL after ``process.stop_grace_seconds``, exit 0. A second
signal kills the child at once. The child itself (start, watch, that one way to stop it,
also used for an orphan) is :class:`agent.child_process.ChildProcess`.

The child runs in its own session and writes to the log file itself (no pipe), so a
daemon killed with ``kill -9`` leaves the trainer training; the next daemon stops it
gracefully (final checkpoint) and starts a fresh child, which resumes.

Start-up cost: this module imports neither torch nor mlflow, optuna or aiogram; the
daemon is ready (journal open, phase restored, child launched) in well under 2 s.
Each child event (started, restarted, crashed, hung, finished, gave_up, stopped) is a
call of the supervisor's ``note_child_event`` (which records it as an audit row, actor
``daemon``, and notifies) and a structlog event.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import functools
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Protocol, Sequence

import yaml
from pydantic import ValidationError

from agent.child import STATUS_KEY as CHILD_STATUS_KEY
from agent.child_process import ChildProcess, LaunchError
from agent.childenv import trainer_env
from agent.config import SupervisorConfig
from agent.journal import Journal, JournalError, StatusSummary, history_state, unreadable_message
from agent.paths import child_config_path, journal_path, trainer_log_path
from agent.procs import describe_exit, proc_alive
from trainer import runlock
from trainer.config import RunConfig
from trainer.distributed import torchrun_argv
from trainer.errors import UserError
from trainer.fsutil import UNHEALABLE_REASONS, StorageError, atomic_write, check_writable, storage_error
from trainer.redact import mask_urls

EXIT_OK = 0
EXIT_GAVE_UP = 1
EXIT_USER_ERROR = 2  # the child's exit code for a user error, and the daemon's when it passes one on
# The stop reasons (journal state child_status) that end a run; any other stop of a child
# that exits 0 (a SIGTERM from someone else than this daemon) is restarted like a crash.
FINISHED_REASONS = frozenset({"max_steps", "max_minutes", "command"})

CHILD_MODULE = "agent.child"
LOG_TAIL_LINES = 20
# Before a child's first telemetry row (imports, dataset scan, mel cache, resume) the
# stall limit is max(hang_seconds, this), and output to the trainer log counts as life.
STARTUP_GRACE_SECONDS = 300.0
WAL_CHECKPOINT_SECONDS = 60.0


def child_pid_path(run_dir: str | Path) -> Path:
    """The running trainer child's pid (JSON), for finding an orphan after ``kill -9`` of the daemon."""
    return Path(run_dir) / "trainer.pid"


def newest_checkpoint_step(run_dir: str | Path) -> int | None:
    """The step of the newest numbered checkpoint in ``RUN/checkpoints`` (no torch import)."""
    steps = []
    for p in (Path(run_dir) / "checkpoints").glob("checkpoint_*.pt"):
        number = p.stem.split("_", 1)[1]
        if number.isdigit():
            steps.append(int(number))
    return max(steps, default=None)


def daemon_lock_path(run_dir: str | Path) -> Path:
    """Held (flock) by the run's daemon while it lives; released by the kernel on any exit.
    ``smart-tuner train`` refuses a run folder whose daemon lock is held (trainer.runlock)."""
    return runlock.daemon_lock_path(run_dir)


class SupervisorLike(Protocol):
    phase: Any

    def tick(self) -> Any: ...

    def note_child_event(self, kind: str, detail: str = "") -> Any: ...


SupervisorFactory = Callable[..., SupervisorLike]  # (journal, cfg, *, warmup_steps) -> supervisor


def default_supervisor(journal: Journal, cfg: SupervisorConfig, *, warmup_steps: int,
                       log: Any = None) -> SupervisorLike:
    """The real supervisor, with the run's in-run tuner (built from the run-config.yaml
    the daemon wrote beside the journal; a bad ``tuner:`` section stops the start)."""
    from agent.supervisor import Supervisor
    from agent.tuner.inrun import InRunTuning

    tuning = InRunTuning.for_run(journal, cfg.approvals, Path(journal.path).parent, log=log)
    return Supervisor(journal, cfg, warmup_steps=warmup_steps, log=log, tuning=tuning)


# -- small helpers ------------------------------------------------------------------------------
def window_for_evaluations(cfg: SupervisorConfig, eval_every_steps: int) -> SupervisorConfig:
    """Widen the policies' step window to span the evaluations the overfit rule compares.

    It needs the training loss at the oldest of ``rising_evals + 1`` evaluations, i.e.
    step records reaching back that many evaluation intervals (plus the median's
    span); at NVIDIA's interval of 1000 steps the default 2000-step window never did.
    """
    o = cfg.policies.overfit
    needed = (o.rising_evals + 1) * eval_every_steps + o.train_loss_steps
    return cfg if cfg.window_steps >= needed else cfg.model_copy(update={"window_steps": needed})


def _process_age() -> float | None:
    """Seconds since this process started (Linux /proc), for the readiness log."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return None


def _proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _tail_lines(path: Path, n: int, start: int = 0, max_bytes: int = 64 * 1024) -> list[str]:
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            begin = max(start, size - max_bytes)
            fh.seek(begin)
            data = fh.read()
    except OSError:
        return []
    lines = data.decode(errors="replace").splitlines()
    if begin > start and lines:
        lines = lines[1:]  # the first line is probably cut
    return lines[-n:]


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def digest_text(summary: StatusSummary, run: str) -> str:
    """The periodic status digest (plain text for the notifiers)."""
    lines = [f"Smart Tuner digest: {run}", f"phase: {summary.phase or 'not yet known'}"]
    st = summary.latest_step
    if st is not None:
        lines.append(f"step {st.step}: loss {st.loss:.4f}, grad norm {st.grad_norm:.2f}, lr {st.lr:.2e}"
                     + (f", {st.skipped_steps} skipped" if st.skipped_steps else ""))
    else:
        lines.append("no training steps yet")
    ev = summary.latest_eval
    if ev is not None:
        lines.append(f"eval at {ev.step}: val loss {ev.val_loss:.4f}, diagonality {ev.diagonality:.3f}, "
                     f"gate accuracy {ev.gate_accuracy:.3f}")
        if ev.speech is not None:
            from agent.views import speech_line

            lines.append(f"speech: {speech_line(ev.speech.model_dump())}")
    if summary.steps_per_second:
        lines.append(f"speed: {summary.steps_per_second:.2f} steps/s")
    ck = summary.latest_checkpoint
    if ck is not None:
        lines.append(f"latest checkpoint: step {ck.step} ({ck.health})")
    pending = summary.pending_proposals
    lines.append(f"pending proposals: {len(pending)}")
    lines += [f"  #{p.id} {p.kind}: {p.reason}" for p in pending[:5]]
    return "\n".join(lines)


class _LogFollower:
    """Echoes new lines of the trainer log to a stream (a thread following the file)."""

    def __init__(self, path: Path, offset: int, out: IO[str]) -> None:
        self.path, self.pos, self.out = path, offset, out
        self._partial = b""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainer-log-echo", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.pump()

    def pump(self) -> None:
        with self._lock:
            try:
                with open(self.path, "rb") as fh:
                    if fh.seek(0, os.SEEK_END) < self.pos:  # replaced or truncated: start over
                        self.pos, self._partial = 0, b""
                    fh.seek(self.pos)
                    data = fh.read()
            except OSError:
                return
            if not data:
                return
            self.pos += len(data)
            data = self._partial + data
            complete, _, self._partial = data.rpartition(b"\n")
            if complete:
                try:
                    self.out.write(complete.decode(errors="replace") + "\n")
                    self.out.flush()
                except (OSError, ValueError):  # console gone: keep running without the echo
                    self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self.pump()


@dataclass
class _ChildRun:
    child: ChildProcess
    started: float  # monotonic
    start_step: int | None  # the journal's newest step when it started
    log_offset: int
    cursor: int  # telemetry seq seen so far
    last_activity: float
    log_size: int
    max_step: int | None = None  # highest step among the telemetry rows it wrote
    rows_seen: bool = False
    hung: bool = False
    stopping_since: float | None = None  # monotonic time the watchdog saw its loop had ended

    @property
    def progressed(self) -> bool:
        return self.max_step is not None and (self.start_step is None or self.max_step > self.start_step)


class Daemon:
    """One supervised run (see the module docstring). Use :func:`run_daemon`."""

    def __init__(self, config: RunConfig, *, log: Any = None, supervisor_factory: SupervisorFactory | None = None,
                 echo_child: bool | None = True, echo_stream: IO[str] | None = None,
                 child_command: Sequence[str] | None = None,
                 startup_grace_seconds: float = STARTUP_GRACE_SECONDS, new_journal: bool = False) -> None:
        if log is None:
            from agent.logs import get_logger

            log = get_logger()
        try:
            self.cfg = SupervisorConfig.model_validate(config.supervisor)
        except ValidationError as exc:
            problems = "\n  ".join(f"supervisor.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                   for e in exc.errors())
            raise UserError(f"invalid supervisor section in the config:\n  {problems}") from None
        self.cfg = window_for_evaluations(self.cfg, config.eval.every_steps)
        self.config = config
        self.log = log
        self.run_dir = Path(config.run_dir)
        self.config_path = child_config_path(self.run_dir).resolve()
        self.log_path = trainer_log_path(self.run_dir)
        self.proc_cfg = self.cfg.process
        self.supervisor_factory = supervisor_factory or functools.partial(default_supervisor, log=log)
        stream = echo_stream if echo_stream is not None else sys.stdout
        if echo_child is None:
            echo_child = hasattr(stream, "isatty") and stream.isatty()
        self.echo_stream = stream if echo_child else None
        self.child_command = list(child_command) if child_command is not None else None
        self.startup_grace = startup_grace_seconds
        self.new_journal = new_journal

        self.journal: Journal | None = None
        self.supervisor: SupervisorLike | None = None
        self._scheduler: Any = None
        self._follower: _LogFollower | None = None
        self._lock_fd: int | None = None
        self._run: _ChildRun | None = None
        self._run_lock = threading.Lock()
        self._sup_lock = threading.Lock()  # the supervisor is driven from two threads
        self._stop = threading.Event()
        self._kill_now = threading.Event()
        self._stop_signal: str | None = None
        self._old_handlers: dict[int, Any] = {}
        self.ready_seconds: float | None = None
        self._notifications: Any = None  # agent.notify: console and/or Telegram, draining the outbox

    def _start_data_audit(self) -> None:
        """Audit the data in the background so that the stall policy can name suspects."""
        from agent.data_hints import collect_in_background

        def deliver(hints: tuple[str, ...]) -> None:
            if self.supervisor is not None and hasattr(self.supervisor, "data_hints"):
                self.supervisor.data_hints = hints
            self.log.info("data audit", hints=list(hints))

        def failed(exc: BaseException) -> None:
            self.log.warning("data audit failed; the stall policy will name no data suspects", error=str(exc))

        collect_in_background(self.config, deliver, failed)

    # -- the whole life ---------------------------------------------------------------------
    def run(self) -> int:
        t0 = time.monotonic()
        self._install_signal_handlers()
        try:
            self._setup()
            self._stop_orphan()
            self._refuse_other_trainer()
            if self._stop.is_set():
                return EXIT_OK
            self._launch(restart_detail=None)
            self._start_scheduler()
            self.ready_seconds = time.monotonic() - t0
            age = _process_age()
            self.log.info("daemon ready", seconds=round(self.ready_seconds, 3),
                          since_process_start=round(age, 3) if age is not None else None,
                          phase=self._phase(), child_pid=self._run.child.pid if self._run else None,
                          run_dir=str(self.run_dir))
            self._start_notifications()  # after "ready": the bot's imports take seconds, in its own thread
            self._start_data_audit()
            return self._loop()
        except (StorageError, LaunchError) as exc:  # cannot heal by itself: say so once, do not retry
            self._record_unhealable(exc)
            raise
        finally:
            self._teardown()
            self._restore_signal_handlers()

    def _setup(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise (storage_error(exc, self.run_dir) or exc) from None
        # A run folder this user cannot write (chmod 0555, another owner, a read-only mount)
        # or a full disk: one line naming the folder now, not tracebacks from both processes.
        check_writable(self.run_dir)
        self._take_lock()
        with atomic_write(self.config_path, "w", encoding="utf-8") as fh:
            # URL passwords masked; the child gets the real tracking URI in its environment.
            yaml.safe_dump(mask_urls(self.config.model_dump(mode="json")), fh, sort_keys=False,
                           allow_unicode=True)
        self.journal = self._open_journal()
        self.supervisor = self.supervisor_factory(self.journal, self.cfg, warmup_steps=self.config.optim.warmup_steps)
        if self.echo_stream is not None:
            self._follower = _LogFollower(self.log_path, _file_size(self.log_path), self.echo_stream)
            self._follower.start()

    def _open_journal(self) -> Journal:
        """Open (or create) the run's journal, unless it would start a new history for a run
        that already has checkpoints: the phase would restart at warmup, step 0, while
        the trainer resumes far beyond it."""
        path = journal_path(self.run_dir)
        try:
            state = history_state(path)
            if state != "history":
                ckpt = newest_checkpoint_step(self.run_dir)
                if ckpt is not None and not self.new_journal:
                    self._refuse_other_trainer()  # (a smart-tuner train writing them says so first)
                    what = {"missing": "missing", "empty": "empty (it holds no journal)",
                            "blank": "empty (nothing was ever recorded in it)"}[state]
                    raise UserError(
                        f"{path} is {what}, but {self.run_dir / 'checkpoints'} holds checkpoints (newest: step "
                        f"{ckpt}); restore the journal from a backup, or start over with another run_dir, or run "
                        f"again with --new-journal to start a new history (training resumes from the checkpoints)")
            journal = Journal(path)
        except sqlite3.DatabaseError as exc:
            raise UserError(unreadable_message(path, exc)) from None
        except JournalError as exc:
            raise UserError(str(exc)) from None
        if self.new_journal and state != "history" and newest_checkpoint_step(self.run_dir) is not None:
            journal.audit("daemon", "new_journal", f"a new history for a run whose journal was {state}; "
                          f"newest checkpoint: step {newest_checkpoint_step(self.run_dir)}")
        return journal

    def _take_lock(self) -> None:
        path = daemon_lock_path(self.run_dir)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise (storage_error(exc, path) or exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{self.run_dir} is already supervised by a running daemon (pid {holder}); "
                            "stop it first (smart-tuner stop) or use another run_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _refuse_other_trainer(self) -> None:
        """A trainer that is not this daemon's (``smart-tuner train``) holds the run's train lock."""
        holder = runlock.lock_holder(runlock.train_lock_path(self.run_dir))
        if holder is not None and holder.isdigit() and proc_alive(int(holder)):
            raise UserError(f"{self.run_dir} is being trained by another process (pid {holder}); stop it first "
                            "or use another run_dir")

    def _loop(self) -> int:
        stalled = 0  # consecutive failed children that made no progress
        while True:
            code = self._wait_child()
            if code is None or self._stop.is_set():  # (the child may have exited as the signal came)
                return self._stop_child()
            run = self._run
            assert run is not None
            with self._run_lock:
                self._catch_up(run)
            if self._follower is not None:
                self._follower.pump()
            self._remove_pid_file()
            exit_text = cause = describe_exit(code)
            if code == 0:
                reason = self._stop_reason(run)
                if reason is None or reason in FINISHED_REASONS:
                    self._event("finished", f"trainer exited 0 at step {run.max_step}"
                                + (f" ({reason})" if reason else ""), step=run.max_step)
                    return EXIT_OK
                # Stopped by a signal this daemon did not send: not the end of the run.
                cause = f"a stop by {reason} from outside the daemon"
                exit_text = f"exit code 0 after {cause} (smart-tuner stop ends a run)"
            tail = _tail_lines(self.log_path, LOG_TAIL_LINES, run.log_offset)
            if not run.hung:
                self._event("crashed", f"{exit_text} at step {run.max_step}; last lines of "
                            f"{self.log_path.name}:\n" + "\n".join(tail), exit=code, step=run.max_step,
                            log_tail=tail)
            failure = self._unhealable_failure(run) if code != 0 else None
            if failure is not None:
                self._event("gave_up", f"the trainer cannot write its files ({failure[0]}); a restart cannot "
                            f"fix this: {failure[1]}")
                return EXIT_USER_ERROR
            if code == EXIT_USER_ERROR and not run.hung:
                last = next((line for line in reversed(tail) if line.strip()), "")
                self._event("gave_up", f"the trainer reported an error a restart cannot fix: {last}")
                return EXIT_USER_ERROR
            stalled = 0 if run.progressed else stalled + 1
            if stalled > self.proc_cfg.max_restarts:
                self._event("gave_up", f"{stalled} consecutive failures without progress "
                            f"(process.max_restarts is {self.proc_cfg.max_restarts})")
                return EXIT_GAVE_UP
            delay = min(self.proc_cfg.backoff_seconds * 2 ** max(stalled - 1, 0), self.proc_cfg.backoff_max_seconds)
            self.log.info("restarting trainer", in_seconds=delay, failures_without_progress=stalled)
            if self._stop.wait(delay):
                self._event("stopped", f"daemon stopped by {self._stop_signal} while waiting to restart")
                return EXIT_OK
            why = "hang" if run.hung else cause
            self._launch(restart_detail=f"after {why}; {stalled} failure(s) without progress, backoff {delay:g} s")

    def _unhealable_failure(self, run: _ChildRun) -> tuple[str, str] | None:
        """(reason, one-line message) when this child reported (journal state child_status,
        status ``failed``) a failure no restart heals: ``disk_full``, ``unwritable``."""
        assert self.journal is not None
        try:
            status = self.journal.get_state(CHILD_STATUS_KEY)
        except Exception:  # noqa: BLE001 - an unreadable status: judge by the exit code
            return None
        if (isinstance(status, dict) and status.get("pid") == run.child.pid and status.get("status") == "failed"
                and status.get("reason") in UNHEALABLE_REASONS):
            return str(status["reason"]), str(status.get("message") or "")
        return None

    def _record_unhealable(self, exc: UserError) -> None:
        """Record a failure that stops the daemon for good (gave_up) in the journal, if it can
        be written (and so in status and the notifications)."""
        if self.journal is not None:
            self._event("gave_up", str(exc))
            return
        path = journal_path(self.run_dir)
        if path.exists():
            try:
                with Journal(path) as journal:
                    journal.audit("daemon", "gave_up", str(exc))
            except Exception:  # noqa: BLE001 - e.g. the same read-only folder: the error line says it
                pass
        self.log.error("trainer gave_up", detail=str(exc))

    def _remove_pid_file(self) -> None:
        try:
            child_pid_path(self.run_dir).unlink(missing_ok=True)
        except OSError as exc:  # a folder made read-only under the run: the next daemon checks the pid
            self.log.warning("cannot remove the trainer pid file", path=str(child_pid_path(self.run_dir)),
                             error=str(exc))

    def _stop_reason(self, run: _ChildRun) -> str | None:
        """Why this child's loop ended, as it told the journal (None: it did not say; a
        child command that is not ``agent.child``)."""
        assert self.journal is not None
        status = self.journal.get_state(CHILD_STATUS_KEY)
        if isinstance(status, dict) and status.get("pid") == run.child.pid:
            return str(status.get("reason"))
        return None

    def _wait_child(self) -> int | None:
        """The child's exit code, or None when the daemon is asked to stop."""
        run = self._run
        assert run is not None
        while not self._stop.is_set():
            code = run.child.wait(0.25)
            if code is not None:
                return code
        return None

    def _stop_child(self) -> int:
        run = self._run
        grace = self.proc_cfg.stop_grace_seconds
        code: int | None = None
        if run is not None:
            if run.child.running():
                self.log.info("stopping trainer", signal="SIGTERM", grace_seconds=grace, reason=self._stop_signal)
                run.child.stop(grace, cancel=self._kill_now, on_kill=lambda: self.log.warning(
                    "trainer did not stop in time; killing it", grace_seconds=grace))
            code = run.child.returncode
            with self._run_lock:
                self._catch_up(run)
            self._remove_pid_file()
        self._event("stopped", f"daemon stopped by {self._stop_signal}; trainer "
                    f"{describe_exit(code) if code is not None else 'not running'} at step "
                    f"{run.max_step if run else None}", exit=code)
        return EXIT_OK

    def _teardown(self) -> None:
        run = self._run
        if run is not None and run.child.running():  # leaving on an error: do not leave a trainer behind
            self.log.warning("daemon exiting with the trainer running; stopping it", child_pid=run.child.pid)
            run.child.stop(self.proc_cfg.stop_grace_seconds, cancel=self._kill_now)
            self._remove_pid_file()
        if self._scheduler is not None:
            try:
                self._scheduler.shutdown(wait=True)
            except Exception:  # noqa: BLE001 - already stopped
                pass
        if self._notifications is not None:  # the last events (finished, stopped) go out now, if they can
            try:
                self._notifications.stop()
            except Exception:  # noqa: BLE001 - what is not delivered waits in the outbox
                self.log.exception("stopping notifications failed")
        if self._follower is not None:
            self._follower.stop()
        if self.journal is not None:
            self.journal.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- signals --------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # embedded (tests): the caller stops it with request_stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.request_stop(signal.Signals(signum).name)

    def request_stop(self, reason: str = "request") -> None:
        """Stop as on SIGTERM (a second call: kill the trainer without waiting)."""
        if self._stop.is_set():
            self._kill_now.set()
            return
        self._stop_signal = reason
        self._stop.set()

    # -- the child --------------------------------------------------------------------------------
    def _command(self) -> list[str]:
        if self.child_command is not None:
            return self.child_command
        args = ["--config", str(self.config_path)]
        t = self.config.train
        if t.nproc_per_node > 1 or t.rdzv_endpoint:
            # Several training processes: torchrun is the child, and the group is one trainer
            # (signals go to its process group; any rank failing ends torchrun).
            return torchrun_argv(t.nproc_per_node, t.nnodes, t.node_rank, t.rdzv_endpoint, CHILD_MODULE, args)
        return [sys.executable, "-m", CHILD_MODULE, *args]

    def _launch(self, restart_detail: str | None) -> None:
        assert self.journal is not None
        latest = self.journal.latest_steps(1)
        start_step = latest[0].step if latest else None
        cursor = self.journal.last_telemetry_seq()
        offset = _file_size(self.log_path)
        kind = "restarted" if restart_detail is not None else "started"
        env = trainer_env(self.config)  # an allow-list: no bot token, no other secrets
        command = self._command()
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        child = ChildProcess.start(command, env=env, log_path=self.log_path,
                                   banner=f"--- {stamp} daemon {os.getpid()}: trainer {kind} ---\n")
        now = time.monotonic()
        with self._run_lock:
            self._run = _ChildRun(child=child, started=now, start_step=start_step, log_offset=offset, cursor=cursor,
                                  last_activity=now, log_size=_file_size(self.log_path))
        with atomic_write(child_pid_path(self.run_dir), "w", encoding="utf-8") as fh:
            json.dump({"pid": child.pid, "config": str(self.config_path), "daemon_pid": os.getpid(),
                       "started_at": time.time()}, fh)
        where = f"resuming after step {start_step}" if start_step is not None else "no telemetry yet"
        self._event(kind, f"pid {child.pid}; {where}" + (f"; {restart_detail}" if restart_detail else ""),
                    child_pid=child.pid)

    def _stop_orphan(self) -> None:
        """Stop a trainer left running by a daemon that died (its pid file names it)."""
        path = child_pid_path(self.run_dir)
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            pid = int(info["pid"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            return
        cmdline = _proc_cmdline(pid)
        ours = proc_alive(pid) and CHILD_MODULE in cmdline and str(self.config_path) in cmdline
        if ours:
            grace = self.proc_cfg.stop_grace_seconds
            self.log.warning("orphaned trainer found; stopping it", pid=pid, grace_seconds=grace)
            t0 = time.monotonic()
            # (gone between the check and the signal: it stopped as if by SIGTERM)
            how = ChildProcess.adopt(pid).stop(grace, cancel=self._kill_now) or "SIGTERM"
            detail = f"pid {pid} stopped with {how} in {time.monotonic() - t0:.1f} s"
            assert self.journal is not None
            self.journal.audit("daemon", "orphan_stopped", detail)
            self.log.warning("orphaned trainer stopped", pid=pid, signal=how,
                             seconds=round(time.monotonic() - t0, 2))
        path.unlink(missing_ok=True)

    def _catch_up(self, run: _ChildRun) -> bool:
        """Read telemetry rows the child wrote since last time; True if there were any."""
        assert self.journal is not None
        n, step, top = self.journal.telemetry_progress(run.cursor)
        if not n:
            return False
        run.cursor = top
        run.max_step = step if run.max_step is None else max(run.max_step, step)
        run.rows_seen = True
        return True

    # -- events ----------------------------------------------------------------------------------
    def _event(self, kind: str, detail: str, **fields: Any) -> None:
        """A child event: the supervisor's notice (which records it in the journal), a log event.

        ``Supervisor.note_child_event`` writes the audit row (actor ``daemon``) and the
        notification; if it fails, the daemon writes the audit row itself.
        """
        noted = False
        if self.supervisor is not None:
            try:
                with self._sup_lock:
                    self.supervisor.note_child_event(kind, detail)
                noted = True
            except Exception:  # noqa: BLE001 - the supervisor's bug must not stop the daemon
                self.log.exception("supervisor.note_child_event failed", kind=kind)
        if not noted and self.journal is not None:
            try:
                self.journal.audit("daemon", kind, detail)
            except Exception:  # noqa: BLE001 - never lose the log line over the journal
                self.log.exception("journal audit failed", kind=kind)
        level = "warning" if kind in ("crashed", "hung", "gave_up") else "info"
        if kind == "gave_up":
            level = "error"
        summary = detail.split("\n", 1)[0]
        getattr(self.log, level)(f"trainer {kind}", detail=summary, **fields)

    def _phase(self) -> str | None:
        phase = getattr(self.supervisor, "phase", None)
        return getattr(phase, "value", phase) if phase is not None else None

    # -- scheduled jobs -----------------------------------------------------------------------------
    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        sched = BackgroundScheduler(timezone=_dt.timezone.utc, daemon=True, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        sched.add_job(self._job(self._tick), "interval", seconds=self.cfg.tick_seconds, id="supervisor-tick")
        watch = max(0.2, min(2.0, self.proc_cfg.hang_seconds / 5))
        sched.add_job(self._job(self._watchdog), "interval", seconds=watch, id="stall-watchdog")
        if self.cfg.digest_minutes > 0:
            sched.add_job(self._job(self._digest), "interval", minutes=self.cfg.digest_minutes, id="digest")
        sched.add_job(self._job(self._wal_checkpoint), "interval", seconds=WAL_CHECKPOINT_SECONDS, id="wal-checkpoint")
        sched.start()
        self._scheduler = sched

    def _start_notifications(self) -> None:
        from agent.notify import start_notifications

        probes = self.config.eval.probe_sentences
        self._notifications = start_notifications(
            self.cfg.telegram, journal=self.journal, scheduler=self._scheduler, run_dir=self.run_dir,
            max_steps=self.config.train.max_steps, probe_text=probes[0] if probes else None, log=self.log)

    def _job(self, fn: Callable[[], None]) -> Callable[[], None]:
        name = fn.__name__.lstrip("_")

        def job() -> None:
            try:
                fn()
            except Exception:  # noqa: BLE001 - log and keep the schedule
                self.log.exception("scheduled job failed", job=name)
        job.__name__ = name
        return job

    def _tick(self) -> None:
        if self.supervisor is not None:
            with self._sup_lock:
                self.supervisor.tick()

    def _watchdog(self) -> None:
        """SIGKILL a child that wrote no telemetry for hang_seconds while the run is not paused.

        Before its first telemetry row (imports, data scan, resume) output to the trainer
        log counts as life and the limit is at least the start-up grace; after its loop
        has ended (journal state ``child_status``) it has ``stop_grace_seconds`` to exit.
        """
        if self._stop.is_set():
            return
        with self._run_lock:
            run = self._run
            if run is None or run.hung or not run.child.running():
                return
            now = time.monotonic()
            if self._catch_up(run):
                run.last_activity = now
            elif not run.rows_seen:
                size = _file_size(self.log_path)
                if size != run.log_size:
                    run.log_size, run.last_activity = size, now
            limit = self.proc_cfg.hang_seconds
            if not run.rows_seen:
                limit = max(limit, self.startup_grace)
            silent = now - run.last_activity
            if silent <= limit:
                return
            assert self.journal is not None
            if self.journal.is_paused():
                run.last_activity = now  # a paused trainer writes nothing, rightly
                return
            status = self.journal.get_state(CHILD_STATUS_KEY)
            if isinstance(status, dict) and status.get("pid") == run.child.pid and status.get("status") == "stopping":
                if run.stopping_since is None:
                    run.stopping_since = now
                if now - run.stopping_since <= self.proc_cfg.stop_grace_seconds:
                    return
                why = (f"its loop ended ({status.get('reason')}) but it did not exit within "
                       f"{self.proc_cfg.stop_grace_seconds:g} s")
            else:
                why = f"no telemetry for {silent:.0f} s (limit {limit:g} s) after step {run.max_step}"
            run.hung = True
        self._event("hung", f"pid {run.child.pid}: {why}; killed with SIGKILL", step=run.max_step)
        run.child.kill()

    def _digest(self) -> None:
        assert self.journal is not None
        text = digest_text(self.journal.status_summary(), self.run_dir.name)
        period = max(self.cfg.digest_minutes * 60, 1)
        self.journal.outbox_put("digest", text, dedupe_key=f"digest:{int(time.time() // period)}")

    def _wal_checkpoint(self) -> None:
        assert self.journal is not None
        self.journal.checkpoint_wal("PASSIVE")


def run_daemon(config: RunConfig, *, log: Any = None, supervisor_factory: SupervisorFactory | None = None,
               echo_child: bool | None = True, echo_stream: IO[str] | None = None,
               child_command: Sequence[str] | None = None,
               startup_grace_seconds: float = STARTUP_GRACE_SECONDS, new_journal: bool = False) -> int:
    """Run a supervised training until it finishes (0), is stopped (0), or the daemon gives up (1).

    ``log``: a structlog logger (default ``agent.logs.get_logger()``).
    ``supervisor_factory(journal, cfg, warmup_steps=N)``: default the real
    ``agent.supervisor.Supervisor``. ``echo_child``: copy the trainer's output to
    ``echo_stream`` (default stdout); None: only when that is a terminal.
    ``child_command``: replaces ``python -m agent.child --config ...`` (tests).
    ``new_journal``: start a new journal where the run's is missing or empty although
    its folder holds checkpoints (refused otherwise).
    Returns 2 when the child reports a user error (config, data), which is not retried.
    Raises UserError for an invalid ``supervisor`` section, a run already supervised, a
    journal SQLite cannot read, or a missing or empty journal beside checkpoints.
    """
    return Daemon(config, log=log, supervisor_factory=supervisor_factory, echo_child=echo_child,
                  echo_stream=echo_stream, child_command=child_command,
                  startup_grace_seconds=startup_grace_seconds, new_journal=new_journal).run()
