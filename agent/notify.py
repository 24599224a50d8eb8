"""Notifications wired for the daemon: which consumers drain the outbox (:mod:`agent.outbox`).

:func:`start_notifications` connects the channels, in the daemon and never in the trainer:

* ``console``: each row as a structlog event ``notification`` (on a terminal a line of
  text, under systemd a JSON line). Used when no Telegram chat is configured, which
  includes the README's demo (no token). :class:`ConsoleNotifier`, an APScheduler job.
* ``telegram:CHAT_ID``: one per allowed chat, sent by the bot (``agent/telegram_bot.py``)
  in its own thread and asyncio loop (``agent/telegram_service.py``), one
  :class:`agent.outbox.Relay` per chat.

At daemon exit they stop in reverse order: the bot flushes what it can, the console
prints the rest.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from agent.outbox import CONSOLE, is_urgent

if TYPE_CHECKING:
    from agent.config import TelegramConfig
    from agent.journal import Journal

# -- the console channel ------------------------------------------------------------------------


class ConsoleNotifier:
    """Each outbox row as a structlog event (``notification``), in the order written."""

    def __init__(self, journal: "Journal", log: Any, channels: list[str] | None = None) -> None:
        self.journal, self.log = journal, log
        self.channels = channels or [CONSOLE]
        self._lock = threading.Lock()  # the scheduled job and the final drain at exit

    def drain(self) -> int:
        n = 0
        with self._lock:
            for m in self.journal.outbox_for_channel(CONSOLE, limit=500):
                level = "warning" if is_urgent(m) else "info"
                getattr(self.log, level)("notification", kind=m.kind, text=m.text, outbox_id=m.id)
                n += self.journal.outbox_delivered([m.id], CONSOLE, channels=self.channels)
        return n


# -- wiring, for the daemon -------------------------------------------------------------------------


class Notifications(Protocol):
    def stop(self) -> None: ...


class _Started:
    """What :func:`start_notifications` started, stopped in reverse order at daemon exit."""

    def __init__(self) -> None:
        self.console: ConsoleNotifier | None = None
        self.telegram: Any = None  # agent.telegram_service.TelegramService

    def stop(self) -> None:
        if self.telegram is not None:
            self.telegram.stop()
        if self.console is not None:
            self.console.drain()


def start_notifications(cfg: "TelegramConfig", *, journal: "Journal", scheduler: Any, run_dir: Path,
                        max_steps: int | None, probe_text: str | None, log: Any,
                        token: str | None | Callable[[], str | None] = None,
                        drain_seconds: float = 1.0) -> Notifications:
    """Start the outbox's consumers: the Telegram bot when ``TELEGRAM_BOT_TOKEN`` is set,
    the console when there is no token or no chat to notify. Never imports aiogram
    itself: the bot's thread does, after the daemon is ready."""
    from agent.bot_token import bot_token

    started = _Started()
    try:
        secret = (token() if callable(token) else token) if token is not None else bot_token()
    except Exception as exc:  # noqa: BLE001 - a broken .env must not stop training
        log.warning("could not read TELEGRAM_BOT_TOKEN; Telegram is off", error=type(exc).__name__)
        secret = None
    if secret is not None and not _looks_like_a_token(secret):
        log.error("TELEGRAM_BOT_TOKEN is not a bot token (BotFather's look like 123456789:AA...); Telegram is off")
        secret = None
    chats = list(cfg.allowed_chat_ids) if secret else []
    from agent.logs import set_console_notifications

    set_console_notifications(not chats)  # the human console then leaves out the events they repeat
    if not chats:
        started.console = ConsoleNotifier(journal, log)
        scheduler.add_job(_quiet(started.console.drain, log), "interval", seconds=drain_seconds, id="notify-console",
                          next_run_time=_now())
    if secret:
        from agent.telegram_service import TelegramService

        if not cfg.allowed_chat_ids or not cfg.allowed_user_ids:
            log.warning("Telegram: the bot obeys nobody until supervisor.telegram.allowed_chat_ids and "
                        "allowed_user_ids list you (send it /start: it answers with your ids)"
                        + ("; notifications go to the console meanwhile" if not chats else ""))
        started.telegram = TelegramService(secret, cfg, run_dir=run_dir, max_steps=max_steps, probe_text=probe_text,
                                           log=log)
        started.telegram.start()
        log.info("Telegram bot starting", chats=len(chats), api=cfg.api_base_url or "api.telegram.org")
    return started


def _looks_like_a_token(secret: str) -> bool:
    left, sep, right = secret.partition(":")
    return bool(sep) and left.isdigit() and bool(right) and not any(c.isspace() for c in secret)


def _now() -> Any:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc)


def _quiet(fn: Callable[[], Any], log: Any) -> Callable[[], None]:
    def job() -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - log and keep the schedule
            log.exception("notification job failed")
    return job
