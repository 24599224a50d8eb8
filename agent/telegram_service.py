"""The bot's own thread and event loop inside the daemon.

The daemon is synchronous (a child process, APScheduler jobs); aiogram is asyncio.
:class:`TelegramService` gives the bot a thread of its own with its own loop and its own
connection to the journal, so nothing the bot waits for (Telegram down, a slow upload,
a long poll) can hold up the daemon, and nothing of it runs in the trainer's process.

aiogram is imported in that thread, after the daemon said it is ready: importing it
costs seconds (its hundreds of pydantic types), which the daemon's start-up must not
pay, and a run without a token never imports it at all.

If the bot's loop dies of an unexpected error, it is started again after a pause;
whatever it did not deliver waits in the outbox meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from agent.bot_token import Redactor, install_log_redaction
from agent.config import TelegramConfig

RESTART_PAUSE_SECONDS = 10.0


class TelegramService:
    def __init__(self, token: str, cfg: TelegramConfig, *, run_dir: Path, max_steps: int | None,
                 probe_text: str | None, log: Any) -> None:
        self._token = token
        self.cfg, self.run_dir, self.max_steps = cfg, Path(run_dir), max_steps
        self.probe_text, self.log = probe_text, log
        self.redact = Redactor(token)
        install_log_redaction(self.redact)
        self._stop_requested = threading.Event()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._thread_main, name="telegram-bot", daemon=True)
        self.bot: Any = None  # the running agent.telegram_bot.TelegramBot (tests look at it)
        self.ready = threading.Event()  # set once the bot object exists (aiogram imported)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop polling, try to deliver what waits in the outbox for ``flush_seconds``, return."""
        self._stop_requested.set()
        with self._lock:
            if self._loop is not None and self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            # The import of aiogram may still be under way (seconds), then the flush.
            self._thread.join(timeout if timeout is not None else self.cfg.flush_seconds + 30)
            if self._thread.is_alive():
                self.log.warning("telegram: bot thread did not stop in time; leaving it")

    def _thread_main(self) -> None:
        while not self._stop_requested.is_set():
            try:
                asyncio.run(self._main())
                return
            except Exception as exc:  # noqa: BLE001 - never let the bot take the daemon down
                self.log.error("telegram: bot stopped by an error; restarting it", error=self.redact.error(exc),
                               in_seconds=RESTART_PAUSE_SECONDS)
            if self._stop_requested.wait(RESTART_PAUSE_SECONDS):
                return

    async def _main(self) -> None:
        from agent.journal import Journal
        from agent.paths import journal_path
        from agent.telegram_bot import TelegramBot

        install_log_redaction(self.redact)  # aiogram's loggers exist now
        stop = asyncio.Event()
        journal = Journal(journal_path(self.run_dir))
        try:
            self.bot = TelegramBot(self._token, self.cfg, journal=journal, run_dir=self.run_dir,
                                   max_steps=self.max_steps, probe_text=self.probe_text, log=self.log,
                                   redactor=self.redact)
            with self._lock:
                self._loop, self._stop = asyncio.get_running_loop(), stop
                if self._stop_requested.is_set():
                    stop.set()
            self.ready.set()
            t0 = time.monotonic()
            await self.bot.run(stop, self.cfg.flush_seconds)
            self.log.info("telegram: bot stopped", seconds=round(time.monotonic() - t0, 1))
        finally:
            with self._lock:
                self._loop = self._stop = None
            journal.close()
