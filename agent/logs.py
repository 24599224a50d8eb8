"""Structured logging for the agent (daemon, supervisor, CLI): structlog, one event per decision.

``configure_logging(run_id)`` once at start-up, then ``log = get_logger()`` anywhere::

    log.info("proposal applied", proposal=12, kind="set_lr", step=4200)

On a terminal the events read as aligned text; otherwise (systemd, a pipe, a file)
each event is one JSON object per line, with ``timestamp`` (UTC, ISO 8601), ``level``,
``event`` and ``run_id``, ready for ``journalctl -o cat | jq``.

The run id is bound through ``structlog.contextvars`` and, because threads started by
APScheduler begin with an empty context, also added by a processor to every event
that lacks it. Records of the standard ``logging`` module (APScheduler's warnings,
for instance) are rendered the same way.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any, Callable

import structlog

from trainer.redact import mask_text

_state: dict[str, Any] = {"run_id": None, "redact": None}
_HANDLER_NAME = "smart-tuner"


def _add_run_id(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    if _state["run_id"] is not None:
        event.setdefault("run_id", _state["run_id"])
    return event


def add_redaction(redact: Callable[[str], str] | None) -> None:
    """Mask a secret in every structlog event from now on (``agent.bot_token.install_log_redaction``)."""
    _state["redact"] = redact


def _redact(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """URL passwords masked in every event (``trainer.redact``), and the bot token once known."""
    redact = _state.get("redact")
    if redact is None:
        return {k: mask_text(v) if isinstance(v, str) else v for k, v in event.items()}
    if event.get("exc_info"):  # render the traceback now, so that its text is masked too
        event = structlog.processors.format_exc_info(logger, method, event)
    return {k: redact(mask_text(v)) if isinstance(v, str) else v for k, v in event.items()}


def configure_logging(run_id: str, json: bool | None = None, *, stream: IO[str] | None = None,
                      level: int | str = logging.INFO) -> None:
    """Configure structlog (and the stdlib root logger) for this process.

    ``json=None`` chooses JSON lines unless ``stream`` (default stdout) is a terminal.
    Safe to call again (e.g. in tests); the newest call wins.
    """
    stream = stream if stream is not None else sys.stdout
    if json is None:
        json = not (hasattr(stream, "isatty") and stream.isatty())
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    _state["run_id"] = run_id

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_run_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        renderer: Any = structlog.processors.JSONRenderer()
        tail: list[Any] = [structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info,
                           structlog.processors.UnicodeDecoder()]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=hasattr(stream, "isatty") and stream.isatty())
        tail = [structlog.processors.StackInfoRenderer()]

    structlog.configure(
        processors=[*shared, *tail, _redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(run_id=run_id)

    # The standard library's records (APScheduler, sqlite helpers, ...) in the same format.
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_add_run_id, structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, _redact, renderer],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # other libraries: warnings and errors only
    # "Added job", "Job executed successfully" every tick would drown the decisions.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def get_logger(**initial: Any) -> Any:
    """A structlog logger (``.info(event, **fields)``, ``.warning``, ``.error``, ``.exception``)."""
    return structlog.get_logger(**initial)
