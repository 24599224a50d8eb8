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
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer import cli as trainer_cli
from trainer import cli_train
from trainer.errors import UserError

if TYPE_CHECKING:
    from agent.journal import Journal, Proposal

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smart-tuner",
        description="Tacotron2 training with an autonomous supervisor. "
                    "Start with: smart-tuner run --config tiny-cpu")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_agent_commands(sub)
    from agent.tuner.cli import add_commands as _add_tuner_commands  # tune, tune-now, trials (no optuna import)

    _add_tuner_commands(sub, _add_run_dir_options)
    trainer_cli._add_data_commands(sub)
    cli_train.add_commands(sub)
    # The product's demo is supervised: same data and config, run under the daemon.
    sub.choices["demo"].set_defaults(func=_cmd_demo_supervised)
    sub.choices["demo"].description = "Build an espeak-ng dataset and train tiny-cpu on it under the supervisor."
    return parser


def main(argv: list[str] | None = None) -> int:
    return trainer_cli.run_command(build_parser(), argv)


# -- run ---------------------------------------------------------------------------------------


def _daemon_logger(config: Any) -> Any:
    """Configure structured logging for the daemon (run id: the run folder's name); its logger."""
    run_id = Path(config.run_dir).resolve().name or str(config.run_dir)
    try:
        from agent.logs import configure_logging, get_logger
    except ImportError:  # logging not wired up yet: structlog's defaults, run id bound
        import structlog

        return structlog.get_logger("smart_tuner").bind(run_id=run_id)
    configure_logging(run_id)
    return get_logger()


def _cmd_run(args: argparse.Namespace) -> int:
    from trainer.config import load_config

    config = load_config(args.config, cli_train._parse_overrides(args.set))
    from agent.daemon import run_daemon

    return int(run_daemon(config, log=_daemon_logger(config)) or 0)


def _cmd_demo_supervised(args: argparse.Namespace) -> int:
    config = cli_train.demo_config(args)
    from agent.daemon import run_daemon

    code = int(run_daemon(config, log=_daemon_logger(config)) or 0)
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
            from trainer.config import load_config

            self.config = load_config(self.config_arg, cli_train._parse_overrides(args.set))
            self.run_dir = Path(self.config.run_dir)
        else:
            raise UserError(f"which run? give --run-dir DIR (the run's folder) or --config C (its config), "
                            f"e.g. smart-tuner {args.command} --config tiny-cpu")

    def open(self) -> "Journal":
        from agent.journal import Journal, JournalError
        from agent.paths import journal_path

        path = journal_path(self.run_dir)
        if not path.exists():
            hint = self.config_arg or "C"
            raise UserError(f"no supervised run in {self.run_dir} (no {path.name}); "
                            f"start one with smart-tuner run --config {hint}")
        try:
            return Journal(path, create=False)
        except JournalError as exc:
            raise UserError(str(exc)) from None
        except Exception as exc:  # sqlite3.DatabaseError: not a database, locked for too long, ...
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


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no login name in the environment nor in the password database
        import os

        return f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"


# -- formatting helpers ------------------------------------------------------------------------


def _clock(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(abs(seconds)))
    if s < 60:
        out = f"{s}s"
    elif s < 3600:
        out = f"{s // 60}m {s % 60:02d}s"
    elif s < 86400:
        out = f"{s // 3600}h {s % 3600 // 60:02d}m"
    else:
        out = f"{s // 86400}d {s % 86400 // 3600}h"
    return f"-{out}" if seconds < 0 else out


def _num(x: float | None, fmt: str = ".4f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # nan / inf: say it plainly
    return format(x, fmt)


def describe_action(action: dict[str, Any]) -> str:
    """One action of a proposal, e.g. ``set_lr factor=0.5`` or ``rollback step=1200 skip_batches=8``."""
    kind = action.get("kind", "?")
    params = [f"{k}={v}" for k, v in action.items() if k not in ("kind", "id", "issued_at") and v is not None]
    return " ".join([kind, *params])


def _expires(p: "Proposal", now: float) -> str:
    if p.expires_at is None:
        return "no expiry"
    left = p.expires_at - now
    return f"expires in {_duration(left)}" if left > 0 else f"past its expiry by {_duration(-left)}"


# -- status ------------------------------------------------------------------------------------

_STEP_FIELDS = ("loss", "mel_loss", "mel_postnet_loss", "gate_loss", "guided_attention_loss", "grad_norm",
                "grad_clip", "lr", "guided_attention_weight", "gate_pos_weight", "step_seconds", "skipped_steps",
                "finite")
_EVAL_FIELDS = ("val_loss", "val_mel_loss", "val_mel_postnet_loss", "val_gate_loss", "val_guided_attention_loss",
                "diagonality", "focus", "aligned_fraction", "gate_accuracy", "probe_stop_rate")


def _proposal_brief(p: "Proposal", now: float) -> dict[str, Any]:
    return {"id": p.id, "policy": p.policy, "kind": p.kind, "mode": p.mode, "reason": p.reason,
            "step": p.step, "created_at": p.created_at, "expires_at": p.expires_at,
            "expires_in_seconds": None if p.expires_at is None else p.expires_at - now,
            "actions": [describe_action(a) for a in p.actions]}


def status_data(journal: "Journal", run: _Run, now: float | None = None) -> dict[str, Any]:
    """Everything ``smart-tuner status`` shows, as plain data (what ``--json`` prints)."""
    now = time.time() if now is None else now
    s = journal.status_summary()
    step = s.latest_step
    ev = s.latest_eval
    max_steps = run.max_steps()
    eta = None
    if step is not None and max_steps is not None and s.steps_per_second:
        eta = max(0, max_steps - step.step) / s.steps_per_second
    ck = s.latest_checkpoint
    open_commands = journal.unacknowledged_commands()
    return {
        "run_dir": str(run.run_dir),
        "phase": s.phase,
        "phase_since": s.phase_since,
        "paused": journal.is_paused(),
        "step": step.step if step else None,
        "epoch": step.epoch if step else None,
        "max_steps": max_steps,
        "last_telemetry_at": step.wall_time if step else None,
        "last_telemetry_age_seconds": now - step.wall_time if step else None,
        "train": {k: getattr(step, k) for k in _STEP_FIELDS} if step else None,
        "eval": ({"step": ev.step, "wall_time": ev.wall_time, **{k: getattr(ev, k) for k in _EVAL_FIELDS}}
                 if ev else None),
        "steps_per_second": s.steps_per_second,
        "eta_seconds": eta,
        "checkpoint": ({"step": ck.step, "path": ck.path, "reason": ck.reason, "health": ck.health,
                        "wall_time": ck.wall_time, "val_loss": ck.val_loss} if ck else None),
        "pending_proposals": [_proposal_brief(p, now) for p in s.pending_proposals],
        "open_commands": [{"id": c.id, "kind": c.kind, "source": c.source, "status": c.status,
                           "proposal_id": c.proposal_id, "created_at": c.created_at} for c in open_commands],
    }


def format_status(d: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [f"run       {d['run_dir']}"]
    if d["phase"]:
        phase = f"{d['phase']} since {_clock(d['phase_since'])} ({_duration(now - d['phase_since'])} ago)"
    else:
        phase = "(none yet: the supervisor has not recorded a phase)"
    lines.append(f"phase     {phase}" + ("   PAUSED" if d["paused"] else ""))
    t = d["train"]
    if t is None:
        lines.append("step      - (no telemetry yet)")
    else:
        budget = f" / {d['max_steps']}" if d["max_steps"] else ""
        age = d["last_telemetry_age_seconds"]
        lines.append(f"step      {d['step']}{budget}  epoch {d['epoch']}  "
                     f"(last telemetry {_duration(age)} ago, {_clock(d['last_telemetry_at'])})")
        lines.append(f"train     loss {_num(t['loss'])}  (mel {_num(t['mel_loss'])}, "
                     f"postnet {_num(t['mel_postnet_loss'])}, gate {_num(t['gate_loss'])}, "
                     f"guided attn {_num(t['guided_attention_loss'])})"
                     + ("" if t["finite"] else "  NON-FINITE"))
        lines.append(f"optim     lr {_num(t['lr'], '.3g')}  grad norm {_num(t['grad_norm'], '.3g')} "
                     f"(clip {_num(t['grad_clip'], '.3g')})  guided attn weight "
                     f"{_num(t['guided_attention_weight'], '.3g')}  gate pos weight {_num(t['gate_pos_weight'], '.3g')}"
                     + (f"  skipped steps {t['skipped_steps']}" if t["skipped_steps"] else ""))
    e = d["eval"]
    if e is None:
        lines.append("eval      - (no evaluation yet)")
    else:
        lines.append(f"eval      @ step {e['step']}: val loss {_num(e['val_loss'])}  "
                     f"diagonality {_num(e['diagonality'], '.3f')}  focus {_num(e['focus'], '.3f')}  "
                     f"aligned {_num(e['aligned_fraction'], '.0%')}")
        lines.append(f"gate      accuracy {_num(e['gate_accuracy'], '.3f')}  "
                     f"probe stop rate {_num(e['probe_stop_rate'], '.0%')}")
    rate = d["steps_per_second"]
    speed = f"{_num(rate, '.2f')} steps/s" if rate else "- steps/s"
    if d["eta_seconds"] is not None:
        eta = f"ETA {_duration(d['eta_seconds'])} (at {_clock(now + d['eta_seconds'])})"
    elif d["max_steps"] is None:
        eta = "ETA - (max_steps unknown: no run-config.yaml; pass --config)"
    else:
        eta = "ETA -"
    lines.append(f"speed     {speed}  {eta}")
    ck = d["checkpoint"]
    lines.append(f"ckpt      step {ck['step']} ({ck['reason']}, {ck['health']}) {ck['path']}" if ck else "ckpt      -")
    pending = d["pending_proposals"]
    lines.append(f"pending   {len(pending)} proposal(s)" + (": smart-tuner approve ID / reject ID" if pending else ""))
    for p in pending:
        left = p["expires_in_seconds"]
        exp = ("no expiry" if left is None else
               f"expires in {_duration(left)}" if left > 0 else f"past its expiry by {_duration(-left)}")
        lines.append(f"  #{p['id']} {p['policy']}/{p['kind']}: {p['reason']}  [{exp}]")
    cmds = d["open_commands"]
    lines.append(f"commands  {len(cmds)} open" + (":" if cmds else ""))
    for c in cmds[:10]:
        via = f" (proposal #{c['proposal_id']})" if c["proposal_id"] is not None else ""
        lines.append(f"  {c['kind']} {c['id']} from {c['source']}{via}: {c['status']}")
    if len(cmds) > 10:
        lines.append(f"  ... and {len(cmds) - 10} more")
    return "\n".join(lines)


def _print_json(data: Any) -> None:
    # NaN / Infinity stay literals, as in the journal's own JSON (Python and pydantic read them).
    print(json.dumps(data, indent=2))


def _cmd_status(args: argparse.Namespace) -> int:
    run = _Run(args)
    with run.open() as journal:
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
    with run.open() as journal:
        now = time.time()
        pending = journal.pending_proposals()
    if args.json:
        _print_json([{**_proposal_brief(p, now), "evidence": p.evidence, "aim": p.aim} for p in pending])
        return 0
    if not pending:
        print(f"no proposals waiting in {run.run_dir}")
        return 0
    for p in pending:
        at = f" at step {p.step}" if p.step is not None else ""
        print(f"#{p.id} {p.policy}/{p.kind} ({p.mode}){at}, {_clock(p.created_at)}, {_expires(p, now)}")
        print(f"    reason:   {p.reason}")
        if p.actions:
            print(f"    actions:  {'; '.join(describe_action(a) for a in p.actions)}")
        if p.aim:
            print(f"    aim:      {p.aim}")
        if p.evidence:
            print(f"    evidence: {json.dumps(p.evidence, sort_keys=True)}")
    print("smart-tuner approve ID / smart-tuner reject ID")
    return 0


def _cmd_decide(args: argparse.Namespace) -> int:
    run = _Run(args)
    by = f"cli:{_user()}"
    with run.open() as journal:
        proposal = journal.get_proposal(args.id)
        if proposal is None:
            raise UserError(f"no proposal {args.id} in {run.run_dir} (smart-tuner pending --run-dir "
                            f"{run.run_dir} lists the waiting ones)")
        won = journal.decide(args.id, args.decision, by=by)
        after = journal.get_proposal(args.id)
        commands = journal.commands(proposal_id=args.id)[::-1] if won else []
    verb = "approved" if args.decision == "approved" else "rejected"
    if not won:
        status = after.status
        if status in ("applied", "failed"):  # approved earlier, and carried out since
            status = f"approved (since {after.status})"
        print(f"proposal {args.id} was already {status} by {after.decided_by or 'unknown'}"
              f" at {_clock(after.decided_at)}; not {verb} again", file=sys.stderr)
        return 1
    print(f"{args.decision} proposal #{args.id} {proposal.policy}/{proposal.kind}: {proposal.reason} (by {by})")
    if commands:
        print(f"queued {len(commands)} command(s) for the trainer (applied at its next step boundary):")
        for c in commands:
            print(f"  {describe_action(c.payload or {'kind': c.kind})}  [{c.id}]")
    elif args.decision == "approved":
        print("no trainer commands: the supervisor carries this proposal out itself")
    return 0


# -- pause, resume, stop -----------------------------------------------------------------------


def _cmd_control(args: argparse.Namespace) -> int:
    from trainer.control import Pause, Resume, Stop

    run = _Run(args)
    user = _user()
    command = {"pause": Pause, "resume": Resume, "stop": Stop}[args.control]()
    with run.open() as journal:
        was_paused = journal.is_paused()
        journal.enqueue_command(command, source="cli")
        journal.audit(f"cli:{user}", args.control, f"command {command.id}")
        if args.control in ("pause", "resume"):
            # The user's intent; whether the trainer *is* paused is derived from the
            # applied commands (Journal.is_paused), which status and the watchdog read.
            journal.set_state("paused", args.control == "pause")
    note = ""
    if args.control == "pause" and was_paused:
        note = " (the run was already paused)"
    elif args.control == "resume" and not was_paused:
        note = " (the run was not paused)"
    print(f"queued {args.control} [{command.id}] for the trainer in {run.run_dir}; "
          f"it applies at the next step boundary{note}")
    return 0


# -- history -----------------------------------------------------------------------------------


def history_events(journal: "Journal") -> list[dict[str, Any]]:
    """Phase transitions, proposals (with their fate) and commands (with their acks), oldest first."""
    events: list[dict[str, Any]] = []
    for ph in journal.phase_history():
        events.append({"time": ph.wall_time, "type": "phase", "step": ph.step, "from": ph.from_phase,
                       "to": ph.to_phase, "reason": ph.reason})
    for p in reversed(journal.proposals()):  # oldest first: the sort below is stable
        events.append({"time": p.created_at, "type": "proposal", "id": p.id, "step": p.step, "policy": p.policy,
                       "kind": p.kind, "mode": p.mode, "reason": p.reason,
                       "actions": [describe_action(a) for a in p.actions], "status": p.status,
                       "decided_by": p.decided_by, "decided_at": p.decided_at, "applied_at": p.applied_at,
                       "applied_step": p.applied_step, "outcome": p.outcome, "outcome_detail": p.outcome_detail})
    for c in reversed(journal.commands()):
        events.append({"time": c.created_at, "type": "command", "id": c.id, "kind": c.kind,
                       "action": describe_action(c.payload) if c.payload else c.kind, "source": c.source,
                       "proposal_id": c.proposal_id, "status": c.status, "deliveries": c.deliveries,
                       "acked_at": c.acked_at, "ok": c.ok, "duplicate": c.duplicate, "detail": c.detail,
                       "ack_step": c.step})
    order = {"phase": 0, "proposal": 1, "command": 2}
    events.sort(key=lambda e: (e["time"], order[e["type"]]))
    return events


def format_event(e: dict[str, Any]) -> str:
    when = _clock(e["time"])
    at = f" at step {e['step']}" if e.get("step") is not None else ""
    if e["type"] == "phase":
        reason = f": {e['reason']}" if e["reason"] else ""
        return f"{when}  phase     {e['from'] or '(start)'} -> {e['to']}{at}{reason}"
    if e["type"] == "proposal":
        fate = e["status"]
        if e["decided_by"]:
            decided = "approved" if fate in ("applied", "failed") else fate
            fate = f"{decided} by {e['decided_by']} at {_clock(e['decided_at'])}"
            if e["status"] in ("applied", "failed"):
                step = f" at step {e['applied_step']}" if e["applied_step"] is not None else ""
                fate += f", {e['status']}{step}"
        if e["outcome"]:
            fate += f", outcome {e['outcome']}" + (f" ({e['outcome_detail']})" if e["outcome_detail"] else "")
        elif e["outcome_detail"]:
            fate += f" ({e['outcome_detail']})"
        actions = f" [{'; '.join(e['actions'])}]" if e["actions"] else ""
        return (f"{when}  proposal  #{e['id']} {e['policy']}/{e['kind']} ({e['mode']}){at}: {e['reason']}{actions}"
                f" -> {fate}")
    via = f" for #{e['proposal_id']}" if e["proposal_id"] is not None else ""
    if e["acked_at"] is not None:
        dup = " (duplicate)" if e["duplicate"] else ""
        result = (f"{'ok' if e['ok'] else 'FAILED'}{dup} at step {e['ack_step']}, {_clock(e['acked_at'])}"
                  + (f": {e['detail']}" if e["detail"] else ""))
    else:
        result = e["status"] + (f" ({e['deliveries']} deliveries)" if e["deliveries"] > 1 else "")
    return f"{when}  command   {e['action']} [{e['id']}] from {e['source']}{via} -> {result}"


def _cmd_history(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    run = _Run(args)
    with run.open() as journal:
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
