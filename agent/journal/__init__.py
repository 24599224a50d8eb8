"""The run journal: one SQLite file per run that both processes share.

Everything the supervisor knows or decides is a row here: the trainer's telemetry
(one row per step, one per evaluation), phase transitions, proposals and their fate,
commands and their acknowledgements, the checkpoint registry, the notification
outbox, an audit log and a small key/value store for the supervisor's memory.
The trainer (child process, through :class:`agent.port.JournalPort`), the daemon,
the CLI and the bot each open their own :class:`Journal` on the same file.

This package holds every SQL statement of the project:

* :mod:`~agent.journal.schema`: the tables and their migrations;
* :mod:`~agent.journal.rows`: the row types and their JSON (NaN kept);
* :mod:`~agent.journal.connection`: opening (read-write or read-only), migrating,
  transactions, the audit log (concurrency and durability are described there);
* one module per table group: :mod:`~agent.journal.telemetry` (telemetry,
  evaluations, checkpoints), :mod:`~agent.journal.proposals` (phases, state,
  proposals, commands), :mod:`~agent.journal.trials`, :mod:`~agent.journal.outbox`
  (outbox, deliveries, proposal cards);
* :mod:`~agent.journal.store`: :class:`Journal`, all of them on one connection.

Callers import from here (``from agent.journal import Journal``).
"""

from agent.journal.connection import history_state
from agent.journal.errors import (
    JournalEmptyError,
    JournalError,
    JournalVersionError,
    empty_message,
    unreadable_message,
)
from agent.journal.rows import (
    COMMAND_KINDS,
    MODES,
    PROPOSAL_STATUSES,
    AuditEntry,
    CheckpointEntry,
    CommandRow,
    CommandStatus,
    Decision,
    Delivery,
    EvalRow,
    Mode,
    OutboxMessage,
    PhaseChange,
    ProposalMessage,
    ProposalRow,
    ProposalStatus,
    StatusSummary,
    TelemetryRow,
    TrialRow,
    WalCheckpoint,
    checkpoint_health,
    dumps,
    loads,
)
from agent.journal.schema import SCHEMA_VERSION
from agent.journal.store import Journal
from agent.journal.telemetry import NewestStep

__all__ = [
    "COMMAND_KINDS", "MODES", "PROPOSAL_STATUSES", "SCHEMA_VERSION", "AuditEntry", "CheckpointEntry", "CommandRow",
    "CommandStatus", "Decision", "Delivery", "EvalRow", "Journal", "JournalEmptyError", "JournalError",
    "JournalVersionError", "Mode", "NewestStep", "OutboxMessage", "PhaseChange", "ProposalMessage", "ProposalRow",
    "ProposalStatus", "StatusSummary", "TelemetryRow", "TrialRow", "WalCheckpoint", "checkpoint_health", "dumps",
    "empty_message", "history_state", "loads", "unreadable_message",
]
