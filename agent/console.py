"""The daemon's console on a terminal: one human stream.

``smart-tuner run`` / ``demo`` on a terminal (``--log-format auto``, the default, or
``--log-format human``) print

* the trainer's own lines (``RUN/trainer.log``, echoed by the daemon) as they are;
* the supervisor's events as short lines, ``[supervisor] ...`` (``agent.logs``'
  human renderer: no timestamps, no run id), each notification once;
* a live progress bar (tqdm) at the bottom: step of ``train.max_steps``, steps/s, ETA,
  read from the run's journal (the telemetry the trainer writes every step).

Everything goes through :class:`HumanConsole`, which writes whole lines above the
bar (``tqdm.write``), so the bar and the lines never tear each other. Off a terminal
(systemd, a pipe) none of this is used: the daemon logs JSON lines (``agent.logs``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import IO, Any

POLL_SECONDS = 0.5
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}, ETA {remaining}, {rate_fmt}]"
BAR_FORMAT_NO_TOTAL = "{desc} {n_fmt} [{elapsed}, {rate_fmt}]"


class HumanConsole:
    """Lines and a progress bar on one terminal stream (thread-safe).

    ``journal``: the run's ``journal.sqlite`` (it may not exist yet), polled read-only
    for the newest step; ``max_steps``: the bar's total (None: no ETA).
    """

    def __init__(self, out: IO[str], *, journal: Path | None = None, max_steps: int | None = None,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self.out = out
        self.journal = Path(journal) if journal is not None else None
        self.max_steps = max_steps
        self.poll_seconds = poll_seconds
        self._lock = threading.RLock()
        self._partial = ""
        self._bar: Any = None
        self._steps: Any = None  # agent.journal.NewestStep, made on the first poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stream = _LineStream(self)

    # -- lines -------------------------------------------------------------------------------
    def line(self, text: str) -> None:
        """Print one line (or several) above the progress bar."""
        with self._lock:
            try:
                if self._bar is not None:
                    from tqdm import tqdm

                    tqdm.write(text, file=self.out)
                else:
                    self.out.write(text + "\n")
                self.out.flush()
            except (OSError, ValueError):  # the terminal is gone: keep running silently
                pass

    def _write(self, data: str) -> int:
        with self._lock:
            data = self._partial + data
            complete, sep, self._partial = data.rpartition("\n")
            if sep:
                for text in complete.split("\n"):
                    self.line(text.rstrip("\r"))
        return len(data)

    # -- the progress bar ----------------------------------------------------------------------
    def start(self) -> "HumanConsole":
        if self.journal is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="console-progress", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.poll()

    def _newest_step(self) -> int | None:
        if self.journal is None:
            return None
        if self._steps is None:
            from agent.journal import NewestStep  # (its SQL lives with the journal's)

            self._steps = NewestStep(self.journal)
        return self._steps.read()

    def poll(self) -> None:
        """Move the bar to the journal's newest step (creating it on the first one)."""
        with self._lock:
            step = self._newest_step()
            if step is None:
                return
            try:
                if self._bar is None:
                    from tqdm import tqdm

                    total = self.max_steps
                    # A terminal that reports no size (0 x 0: a bare pty) would hide the bar.
                    sized = min(_size(self.out)) > 0
                    self._bar = tqdm(total=total, initial=step, file=self.out, desc="step", unit="step",
                                     smoothing=0, dynamic_ncols=sized, ncols=None if sized else 100,
                                     nrows=None if sized else 24, mininterval=0.25, leave=True,
                                     bar_format=BAR_FORMAT if total else BAR_FORMAT_NO_TOTAL)
                elif step != self._bar.n:
                    self._bar.update(step - self._bar.n)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        """Stop polling; the bar's last state stays on screen."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        with self._lock:
            if self._partial:
                self._partial, rest = "", self._partial
                self.line(rest)
            self.poll()
            if self._bar is not None:
                try:
                    self._bar.close()
                except (OSError, ValueError):
                    pass
                self._bar = None
            if self._steps is not None:
                self._steps.close()


def _size(out: IO[str]) -> tuple[int, int]:
    try:
        return tuple(os.get_terminal_size(out.fileno()))  # type: ignore[return-value]
    except (AttributeError, OSError, ValueError):
        return 0, 0


class _LineStream:
    """A file-like front of :class:`HumanConsole` (for structlog, logging and the trainer echo)."""

    def __init__(self, console: HumanConsole) -> None:
        self._console = console

    def write(self, data: str) -> int:
        return self._console._write(data)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        try:
            return self._console.out.isatty()
        except (AttributeError, ValueError):
            return False
