"""What the CLI and the Telegram bot both do to a run: decide a proposal, queue pause,
resume or stop. (What they both show is :mod:`agent.views`, which only reads.)

``smart-tuner approve`` and ``/approve`` decide through the same compare-and-set,
``pause`` and ``/pause`` queue the same command; each front end only words the outcome
its own way.

Import cost: the standard library at import time (the CLI must start instantly); the
journal's types for type checking, ``trainer.control`` inside the function that queues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from agent.journal import CommandRow, Journal, ProposalRow

# -- approve, reject ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionOutcome:
    won: bool
    decision: str  # "approved" | "rejected"
    by: str
    before: "ProposalRow"
    after: "ProposalRow"
    commands: list["CommandRow"]  # queued by this decision, in order


MAX_ID = 2**63 - 1  # SQLite's largest integer


def decide(journal: "Journal", proposal_id: int, decision: Literal["approved", "rejected"],
           by: str) -> DecisionOutcome | None:
    """Approve or reject through the journal's compare-and-set; None for an unknown id."""
    if not 0 < proposal_id <= MAX_ID:  # SQLite cannot even look up an id beyond 64 bits
        return None
    before = journal.get_proposal(proposal_id)
    if before is None:
        return None
    won = journal.decide(proposal_id, decision, by=by)
    after = journal.get_proposal(proposal_id)
    commands = journal.commands(proposal_id=proposal_id)[::-1] if won else []
    return DecisionOutcome(won, decision, by, before, after, commands)


# -- pause, resume, stop -----------------------------------------------------------------------


@dataclass(frozen=True)
class ControlOutcome:
    kind: str
    command_id: str
    was_paused: bool

    def note(self) -> str:
        if self.kind == "pause" and self.was_paused:
            return " (the run was already paused)"
        if self.kind == "resume" and not self.was_paused:
            return " (the run was not paused)"
        return ""


def queue_control(journal: "Journal", kind: Literal["pause", "resume", "stop"], *, source: str,
                  actor: str) -> ControlOutcome:
    """Queue pause / resume / stop for the trainer (``source`` on the command, ``actor`` in the audit)."""
    from trainer.control import Pause, Resume, Stop

    command = {"pause": Pause, "resume": Resume, "stop": Stop}[kind]()
    was_paused = journal.is_paused()
    journal.enqueue_command(command, source=source)
    journal.audit(actor, kind, f"command {command.id}")
    if kind in ("pause", "resume"):
        # The user's intent; whether the trainer *is* paused is derived from the
        # applied commands (Journal.is_paused), which status and the watchdog read.
        journal.set_state("paused", kind == "pause")
    return ControlOutcome(kind, command.id, was_paused)
