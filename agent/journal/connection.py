"""The connection to a run's journal: opening (read-write or read-only), migrating, and
the transactions every table group writes in.

Concurrency and durability
--------------------------
* WAL mode: readers never block the writer and vice versa; writers take turns
  (``busy_timeout`` waits for the other one).
* Every public write method is **one transaction**, started with ``BEGIN IMMEDIATE``
  so that a read-then-write (compare-and-set) cannot be interleaved with another
  connection's write. Two deciders racing on one proposal: exactly one wins.
* ``synchronous=FULL`` (the default of :class:`agent.journal.Journal`): a committed
  transaction is fsynced to the WAL before ``commit`` returns, so decisions and commands
  survive ``kill -9`` *and* a power cut. The trainer's port writes telemetry batches with
  ``synchronous=NORMAL`` (no fsync; still survives ``kill -9`` of the process, since
  the data is in the OS page cache, but the last batches may be lost on power loss)
  and switches to FULL for evaluations, checkpoints and acknowledgements.
* SQLite never tears a transaction: after a crash the journal holds every committed
  transaction and nothing of an uncommitted one.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Self

from agent.journal import schema
from agent.journal.errors import JournalEmptyError, JournalError, JournalVersionError, empty_message
from agent.journal.rows import AuditEntry, WalCheckpoint


def _connect_readonly(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """A connection that cannot change the file, nor create files beside it.

    With no ``-wal`` file beside it, no connection has the journal open (the last one to
    close copies the WAL back and removes it), so the file is complete and opened
    ``immutable``: SQLite then creates no ``-wal``/``-shm`` either (it would in plain
    ``mode=ro`` when the folder is writable, and fails with "attempt to write a readonly
    database" when it is not). A writer that starts meanwhile writes to a new WAL, not
    to this file (the daemon copies it back only once a minute). With a ``-wal`` file
    a writer is (or was) there: ``mode=ro`` reads the WAL too.
    """
    wal = path.with_name(path.name + "-wal")
    uri = path.resolve().as_uri() + ("?mode=ro" if wal.exists() else "?mode=ro&immutable=1")
    return sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False)


def history_state(path: str | Path) -> Literal["missing", "empty", "blank", "history"]:
    """What a run's journal file holds, read without changing it: ``missing`` (no file),
    ``empty`` (no journal in it: 0 bytes or no tables), ``blank`` (a journal in which
    nothing has happened: no telemetry and no audit row beyond its creation), ``history``.

    Raises ``sqlite3.DatabaseError`` for a file SQLite cannot read, :class:`JournalError`
    for an SQLite file that is not a run journal.
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    con = _connect_readonly(path, 10.0)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return "empty"
        if not {"meta", "telemetry", "audit"} <= tables:
            raise JournalError(f"{path} is an SQLite file but not a run journal")
        used = con.execute("SELECT EXISTS (SELECT 1 FROM telemetry) OR "
                           "EXISTS (SELECT 1 FROM audit WHERE actor != 'journal')").fetchone()[0]
        return "history" if used else "blank"
    finally:
        con.close()


class JournalConnection:
    """The connection behind a :class:`agent.journal.Journal` (see its docstring for the
    arguments); the table groups (``agent.journal.telemetry``, ``.proposals``, ``.trials``,
    ``.outbox``) add their reads and writes on top of it."""

    def __init__(self, path: str | Path, *, synchronous: Literal["FULL", "NORMAL"] = "FULL",
                 busy_timeout: float = 10.0, create: bool = True, autocheckpoint: bool = True,
                 readonly: bool = False) -> None:
        self.path = Path(path)
        if (readonly or not create) and not self.path.exists():
            raise JournalError(f"no run journal at {self.path}")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self._lock = threading.RLock()
        self._sync = synchronous
        self.readonly = readonly
        if readonly:
            self._con = _connect_readonly(self.path, busy_timeout)
            self._con.row_factory = sqlite3.Row
            try:
                self._con.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                self._check_readable()
            except BaseException:
                self._con.close()
                raise
            return
        if not create and not self._has_tables():
            raise JournalEmptyError(empty_message(self.path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None,
                                    check_same_thread=False)
        self._con.row_factory = sqlite3.Row
        try:
            self._con.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._set_wal(busy_timeout)
            self._con.execute(f"PRAGMA synchronous = {synchronous}")
            self._con.execute("PRAGMA foreign_keys = ON")
            if not autocheckpoint:  # another connection (the daemon's) checkpoints the WAL
                self._con.execute("PRAGMA wal_autocheckpoint = 0")
            self._migrate()
        except BaseException:
            self._con.close()
            raise

    # -- connection plumbing ----------------------------------------------------------
    def _set_wal(self, busy_timeout: float) -> None:
        # Switching a fresh file to WAL needs an exclusive moment; a second process
        # doing the same at once may get "locked" without the busy handler.
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                mode = self._con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise JournalError(f"{self.path}: cannot use WAL mode (got {mode!r}); is it on a network file system?")

    def _has_tables(self) -> bool:
        """Does the existing file hold any table? (Read without changing it.)"""
        con = _connect_readonly(self.path, 10.0)
        try:
            return con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] > 0
        finally:
            con.close()

    def _check_readable(self) -> None:
        """A read-only journal must be of this schema: it cannot be upgraded in place."""
        version = self._schema_version()
        if version == 0:
            raise JournalEmptyError(empty_message(self.path))
        if version > schema.SCHEMA_VERSION:
            raise JournalVersionError(
                f"{self.path} has journal schema version {version}, but this Smart Tuner reads up to "
                f"{schema.SCHEMA_VERSION}; upgrade smart-tuner to open it")
        if version < schema.SCHEMA_VERSION:
            raise JournalVersionError(
                f"{self.path} has journal schema version {version}, older than this Smart Tuner's "
                f"{schema.SCHEMA_VERSION}; the next smart-tuner run on it upgrades it")

    def _schema_version(self) -> int:
        has_meta = self._con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        if not has_meta:
            return 0
        row = self._con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        version = self._schema_version()
        if version > schema.SCHEMA_VERSION:
            raise JournalVersionError(
                f"{self.path} has journal schema version {version}, but this Smart Tuner reads up to "
                f"{schema.SCHEMA_VERSION}; upgrade smart-tuner to open it")
        if version == schema.SCHEMA_VERSION:
            return
        with self._write() as con:
            version = self._schema_version()  # again, under the write lock: another process may have won
            if version > schema.SCHEMA_VERSION:
                raise JournalVersionError(f"{self.path} has journal schema version {version} > {schema.SCHEMA_VERSION}")
            for v in range(version + 1, schema.SCHEMA_VERSION + 1):
                for statement in schema.MIGRATIONS[v]:
                    con.execute(statement)
            now = time.time()
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(schema.SCHEMA_VERSION),))
            con.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (repr(now),))
            con.execute("INSERT INTO audit (wall_time, actor, action, detail) VALUES (?, 'journal', 'schema', ?)",
                        (now, f"schema version {version} -> {schema.SCHEMA_VERSION}"))

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT); fsynced when durable."""
        with self._lock:
            con = self._con
            toggle = durable and self._sync != "FULL"
            if toggle:
                con.execute("PRAGMA synchronous = FULL")
            try:
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    raise
            finally:
                if toggle:
                    con.execute(f"PRAGMA synchronous = {self._sync}")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs."""
        with self._lock:
            con = self._con
            con.execute("BEGIN")
            try:
                yield con
            finally:
                if con.in_transaction:
                    con.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            try:
                self._con.close()
            except sqlite3.ProgrammingError:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def checkpoint_wal(self, mode: Literal["PASSIVE", "FULL", "RESTART", "TRUNCATE"] = "PASSIVE") -> WalCheckpoint:
        """Copy the WAL into the database file (a daemon job when the trainer's port
        runs with ``autocheckpoint=False``)."""
        with self._lock:
            busy, frames, done = self._con.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return WalCheckpoint(busy=bool(busy), wal_frames=frames, checkpointed_frames=done)

    # -- audit ------------------------------------------------------------------------------
    @staticmethod
    def _audit(con: sqlite3.Connection, now: float, actor: str, action: str, detail: str) -> int:
        return con.execute("INSERT INTO audit (wall_time, actor, action, detail) VALUES (?, ?, ?, ?)",
                           (now, actor, action, detail)).lastrowid

    def audit(self, actor: str, action: str, detail: str = "") -> int:
        with self._write() as con:
            return self._audit(con, time.time(), actor, action, detail)

    def audit_log(self, limit: int | None = 50) -> list[AuditEntry]:
        """Audit entries, oldest first (the newest ``limit``)."""
        with self._lock:
            rows = self._con.execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?",
                                     (-1 if limit is None else limit,)).fetchall()
        return [AuditEntry(r["id"], r["wall_time"], r["actor"], r["action"], r["detail"]) for r in reversed(rows)]

    def latest_audit(self, actor: str, actions: Sequence[str], limit: int = 1) -> list[AuditEntry]:
        """The newest ``limit`` audit entries of ``actor`` whose action is one of ``actions``, newest first."""
        marks = ", ".join("?" * len(actions))
        with self._lock:
            rows = self._con.execute(f"SELECT * FROM audit WHERE actor = ? AND action IN ({marks}) "
                                     "ORDER BY id DESC LIMIT ?", (actor, *actions, limit)).fetchall()
        return [AuditEntry(r["id"], r["wall_time"], r["actor"], r["action"], r["detail"]) for r in rows]

