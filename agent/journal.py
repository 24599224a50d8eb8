"""The run journal: one SQLite file per run that both processes share.

Everything the supervisor knows or decides is a row here: the trainer's telemetry
(one row per step, one per evaluation), phase transitions, proposals and their fate,
commands and their acknowledgements, the checkpoint registry, the notification
outbox, an audit log and a small key/value store for the supervisor's memory.
The trainer (child process, through :class:`agent.port.JournalPort`), the daemon,
the CLI and the bot each open their own :class:`Journal` on the same file.

Concurrency and durability
--------------------------
* WAL mode: readers never block the writer and vice versa; writers take turns
  (``busy_timeout`` waits for the other one).
* Every public write method is **one transaction**, started with ``BEGIN IMMEDIATE``
  so that a read-then-write (compare-and-set) cannot be interleaved with another
  connection's write. Two deciders racing on one proposal: exactly one wins.
* ``synchronous=FULL`` (the default of :class:`Journal`): a committed transaction
  is fsynced to the WAL before ``commit`` returns, so decisions and commands survive
  ``kill -9`` *and* a power cut. The trainer's port writes telemetry batches with
  ``synchronous=NORMAL`` (no fsync; still survives ``kill -9`` of the process, since
  the data is in the OS page cache, but the last batches may be lost on power loss)
  and switches to FULL for evaluations, checkpoints and acknowledgements.
* SQLite never tears a transaction: after a crash the journal holds every committed
  transaction and nothing of an uncommitted one.

Numbers
-------
Floats that are NaN are stored as NULL in the numeric columns (SQLite has no NaN);
the ``record`` JSON column keeps the exact record, with ``NaN``/``Infinity`` literals
(Python's ``json`` and pydantic read them; SQLite's ``json_extract`` before 3.42
does not). Typed read methods always rebuild records from the JSON.

Steps are *not* unique: after a rollback (or a restart from an older checkpoint) the
trainer emits the same step numbers again. Telemetry rows are therefore ordered by
``seq`` (insertion order); use :meth:`Journal.telemetry_after` with the last ``seq``
seen as a cursor.
"""

from __future__ import annotations

import json
import math
import operator
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import pydantic_core

from trainer.control import (
    CheckpointRecord,
    Command,
    CommandResult,
    EvalRecord,
    StepTelemetry,
    parse_command,
)

SCHEMA_VERSION = 4

ProposalStatus = Literal["proposed", "approved", "rejected", "expired", "applied", "failed"]
Decision = Literal["approved", "rejected", "expired"]
Mode = Literal["auto", "ask", "notify"]
CommandStatus = Literal["pending", "delivered", "acknowledged"]

PROPOSAL_STATUSES: tuple[str, ...] = get_args(ProposalStatus)
MODES: tuple[str, ...] = get_args(Mode)


def _command_kinds() -> frozenset[str]:
    union = get_args(Command)[0]  # Annotated[Union[...], Field(discriminator=...)]
    return frozenset(cls.model_fields["kind"].default for cls in get_args(union))


COMMAND_KINDS = _command_kinds()


class JournalError(Exception):
    """The journal cannot be opened or used as asked."""


class JournalVersionError(JournalError):
    """The journal was written by a newer Smart Tuner (a newer schema)."""


class JournalEmptyError(JournalError):
    """The file exists but holds no run journal (0 bytes, or an SQLite file without any table)."""


def unreadable_message(path: str | Path, exc: BaseException) -> str:
    """The one line for a journal SQLite cannot read (random bytes, a torn copy): the CLI and
    ``smart-tuner run`` say the same, with the way out."""
    return (f"{path}: cannot open the run journal ({exc}); restore it from a backup, or move it aside and "
            f"start a new history with smart-tuner run --new-journal (training resumes from the checkpoints)")


def empty_message(path: str | Path) -> str:
    return (f"{path} is empty: it holds no run journal; restore it from a backup, or start a new history "
            f"with smart-tuner run --new-journal (training resumes from the checkpoints)")


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


# -- JSON that keeps NaN and infinities ---------------------------------------------------
def dumps(value: Any) -> str:
    """JSON text of records, dicts and lists; NaN and +-inf become NaN/Infinity literals.

    (pydantic's ``model_dump_json`` writes them as ``null``, which then fails to
    validate as a float: a non-finite loss would be unreadable.)
    """
    return pydantic_core.to_json(value, inf_nan_mode="constants").decode()


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _num(x: float | None) -> float | None:
    """A float for a REAL column: SQLite turns NaN into NULL anyway; be explicit."""
    return None if x is None or math.isnan(x) else x


# -- typed rows -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TelemetryRow:
    seq: int  # insertion order; the cursor for telemetry_after
    record: StepTelemetry


@dataclass(frozen=True, slots=True)
class EvalRow:
    seq: int
    record: EvalRecord


@dataclass(frozen=True, slots=True)
class PhaseChange:
    id: int
    wall_time: float
    step: int | None
    from_phase: str | None
    to_phase: str
    reason: str


@dataclass(frozen=True, slots=True)
class Proposal:
    id: int
    created_at: float
    step: int | None
    policy: str
    kind: str
    actions: list[dict[str, Any]]
    reason: str
    evidence: dict[str, Any]
    aim: str | None
    mode: str
    status: str
    decided_by: str | None
    decided_at: float | None
    expires_at: float | None
    applied_at: float | None
    applied_step: int | None
    outcome: str | None
    outcome_detail: str | None

    def commands(self) -> list[Command]:
        """The actions that are trainer commands (ids fixed when the proposal was made)."""
        return [parse_command(a) for a in self.actions if a.get("kind") in COMMAND_KINDS]


@dataclass(frozen=True, slots=True)
class CommandRow:
    id: str
    created_at: float
    kind: str
    payload: dict[str, Any] | None  # None: acknowledged by the trainer but never enqueued here
    source: str
    proposal_id: int | None
    status: str
    delivered_at: float | None
    deliveries: int
    acked_at: float | None
    ok: bool | None
    duplicate: bool | None
    detail: str | None
    step: int | None

    def command(self) -> Command:
        if self.payload is None:
            raise JournalError(f"command {self.id} has no payload (it was never enqueued in this journal)")
        return parse_command(self.payload)

    def result(self) -> CommandResult | None:
        if self.acked_at is None:
            return None
        return CommandResult(command_id=self.id, kind=self.kind, ok=bool(self.ok), detail=self.detail or "",
                             step=self.step if self.step is not None else -1, duplicate=bool(self.duplicate))


@dataclass(frozen=True, slots=True)
class CheckpointEntry:
    id: int
    step: int
    path: str
    wall_time: float
    reason: str
    val_loss: float | None
    diagonality: float | None
    finite: bool
    health: str  # "good" | "bad" at save; the supervisor may change it (set_checkpoint_health)
    health_detail: str


@dataclass(frozen=True, slots=True)
class TrialRow:
    id: int
    round: int  # the id of the "tune" proposal whose round ran it
    study: str
    number: int  # Optuna's trial number in that study
    base_step: int | None
    params: dict[str, float]
    baseline: bool  # the trial with the run's hyperparameters unchanged
    status: str  # running | complete | pruned | failed
    started_at: float
    finished_at: float | None
    pid: int | None
    folder: str | None
    steps: int | None  # steps trained
    objective: float | None
    metrics: dict[str, Any] | None  # the objective's parts and the last evaluation
    checkpoint: str | None
    detail: str
    mlflow_run_id: str | None
    winner: bool


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    id: int
    created_at: float
    kind: str
    text: str
    payload: dict[str, Any]
    dedupe_key: str | None
    sent_at: float | None
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox message handed to one channel (``console``, ``telegram:CHAT_ID``)."""
    outbox_id: int
    channel: str
    delivered_at: float
    ref: str | None  # the channel's id for it (a Telegram message id); grouped messages share one
    error: str | None  # set when the channel refused it for good (dead letter), None when delivered


@dataclass(frozen=True, slots=True)
class ProposalMessage:
    """A Telegram message showing a proposal, and the proposal status its text shows."""
    proposal_id: int
    chat_id: int
    message_id: int
    shown: str
    updated_at: float


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    wall_time: float
    actor: str
    action: str
    detail: str


@dataclass(frozen=True, slots=True)
class WalCheckpoint:
    busy: bool  # another connection kept it from finishing
    wal_frames: int
    checkpointed_frames: int


@dataclass(frozen=True, slots=True)
class StatusSummary:
    latest_step: StepTelemetry | None
    latest_eval: EvalRecord | None
    phase: str | None
    phase_since: float | None
    pending_proposals: list[Proposal] = field(default_factory=list)
    open_commands: int = 0  # pending or delivered, not yet acknowledged
    latest_checkpoint: CheckpointEntry | None = None
    steps_per_second: float | None = None  # over the newest telemetry rows (for an ETA)


# -- schema -----------------------------------------------------------------------------
_V1 = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE telemetry (
        seq INTEGER PRIMARY KEY,
        step INTEGER NOT NULL, wall_time REAL NOT NULL, epoch INTEGER NOT NULL, lr REAL,
        loss REAL, mel_loss REAL, mel_postnet_loss REAL, gate_loss REAL, guided_attention_loss REAL,
        grad_norm REAL, grad_clip REAL, guided_attention_weight REAL, gate_pos_weight REAL,
        step_seconds REAL, skipped_steps INTEGER NOT NULL, finite INTEGER NOT NULL,
        record TEXT NOT NULL)""",
    "CREATE INDEX telemetry_step ON telemetry(step)",
    """CREATE TABLE evals (
        seq INTEGER PRIMARY KEY,
        step INTEGER NOT NULL, wall_time REAL NOT NULL, val_loss REAL, val_mel_loss REAL,
        val_mel_postnet_loss REAL, val_gate_loss REAL, val_guided_attention_loss REAL,
        diagonality REAL, focus REAL, aligned_fraction REAL, gate_accuracy REAL, probe_stop_rate REAL,
        alignment_image TEXT, record TEXT NOT NULL)""",
    "CREATE INDEX evals_step ON evals(step)",
    """CREATE TABLE phases (
        id INTEGER PRIMARY KEY, wall_time REAL NOT NULL, step INTEGER,
        from_phase TEXT, to_phase TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '')""",
    """CREATE TABLE proposals (
        id INTEGER PRIMARY KEY, created_at REAL NOT NULL, step INTEGER,
        policy TEXT NOT NULL, kind TEXT NOT NULL, actions TEXT NOT NULL, reason TEXT NOT NULL,
        evidence TEXT NOT NULL, aim TEXT,
        mode TEXT NOT NULL CHECK (mode IN ('auto', 'ask', 'notify')),
        status TEXT NOT NULL CHECK (status IN ('proposed', 'approved', 'rejected', 'expired', 'applied', 'failed')),
        decided_by TEXT, decided_at REAL, expires_at REAL, applied_at REAL, applied_step INTEGER,
        outcome TEXT, outcome_detail TEXT)""",
    "CREATE INDEX proposals_status ON proposals(status)",
    """CREATE TABLE commands (
        id TEXT PRIMARY KEY, created_at REAL NOT NULL, kind TEXT NOT NULL, payload TEXT,
        source TEXT NOT NULL, proposal_id INTEGER REFERENCES proposals(id),
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'acknowledged')),
        delivered_at REAL, deliveries INTEGER NOT NULL DEFAULT 0,
        acked_at REAL, ok INTEGER, duplicate INTEGER, detail TEXT, step INTEGER)""",
    "CREATE INDEX commands_status ON commands(status)",  # (status, rowid): poll reads pending in order
    "CREATE INDEX commands_proposal ON commands(proposal_id) WHERE proposal_id IS NOT NULL",
    """CREATE TABLE checkpoints (
        id INTEGER PRIMARY KEY, step INTEGER NOT NULL, path TEXT NOT NULL, wall_time REAL NOT NULL,
        reason TEXT NOT NULL, val_loss REAL, diagonality REAL, finite INTEGER NOT NULL,
        health TEXT NOT NULL, health_detail TEXT NOT NULL DEFAULT '')""",
    "CREATE INDEX checkpoints_step ON checkpoints(step)",
    """CREATE TABLE outbox (
        id INTEGER PRIMARY KEY, created_at REAL NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL,
        payload TEXT NOT NULL, dedupe_key TEXT UNIQUE, sent_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT)""",
    "CREATE INDEX outbox_unsent ON outbox(id) WHERE sent_at IS NULL",
    """CREATE TABLE audit (
        id INTEGER PRIMARY KEY, wall_time REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '')""",
    "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL)",
]

# MIGRATIONS[v] takes a journal from schema version v - 1 to v (v = 1: from empty).
# Add a new version by appending statements under SCHEMA_VERSION + 1; never edit old ones.
# Version 2: tuning trials (agent/tuner). One row per trial of an in-run round; the
# round is the id of the "tune" proposal that started it.
_V2 = [
    """CREATE TABLE trials (
        id INTEGER PRIMARY KEY, round INTEGER NOT NULL, study TEXT NOT NULL, number INTEGER NOT NULL,
        base_step INTEGER, params TEXT NOT NULL, baseline INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'pruned', 'failed')),
        started_at REAL NOT NULL, finished_at REAL, pid INTEGER, folder TEXT, steps INTEGER,
        objective REAL, metrics TEXT, checkpoint TEXT, detail TEXT NOT NULL DEFAULT '',
        mlflow_run_id TEXT, winner INTEGER NOT NULL DEFAULT 0, UNIQUE (study, number))""",
    "CREATE INDEX trials_round ON trials(round)",
]
# Version 3: notification delivery (agent/notify.py, agent/telegram_bot.py). An outbox
# row is sent once every channel has it; ``deliveries`` says which channel has which,
# so a message to two chats is not repeated to the first when the second fails.
# ``proposal_messages``: the Telegram messages showing a proposal, to be edited once it
# is decided (by whoever: the bot, the CLI, expiry).
_V3 = [
    """CREATE TABLE deliveries (
        outbox_id INTEGER NOT NULL REFERENCES outbox(id), channel TEXT NOT NULL, delivered_at REAL NOT NULL,
        ref TEXT, error TEXT, PRIMARY KEY (outbox_id, channel))""",
    """CREATE TABLE proposal_messages (
        chat_id INTEGER NOT NULL, message_id INTEGER NOT NULL,
        proposal_id INTEGER NOT NULL REFERENCES proposals(id), shown TEXT NOT NULL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (chat_id, message_id))""",
    "CREATE INDEX proposal_messages_proposal ON proposal_messages(proposal_id)",
]
# Version 4: free-running evaluation (trainer/speech). The speech score and MCD-DTW get
# columns of their own; probe_stop_rate stays in old rows but is no longer written (it
# counted a stop at the first frame as good).
_V4 = [
    "ALTER TABLE evals ADD COLUMN speech_score REAL",
    "ALTER TABLE evals ADD COLUMN mcd_dtw REAL",
]
MIGRATIONS: dict[int, list[str]] = {1: _V1, 2: _V2, 3: _V3, 4: _V4}

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


def _finite(x: float | None) -> bool:
    return x is None or math.isfinite(x)


def checkpoint_health(record: CheckpointRecord) -> str:
    """Health at save: good when the weights and the metrics it was saved with are finite."""
    ok = record.finite and _finite(record.val_loss) and _finite(record.diagonality)
    return "good" if ok else "bad"


def _bool(x: int | None) -> bool | None:
    return None if x is None else bool(x)


def _proposal(r: sqlite3.Row) -> Proposal:
    return Proposal(id=r["id"], created_at=r["created_at"], step=r["step"], policy=r["policy"], kind=r["kind"],
                    actions=loads(r["actions"]), reason=r["reason"], evidence=loads(r["evidence"]), aim=r["aim"],
                    mode=r["mode"], status=r["status"], decided_by=r["decided_by"], decided_at=r["decided_at"],
                    expires_at=r["expires_at"], applied_at=r["applied_at"], applied_step=r["applied_step"],
                    outcome=r["outcome"], outcome_detail=r["outcome_detail"])


def _command(r: sqlite3.Row) -> CommandRow:
    return CommandRow(id=r["id"], created_at=r["created_at"], kind=r["kind"], payload=loads(r["payload"]),
                      source=r["source"], proposal_id=r["proposal_id"], status=r["status"],
                      delivered_at=r["delivered_at"], deliveries=r["deliveries"], acked_at=r["acked_at"],
                      ok=_bool(r["ok"]), duplicate=_bool(r["duplicate"]), detail=r["detail"], step=r["step"])


def _checkpoint(r: sqlite3.Row) -> CheckpointEntry:
    return CheckpointEntry(id=r["id"], step=r["step"], path=r["path"], wall_time=r["wall_time"], reason=r["reason"],
                           val_loss=r["val_loss"], diagonality=r["diagonality"], finite=bool(r["finite"]),
                           health=r["health"], health_detail=r["health_detail"])


def _trial(r: sqlite3.Row) -> TrialRow:
    return TrialRow(id=r["id"], round=r["round"], study=r["study"], number=r["number"], base_step=r["base_step"],
                    params=loads(r["params"]), baseline=bool(r["baseline"]), status=r["status"],
                    started_at=r["started_at"], finished_at=r["finished_at"], pid=r["pid"], folder=r["folder"],
                    steps=r["steps"], objective=r["objective"], metrics=loads(r["metrics"]),
                    checkpoint=r["checkpoint"], detail=r["detail"], mlflow_run_id=r["mlflow_run_id"],
                    winner=bool(r["winner"]))


def _outbox(r: sqlite3.Row) -> OutboxMessage:
    return OutboxMessage(id=r["id"], created_at=r["created_at"], kind=r["kind"], text=r["text"],
                         payload=loads(r["payload"]), dedupe_key=r["dedupe_key"], sent_at=r["sent_at"],
                         attempts=r["attempts"], last_error=r["last_error"])


def _proposal_message(r: sqlite3.Row) -> ProposalMessage:
    return ProposalMessage(proposal_id=r["proposal_id"], chat_id=r["chat_id"], message_id=r["message_id"],
                           shown=r["shown"], updated_at=r["updated_at"])


def _phase(r: sqlite3.Row) -> PhaseChange:
    return PhaseChange(id=r["id"], wall_time=r["wall_time"], step=r["step"], from_phase=r["from_phase"],
                       to_phase=r["to_phase"], reason=r["reason"])


def _as_command(command: Command | Mapping[str, Any] | str) -> Command:
    if isinstance(command, (str, Mapping)):
        return parse_command(dict(command) if isinstance(command, Mapping) else command)
    return command


class Journal:
    """One run's journal. Thread-safe (one connection behind a lock); open one per process.

    ``synchronous``: "FULL" (default) fsyncs every commit; "NORMAL" is for high-rate
    telemetry writers (durable writes still pass ``durable=True`` and get FULL).
    ``create=False`` refuses to create a journal: a missing file, or one that holds no
    journal (:class:`JournalEmptyError`), is not filled with a new one.
    ``readonly=True`` (``smart-tuner status``, ``history``, ``pending``): never writes to
    the file nor creates one beside it (see :func:`_connect_readonly`), so it also works
    for users who may only read the run folder; a journal of an older schema is refused
    rather than upgraded (the next ``smart-tuner run`` upgrades it); write methods fail.
    ``autocheckpoint=False`` leaves copying the WAL back into the database to other
    connections (see :meth:`checkpoint_wal`).
    """

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
        if version > SCHEMA_VERSION:
            raise JournalVersionError(
                f"{self.path} has journal schema version {version}, but this Smart Tuner reads up to "
                f"{SCHEMA_VERSION}; upgrade smart-tuner to open it")
        if version < SCHEMA_VERSION:
            raise JournalVersionError(
                f"{self.path} has journal schema version {version}, older than this Smart Tuner's "
                f"{SCHEMA_VERSION}; the next smart-tuner run on it upgrades it")

    def _schema_version(self) -> int:
        has_meta = self._con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        if not has_meta:
            return 0
        row = self._con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        version = self._schema_version()
        if version > SCHEMA_VERSION:
            raise JournalVersionError(
                f"{self.path} has journal schema version {version}, but this Smart Tuner reads up to "
                f"{SCHEMA_VERSION}; upgrade smart-tuner to open it")
        if version == SCHEMA_VERSION:
            return
        with self._write() as con:
            version = self._schema_version()  # again, under the write lock: another process may have won
            if version > SCHEMA_VERSION:
                raise JournalVersionError(f"{self.path} has journal schema version {version} > {SCHEMA_VERSION}")
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[v]:
                    con.execute(statement)
            now = time.time()
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            con.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (repr(now),))
            con.execute("INSERT INTO audit (wall_time, actor, action, detail) VALUES (?, 'journal', 'schema', ?)",
                        (now, f"schema version {version} -> {SCHEMA_VERSION}"))

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

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._schema_version()

    def meta(self) -> dict[str, str]:
        with self._lock:
            return {r["key"]: r["value"] for r in self._con.execute("SELECT key, value FROM meta")}

    def checkpoint_wal(self, mode: Literal["PASSIVE", "FULL", "RESTART", "TRUNCATE"] = "PASSIVE") -> WalCheckpoint:
        """Copy the WAL into the database file (a daemon job when the trainer's port
        runs with ``autocheckpoint=False``)."""
        with self._lock:
            busy, frames, done = self._con.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return WalCheckpoint(busy=bool(busy), wal_frames=frames, checkpointed_frames=done)

    def integrity_check(self) -> str:
        with self._lock:
            return "; ".join(r[0] for r in self._con.execute("PRAGMA integrity_check"))

    # -- telemetry, evaluations -----------------------------------------------------------
    def add_steps(self, records: Sequence[StepTelemetry], *, durable: bool = False) -> None:
        """Append step records in one transaction."""
        if records:
            with self._write(durable) as con:
                con.executemany(_INSERT_STEP, map(_step_row, records))

    def add_eval(self, record: EvalRecord, *, steps: Sequence[StepTelemetry] = ()) -> int:
        """Append an evaluation (after ``steps``, in the same durable transaction); returns its seq."""
        with self._write() as con:
            if steps:
                con.executemany(_INSERT_STEP, map(_step_row, steps))
            return con.execute(_INSERT_EVAL, _eval_row(record)).lastrowid

    def latest_steps(self, n: int) -> list[StepTelemetry]:
        """The newest n step records, oldest first."""
        with self._lock:
            rows = self._con.execute("SELECT record FROM telemetry ORDER BY seq DESC LIMIT ?", (n,)).fetchall()
        return [StepTelemetry.model_validate_json(r[0]) for r in reversed(rows)]

    def telemetry_since(self, step: int) -> list[StepTelemetry]:
        """Step records with ``record.step > step``, in the order written (see the module note on rollbacks)."""
        with self._lock:
            rows = self._con.execute("SELECT record FROM telemetry WHERE step > ? ORDER BY seq", (step,)).fetchall()
        return [StepTelemetry.model_validate_json(r[0]) for r in rows]

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

    # -- checkpoints ------------------------------------------------------------------------
    def add_checkpoint(self, record: CheckpointRecord, *, steps: Sequence[StepTelemetry] = ()) -> CheckpointEntry:
        """Register a saved checkpoint with its health at save (after ``steps``, one durable transaction)."""
        health = checkpoint_health(record)
        with self._write() as con:
            if steps:
                con.executemany(_INSERT_STEP, map(_step_row, steps))
            cid = con.execute(
                "INSERT INTO checkpoints (step, path, wall_time, reason, val_loss, diagonality, finite, health) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record.step, record.path, record.wall_time, record.reason, _num(record.val_loss),
                 _num(record.diagonality), int(record.finite), health)).lastrowid
            return _checkpoint(con.execute("SELECT * FROM checkpoints WHERE id = ?", (cid,)).fetchone())

    def checkpoints(self, limit: int | None = None) -> list[CheckpointEntry]:
        """Registered checkpoints, newest registration first."""
        with self._lock:
            rows = self._con.execute("SELECT * FROM checkpoints ORDER BY id DESC LIMIT ?",
                                     (-1 if limit is None else limit,)).fetchall()
        return [_checkpoint(r) for r in rows]

    def last_good_checkpoint(self, before_step: int | None = None) -> CheckpointEntry | None:
        """The newest checkpoint registered as good (at a step < before_step, if given)."""
        with self._lock:
            row = self._con.execute(
                "SELECT * FROM checkpoints WHERE health = 'good' AND step < ? ORDER BY step DESC, id DESC LIMIT 1",
                (before_step if before_step is not None else 2 ** 62,)).fetchone()
        return _checkpoint(row) if row else None

    def set_checkpoint_health(self, checkpoint_id: int, health: str, detail: str = "") -> bool:
        with self._write() as con:
            return con.execute("UPDATE checkpoints SET health = ?, health_detail = ? WHERE id = ?",
                               (health, detail, checkpoint_id)).rowcount == 1

    # -- phases and supervisor state -----------------------------------------------------
    def record_phase(self, to_phase: str, *, step: int | None = None, reason: str = "",
                     expected_from: str | None = None, state: Mapping[str, Any] | None = None,
                     now: float | None = None) -> PhaseChange | None:
        """Record a transition from the current phase (read in the same transaction).

        With ``expected_from``, the transition happens only if the current phase is
        that one (compare-and-set); returns None otherwise. ``state`` entries are
        written in the same transaction (the supervisor's memory moves with its phase).
        """
        now = time.time() if now is None else now
        with self._write() as con:
            row = con.execute("SELECT to_phase FROM phases ORDER BY id DESC LIMIT 1").fetchone()
            current = row[0] if row else None
            if expected_from is not None and current != expected_from:
                return None
            pid = con.execute(
                "INSERT INTO phases (wall_time, step, from_phase, to_phase, reason) VALUES (?, ?, ?, ?, ?)",
                (now, step, current, to_phase, reason),
            ).lastrowid
            for key, value in (state or {}).items():
                self._set_state(con, key, value, now)
        return PhaseChange(pid, now, step, current, to_phase, reason)

    def current_phase(self) -> str | None:
        with self._lock:
            row = self._con.execute("SELECT to_phase FROM phases ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def phase_history(self, limit: int | None = None) -> list[PhaseChange]:
        """Transitions, oldest first (the newest ``limit`` if given)."""
        with self._lock:
            rows = self._con.execute("SELECT * FROM phases ORDER BY id DESC LIMIT ?",
                                     (-1 if limit is None else limit,)).fetchall()
        return [_phase(r) for r in reversed(rows)]

    @staticmethod
    def _set_state(con: sqlite3.Connection, key: str, value: Any, now: float) -> None:
        con.execute("INSERT INTO state (key, value, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    (key, dumps(value), now))

    def set_state(self, key: str, value: Any) -> None:
        with self._write() as con:
            self._set_state(con, key, value, time.time())

    def set_states(self, values: Mapping[str, Any]) -> None:
        with self._write() as con:
            now = time.time()
            for key, value in values.items():
                self._set_state(con, key, value, now)

    def get_state(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._con.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return default if row is None else loads(row[0])

    # -- proposals --------------------------------------------------------------------------
    def add_proposal(self, *, policy: str, kind: str, actions: Iterable[Command | Mapping[str, Any]], reason: str,
                     evidence: Mapping[str, Any] | None = None, aim: str | None = None, mode: Mode = "ask",
                     step: int | None = None, expires_at: float | None = None, approve_by: str | None = None,
                     source: str = "supervisor", now: float | None = None) -> Proposal:
        """Record a proposal. Actions whose kind is a trainer command are validated and
        given their command id now (so enqueueing them later is idempotent); other
        actions (e.g. ``{"kind": "start_tuning"}``) are stored as given.

        ``approve_by`` (auto mode): the proposal is born approved by that actor and its
        commands are enqueued, all in this one transaction.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        stored: list[dict[str, Any]] = []
        for action in actions:
            if not isinstance(action, Mapping):
                stored.append(action.model_dump(mode="json"))
            elif action.get("kind") in COMMAND_KINDS:
                stored.append(parse_command(dict(action)).model_dump(mode="json"))
            else:
                stored.append(dict(action))
        now = time.time() if now is None else now
        status = "approved" if approve_by else "proposed"
        with self._write() as con:
            pid = con.execute(
                "INSERT INTO proposals (created_at, step, policy, kind, actions, reason, evidence, aim, mode, status, "
                "decided_by, decided_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now, step, policy, kind, dumps(stored), reason, dumps(dict(evidence or {})), aim, mode, status,
                 approve_by, now if approve_by else None, expires_at)).lastrowid
            self._audit(con, now, source, "propose", f"#{pid} {policy}/{kind} ({mode}): {reason}")
            if approve_by:
                self._audit(con, now, approve_by, "approved", f"#{pid}")
                self._enqueue_actions(con, pid, stored, approve_by, now)
            return _proposal(con.execute("SELECT * FROM proposals WHERE id = ?", (pid,)).fetchone())

    def get_proposal(self, proposal_id: int) -> Proposal | None:
        with self._lock:
            row = self._con.execute("SELECT * FROM proposals WHERE id = ?", (proposal_id,)).fetchone()
        return _proposal(row) if row else None

    def proposals(self, status: str | Sequence[str] | None = None, limit: int | None = None) -> list[Proposal]:
        """Proposals, newest first, optionally with a given status (or any of several)."""
        statuses = [status] if isinstance(status, str) else list(status or [])
        where = f"WHERE status IN ({', '.join('?' * len(statuses))})" if statuses else ""
        with self._lock:
            rows = self._con.execute(f"SELECT * FROM proposals {where} ORDER BY id DESC LIMIT ?",
                                     (*statuses, -1 if limit is None else limit)).fetchall()
        return [_proposal(r) for r in rows]

    def pending_proposals(self) -> list[Proposal]:
        """Proposals waiting for a decision, oldest first."""
        return self.proposals("proposed")[::-1]

    def due_proposals(self, now: float | None = None) -> list[Proposal]:
        """Undecided proposals whose expiry time has passed, oldest first."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._con.execute("SELECT * FROM proposals WHERE status = 'proposed' AND expires_at IS NOT NULL "
                                     "AND expires_at <= ? ORDER BY id", (now,)).fetchall()
        return [_proposal(r) for r in rows]

    def decide(self, proposal_id: int, status: Decision, by: str, *, enqueue: bool = True, detail: str = "",
               now: float | None = None) -> bool:
        """Approve, reject or expire a proposal, only if it is still "proposed".

        Compare-and-set: of several deciders (CLI, bot, expiry job) exactly one wins;
        returns whether this call did. On approval, the proposal's command actions are
        enqueued (source = ``by``) in the same transaction, so an approval can never
        be committed without its commands. Every decision is audited.
        """
        if status not in ("approved", "rejected", "expired"):
            raise ValueError(f"a decision is approved, rejected or expired, not {status!r}")
        now = time.time() if now is None else now
        with self._write() as con:
            won = con.execute("UPDATE proposals SET status = ?, decided_by = ?, decided_at = ? "
                              "WHERE id = ? AND status = 'proposed'", (status, by, now, proposal_id)).rowcount == 1
            if not won:
                return False
            self._audit(con, now, by, status, f"#{proposal_id}" + (f": {detail}" if detail else ""))
            if status == "approved" and enqueue:
                actions = loads(con.execute("SELECT actions FROM proposals WHERE id = ?", (proposal_id,)).fetchone()[0])
                self._enqueue_actions(con, proposal_id, actions, by, now)
        return True

    def finish_proposal(self, proposal_id: int, status: Literal["applied", "failed"], *, step: int | None = None,
                        detail: str = "", now: float | None = None) -> bool:
        """approved -> applied | failed (compare-and-set). Proposals whose actions are all
        commands are finished automatically when the trainer acknowledges them; use this
        for other actions (e.g. tuning)."""
        if status not in ("applied", "failed"):
            raise ValueError(f"status must be applied or failed, not {status!r}")
        now = time.time() if now is None else now
        with self._write() as con:
            won = con.execute("UPDATE proposals SET status = ?, applied_at = ?, applied_step = ?, "
                              "outcome_detail = COALESCE(outcome_detail, ?) WHERE id = ? AND status = 'approved'",
                              (status, now, step, detail or None, proposal_id)).rowcount == 1
            if won:
                self._audit(con, now, "journal", status, f"#{proposal_id}" + (f": {detail}" if detail else ""))
        return won

    def record_outcome(self, proposal_id: int, outcome: str, detail: str = "", by: str = "supervisor") -> bool:
        """The probation verdict (e.g. improved / not_improved), set once on an applied or failed proposal."""
        now = time.time()
        with self._write() as con:
            won = con.execute("UPDATE proposals SET outcome = ?, outcome_detail = ? WHERE id = ? "
                              "AND outcome IS NULL AND status IN ('applied', 'failed')",
                              (outcome, detail, proposal_id)).rowcount == 1
            if won:
                self._audit(con, now, by, "outcome", f"#{proposal_id}: {outcome}" + (f" ({detail})" if detail else ""))
        return won

    # -- commands ---------------------------------------------------------------------------
    @staticmethod
    def _insert_command(con: sqlite3.Connection, command: Command, source: str, proposal_id: int | None,
                        now: float) -> bool:
        return con.execute(
            "INSERT OR IGNORE INTO commands (id, created_at, kind, payload, source, proposal_id, status) "
            "VALUES (?, ?, ?, ?, ?, ?, 'pending')",
            (command.id, now, command.kind, command.model_dump_json(), source, proposal_id)).rowcount == 1

    def _enqueue_actions(self, con: sqlite3.Connection, proposal_id: int, actions: list[dict], source: str,
                         now: float) -> None:
        for action in actions:
            if action.get("kind") in COMMAND_KINDS:
                self._insert_command(con, parse_command(action), source, proposal_id, now)

    def enqueue_command(self, command: Command | Mapping[str, Any] | str, source: str,
                        proposal_id: int | None = None) -> bool:
        """Queue a command for the trainer; idempotent on the command's id (returns False for a repeat)."""
        command = _as_command(command)
        now = time.time()
        with self._write() as con:
            inserted = self._insert_command(con, command, source, proposal_id, now)
            if inserted:
                self._audit(con, now, source, "command", f"{command.kind} {command.id}")
        return inserted

    def get_command(self, command_id: str) -> CommandRow | None:
        with self._lock:
            row = self._con.execute("SELECT * FROM commands WHERE id = ?", (command_id,)).fetchone()
        return _command(row) if row else None

    def commands(self, *, proposal_id: int | None = None, limit: int | None = None) -> list[CommandRow]:
        """Commands, newest first (those of one proposal, if given)."""
        where, args = ("WHERE proposal_id = ?", (proposal_id,)) if proposal_id is not None else ("", ())
        with self._lock:
            rows = self._con.execute(f"SELECT * FROM commands {where} ORDER BY rowid DESC LIMIT ?",
                                     (*args, -1 if limit is None else limit)).fetchall()
        return [_command(r) for r in rows]

    def pending_commands(self) -> list[CommandRow]:
        """Commands not yet delivered, in the order enqueued."""
        with self._lock:
            rows = self._con.execute("SELECT * FROM commands WHERE status = 'pending' ORDER BY rowid").fetchall()
        return [_command(r) for r in rows]

    def is_paused(self) -> bool:
        """Is the trainer paused? Derived from the commands themselves (whoever sent them:
        CLI, bot or a policy): the newest successfully applied pause or resume wins."""
        with self._lock:
            row = self._con.execute(
                "SELECT kind FROM commands WHERE kind IN ('pause', 'resume') AND acked_at IS NOT NULL AND ok = 1 "
                "AND (duplicate IS NULL OR duplicate = 0) ORDER BY acked_at DESC, rowid DESC LIMIT 1").fetchone()
        return row is not None and row[0] == "pause"

    def last_pause_or_resume_by_others(self, since: float, source: str) -> str | None:
        """The kind ('pause' or 'resume') of the newest pause/resume enqueued after ``since``
        by anyone but ``source`` (e.g. a user pausing during a tuning round), else None."""
        with self._lock:
            row = self._con.execute(
                "SELECT kind FROM commands WHERE kind IN ('pause', 'resume') AND created_at > ? AND source != ? "
                "ORDER BY created_at DESC, rowid DESC LIMIT 1", (since, source)).fetchone()
        return row[0] if row is not None else None

    def unacknowledged_commands(self) -> list[CommandRow]:
        """Commands pending or delivered but not acknowledged, in the order enqueued."""
        with self._lock:
            rows = self._con.execute("SELECT * FROM commands WHERE status IN ('pending', 'delivered') "
                                     "ORDER BY rowid").fetchall()
        return [_command(r) for r in rows]

    def _deliverable(self, include_delivered: bool) -> list[sqlite3.Row]:
        """The port's hot path: one indexed SELECT (a few microseconds when nothing is queued)."""
        sql = ("SELECT id, kind, payload FROM commands WHERE status IN ('pending', 'delivered') ORDER BY rowid"
               if include_delivered else
               "SELECT id, kind, payload FROM commands WHERE status = 'pending' ORDER BY rowid")
        with self._lock:
            return self._con.execute(sql).fetchall()

    def mark_delivered(self, ids: Iterable[str], *, steps: Sequence[StepTelemetry] = (),
                       now: float | None = None) -> int:
        """pending/delivered -> delivered for these ids (acknowledged ones stay); returns rows changed."""
        ids = list(ids)
        now = time.time() if now is None else now
        with self._write(durable=False) as con:
            if steps:
                con.executemany(_INSERT_STEP, map(_step_row, steps))
            n = 0
            for cid in ids:
                n += con.execute("UPDATE commands SET status = 'delivered', delivered_at = ?, "
                                 "deliveries = deliveries + 1 WHERE id = ? AND status != 'acknowledged'",
                                 (now, cid)).rowcount
        return n

    def acknowledge(self, result: CommandResult, *, steps: Sequence[StepTelemetry] = (),
                    now: float | None = None) -> bool:
        """Record the trainer's result for a command; idempotent: the first result stays.

        Returns whether this call recorded it. A proposal whose commands are now all
        acknowledged becomes applied (all ok) or failed (any not ok), in this transaction.
        """
        now = time.time() if now is None else now
        with self._write() as con:
            if steps:
                con.executemany(_INSERT_STEP, map(_step_row, steps))
            # A command the journal never saw (e.g. sent through another port): keep its result anyway.
            con.execute("INSERT OR IGNORE INTO commands (id, created_at, kind, payload, source, status) "
                        "VALUES (?, ?, ?, NULL, 'unknown', 'pending')", (result.command_id, now, result.kind))
            won = con.execute("UPDATE commands SET status = 'acknowledged', acked_at = ?, ok = ?, duplicate = ?, "
                              "detail = ?, step = ? WHERE id = ? AND acked_at IS NULL",
                              (now, int(result.ok), int(result.duplicate), result.detail, result.step,
                               result.command_id)).rowcount == 1
            if won:
                row = con.execute("SELECT proposal_id FROM commands WHERE id = ?", (result.command_id,)).fetchone()
                if row[0] is not None:
                    self._settle_proposal(con, row[0], now)
        return won

    def _settle_proposal(self, con: sqlite3.Connection, proposal_id: int, now: float) -> None:
        rows = con.execute("SELECT acked_at, ok, step, detail FROM commands WHERE proposal_id = ?",
                           (proposal_id,)).fetchall()
        failed = [r for r in rows if r["acked_at"] is not None and not r["ok"]]
        if not failed and any(r["acked_at"] is None for r in rows):
            return
        status = "failed" if failed else "applied"
        step = max((r["step"] for r in rows if r["step"] is not None), default=None)
        detail = "; ".join(r["detail"] or "" for r in (failed or rows))
        if con.execute("UPDATE proposals SET status = ?, applied_at = ?, applied_step = ?, outcome_detail = ? "
                       "WHERE id = ? AND status = 'approved'",
                       (status, now, step, detail, proposal_id)).rowcount:
            self._audit(con, now, "trainer", status, f"#{proposal_id} at step {step}: {detail}")

    # -- tuning trials ----------------------------------------------------------------------
    def add_trial(self, *, round: int, study: str, number: int, params: Mapping[str, float], baseline: bool = False,
                  base_step: int | None = None, folder: str | None = None) -> TrialRow:
        """A trial has started (status running)."""
        now = time.time()
        with self._write() as con:
            tid = con.execute(
                "INSERT INTO trials (round, study, number, base_step, params, baseline, status, started_at, folder) "
                "VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
                (round, study, number, base_step, dumps(dict(params)), int(baseline), now, folder)).lastrowid
            self._audit(con, now, "tuner", "trial", f"round #{round} trial {number} started"
                        + (" (baseline)" if baseline else ""))
            return _trial(con.execute("SELECT * FROM trials WHERE id = ?", (tid,)).fetchone())

    def update_trial(self, trial_id: int, *, pid: int | None = None, steps: int | None = None,
                     objective: float | None = None, mlflow_run_id: str | None = None) -> None:
        """Progress of a running trial (its process id, steps so far, latest objective)."""
        sets, args = [], []
        for column, value in (("pid", pid), ("steps", steps), ("objective", _num(objective)),
                              ("mlflow_run_id", mlflow_run_id)):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        if sets:
            with self._write(durable=False) as con:
                con.execute(f"UPDATE trials SET {', '.join(sets)} WHERE id = ?", (*args, trial_id))

    def finish_trial(self, trial_id: int, status: Literal["complete", "pruned", "failed"], *, detail: str = "",
                     steps: int | None = None, objective: float | None = None,
                     metrics: Mapping[str, Any] | None = None, checkpoint: str | None = None) -> bool:
        """running -> complete | pruned | failed (compare-and-set: a trial finishes once)."""
        now = time.time()
        with self._write() as con:
            won = con.execute(
                "UPDATE trials SET status = ?, finished_at = ?, detail = ?, steps = COALESCE(?, steps), "
                "objective = COALESCE(?, objective), metrics = COALESCE(?, metrics), checkpoint = ? "
                "WHERE id = ? AND status = 'running'",
                (status, now, detail, steps, _num(objective), dumps(dict(metrics)) if metrics is not None else None,
                 checkpoint, trial_id)).rowcount == 1
            if won:
                row = con.execute("SELECT round, number FROM trials WHERE id = ?", (trial_id,)).fetchone()
                self._audit(con, now, "tuner", f"trial_{status}",
                            f"round #{row[0]} trial {row[1]}" + (f": {detail.splitlines()[0]}" if detail else ""))
        return won

    def fail_running_trials(self, detail: str, round: int | None = None) -> int:
        """Trials still marked running (their tuner died with its daemon) become failed."""
        now = time.time()
        where, args = ("AND round = ?", (round,)) if round is not None else ("", ())
        with self._write() as con:
            n = con.execute(f"UPDATE trials SET status = 'failed', finished_at = ?, detail = ? "
                            f"WHERE status = 'running' {where}", (now, detail, *args)).rowcount
            if n:
                self._audit(con, now, "tuner", "trials_failed", f"{n} running trial(s): {detail}")
        return n

    def set_trial_winner(self, trial_id: int) -> None:
        with self._write() as con:
            con.execute("UPDATE trials SET winner = 1 WHERE id = ?", (trial_id,))

    def trials(self, round: int | None = None) -> list[TrialRow]:
        """Trials, oldest first (those of one round, if given)."""
        where, args = ("WHERE round = ?", (round,)) if round is not None else ("", ())
        with self._lock:
            rows = self._con.execute(f"SELECT * FROM trials {where} ORDER BY id", args).fetchall()
        return [_trial(r) for r in rows]

    # -- outbox ---------------------------------------------------------------------------
    def outbox_put(self, kind: str, text: str, payload: Mapping[str, Any] | None = None,
                   dedupe_key: str | None = None) -> int | None:
        """Queue a notification; returns its id, or None if ``dedupe_key`` was queued before."""
        with self._write() as con:
            cur = con.execute("INSERT OR IGNORE INTO outbox (created_at, kind, text, payload, dedupe_key) "
                              "VALUES (?, ?, ?, ?, ?)", (time.time(), kind, text, dumps(dict(payload or {})),
                                                         dedupe_key))
            return cur.lastrowid if cur.rowcount == 1 else None

    def outbox_pending(self, limit: int = 50, max_attempts: int | None = None) -> list[OutboxMessage]:
        """Unsent messages, oldest first (skipping those tried ``max_attempts`` times)."""
        with self._lock:
            rows = self._con.execute("SELECT * FROM outbox WHERE sent_at IS NULL AND attempts < ? ORDER BY id LIMIT ?",
                                     (max_attempts if max_attempts is not None else 2 ** 62, limit)).fetchall()
        return [_outbox(r) for r in rows]

    def outbox_mark_sent(self, message_id: int) -> bool:
        """Mark sent (once; returns False if it already was)."""
        with self._write() as con:
            return con.execute("UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE id = ? "
                               "AND sent_at IS NULL", (time.time(), message_id)).rowcount == 1

    def outbox_mark_failed(self, message_id: int, error: str) -> None:
        with self._write() as con:
            con.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ? AND sent_at IS NULL",
                        (error, message_id))

    def outbox_messages(self, limit: int | None = None) -> list[OutboxMessage]:
        """Every outbox message, sent or not, oldest first (the newest ``limit``)."""
        with self._lock:
            rows = self._con.execute("SELECT * FROM outbox ORDER BY id DESC LIMIT ?",
                                     (-1 if limit is None else limit,)).fetchall()
        return [_outbox(r) for r in reversed(rows)]

    # -- delivery to channels (notifiers) ---------------------------------------------------
    def outbox_for_channel(self, channel: str, limit: int = 100) -> list[OutboxMessage]:
        """Unsent messages this channel has not had yet, oldest first."""
        with self._lock:
            rows = self._con.execute(
                "SELECT * FROM outbox o WHERE sent_at IS NULL AND NOT EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.outbox_id = o.id AND d.channel = ?) ORDER BY id LIMIT ?",
                (channel, limit)).fetchall()
        return [_outbox(r) for r in rows]

    def outbox_delivered(self, ids: Iterable[int], channel: str, *, channels: Iterable[str], ref: str | None = None,
                         error: str | None = None, now: float | None = None) -> int:
        """Record that ``channel`` has these messages (or, with ``error``, refused them for
        good); a message is marked sent once each of ``channels`` has it. One transaction;
        returns how many deliveries are new (0: all were recorded before)."""
        ids, channels = list(ids), sorted(set(channels) | {channel})
        now = time.time() if now is None else now
        marks = ",".join("?" * len(channels))
        with self._write() as con:
            new = 0
            for oid in ids:
                new += con.execute("INSERT OR IGNORE INTO deliveries (outbox_id, channel, delivered_at, ref, error) "
                                   "VALUES (?, ?, ?, ?, ?)", (oid, channel, now, ref, error)).rowcount
                have = con.execute(f"SELECT count(*) FROM deliveries WHERE outbox_id = ? AND channel IN ({marks})",
                                   (oid, *channels)).fetchone()[0]
                if have == len(channels):
                    con.execute("UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE id = ? "
                                "AND sent_at IS NULL", (now, oid))
                if error is not None:
                    con.execute("UPDATE outbox SET last_error = ? WHERE id = ?", (error, oid))
                    self._audit(con, now, channel, "undeliverable", f"outbox #{oid}: {error}")
        return new

    def outbox_settle(self, channels: Iterable[str]) -> int:
        """Mark sent the unsent messages that each of ``channels`` already has: when a chat
        is removed from the config, what waited only for it is done. Returns how many."""
        channels = sorted(set(channels))
        if not channels:
            return 0
        marks = ",".join("?" * len(channels))
        with self._write() as con:
            return con.execute(
                f"UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE sent_at IS NULL AND "
                f"(SELECT count(*) FROM deliveries d WHERE d.outbox_id = outbox.id AND d.channel IN ({marks})) = ?",
                (time.time(), *channels, len(channels))).rowcount

    def deliveries(self, channel: str | None = None) -> list[Delivery]:
        """Deliveries in the order recorded (those of one channel, if given)."""
        where, args = ("WHERE channel = ?", (channel,)) if channel is not None else ("", ())
        with self._lock:
            rows = self._con.execute(f"SELECT * FROM deliveries {where} ORDER BY rowid", args).fetchall()
        return [Delivery(r["outbox_id"], r["channel"], r["delivered_at"], r["ref"], r["error"]) for r in rows]

    # -- messages showing proposals (the Telegram cards) ------------------------------------
    def add_proposal_message(self, proposal_id: int, chat_id: int, message_id: int, shown: str) -> None:
        now = time.time()
        with self._write() as con:
            con.execute("INSERT OR REPLACE INTO proposal_messages (chat_id, message_id, proposal_id, shown, "
                        "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (chat_id, message_id, proposal_id, shown, now, now))

    def stale_proposal_messages(self, limit: int = 50) -> list[ProposalMessage]:
        """Messages whose text shows another status than their proposal has now, oldest first."""
        with self._lock:
            rows = self._con.execute(
                "SELECT m.* FROM proposal_messages m JOIN proposals p ON p.id = m.proposal_id "
                "WHERE m.shown != p.status ORDER BY m.updated_at LIMIT ?", (limit,)).fetchall()
        return [_proposal_message(r) for r in rows]

    def proposal_messages(self, proposal_id: int) -> list[ProposalMessage]:
        with self._lock:
            rows = self._con.execute("SELECT * FROM proposal_messages WHERE proposal_id = ? ORDER BY created_at",
                                     (proposal_id,)).fetchall()
        return [_proposal_message(r) for r in rows]

    def set_proposal_message_shown(self, chat_id: int, message_id: int, shown: str) -> None:
        with self._write() as con:
            con.execute("UPDATE proposal_messages SET shown = ?, updated_at = ? WHERE chat_id = ? AND message_id = ?",
                        (shown, time.time(), chat_id, message_id))

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

    # -- status -----------------------------------------------------------------------------
    def status_summary(self, rate_window: int = 50) -> StatusSummary:
        """What ``smart-tuner status`` shows, read from one consistent snapshot."""
        with self._read() as con:
            steps = con.execute("SELECT record FROM telemetry ORDER BY seq DESC LIMIT ?", (rate_window,)).fetchall()
            ev = con.execute("SELECT record FROM evals ORDER BY seq DESC LIMIT 1").fetchone()
            ph = con.execute("SELECT to_phase, wall_time FROM phases ORDER BY id DESC LIMIT 1").fetchone()
            pending = con.execute("SELECT * FROM proposals WHERE status = 'proposed' ORDER BY id").fetchall()
            open_commands = con.execute("SELECT count(*) FROM commands WHERE status IN ('pending', 'delivered')"
                                        ).fetchone()[0]
            ck = con.execute("SELECT * FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
        records = [StepTelemetry.model_validate_json(r[0]) for r in steps]
        rate = None
        if len(records) >= 2:
            newest, oldest = records[0], records[-1]
            dt, ds = newest.wall_time - oldest.wall_time, newest.step - oldest.step
            rate = ds / dt if dt > 0 and ds > 0 else None
        return StatusSummary(
            latest_step=records[0] if records else None,
            latest_eval=EvalRecord.model_validate_json(ev[0]) if ev else None,
            phase=ph[0] if ph else None, phase_since=ph[1] if ph else None,
            pending_proposals=[_proposal(r) for r in pending], open_commands=open_commands,
            latest_checkpoint=_checkpoint(ck) if ck else None, steps_per_second=rate,
        )
