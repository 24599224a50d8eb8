"""The Telegram bot token: where it comes from, and keeping it out of logs and errors.

The token is read from the environment variable ``TELEGRAM_BOT_TOKEN`` or, failing
that, from a ``.env`` file in the current folder (pydantic-settings), never from a
run's YAML (``supervisor.telegram`` refuses a token key), so it cannot end up in
``run-config.yaml``, MLflow parameters or a journal.

It appears in one place on the wire: the Bot API's URL path (``/bot<token>/<method>``).
An HTTP library's error may quote that URL, and a traceback may show it, so everything
the bot writes about a failure goes through :class:`Redactor`, and
:func:`install_log_redaction` puts the same redaction on the loggers of aiogram,
aiohttp and asyncio (records are rewritten before any handler sees them) and on
structlog's chain (``agent.logs``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

TOKEN_ENV = "TELEGRAM_BOT_TOKEN"
# Which .env file to read (default ./.env; empty: none). Tests point it at /dev/null so a
# developer's real token can never start a bot that talks to api.telegram.org.
ENV_FILE_ENV = "SMART_TUNER_ENV_FILE"
MASK = "<redacted>"


def bot_token() -> str | None:
    """The bot token from the environment or ``.env``; None when unset or empty."""
    from pydantic import SecretStr
    from pydantic_settings import BaseSettings, SettingsConfigDict

    env_file = os.environ.get(ENV_FILE_ENV, ".env") or None
    if env_file is not None and not Path(env_file).is_file():
        env_file = None

    class _Settings(BaseSettings):
        model_config = SettingsConfigDict(env_file=env_file, env_file_encoding="utf-8", extra="ignore")
        # SecretStr: even a repr() of the settings shows '**********'.
        telegram_bot_token: SecretStr | None = None

    secret = _Settings().telegram_bot_token
    value = secret.get_secret_value().strip() if secret is not None else ""
    return value or None


class Redactor:
    """Replaces the token (and its secret half, after the colon) in text."""

    def __init__(self, secret: str | None) -> None:
        parts: set[str] = set()
        if secret:
            parts.add(secret)
            _, _, tail = secret.partition(":")
            if len(tail) >= 8:  # the bot id before the colon is public; the rest is the secret
                parts.add(tail)
        self._parts = sorted(parts, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for part in self._parts:
            if part in text:
                text = text.replace(part, MASK)
        return text

    def error(self, exc: BaseException) -> str:
        """``Type: message`` of an exception, redacted: what the bot logs and stores."""
        return self(f"{type(exc).__name__}: {exc}")


class _RedactingFilter(logging.Filter):
    """Rewrites a record (message, arguments, traceback) with the secret masked.

    A logger-level filter runs when the record is made, before any handler formats it,
    so every handler (the daemon's, pytest's, a user's) sees only the redacted text.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__("smart-tuner-redact")
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: keep what there is
            text = f"{record.msg} {record.args}"
        extra = []
        if record.exc_info:
            extra.append(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            extra.append(record.exc_text)
        if record.stack_info:
            extra.append(record.stack_info)
        record.msg = self.redactor("\n".join([text, *extra]))
        record.args = None
        record.exc_info = record.exc_text = record.stack_info = None
        return True


# The loggers the bot's libraries write to (aiogram logs failed polls with the
# exception's text; asyncio logs tasks that died with their traceback).
_LIBRARY_LOGGERS = ("aiogram", "aiogram.dispatcher", "aiogram.event", "aiogram.middlewares", "aiogram.webhook",
                    "aiogram.scene", "aiohttp", "aiohttp.client", "aiohttp.internal", "aiohttp.server",
                    "aiohttp.access", "aiohttp.web", "asyncio")


def install_log_redaction(redactor: Redactor) -> None:
    """Mask the secret in the libraries' log records and in structlog events (the newest call wins)."""
    names = set(_LIBRARY_LOGGERS) | {n for n in logging.root.manager.loggerDict
                                     if n.split(".")[0] in ("aiogram", "aiohttp")}
    for name in sorted(names):
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _RedactingFilter)]:
            logger.removeFilter(old)
        logger.addFilter(_RedactingFilter(redactor))
    from agent.logs import add_redaction

    add_redaction(redactor)
