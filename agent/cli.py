"""``smart-tuner`` command line: the supervised run, and the trainer's commands.

``run`` starts the supervisor daemon; ``status``, ``pending``, ``approve``, ``reject``,
``pause``, ``resume``, ``stop`` and ``history`` read and write the run's journal (the
same SQLite file the daemon, the trainer and the bot use), so they work with no
Telegram and no running daemon. The trainer's own commands (``data``, ``train``,
``synth``, ``demo``) come from :mod:`trainer.cli` unchanged.

Start-up must stay instant: this module imports no torch, mlflow or pydantic at
import time; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.actions import decide, queue_control  # the standard library only: the CLI still starts instantly
from agent.views import (
    format_decision,
    format_event,
    format_proposal,
    format_status,
    history_events,
    status_data as _status_data,
)
from trainer import cli as trainer_cli, cli_train
from trainer.errors import UserError

if TYPE_CHECKING:
    from agent.journal import Journal

# -- the parser ------------------------------------------------------------------------------


def _add_run_dir_options(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--run-dir", type=Path, metavar="DIR", help="the run's folder (holds journal.sqlite)")
    where.add_argument("--config", metavar="C", help="the run's config (file or shipped name): its run_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="with --config: the overrides the run was started with, e.g. --set run_dir=runs/x")


def _add_agent_commands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="train under the supervisor (daemon: trainer child, journal, policies)")
    run.add_argument("--config", required=True, help="config file or shipped config name (default, tiny-cpu)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set train.max_steps=100 (repeatable)")
    run.add_argument("--new-journal", action="store_true",
                     help="the run folder holds checkpoints but its journal is missing or empty: start a new "
                          "journal (the supervisor's history starts over; training resumes from the checkpoints)")
    _add_log_format_option(run)
    run.set_defaults(func=_cmd_run)

    st = sub.add_parser("status", help="phase, step, losses, alignment, ETA and pending proposals of a run")
    _add_run_dir_options(st)
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.set_defaults(func=_cmd_status)

    pe = sub.add_parser("pending", help="proposals waiting for approve / reject, with their evidence")
    _add_run_dir_options(pe)
    pe.add_argument("--json", action="store_true", help="print them as JSON")
    pe.set_defaults(func=_cmd_pending)

    for name, verb in (("approve", "approve a proposal: its commands are queued for the trainer"),
                       ("reject", "reject a proposal")):
        p = sub.add_parser(name, help=verb)
        p.add_argument("id", type=int, metavar="ID", help="proposal id (see smart-tuner pending)")
        _add_run_dir_options(p)
        p.set_defaults(func=_cmd_decide, decision="approved" if name == "approve" else "rejected")

    for name, what in (("pause", "pause training at the next step boundary (the phase is kept)"),
                       ("resume", "resume a paused run"),
                       ("stop", "stop the run: the trainer checkpoints and exits, the daemon exits 0")):
        p = sub.add_parser(name, help=what)
        _add_run_dir_options(p)
        p.set_defaults(func=_cmd_control, control=name)

    hi = sub.add_parser("history", help="phase transitions, proposals and their fate, commands and their acks")
    _add_run_dir_options(hi)
    hi.add_argument("--limit", type=int, default=None, metavar="N", help="only the newest N events")
    hi.add_argument("--json", action="store_true", help="print the events as JSON")
    hi.set_defaults(func=_cmd_history)


def _add_log_format_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=("auto", "human", "json"), default="auto",
                   help="the daemon's console: human (short lines, a progress bar), json (one JSON object per "
                        "line, for journald and log collectors) or auto (default: human on a terminal, else json)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smart-tuner",
        description="Tacotron2 training with an autonomous supervisor. "
                    "Start with: smart-tuner run --config tiny-cpu")
    parser.add_argument("--version", action="version", version=f"smart-tuner {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_agent_commands(sub)
    from agent.tuner.cli import add_commands as _add_tuner_commands  # tune, tune-now, trials (no optuna import)

    _add_tuner_commands(sub, _add_run_dir_options)
    trainer_cli._add_data_commands(sub)
    cli_train.add_commands(sub)
    # The product's demo is supervised: same data and config, run under the daemon.
    sub.choices["demo"].set_defaults(func=_cmd_demo_supervised)
    _add_log_format_option(sub.choices["demo"])
    sub.choices["demo"].description = "Build an espeak-ng dataset and train tiny-cpu on it under the supervisor."
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("smart-tuner")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    return trainer_cli.run_command(build_parser(), argv)


# -- run ---------------------------------------------------------------------------------------


def _human_console(log_format: str) -> bool:
    """``--log-format``: human lines on a terminal (auto), JSON lines elsewhere (journald, pipes)."""
    if log_format == "auto":
        try:
            return sys.stdout.isatty()
        except (AttributeError, ValueError):
            return False
    return log_format == "human"


def _telegram_chats_configured(config: Any) -> bool:
    try:
        from agent.config import SupervisorConfig

        return bool(SupervisorConfig.model_validate(config.supervisor).telegram.allowed_chat_ids)
    except Exception:  # noqa: BLE001 - an invalid section: the daemon says so
        return False


def _daemon_logger(config: Any, log_format: str = "auto") -> tuple[Any, Any]:
    """Configure logging for the daemon (run id: the run folder's name): its logger, and
    the human console (``agent.console.HumanConsole``, started) or None for JSON lines."""
    from agent.logs import configure_logging, get_logger

    run_id = Path(config.run_dir).resolve().name or str(config.run_dir)
    if not _human_console(log_format):
        if log_format == "json":
            configure_logging(run_id, json=True)
        else:
            configure_logging(run_id)
        return get_logger(), None
    import os

    from agent.console import HumanConsole
    from agent.logs import set_console_notifications
    from agent.paths import journal_path

    # MLflow's and alembic's INFO lines ("Creating initial MLflow database tables...") are
    # not for this console; the trainer child inherits it (MLFLOW_* pass its allow-list).
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    console = HumanConsole(sys.stdout, journal=journal_path(config.run_dir), max_steps=config.train.max_steps)
    # Until the daemon knows (agent.notify), guess whether notifications reach this console.
    set_console_notifications(not _telegram_chats_configured(config))
    configure_logging(run_id, console=console)
    return get_logger(), console.start()


def _supervise(config: Any, log_format: str, **extra: Any) -> int:
    from agent.daemon import run_daemon

    log, console = _daemon_logger(config, log_format)
    if console is None:
        return int(run_daemon(config, log=log, **extra) or 0)
    try:
        return int(run_daemon(config, log=log, echo_stream=console.stream, **extra) or 0)
    finally:
        console.close()


def _cmd_run(args: argparse.Namespace) -> int:
    from trainer.config import load_config, parse_overrides

    config = load_config(args.config, parse_overrides(args.set))
    extra = {"new_journal": True} if args.new_journal else {}
    return _supervise(config, args.log_format, **extra)


def _cmd_demo_supervised(args: argparse.Namespace) -> int:
    config = cli_train.demo_config(args)
    code = _supervise(config, getattr(args, "log_format", "auto"))
    if code == 0:
        cli_train.demo_sample(config)
        print(f"supervisor: smart-tuner status --run-dir {config.run_dir}  |  smart-tuner history --run-dir "
              f"{config.run_dir}")
    return code


# -- opening a run's journal -------------------------------------------------------------------


class _Run:
    """Where the run is, and (if known) the config the user pointed at."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.config_arg: str | None = getattr(args, "config", None)
        self.config = None
        if getattr(args, "run_dir", None) is not None:
            if args.set:
                raise UserError("--set only applies with --config C (with --run-dir DIR the folder is given)")
            self.run_dir = Path(args.run_dir)
        elif self.config_arg is not None:
            from trainer.config import load_config, parse_overrides

            self.config = load_config(self.config_arg, parse_overrides(args.set))
            self.run_dir = Path(self.config.run_dir)
        else:
            raise UserError(f"which run? give --run-dir DIR (the run's folder) or --config C (its config), "
                            f"e.g. smart-tuner {args.command} --config tiny-cpu")

    def open(self, readonly: bool = False) -> "Journal":
        """The run's journal; ``readonly`` for commands that only read (status, pending,
        history, trials): they never create, upgrade or change the file."""
        import sqlite3

        from agent.journal import Journal, JournalError, unreadable_message
        from agent.paths import journal_path

        path = journal_path(self.run_dir)
        if not path.exists():
            hint = self.config_arg or "C"
            raise UserError(f"no supervised run in {self.run_dir} (no {path.name}); "
                            f"start one with smart-tuner run --config {hint}")
        try:
            return Journal(path, create=False, readonly=readonly)
        except JournalError as exc:
            raise UserError(str(exc)) from None
        except sqlite3.DatabaseError as exc:  # not a database, torn, ...
            raise UserError(unreadable_message(path, exc)) from None
        except Exception as exc:  # locked for too long, unreadable, ...
            raise UserError(f"{path}: cannot open the run journal ({exc})") from None

    def max_steps(self) -> int | None:
        """The run's step budget: from the daemon's resolved config, else the user's --config."""
        from agent.paths import child_config_path

        path = child_config_path(self.run_dir)
        if path.exists():
            try:
                import yaml

                raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
                value = (raw.get("train") or {}).get("max_steps")
                if value is None:
                    from trainer.config import TrainConfig

                    value = TrainConfig.model_fields["max_steps"].default
                return int(value)
            except Exception:  # a half-written or foreign file: no ETA rather than no status
                pass
        return self.config.train.max_steps if self.config is not None else None

    def max_minutes(self) -> float | None:
        """The run's time budget: from the daemon's resolved config, else the user's --config."""
        from agent.views import run_config_train

        train = run_config_train(self.run_dir)
        if train is not None:
            return train.get("max_minutes")
        return self.config.train.max_minutes if self.config is not None else None


def _user() -> str:
    """Who runs the command, as the audit names them: the real uid's name in the password
    database. Not LOGNAME or USER (what getpass reads first): anyone can set those."""
    import os

    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid with no name (e.g. a container's --user 1234)
        return f"uid{os.getuid()}"
    except (ImportError, AttributeError):  # not a POSIX system
        return "unknown"


# -- status (the formatting is shared with the Telegram bot: agent/views.py) ------------------


def status_data(journal: "Journal", run: _Run, now: float | None = None) -> dict[str, Any]:
    """Everything ``smart-tuner status`` shows, as plain data (what ``--json`` prints)."""
    return _status_data(journal, run.run_dir, run.max_steps(), now, max_minutes=run.max_minutes())


def _print_json(data: Any) -> None:
    # NaN / Infinity stay literals, as in the journal's own JSON (Python and pydantic read them).
    print(json.dumps(data, indent=2))


def _cmd_status(args: argparse.Namespace) -> int:
    run = _Run(args)
    with run.open(readonly=True) as journal:
        now = time.time()
        data = status_data(journal, run, now)
    if args.json:
        _print_json(data)
    else:
        print(format_status(data, now))
    return 0


# -- pending, approve, reject ------------------------------------------------------------------


def _cmd_pending(args: argparse.Namespace) -> int:
    run = _Run(args)
    with run.open(readonly=True) as journal:
        now = time.time()
        pending = journal.pending_proposals()
    if args.json:
        from agent.views import proposal_brief

        _print_json([{**proposal_brief(p, now), "evidence": p.evidence, "aim": p.aim} for p in pending])
        return 0
    if not pending:
        print(f"no proposals waiting in {run.run_dir}")
        return 0
    for p in pending:
        print("\n".join(format_proposal(p, now)))
    print("smart-tuner approve ID / smart-tuner reject ID")
    return 0


def _cmd_decide(args: argparse.Namespace) -> int:
    run = _Run(args)
    with run.open() as journal:
        outcome = decide(journal, args.id, args.decision, by=f"cli:{_user()}")
    if outcome is None:
        raise UserError(f"no proposal {args.id} in {run.run_dir} (smart-tuner pending --run-dir "
                        f"{run.run_dir} lists the waiting ones)")
    print(format_decision(outcome), file=sys.stdout if outcome.won else sys.stderr)
    return 0 if outcome.won else 1


# -- pause, resume, stop -----------------------------------------------------------------------


def _cmd_control(args: argparse.Namespace) -> int:
    run = _Run(args)
    with run.open() as journal:
        done = queue_control(journal, args.control, source="cli", actor=f"cli:{_user()}")
    print(f"queued {args.control} [{done.command_id}] for the trainer in {run.run_dir}; "
          f"it applies at the next step boundary{done.note()}")
    return 0


# -- history -----------------------------------------------------------------------------------


def _cmd_history(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    run = _Run(args)
    with run.open(readonly=True) as journal:
        events = history_events(journal)
    if args.limit is not None:
        events = events[-args.limit:]
    if args.json:
        _print_json(events)
    elif not events:
        print(f"nothing has happened yet in {run.run_dir}")
    else:
        for e in events:
            print(format_event(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
