"""The texts of the Telegram bot (plain text; no aiogram here, so they test alone).

Status, history and proposals come from :mod:`agent.views`, the same text the CLI
prints; this module adds what only the bot says: the proposal cards before and after
their decision, the help, the refusal.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from agent.views import format_fate, format_proposal

if TYPE_CHECKING:
    from agent.journal import ProposalRow

DECIDE_HINT = "/approve ID or /reject ID"

COMMANDS = (
    ("status", "phase, step, losses, alignment, gate, LR, speed, ETA, recent interventions"),
    ("plot", "the newest alignment image and the loss curve"),
    ("listen", "the probe sentence spoken by the newest checkpoint (Griffin-Lim)"),
    ("pending", "proposals waiting for a decision, with buttons"),
    ("approve", "ID: approve a proposal (its commands go to the trainer)"),
    ("reject", "ID: reject a proposal"),
    ("pause", "pause training at the next step boundary"),
    ("resume", "resume a paused run"),
    ("history", "the newest phase changes, proposals and commands"),
    ("help", "this list"),
)


def card_text(p: "ProposalRow", run_name: str, now: float | None = None) -> str:
    """A proposal's message: a question while it waits, then who decided what."""
    now = time.time() if now is None else now
    if p.status == "proposed":
        head = f"[{run_name}] Approve or reject? (the same as smart-tuner approve/reject {p.id})"
        return "\n".join([head, *format_proposal(p, now)])
    outcome = f" ({p.outcome})" if p.outcome else ""
    head = f"[{run_name}] {p.status.upper()}: {format_fate(p)}{outcome}"
    return "\n".join([head, *format_proposal(p, now, expiry=False)])


def help_text(run_name: str, user_id: int | None, chat_id: int | None) -> str:
    lines = [f"Smart Tuner bot for run {run_name}. Commands:"]
    lines += [f"/{name} {what}" for name, what in COMMANDS]
    lines.append(f"(you are user {user_id} in chat {chat_id})")
    return "\n".join(lines)


def refusal_text(user_id: int | None, chat_id: int | None) -> str:
    # The ids are the stranger's own: telling them costs nothing and is how the owner
    # learns what to put in supervisor.telegram.allowed_user_ids / allowed_chat_ids.
    return (f"Not allowed: this bot takes commands only from the users and chats in its run's config "
            f"(supervisor.telegram). You are user {user_id} in chat {chat_id}.")
