"""The notification outbox as a library: what each channel gets next, and the record of
what it got.

The supervisor and the daemon never talk to a human directly: they put rows in the
outbox (``Journal.outbox_put``: phase changes, alignment reached, interventions,
proposals waiting, crashes and restarts, the run finishing, the digest), in the daemon
and never in the trainer. Consumers (:mod:`agent.notify` wires them: the console, the
Telegram bot) drain it per **channel** (``console``, ``telegram:CHAT_ID``) through a
:class:`Relay`: claim the next message (:meth:`Relay.next`), hand it to the channel,
then record the outcome (:meth:`Relay.delivered`, :meth:`Relay.failed` for a try that
may succeed later, :meth:`Relay.undeliverable` for a refusal for good). When to retry
is the consumer's business (the bot retries with tenacity's backoff).

Delivery guarantees
-------------------
A row is delivered to a channel, then recorded (``Journal.outbox_delivered``) in one
fsynced transaction; it is marked sent once every channel has it. Nothing is marked
before the channel accepted it, so nothing is lost: while Telegram is down the rows
wait in the journal, across daemon restarts too. The price is **at-least-once**: if the
daemon dies in the milliseconds between Telegram's reply and the commit, that message
is sent again by the next daemon. We chose that over at-most-once (record first, then
send), which would silently drop a "trainer crashed" when the daemon dies mid-send; a
repeated message is harmless, a lost call for a human is not. A message Telegram
refuses for good (400 / 403: too long, chat gone, bot blocked) is recorded as
undeliverable for that chat with the error and an audit row, and not retried.

Flood control (a flapping run must not flood the chat): per chat a token bucket lets
``burst_messages`` go at once and then ``messages_per_minute``; whatever waits meanwhile
is grouped into one message, and groups larger than ``group_max_items`` are counted by
kind with the newest listed. Non-urgent rows wait ``group_seconds`` for company before
they go. Proposals waiting for a decision each get a message of their own (with
Approve / Reject buttons in Telegram).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from agent.journal import Journal, OutboxMessage

CONSOLE = "console"
CARD_KINDS = frozenset({"proposal_ask"})  # each in a message of its own (the bot adds buttons)
TEXT_LIMIT = 4000  # Telegram's limit is 4096 characters per message
SINGLE_TEXT_LIMIT = 1500  # one notification (a crash carries 20 lines of the trainer log)


def telegram_channel(chat_id: int) -> str:
    return f"telegram:{chat_id}"


def is_urgent(m: "OutboxMessage") -> bool:
    return bool(m.payload.get("urgent"))


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 20].rstrip() + "\n... (cut)"


# -- what to send ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """One message for one channel: the outbox rows it carries and its text."""
    messages: tuple["OutboxMessage", ...]
    text: str
    proposal_id: int | None = None  # a proposal card (one row of kind proposal_ask)

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self.messages]


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _single(m: "OutboxMessage", run_name: str) -> str:
    lines = m.text.split("\n")
    if len(lines) > 9:  # a crash quotes 20 lines of the trainer log: the last ones tell
        lines = [lines[0], f"... ({len(lines) - 7} lines left out)", *lines[-6:]]
    return clip(f"[{run_name}] " + "\n".join(lines), SINGLE_TEXT_LIMIT)


def _item(m: "OutboxMessage") -> str:
    """One notification as one line of a group: its first line (a digest: its figures)."""
    first, *rest = m.text.split("\n")
    if m.kind == "digest" and rest:
        first = "digest: " + "; ".join(rest[:6])
    return f"{'!! ' if is_urgent(m) else '- '}{_clock(m.created_at)} {clip(first, 300)}"


def group_text(messages: list["OutboxMessage"], run_name: str, max_items: int) -> str:
    """Several notifications as one message; beyond ``max_items``, counted by kind."""
    if len(messages) == 1:
        return _single(messages[0], run_name)
    span = f"{_clock(messages[0].created_at)} to {_clock(messages[-1].created_at)}"
    line = _item

    if len(messages) <= max_items:
        return clip("\n".join([f"[{run_name}] {len(messages)} notifications, {span}", *map(line, messages)]))
    counts = Counter(m.kind for m in messages)
    summary = ", ".join(f"{kind} x{n}" for kind, n in counts.most_common())
    shown = messages[-max_items:]
    urgent_hidden = [m for m in messages[:-max_items] if is_urgent(m)]
    lines = [f"[{run_name}] {len(messages)} notifications, {span} (grouped: a busy run)", summary]
    if urgent_hidden:
        lines.append(f"urgent among the older ones: {len(urgent_hidden)}")
        lines += [line(m) for m in urgent_hidden[-3:]]
    lines.append(f"newest {len(shown)}:")
    lines += [line(m) for m in shown]
    return clip("\n".join(lines))


class FloodGate:
    """A token bucket: ``burst`` messages at once, refilled at ``per_minute``."""

    def __init__(self, burst: int, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.rate = float(burst), per_minute / 60.0
        self.clock = clock
        self.tokens = float(burst)
        self.at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def wait_seconds(self) -> float:
        """0 when a message may go now, else how long until one may."""
        self._refill()
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self) -> None:
        self._refill()
        self.tokens -= 1.0  # may go below zero (a flush): later messages wait longer


class Relay:
    """Which outbox rows one channel gets next, and the record of what it got.

    Journal access is synchronous (the bot calls it in a worker thread); the
    rate-limit state lives here, in memory: after a restart a chat gets a fresh burst.
    """

    def __init__(self, journal: "Journal", channel: str, channels: list[str], *, run_name: str,
                 burst: int, per_minute: float, group_seconds: float, max_items: int,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.journal, self.channel, self.channels = journal, channel, list(channels)
        self.run_name, self.group_seconds, self.max_items = run_name, group_seconds, max_items
        self.clock = clock
        self.gate = FloodGate(burst, per_minute, monotonic)

    def next(self, flush: bool = False) -> tuple[Outgoing | None, float]:
        """The next message to send, or None and how many seconds to wait (inf: nothing
        pending). ``flush`` (the daemon is exiting): no waiting for company or tokens."""
        pending = self.journal.outbox_for_channel(self.channel, limit=200)
        if not pending:
            return None, math.inf
        if not flush:
            wait = self.gate.wait_seconds()
            if wait > 0:
                return None, wait
        first = pending[0]
        if first.kind in CARD_KINDS:
            return Outgoing((first,), first.text, proposal_id=first.payload.get("proposal_id")), 0.0
        run: list[OutboxMessage] = []
        for m in pending:
            if m.kind in CARD_KINDS:
                break
            run.append(m)
        age = self.clock() - first.created_at
        more_behind = len(run) < len(pending)  # a card waits behind them: do not hold it up
        if not flush and not more_behind and age < self.group_seconds and not any(map(is_urgent, run)):
            return None, self.group_seconds - age
        return Outgoing(tuple(run), group_text(run, self.run_name, self.max_items)), 0.0

    def delivered(self, out: Outgoing, ref: str | None) -> int:
        self.gate.take()
        return self.journal.outbox_delivered(out.ids, self.channel, channels=self.channels, ref=ref)

    def failed(self, out: Outgoing, error: str) -> None:
        """A try that may succeed later (network, 5xx, 429): counted, the error kept (the
        bot records the first failure of a series and every tenth)."""
        for oid in out.ids:
            self.journal.outbox_mark_failed(oid, f"{self.channel}: {error}")

    def undeliverable(self, out: Outgoing, error: str) -> None:
        """Refused for good by this channel: recorded (and audited) so it is not retried."""
        self.journal.outbox_delivered(out.ids, self.channel, channels=self.channels, error=error)
