"""Phases and the supervisor's state, proposals and their fate, commands for the trainer.

A proposal and its commands move together: an approval enqueues the proposal's
commands in the same transaction, and the trainer's acknowledgement of the last one
settles the proposal (applied, or failed) in that acknowledgement's transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from agent.journal.connection import JournalConnection
from agent.journal.rows import (
    COMMAND_KINDS,
    MODES,
    CommandRow,
    Decision,
    Mode,
    PhaseChange,
    ProposalRow,
    as_command,
    dumps,
    loads,
    read_command,
    read_phase,
    read_proposal,
)
from agent.journal.telemetry import insert_steps
from trainer.control import Command, CommandResult, StepTelemetry, parse_command


class ProposalTables(JournalConnection):
    """The ``phases``, ``state``, ``proposals`` and ``commands`` tables."""

    # -- phases and supervisor state -----------------------------------------------------------
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
        return [read_phase(r) for r in reversed(rows)]

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

    # -- proposals -----------------------------------------------------------------------------
    def add_proposal(self, *, policy: str, kind: str, actions: Iterable[Command | Mapping[str, Any]], reason: str,
                     evidence: Mapping[str, Any] | None = None, aim: str | None = None, mode: Mode = "ask",
                     step: int | None = None, expires_at: float | None = None, approve_by: str | None = None,
                     source: str = "supervisor", now: float | None = None) -> ProposalRow:
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
            return read_proposal(con.execute("SELECT * FROM proposals WHERE id = ?", (pid,)).fetchone())

    def get_proposal(self, proposal_id: int) -> ProposalRow | None:
        with self._lock:
            row = self._con.execute("SELECT * FROM proposals WHERE id = ?", (proposal_id,)).fetchone()
        return read_proposal(row) if row else None

    def proposals(self, status: str | Sequence[str] | None = None, limit: int | None = None) -> list[ProposalRow]:
        """Proposals, newest first, optionally with a given status (or any of several)."""
        statuses = [status] if isinstance(status, str) else list(status or [])
        where = f"WHERE status IN ({', '.join('?' * len(statuses))})" if statuses else ""
        with self._lock:
            rows = self._con.execute(f"SELECT * FROM proposals {where} ORDER BY id DESC LIMIT ?",
                                     (*statuses, -1 if limit is None else limit)).fetchall()
        return [read_proposal(r) for r in rows]

    def pending_proposals(self) -> list[ProposalRow]:
        """Proposals waiting for a decision, oldest first."""
        return self.proposals("proposed")[::-1]

    def due_proposals(self, now: float | None = None) -> list[ProposalRow]:
        """Undecided proposals whose expiry time has passed, oldest first."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._con.execute("SELECT * FROM proposals WHERE status = 'proposed' AND expires_at IS NOT NULL "
                                     "AND expires_at <= ? ORDER BY id", (now,)).fetchall()
        return [read_proposal(r) for r in rows]

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

    # -- commands ------------------------------------------------------------------------------
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
        command = as_command(command)
        now = time.time()
        with self._write() as con:
            inserted = self._insert_command(con, command, source, proposal_id, now)
            if inserted:
                self._audit(con, now, source, "command", f"{command.kind} {command.id}")
        return inserted

    def get_command(self, command_id: str) -> CommandRow | None:
        with self._lock:
            row = self._con.execute("SELECT * FROM commands WHERE id = ?", (command_id,)).fetchone()
        return read_command(row) if row else None

    def commands(self, *, proposal_id: int | None = None, limit: int | None = None) -> list[CommandRow]:
        """Commands, newest first (those of one proposal, if given)."""
        where, args = ("WHERE proposal_id = ?", (proposal_id,)) if proposal_id is not None else ("", ())
        with self._lock:
            rows = self._con.execute(f"SELECT * FROM commands {where} ORDER BY rowid DESC LIMIT ?",
                                     (*args, -1 if limit is None else limit)).fetchall()
        return [read_command(r) for r in rows]

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
        return [read_command(r) for r in rows]

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
            insert_steps(con, steps)
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
            insert_steps(con, steps)
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
