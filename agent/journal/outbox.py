"""The notification outbox and its deliveries to channels, and the Telegram messages that
show a proposal. What is sent, grouped and retried is :mod:`agent.outbox`'s business;
these are its rows."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from agent.journal.connection import JournalConnection
from agent.journal.rows import Delivery, OutboxMessage, ProposalMessage, dumps, read_outbox, read_proposal_message


class OutboxTables(JournalConnection):
    """The ``outbox``, ``deliveries`` and ``proposal_messages`` tables."""

    # -- outbox --------------------------------------------------------------------------------
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
        return [read_outbox(r) for r in rows]

    def outbox_mark_failed(self, message_id: int, error: str) -> None:
        with self._write() as con:
            con.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ? AND sent_at IS NULL",
                        (error, message_id))

    def outbox_messages(self, limit: int | None = None) -> list[OutboxMessage]:
        """Every outbox message, sent or not, oldest first (the newest ``limit``)."""
        with self._lock:
            rows = self._con.execute("SELECT * FROM outbox ORDER BY id DESC LIMIT ?",
                                     (-1 if limit is None else limit,)).fetchall()
        return [read_outbox(r) for r in reversed(rows)]

    # -- delivery to channels (notifiers) ------------------------------------------------------
    def outbox_for_channel(self, channel: str, limit: int = 100) -> list[OutboxMessage]:
        """Unsent messages this channel has not had yet, oldest first."""
        with self._lock:
            rows = self._con.execute(
                "SELECT * FROM outbox o WHERE sent_at IS NULL AND NOT EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.outbox_id = o.id AND d.channel = ?) ORDER BY id LIMIT ?",
                (channel, limit)).fetchall()
        return [read_outbox(r) for r in rows]

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

    # -- messages showing proposals (the Telegram cards) ---------------------------------------
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
        return [read_proposal_message(r) for r in rows]

    def set_proposal_message_shown(self, chat_id: int, message_id: int, shown: str) -> None:
        with self._write() as con:
            con.execute("UPDATE proposal_messages SET shown = ?, updated_at = ? WHERE chat_id = ? AND message_id = ?",
                        (shown, time.time(), chat_id, message_id))
