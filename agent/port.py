"""The trainer's side of the run journal: a :class:`trainer.control.ControlPort` on SQLite.

The trainer (the daemon's child process) builds one ``JournalPort`` on the run's
journal and passes it to ``Trainer(port=...)``. Costs per call (see the tests'
micro-benchmark): ``emit_step`` appends to a list (well under a microsecond) and
every ``flush_every_steps`` records or ``flush_seconds`` writes the batch in one
transaction (no fsync); ``poll`` is one indexed SELECT that finds nothing on almost
every step. Evaluations, checkpoints and acknowledgements are written at once and
fsynced, after the buffered steps and in the same transaction, so the journal's order
is the trainer's order.

WAL checkpoints: by default the connection that commits past ~4 MB of WAL copies it
into the database file, which now and then makes one flush take 5-50 ms. A daemon
that wants the trainer free of that passes ``autocheckpoint=False`` and calls
``Journal.checkpoint_wal()`` from a periodic job.

On ``kill -9`` the buffered, unflushed steps are lost (at most ``flush_every_steps``
records or ``flush_seconds`` of training); nothing already written is torn.

Delivery: ``poll`` marks the commands it returns as delivered. The first poll of a
port also returns commands that an earlier trainer process received but never
acknowledged (it died in between): the trainer acknowledges a command id it has
already applied as a duplicate, so redelivery is safe.
"""

from __future__ import annotations

import atexit
import sqlite3
import sys
import time
from pathlib import Path

from agent.journal import Journal
from trainer.control import CheckpointRecord, Command, CommandResult, EvalRecord, StepTelemetry, parse_command


class JournalPort:
    def __init__(self, path: str | Path, *, flush_every_steps: int = 50, flush_seconds: float = 1.0,
                 redeliver_unacknowledged: bool = True, busy_timeout: float = 10.0,
                 autocheckpoint: bool = True) -> None:
        if flush_every_steps < 1:
            raise ValueError("flush_every_steps must be >= 1")
        self.journal = Journal(path, synchronous="NORMAL", busy_timeout=busy_timeout, autocheckpoint=autocheckpoint)
        self.flush_every_steps = flush_every_steps
        self.flush_seconds = flush_seconds
        self._buffer: list[StepTelemetry] = []
        self._deadline = time.monotonic() + flush_seconds
        self._redeliver = redeliver_unacknowledged
        self._last_step = -1
        self.closed = False
        atexit.register(self.close)  # a normal exit (even without close()) flushes the buffer

    @property
    def buffered(self) -> int:
        """Step records emitted but not yet written."""
        return len(self._buffer)

    # -- telemetry --------------------------------------------------------------------------
    def emit_step(self, record: StepTelemetry) -> None:
        buffer = self._buffer
        buffer.append(record)
        if len(buffer) >= self.flush_every_steps or time.monotonic() >= self._deadline:
            self.flush()

    def _take(self) -> list[StepTelemetry]:
        steps = self._buffer
        if steps:
            self._last_step = steps[-1].step
            self._buffer = []
        self._deadline = time.monotonic() + self.flush_seconds
        return steps

    def flush(self) -> None:
        """Write the buffered step records in one transaction."""
        steps = self._take()
        if not steps:
            return
        try:
            self.journal.add_steps(steps)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            # Another writer held the journal past busy_timeout: keep the records and
            # try again at the next flush rather than stop training for telemetry.
            self._buffer[:0] = steps
            print(f"journal busy, {len(self._buffer)} step records kept for the next flush", file=sys.stderr)

    def emit_eval(self, record: EvalRecord) -> None:
        self.journal.add_eval(record, steps=self._take())

    def emit_checkpoint(self, record: CheckpointRecord) -> None:
        self.journal.add_checkpoint(record, steps=self._take())

    # -- commands -----------------------------------------------------------------------------
    def poll(self) -> list[Command]:
        if self._buffer and time.monotonic() >= self._deadline:
            self.flush()  # a paused trainer emits no steps but still polls
        rows = self.journal._deliverable(self._redeliver)
        self._redeliver = False
        if not rows:
            return []
        commands: list[Command] = []
        for row in rows:
            try:
                commands.append(parse_command(row["payload"]))
            except Exception as exc:  # a row the trainer cannot read: answer it here, never retry it
                step = self._buffer[-1].step if self._buffer else self._last_step
                self.journal.acknowledge(CommandResult(command_id=row["id"], kind=row["kind"], ok=False, step=step,
                                                       detail=f"journal: unreadable command: {exc}"),
                                         steps=self._take())
        if commands:
            self.journal.mark_delivered([c.id for c in commands], steps=self._take())
        return commands

    def acknowledge(self, result: CommandResult) -> None:
        self.journal.acknowledge(result, steps=self._take())

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        try:
            self.flush()
        finally:
            self.journal.close()

    def __enter__(self) -> "JournalPort":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
