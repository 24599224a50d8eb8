"""The Telegram bot token: where it comes from, and keeping it out of logs and errors.

The token is read from the environment variable ``TELEGRAM_BOT_TOKEN``; failing
that, from the systemd credential ``telegram_bot_token`` (the file of that name in
``$CREDENTIALS_DIRECTORY``, which ``LoadCredential=`` fills); failing that, from a
``.env`` file in the current folder (pydantic-settings). Never from a run's YAML
(``supervisor.telegram`` refuses a token key), so it cannot end up in
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
from typing import Any

TOKEN_ENV = "TELEGRAM_BOT_TOKEN"
# Which .env file to read (default ./.env; empty: none). Tests point it at /dev/null so a
# developer's real token can never start a bot that talks to api.telegram.org.
ENV_FILE_ENV = "SMART_TUNER_ENV_FILE"
# systemd's LoadCredential= puts a service's credentials, one file each, in this folder.
CREDENTIALS_DIR_ENV = "CREDENTIALS_DIRECTORY"
CREDENTIAL_NAME = "telegram_bot_token"
MASK = "<redacted>"


def bot_settings() -> Any:
    """The settings that hold the token (a ``SecretStr``: its repr and str show
    ``'**********'``): the environment, then ``$CREDENTIALS_DIRECTORY/telegram_bot_token``,
    then ``.env``. An empty value counts as unset."""
    from pydantic import SecretStr
    from pydantic_settings import BaseSettings, SettingsConfigDict

    env_file = os.environ.get(ENV_FILE_ENV, ".env") or None
    if env_file is not None and not Path(env_file).is_file():
        env_file = None
    credentials = os.environ.get(CREDENTIALS_DIR_ENV) or None
    if credentials is not None and not Path(credentials).is_dir():
        credentials = None

    class _Settings(BaseSettings):
        # secrets_dir: a file named after the field (telegram_bot_token), as systemd names it.
        model_config = SettingsConfigDict(env_file=env_file, env_file_encoding="utf-8", extra="ignore",
                                          secrets_dir=credentials, env_ignore_empty=True)
        # SecretStr: even a repr() of the settings shows '**********'.
        telegram_bot_token: SecretStr | None = None

        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings):
            # The credential the service manager hands over wins over a .env lying in the
            # working folder; the environment wins over both.
            return init_settings, env_settings, file_secret_settings, dotenv_settings

    return _Settings()


def bot_token() -> str | None:
    """The bot token (see :func:`bot_settings`); None when unset or empty."""
    secret = bot_settings().telegram_bot_token
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
