"""The journal's row types, and how they are written to and read from SQLite.

Numbers: floats that are NaN are stored as NULL in the numeric columns (SQLite has no
NaN); the ``record`` JSON columns keep the exact record, with ``NaN``/``Infinity``
literals (Python's ``json`` and pydantic read them; SQLite's ``json_extract`` before
3.42 does not). Typed reads always rebuild records from the JSON.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import pydantic_core

from agent.journal.errors import JournalError
from trainer.control import (
    CheckpointRecord,
    Command,
    CommandResult,
    EvalRecord,
    StepTelemetry,
    parse_command,
)

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


# -- JSON that keeps NaN and infinities ---------------------------------------------------
def dumps(value: Any) -> str:
    """JSON text of records, dicts and lists; NaN and +-inf become NaN/Infinity literals.

    (pydantic's ``model_dump_json`` writes them as ``null``, which then fails to
    validate as a float: a non-finite loss would be unreadable.)
    """
    return pydantic_core.to_json(value, inf_nan_mode="constants").decode()


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def num(x: float | None) -> float | None:
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
class ProposalRow:
    """A proposal as the journal keeps it (``policies.types.Proposal`` is what a policy proposes)."""
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
    health: str  # "good" | "bad" at save
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
    pending_proposals: list[ProposalRow] = field(default_factory=list)
    open_commands: int = 0  # pending or delivered, not yet acknowledged
    latest_checkpoint: CheckpointEntry | None = None
    steps_per_second: float | None = None  # over the newest telemetry rows (for an ETA)


def _finite(x: float | None) -> bool:
    return x is None or math.isfinite(x)


def checkpoint_health(record: CheckpointRecord) -> str:
    """Health at save: good when the weights and the metrics it was saved with are finite."""
    ok = record.finite and _finite(record.val_loss) and _finite(record.diagonality)
    return "good" if ok else "bad"


def _bool(x: int | None) -> bool | None:
    return None if x is None else bool(x)


def read_proposal(r: sqlite3.Row) -> ProposalRow:
    return ProposalRow(id=r["id"], created_at=r["created_at"], step=r["step"], policy=r["policy"], kind=r["kind"],
                       actions=loads(r["actions"]), reason=r["reason"], evidence=loads(r["evidence"]), aim=r["aim"],
                       mode=r["mode"], status=r["status"], decided_by=r["decided_by"], decided_at=r["decided_at"],
                       expires_at=r["expires_at"], applied_at=r["applied_at"], applied_step=r["applied_step"],
                       outcome=r["outcome"], outcome_detail=r["outcome_detail"])


def read_command(r: sqlite3.Row) -> CommandRow:
    return CommandRow(id=r["id"], created_at=r["created_at"], kind=r["kind"], payload=loads(r["payload"]),
                      source=r["source"], proposal_id=r["proposal_id"], status=r["status"],
                      delivered_at=r["delivered_at"], deliveries=r["deliveries"], acked_at=r["acked_at"],
                      ok=_bool(r["ok"]), duplicate=_bool(r["duplicate"]), detail=r["detail"], step=r["step"])


def read_checkpoint(r: sqlite3.Row) -> CheckpointEntry:
    return CheckpointEntry(id=r["id"], step=r["step"], path=r["path"], wall_time=r["wall_time"], reason=r["reason"],
                           val_loss=r["val_loss"], diagonality=r["diagonality"], finite=bool(r["finite"]),
                           health=r["health"], health_detail=r["health_detail"])


def read_trial(r: sqlite3.Row) -> TrialRow:
    return TrialRow(id=r["id"], round=r["round"], study=r["study"], number=r["number"], base_step=r["base_step"],
                    params=loads(r["params"]), baseline=bool(r["baseline"]), status=r["status"],
                    started_at=r["started_at"], finished_at=r["finished_at"], pid=r["pid"], folder=r["folder"],
                    steps=r["steps"], objective=r["objective"], metrics=loads(r["metrics"]),
                    checkpoint=r["checkpoint"], detail=r["detail"], mlflow_run_id=r["mlflow_run_id"],
                    winner=bool(r["winner"]))


def read_outbox(r: sqlite3.Row) -> OutboxMessage:
    return OutboxMessage(id=r["id"], created_at=r["created_at"], kind=r["kind"], text=r["text"],
                         payload=loads(r["payload"]), dedupe_key=r["dedupe_key"], sent_at=r["sent_at"],
                         attempts=r["attempts"], last_error=r["last_error"])


def read_proposal_message(r: sqlite3.Row) -> ProposalMessage:
    return ProposalMessage(proposal_id=r["proposal_id"], chat_id=r["chat_id"], message_id=r["message_id"],
                           shown=r["shown"], updated_at=r["updated_at"])


def read_phase(r: sqlite3.Row) -> PhaseChange:
    return PhaseChange(id=r["id"], wall_time=r["wall_time"], step=r["step"], from_phase=r["from_phase"],
                       to_phase=r["to_phase"], reason=r["reason"])


def as_command(command: Command | Mapping[str, Any] | str) -> Command:
    if isinstance(command, (str, Mapping)):
        return parse_command(dict(command) if isinstance(command, Mapping) else command)
    return command

