"""Structured logging for the agent (daemon, supervisor, CLI): structlog, one event per decision.

``configure_logging(run_id)`` once at start-up, then ``log = get_logger()`` anywhere::

    log.info("proposal applied", proposal=12, kind="set_lr", step=4200)

Off a terminal (systemd, a pipe, a file) each event is one JSON object per line, with
``timestamp`` (UTC, ISO 8601), ``level``, ``event`` and ``run_id``, ready for
``journalctl -o cat | jq``. For the daemon on a terminal, ``configure_logging(run_id,
console=HumanConsole(...))`` renders them as short human lines instead
(``[supervisor] ...``: :func:`render_human`, ``agent/console.py``); without a console,
``json=False`` gives structlog's aligned key=value text.

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

_state: dict[str, Any] = {"run_id": None, "redact": None, "console_notifications": True}
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
                      level: int | str = logging.INFO, console: Any = None) -> None:
    """Configure structlog (and the stdlib root logger) for this process.

    ``json=None`` chooses JSON lines unless ``stream`` (default stdout) is a terminal.
    ``console`` (an ``agent.console.HumanConsole``): human lines through it (``json``
    and ``stream`` are then ignored). Safe to call again (e.g. in tests); the newest
    call wins.
    """
    if console is not None:
        stream, json = console.stream, False
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
    elif console is not None:
        renderer = render_human
        tail = [structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info]
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


# -- the human console (agent/console.py) ---------------------------------------------------------

# Events that a notification repeats word for word (the supervisor's and the daemon's
# ``_notify`` / ``note_child_event``): printed only when no notification reaches this
# console (Telegram takes them), so that each is read once.
MIRRORED_EVENTS = frozenset({
    "trainer started", "trainer restarted", "trainer crashed", "trainer hung", "trainer finished",
    "trainer gave_up", "trainer stopped", "phase", "proposal", "expired", "tuning round abandoned",
})
_HIDDEN_FIELDS = frozenset({"event", "timestamp", "level", "run_id", "logger", "exception", "stack", "log_tail"})
NOTIFICATION_MAX_LINES = 9


def set_console_notifications(on: bool) -> None:
    """Whether the console channel prints the notifications (``agent.notify``); if so,
    the events they repeat are left out of the human console."""
    _state["console_notifications"] = bool(on)


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) or "none"
    return str(v)


def _human_text(event: dict[str, Any]) -> str | None:
    name = str(event.get("event", ""))
    if name == "notification":
        lines = str(event.get("text", "")).split("\n")
        if len(lines) > NOTIFICATION_MAX_LINES:  # a crash quotes the trainer log, already on screen
            lines = [lines[0], f"... ({len(lines) - 7} lines left out)", *lines[-6:]]
        return "\n    ".join(lines)
    if name in MIRRORED_EVENTS and _state["console_notifications"] and "logger" not in event:
        return None
    if name == "daemon ready":
        return (f"ready in {_value(event.get('seconds'))} s: phase {event.get('phase')}, "
                f"trainer pid {event.get('child_pid')}")
    if name == "data audit":
        hints = event.get("hints") or []
        return f"data audit: {'; '.join(map(str, hints))}" if hints else None
    if name.startswith("trainer ") and "detail" in event:
        return f"{name}: {event['detail']}"
    if name == "phase":
        return f"step {event.get('step')}: phase {event.get('source')} -> {event.get('dest')} ({event.get('reason')})"
    if name == "proposal":
        return (f"#{event.get('id')} {event.get('policy')}: {event.get('reason')} "
                f"({event.get('kind')}, {event.get('mode')})")
    fields = [f"{k} {_value(v)}" for k, v in event.items() if k not in _HIDDEN_FIELDS and v is not None]
    return name + (f" ({', '.join(fields)})" if fields else "")


def render_human(logger: Any, method: str, event: dict[str, Any]) -> str:
    """One event as a short line, ``[supervisor] ...`` (a library's record: ``[its logger]``);
    warnings and errors say so; a traceback follows, indented. Drops the events that a
    notification repeats (see :data:`MIRRORED_EVENTS`) and the empty data audit."""
    text = _human_text(event)
    if text is None:
        if "logger" in event:  # a stdlib record (logging's formatter cannot drop one)
            text = str(event.get("event", ""))
        else:
            raise structlog.DropEvent
    level = str(event.get("level", "info")).lower()
    if level in ("warning", "error", "critical", "exception") and event.get("event") != "notification":
        text = f"{'warning' if level == 'warning' else 'error'}: {text}"
    source = event.get("logger") or "supervisor"
    line = f"[{source}] {text}"
    for extra in ("stack", "exception"):
        if event.get(extra):
            line += "\n" + "\n".join("    " + x for x in str(event[extra]).rstrip().split("\n"))
    return line
