"""Telemetry, evaluations and checkpoints: what the trainer writes as it trains.

Steps are *not* unique: after a rollback (or a restart from an older checkpoint) the
trainer emits the same step numbers again. Telemetry rows are therefore ordered by
``seq`` (insertion order); use :meth:`TelemetryTables.telemetry_after` with the last
``seq`` seen as a cursor.
"""

from __future__ import annotations

import math
import operator
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from agent.journal.connection import JournalConnection
from agent.journal.rows import (
    CheckpointEntry,
    EvalRow,
    TelemetryRow,
    checkpoint_health,
    dumps,
    num,
    read_checkpoint,
)
from trainer.control import CheckpointRecord, EvalRecord, StepTelemetry

_STEP_COLUMNS = ("step", "wall_time", "epoch", "lr", "loss", "mel_loss", "mel_postnet_loss", "gate_loss",
                 "guided_attention_loss", "grad_norm", "grad_clip", "guided_attention_weight", "gate_pos_weight",
                 "step_seconds", "skipped_steps", "finite")
_INSERT_STEP = (f"INSERT INTO telemetry ({', '.join(_STEP_COLUMNS)}, record) "
                f"VALUES ({', '.join('?' * (len(_STEP_COLUMNS) + 1))})")
_EVAL_COLUMNS = ("step", "wall_time", "val_loss", "val_mel_loss", "val_mel_postnet_loss", "val_gate_loss",
                 "val_guided_attention_loss", "diagonality", "focus", "aligned_fraction", "gate_accuracy",
                 "alignment_image", "speech_score", "mcd_dtw")
_INSERT_EVAL = (f"INSERT INTO evals ({', '.join(_EVAL_COLUMNS)}, record) "
                f"VALUES ({', '.join('?' * (len(_EVAL_COLUMNS) + 1))})")


_step_values = operator.attrgetter(*_STEP_COLUMNS)
_eval_values = operator.attrgetter(*_EVAL_COLUMNS)


# SQLite stores a bound NaN as NULL by itself, so records bind as they are (C speed).
def _step_row(r: StepTelemetry) -> tuple:
    return (*_step_values(r), dumps(r.__dict__))


def _eval_row(r: EvalRecord) -> tuple:
    return (*_eval_values(r), dumps(r.__dict__))


def insert_steps(con: sqlite3.Connection, steps: Sequence[StepTelemetry]) -> None:
    """Append step records inside the caller's transaction (an evaluation, a checkpoint and a
    command's delivery or acknowledgement carry the steps before them in theirs)."""
    if steps:
        con.executemany(_INSERT_STEP, map(_step_row, steps))


class TelemetryTables(JournalConnection):
    """The ``telemetry``, ``evals`` and ``checkpoints`` tables."""

    # -- telemetry, evaluations ----------------------------------------------------------------
    def add_steps(self, records: Sequence[StepTelemetry], *, durable: bool = False) -> None:
        """Append step records in one transaction."""
        if records:
            with self._write(durable) as con:
                insert_steps(con, records)

    def add_eval(self, record: EvalRecord, *, steps: Sequence[StepTelemetry] = ()) -> int:
        """Append an evaluation (after ``steps``, in the same durable transaction); returns its seq."""
        with self._write() as con:
            insert_steps(con, steps)
            return con.execute(_INSERT_EVAL, _eval_row(record)).lastrowid

    def latest_steps(self, n: int) -> list[StepTelemetry]:
        """The newest n step records, oldest first."""
        with self._lock:
            rows = self._con.execute("SELECT record FROM telemetry ORDER BY seq DESC LIMIT ?", (n,)).fetchall()
        return [StepTelemetry.model_validate_json(r[0]) for r in reversed(rows)]

    def telemetry_after(self, seq: int, limit: int | None = None) -> list[TelemetryRow]:
        """Rows written after the row ``seq`` (0: from the start): a cursor for followers."""
        with self._lock:
            rows = self._con.execute("SELECT seq, record FROM telemetry WHERE seq > ? ORDER BY seq LIMIT ?",
                                     (seq, -1 if limit is None else limit)).fetchall()
        return [TelemetryRow(r[0], StepTelemetry.model_validate_json(r[1])) for r in rows]

    def latest_evals(self, n: int) -> list[EvalRecord]:
        """The newest n evaluations, oldest first."""
        with self._lock:
            rows = self._con.execute("SELECT record FROM evals ORDER BY seq DESC LIMIT ?", (n,)).fetchall()
        return [EvalRecord.model_validate_json(r[0]) for r in reversed(rows)]

    def evals_after(self, seq: int, limit: int | None = None) -> list[EvalRow]:
        with self._lock:
            rows = self._con.execute("SELECT seq, record FROM evals WHERE seq > ? ORDER BY seq LIMIT ?",
                                     (seq, -1 if limit is None else limit)).fetchall()
        return [EvalRow(r[0], EvalRecord.model_validate_json(r[1])) for r in rows]

    def loss_curve(
        self, max_points: int = 4000
    ) -> tuple[list[tuple[int, float | None]], list[tuple[int, float | None]]]:
        """``(step, loss)`` of every k-th step row in the order written (at most about
        ``max_points``, the newest always included) and ``(step, val_loss)`` of every
        evaluation: for a loss plot. Reads the columns, not the JSON records."""
        with self._read() as con:
            top = con.execute("SELECT coalesce(max(seq), 0) FROM telemetry").fetchone()[0]
            every = max(1, math.ceil(top / max_points))
            steps = con.execute("SELECT step, loss FROM telemetry WHERE seq % ? = 0 OR seq = ? ORDER BY seq",
                                (every, top)).fetchall()
            evals = con.execute("SELECT step, val_loss FROM evals ORDER BY seq").fetchall()
        return [(r[0], r[1]) for r in steps], [(r[0], r[1]) for r in evals]

    # -- checkpoints ---------------------------------------------------------------------------
    def add_checkpoint(self, record: CheckpointRecord, *, steps: Sequence[StepTelemetry] = ()) -> CheckpointEntry:
        """Register a saved checkpoint with its health at save (after ``steps``, one durable transaction)."""
        health = checkpoint_health(record)
        with self._write() as con:
            insert_steps(con, steps)
            cid = con.execute(
                "INSERT INTO checkpoints (step, path, wall_time, reason, val_loss, diagonality, finite, health) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record.step, record.path, record.wall_time, record.reason, num(record.val_loss),
                 num(record.diagonality), int(record.finite), health)).lastrowid
            return read_checkpoint(con.execute("SELECT * FROM checkpoints WHERE id = ?", (cid,)).fetchone())

    def checkpoints(self, limit: int | None = None) -> list[CheckpointEntry]:
        """Registered checkpoints, newest registration first."""
        with self._lock:
            rows = self._con.execute("SELECT * FROM checkpoints ORDER BY id DESC LIMIT ?",
                                     (-1 if limit is None else limit,)).fetchall()
        return [read_checkpoint(r) for r in rows]

    # -- the daemon's progress questions (cheap: aggregates over the seq index) ---------
    def last_telemetry_seq(self) -> int:
        """The newest telemetry row's seq (0: none yet): where a new child's cursor starts."""
        with self._lock:
            return self._con.execute("SELECT coalesce(max(seq), 0) FROM telemetry").fetchone()[0]

    def telemetry_progress(self, seq: int) -> tuple[int, int | None, int]:
        """(rows after ``seq``, the highest step among them, the highest seq; ``seq`` when none)."""
        with self._lock:
            n, step, top = self._con.execute("SELECT count(*), max(step), max(seq) FROM telemetry WHERE seq > ?",
                                             (seq,)).fetchone()
        return n, step, top if top is not None else seq


class NewestStep:
    """The newest step in a journal that may not exist yet, for a progress bar.

    Its own read-only connection, opened once the file exists; on any SQLite error (not
    created yet, busy, switched to WAL meanwhile) it answers None and connects anew next
    time, so a poller never fails and never writes.
    """

    def __init__(self, path: Path, timeout: float = 2.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._con: sqlite3.Connection | None = None

    def read(self) -> int | None:
        if self._con is None:
            if not self.path.exists():
                return None
            try:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._con = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None,
                                            check_same_thread=False)
            except sqlite3.Error:
                return None
        try:
            row = self._con.execute("SELECT step FROM telemetry ORDER BY seq DESC LIMIT 1").fetchone()
        except sqlite3.Error:
            self.close()
            return None
        return int(row[0]) if row else None

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
