"""Questions tests ask a run journal that the program itself never asks.

Plain SQL on the journal file, on a connection of its own: a check that does not go
through the code under test.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

from agent.journal import CommandRow, Journal, ProposalMessage
from agent.journal.rows import read_command, read_proposal_message


def _rows(journal: Journal, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    with closing(sqlite3.connect(journal.path, timeout=10.0)) as con:
        con.row_factory = sqlite3.Row
        return con.execute(sql, args).fetchall()


def schema_version(journal: Journal) -> int:
    (row,) = _rows(journal, "SELECT value FROM meta WHERE key = 'schema_version'")
    return int(row[0])


def meta(journal: Journal) -> dict[str, str]:
    return {r["key"]: r["value"] for r in _rows(journal, "SELECT key, value FROM meta")}


def integrity_check(journal: Journal) -> str:
    return "; ".join(r[0] for r in _rows(journal, "PRAGMA integrity_check"))


def pending_commands(journal: Journal) -> list[CommandRow]:
    """Commands not yet delivered to the trainer, in the order enqueued."""
    return [read_command(r) for r in _rows(journal, "SELECT * FROM commands WHERE status = 'pending' ORDER BY rowid")]


def proposal_messages(journal: Journal, proposal_id: int) -> list[ProposalMessage]:
    """The Telegram messages showing a proposal, oldest first."""
    return [read_proposal_message(r) for r in _rows(
        journal, "SELECT * FROM proposal_messages WHERE proposal_id = ? ORDER BY created_at", (proposal_id,))]
