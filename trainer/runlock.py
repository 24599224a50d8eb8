"""One trainer per run folder: the run's train lock, and no unsupervised trainer beside a daemon.

Whoever trains a run folder (``smart-tuner train``/``demo`` through
:func:`trainer.cli_train.run_training`, and the daemon's child :mod:`agent.child`)
holds ``RUN/train.lock`` locked (``flock``) while it trains; the file names its pid.
``train`` also refuses a folder whose ``RUN/daemon.lock`` a live daemon holds (see
:mod:`agent.daemon`): between two children (a restart's backoff) no child holds the
train lock, and the daemon would start one. The daemon's child is admitted: it is
started as ``python -m agent.child``, which takes the train lock with ``supervised=True``.

The kernel drops a ``flock`` when its last holder exits, ``kill -9`` included, so a
lock is never stale. Forked helpers (DataLoader workers) share the lock while they
live, and outlive a killed trainer by a few seconds: a lock held after the pid it names
is gone is waited for, briefly, instead of refused.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from trainer.errors import UserError

# A killed trainer's DataLoader workers notice within 5 s (torch's status check interval).
LEFTOVER_WAIT_SECONDS = 15.0


def train_lock_path(run_dir: str | Path) -> Path:
    """Held (flock) by the process training the run, the daemon's child or ``smart-tuner train``."""
    return Path(run_dir) / "train.lock"


def daemon_lock_path(run_dir: str | Path) -> Path:
    """Held (flock) by the run's daemon while it lives (taken by :mod:`agent.daemon`)."""
    return Path(run_dir) / "daemon.lock"


def _pid_in(fd: int) -> str:
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"


def proc_alive(pid: int) -> bool:
    """Running (not gone, not a zombie awaiting its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not Path("/proc").is_dir()  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _alive(pid: str) -> bool:
    """The pid a lock file names (text) is running; no pid written yet counts as alive."""
    try:
        return proc_alive(int(pid))
    except ValueError:
        return True  # its holder is starting


def lock_holder(path: str | Path) -> str | None:
    """The pid named in a lock file that a live process holds, or None when nobody holds it.

    It tests the lock with a shared ``flock`` taken and dropped at once (the file is not
    created if it does not exist).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _pid_in(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class TrainLock:
    """The run's train lock, held until :meth:`release` (or the process's exit)."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "TrainLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold_train_lock(run_dir: str | Path, *, supervised: bool = False,
                    leftover_wait: float = LEFTOVER_WAIT_SECONDS) -> TrainLock:
    """Take the run's train lock, or raise UserError naming the process in the way.

    ``supervised=False`` (``smart-tuner train``): a run folder a live daemon supervises
    is refused as well. ``supervised=True``: the daemon's own child.
    """
    run_dir = Path(run_dir)
    if not supervised:
        daemon = lock_holder(daemon_lock_path(run_dir))
        if daemon is not None:
            raise UserError(f"{run_dir} is supervised by a running daemon (pid {daemon}), whose trainer writes its "
                            f"checkpoints; stop it first (smart-tuner stop --run-dir {run_dir}) or use another run_dir")
    path = train_lock_path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # a read-only or foreign run folder: say so in one line
        from trainer.fsutil import storage_error

        err = storage_error(exc, run_dir)
        if err is None:
            raise
        raise err from None
    deadline = time.monotonic() + leftover_wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = _pid_in(fd)
            if _alive(holder) or time.monotonic() >= deadline:
                os.close(fd)
                raise UserError(f"{run_dir} is already being trained by another process (pid {holder}); stop it "
                                "first or use another run_dir") from None
            time.sleep(0.2)  # the holder is gone; its forked helpers are on their way out
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return TrainLock(fd, path)
