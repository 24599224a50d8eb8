"""The trainer child as the daemon sees it: a process to start, watch and stop.

A :class:`ChildProcess` is one trainer process: either one this daemon started
(:meth:`ChildProcess.start`: its own session, so a daemon killed with ``kill -9`` leaves
it training; its output appended to the trainer log by the process itself, no pipe) or
one a dead daemon left behind (:meth:`ChildProcess.adopt`, by the pid in the run's pid
file). Both stop the one way (:meth:`ChildProcess.stop`): SIGTERM, so that the trainer
finishes its step and writes a final checkpoint; SIGKILL once the grace period is over
(or at once when the caller's ``cancel`` is set: a second stop signal to the daemon).

What an exit *means* (the run finished, a crash to restart, an error no restart heals)
is the daemon's judgement; :func:`agent.procs.describe_exit` puts an exit code in words.
"""

from __future__ import annotations

import errno
import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from agent.procs import proc_alive
from trainer.errors import UserError
from trainer.fsutil import storage_error

# An adopted process is not this daemon's child: it cannot be reaped, only watched until
# it is gone; this long at most after SIGKILL.
ADOPTED_KILL_WAIT_SECONDS = 10.0


class LaunchError(UserError):
    """The trainer's command cannot be started (not found, not executable): a restart cannot fix it."""


def launch_error_message(command: Sequence[str], exc: OSError) -> str:
    """One line for a trainer command that cannot be started."""
    program = command[0] if command else "(empty command)"
    why = exc.strerror or str(exc)
    hint = {errno.ENOENT: "it does not exist: reinstall, or recreate the virtual environment",
            errno.EACCES: f"it is not executable by this user: chmod +x {program}, or fix the virtual environment",
            errno.ENOEXEC: "it is not a program this system can run"}.get(exc.errno or 0, "check the installation")
    return f"cannot start the trainer: {program}: {why} ({hint}); command: {shlex.join(command)}"


class ChildProcess:
    """One trainer process (see the module docstring)."""

    def __init__(self, pid: int, popen: subprocess.Popen | None = None) -> None:
        self.pid = pid
        self._popen = popen

    @classmethod
    def start(cls, command: Sequence[str], *, env: Mapping[str, str], log_path: Path, banner: str) -> ChildProcess:
        """Start ``command`` in a session of its own, ``banner`` and then its output appended
        to ``log_path``. Raises :class:`trainer.fsutil.StorageError` when the log cannot be
        written, :class:`LaunchError` when the command cannot be started."""
        try:
            logf = open(log_path, "ab")
        except OSError as exc:
            raise (storage_error(exc, log_path) or exc) from None
        with logf:
            try:
                logf.write(banner.encode())
                logf.flush()
            except OSError as exc:
                raise (storage_error(exc, log_path) or exc) from None
            try:
                popen = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, env=dict(env), start_new_session=True,
                                         close_fds=True)
            except OSError as exc:
                raise LaunchError(launch_error_message(command, exc)) from None
        return cls(popen.pid, popen)

    @classmethod
    def adopt(cls, pid: int) -> ChildProcess:
        """A process this daemon did not start (an orphan of a dead daemon), known by its pid."""
        return cls(pid)

    # -- watching -----------------------------------------------------------------------------
    @property
    def returncode(self) -> int | None:
        """The exit code once it has exited (None while it runs, and always for an adopted one)."""
        return self._popen.poll() if self._popen is not None else None

    def running(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return proc_alive(self.pid)

    def wait(self, timeout: float) -> int | None:
        """Its exit code, or None if it still runs after ``timeout`` seconds (a started one only)."""
        assert self._popen is not None, "an adopted process has no exit code to wait for"
        try:
            return self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _wait_gone(self, seconds: float, cancel: threading.Event | None) -> bool:
        """Has it exited within ``seconds``? Gives up early when ``cancel`` is set."""
        deadline = time.monotonic() + seconds
        if self._popen is not None:
            while time.monotonic() < deadline and not (cancel is not None and cancel.is_set()):
                if self.wait(0.25) is not None:
                    return True
            return self._popen.poll() is not None
        while proc_alive(self.pid):
            if time.monotonic() >= deadline or (cancel is not None and cancel.is_set()):
                return False
            time.sleep(0.1)
        return True

    # -- stopping -----------------------------------------------------------------------------
    def send(self, sig: signal.Signals) -> None:
        """Send a signal; one that has exited meanwhile is no error."""
        try:
            if self._popen is not None:
                self._popen.send_signal(sig)  # (does nothing once the exit is reaped)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.send(signal.SIGKILL)

    def stop(self, grace: float, *, cancel: threading.Event | None = None,
             on_kill: Callable[[], None] | None = None) -> str | None:
        """SIGTERM, up to ``grace`` seconds (cut short by ``cancel``) for it to exit, then
        SIGKILL (``on_kill`` is called just before) and wait for it to go. Returns the
        signal that ended it (``"SIGTERM"`` or ``"SIGKILL"``), None if it was not running."""
        if not self.running():
            return None
        self.send(signal.SIGTERM)
        if self._wait_gone(grace, cancel):
            return "SIGTERM"
        if on_kill is not None:
            on_kill()
        self.kill()
        if self._popen is not None:
            self._popen.wait()  # SIGKILL cannot be refused: reap it
        else:
            self._wait_gone(ADOPTED_KILL_WAIT_SECONDS, cancel)
        return "SIGKILL"
