"""What the CLI and the Telegram bot both show of a run's journal (reads only).

``smart-tuner status`` and the bot's ``/status`` print the same status, ``history``
and ``/history`` the same events, ``approve`` and ``/approve`` word a decision the same
way. The logic lives here once; each front end only adds its own hints (``smart-tuner
approve ID`` vs ``/approve ID``) and its own way of printing. What they both *do*
(decide, pause, resume, stop) is :mod:`agent.actions`.

Import cost: the standard library and ``trainer.runlock`` (fcntl, about 2 ms) at import
time (the CLI must start instantly); the journal's types are imported for type checking.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.runlock import daemon_lock_path, lock_holder, train_lock_path

if TYPE_CHECKING:
    from agent.actions import DecisionOutcome
    from agent.journal import Journal, ProposalRow

CLI_DECIDE_HINT = "smart-tuner approve ID / reject ID"

# -- formatting helpers ------------------------------------------------------------------------


def clock(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def duration(seconds: float | None) -> str:
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


def num(x: float | None, fmt: str = ".4f") -> str:
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


def expires(p: "ProposalRow", now: float) -> str:
    return _expiry_text(None if p.expires_at is None else p.expires_at - now)


def _expiry_text(left: float | None) -> str:
    if left is None:
        return "no expiry"
    return f"expires in {duration(left)}" if left > 0 else f"past its expiry by {duration(-left)}"


# -- status ------------------------------------------------------------------------------------

_STEP_FIELDS = ("loss", "mel_loss", "mel_postnet_loss", "gate_loss", "guided_attention_loss", "grad_norm",
                "grad_clip", "lr", "guided_attention_weight", "gate_pos_weight", "step_seconds", "skipped_steps",
                "finite")
_EVAL_FIELDS = ("val_loss", "val_mel_loss", "val_mel_postnet_loss", "val_gate_loss", "val_guided_attention_loss",
                "diagonality", "focus", "aligned_fraction", "gate_accuracy", "speech_score", "mcd_dtw")
RECENT_INTERVENTIONS = 3


def proposal_brief(p: "ProposalRow", now: float) -> dict[str, Any]:
    return {"id": p.id, "policy": p.policy, "kind": p.kind, "mode": p.mode, "reason": p.reason,
            "step": p.step, "created_at": p.created_at, "expires_at": p.expires_at,
            "expires_in_seconds": None if p.expires_at is None else p.expires_at - now,
            "actions": [describe_action(a) for a in p.actions]}


def _intervention(p: "ProposalRow") -> dict[str, Any]:
    return {"id": p.id, "policy": p.policy, "kind": p.kind, "mode": p.mode, "status": p.status,
            "decided_by": p.decided_by, "decided_at": p.decided_at, "applied_step": p.applied_step,
            "outcome": p.outcome}


# The daemon's records of the trainer's life (audit rows, actor "daemon"; agent/daemon.py).
DAEMON_EVENTS = ("started", "restarted", "crashed", "hung", "finished", "gave_up", "stopped")
DAEMON_END_EVENTS = ("finished", "gave_up", "stopped")
FROM_RUN_CONFIG = "run-config"  # status_data(max_minutes=...): read it from RUN/run-config.yaml


def run_config_train(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``train`` section of the config the daemon wrote (RUN/run-config.yaml); None without one."""
    path = Path(run_dir) / "run-config.yaml"  # agent.paths.child_config_path
    try:
        import yaml

        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        train = raw.get("train") or {}
        return train if isinstance(train, dict) else {}
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a half-written or foreign file: no budget rather than no status
        return {}


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0].split("; last lines of ", 1)[0].strip()


def daemon_data(journal: "Journal", run_dir: str | Path) -> dict[str, Any]:
    """Whether a daemon supervises the run now (a live process holds RUN/daemon.lock), and if
    not, how its last one ended, as the journal recorded it (the daemon's audit rows)."""
    lock = daemon_lock_path(run_dir)
    holder = lock_holder(lock)  # read-only: never creates the file
    trainer = lock_holder(train_lock_path(run_dir))
    events = journal.latest_audit("daemon", DAEMON_EVENTS, limit=2)
    last = events[0] if events else None
    d: dict[str, Any] = {"running": holder is not None, "pid": None, "since": None,
                         "trainer_pid": int(trainer) if trainer and trainer.isdigit() else None,
                         "state": "running", "stopped_at": None, "last_seen": None, "why": None,
                         "last_event": ({"action": last.action, "wall_time": last.wall_time,
                                         "detail": _first_line(last.detail)} if last else None)}
    if holder is not None:
        d["pid"] = int(holder) if holder.isdigit() else None
        try:
            d["since"] = lock.stat().st_mtime  # the daemon writes its pid there when it starts
        except OSError:
            pass
        return d
    if last is None:
        d.update(state="never", why="no daemon has run here: the journal records none")
    elif last.action in DAEMON_END_EVENTS:
        detail = _first_line(last.detail)
        d.update(state=last.action, stopped_at=last.wall_time)
        if last.action == "finished":
            reason = detail[detail.rfind("(") + 1:-1] if detail.endswith(")") and "(" in detail else ""
            d["why"] = {"max_steps": "finished at max_steps", "max_minutes": "finished at max_minutes",
                        "command": "finished: stopped by a stop command"}.get(reason, "finished")
        elif last.action == "gave_up":
            cause = next((e for e in events[1:] if e.action in ("crashed", "hung")), None)
            d["why"] = f"gave up: {detail}" + (f"; last failure: {_first_line(cause.detail)}" if cause else "")
        else:
            d["why"] = detail or "stopped"
    else:  # started, restarted, crashed or hung, and then nothing: kill -9, OOM killer, a crash of its own
        latest = journal.latest_steps(1)
        d.update(state="killed", why="killed: no clean stop recorded",
                 last_seen=max([last.wall_time] + [s.wall_time for s in latest]))
    return d


def status_data(journal: "Journal", run_dir: str | Path, max_steps: int | None,
                now: float | None = None, max_minutes: float | None | str = FROM_RUN_CONFIG) -> dict[str, Any]:
    """Everything ``status`` shows, as plain data (what ``status --json`` prints).

    ``max_minutes``: the run's time budget (default: from RUN/run-config.yaml). The ETA
    is the sooner of max_steps at the recent speed and max_minutes since the trainer
    started (the newest start the daemon recorded; each trainer counts from its start),
    and there is none unless something trains: a live daemon, or a trainer holding the
    run's train lock.
    """
    now = time.time() if now is None else now
    if max_minutes == FROM_RUN_CONFIG:
        max_minutes = (run_config_train(run_dir) or {}).get("max_minutes")
    try:
        max_minutes = float(max_minutes) if max_minutes else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        max_minutes = None
    s = journal.status_summary()
    step = s.latest_step
    ev = s.latest_eval
    daemon = daemon_data(journal, run_dir)
    live = daemon["running"] or daemon["trainer_pid"] is not None
    etas: dict[str, float] = {}
    if step is not None and max_steps is not None and s.steps_per_second:
        etas["max_steps"] = max(0, max_steps - step.step) / s.steps_per_second
    started = journal.latest_audit("daemon", ("started", "restarted"), limit=1)
    trainer_started = started[0].wall_time if started else None
    if max_minutes and trainer_started is not None:
        etas["max_minutes"] = max(0.0, max_minutes * 60 - (now - trainer_started))
    eta_by = min(etas, key=etas.__getitem__) if etas and live else None
    eta = etas[eta_by] if eta_by else None
    ck = s.latest_checkpoint
    open_commands = journal.unacknowledged_commands()
    # Interventions: proposals someone (or "auto") approved, newest first.
    recent = journal.proposals(("approved", "applied", "failed"), RECENT_INTERVENTIONS)
    return {
        "run_dir": str(run_dir),
        "daemon": daemon,
        "phase": s.phase,
        "phase_since": s.phase_since,
        "paused": journal.is_paused(),
        "step": step.step if step else None,
        "epoch": step.epoch if step else None,
        "max_steps": max_steps,
        "max_minutes": max_minutes,
        "trainer_started_at": trainer_started,
        "last_telemetry_at": step.wall_time if step else None,
        "last_telemetry_age_seconds": now - step.wall_time if step else None,
        "train": {k: getattr(step, k) for k in _STEP_FIELDS} if step else None,
        "eval": ({"step": ev.step, "wall_time": ev.wall_time, **{k: getattr(ev, k) for k in _EVAL_FIELDS},
                  "speech": ev.speech.model_dump() if ev.speech is not None else None} if ev else None),
        "steps_per_second": s.steps_per_second,
        "live": live,  # a daemon or a trainer runs: the speed is current, and there is an ETA
        "eta_seconds": eta,
        "eta_by": eta_by,  # "max_steps" or "max_minutes": whichever ends the run first
        "checkpoint": ({"step": ck.step, "path": ck.path, "reason": ck.reason, "health": ck.health,
                        "wall_time": ck.wall_time, "val_loss": ck.val_loss} if ck else None),
        "pending_proposals": [proposal_brief(p, now) for p in s.pending_proposals],
        "open_commands": [{"id": c.id, "kind": c.kind, "source": c.source, "status": c.status,
                           "proposal_id": c.proposal_id, "created_at": c.created_at} for c in open_commands],
        "recent_interventions": [_intervention(p) for p in recent],
    }


def daemon_line(dm: dict[str, Any] | None, now: float) -> str:
    """``running (pid N, since ...)`` or ``not running — stopped WHEN (WHY)``."""
    if dm is None:
        return "-"
    trainer = f", trainer pid {dm['trainer_pid']}" if dm.get("trainer_pid") is not None else ""
    if dm["running"]:
        pid = dm["pid"] if dm["pid"] is not None else "unknown"
        since = f", since {clock(dm['since'])} ({duration(now - dm['since'])} ago)" if dm["since"] else ""
        return f"running (pid {pid}{since}{trainer})"
    if dm["stopped_at"] is not None:
        when = f"stopped {clock(dm['stopped_at'])}, {duration(now - dm['stopped_at'])} ago"
    elif dm["last_seen"] is not None:
        when = f"last seen {clock(dm['last_seen'])}, {duration(now - dm['last_seen'])} ago"
    else:
        when = ""
    line = "not running" + (f" — {when}" if when else "") + f" ({dm['why']})"
    if dm.get("trainer_pid") is not None:
        line += (f"; its trainer (pid {dm['trainer_pid']}) still trains, unsupervised: "
                 "smart-tuner run stops it and resumes")
    return line


def speech_line(sp: dict[str, Any] | None) -> str:
    """What the free-running evaluation heard, in one line (status, history, Telegram)."""
    if sp is None:
        return "- (no free-running evaluation: eval.speech is off, or the run predates it)"
    if sp["score"] is None:
        head = "no recordings to judge against"
    else:
        head = (f"{sp['spoken']} of {sp['utterances']} spoken ({sp['score']:.0%}), "
                f"MCD-DTW {num(sp['mcd_dtw'], '.2f')} dB")
    return (f"{head}; stop: {sp['stopped']} in range, {sp['premature']} early, {sp['runaway']} runaway; "
            f"attention read {sp['read']} of {sp['synthesized']}; length x{num(sp['duration_ratio'], '.2f')}")


def _intervention_line(i: dict[str, Any]) -> str:
    fate = i["status"] + (f" at step {i['applied_step']}" if i["applied_step"] is not None else "")
    outcome = f", {i['outcome']}" if i["outcome"] else ""
    return f"  #{i['id']} {i['policy']}/{i['kind']} by {i['decided_by']}: {fate}{outcome}"


def format_status(d: dict[str, Any], now: float | None = None, decide_hint: str = CLI_DECIDE_HINT) -> str:
    now = time.time() if now is None else now
    lines = [f"run       {d['run_dir']}", f"daemon    {daemon_line(d.get('daemon'), now)}"]
    if d["phase"]:
        phase = f"{d['phase']} since {clock(d['phase_since'])} ({duration(now - d['phase_since'])} ago)"
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
                     f"(last telemetry {duration(age)} ago, {clock(d['last_telemetry_at'])})")
        lines.append(f"train     loss {num(t['loss'])}  (mel {num(t['mel_loss'])}, "
                     f"postnet {num(t['mel_postnet_loss'])}, gate {num(t['gate_loss'])}, "
                     f"guided attn {num(t['guided_attention_loss'])})"
                     + ("" if t["finite"] else "  NON-FINITE"))
        lines.append(f"optim     lr {num(t['lr'], '.3g')}  grad norm {num(t['grad_norm'], '.3g')} "
                     f"(clip {num(t['grad_clip'], '.3g')})  guided attn weight "
                     f"{num(t['guided_attention_weight'], '.3g')}  gate pos weight {num(t['gate_pos_weight'], '.3g')}"
                     + (f"  skipped steps {t['skipped_steps']}" if t["skipped_steps"] else ""))
    e = d["eval"]
    if e is None:
        lines.append("eval      - (no evaluation yet)")
    else:
        lines.append(f"eval      @ step {e['step']}: val loss {num(e['val_loss'])}  "
                     f"diagonality {num(e['diagonality'], '.3f')}  focus {num(e['focus'], '.3f')}  "
                     f"aligned {num(e['aligned_fraction'], '.0%')}")
        lines.append(f"gate      accuracy {num(e['gate_accuracy'], '.3f')} (teacher-forced)")
        lines.append(f"speech    {speech_line(e.get('speech'))}")
    rate = d["steps_per_second"]
    speed = f"{num(rate, '.2f')} steps/s" if rate else "- steps/s"
    if not d.get("live", True):
        lines.append(f"speed     {'last ' + speed if rate else '-'}  (nothing trains now: no ETA)")
    else:
        if d["eta_seconds"] is not None:
            eta = f"ETA {duration(d['eta_seconds'])} (at {clock(now + d['eta_seconds'])}"
            eta += ", max_minutes)" if d.get("eta_by") == "max_minutes" else ")"
        elif d["max_steps"] is None:
            eta = "ETA - (max_steps unknown: no run-config.yaml; pass --config)"
        else:
            eta = "ETA -"
        lines.append(f"speed     {speed}  {eta}")
    ck = d["checkpoint"]
    lines.append(f"ckpt      step {ck['step']} ({ck['reason']}, {ck['health']}) {ck['path']}" if ck else "ckpt      -")
    recent = d.get("recent_interventions") or []
    if recent:
        lines.append(f"recent    {len(recent)} intervention(s), newest first:")
        lines += [_intervention_line(i) for i in recent]
    pending = d["pending_proposals"]
    lines.append(f"pending   {len(pending)} proposal(s)" + (f": {decide_hint}" if pending else ""))
    for p in pending:
        expiry = _expiry_text(p["expires_in_seconds"])
        lines.append(f"  #{p['id']} {p['policy']}/{p['kind']}: {p['reason']}  [{expiry}]")
    cmds = d["open_commands"]
    lines.append(f"commands  {len(cmds)} open" + (":" if cmds else ""))
    for c in cmds[:10]:
        via = f" (proposal #{c['proposal_id']})" if c["proposal_id"] is not None else ""
        lines.append(f"  {c['kind']} {c['id']} from {c['source']}{via}: {c['status']}")
    if len(cmds) > 10:
        lines.append(f"  ... and {len(cmds) - 10} more")
    return "\n".join(lines)


# -- proposals ---------------------------------------------------------------------------------


def format_proposal(p: "ProposalRow", now: float, expiry: bool = True) -> list[str]:
    """A proposal with its reason, actions, aim and evidence (``pending``, the bot's cards)."""
    at = f" at step {p.step}" if p.step is not None else ""
    when = f", {expires(p, now)}" if expiry else ""
    lines = [f"#{p.id} {p.policy}/{p.kind} ({p.mode}){at}, {clock(p.created_at)}{when}",
             f"    reason:   {p.reason}"]
    if p.actions:
        lines.append(f"    actions:  {'; '.join(describe_action(a) for a in p.actions)}")
    if p.aim:
        lines.append(f"    aim:      {p.aim}")
    if p.evidence:
        lines.append(f"    evidence: {json.dumps(p.evidence, sort_keys=True)}")
    return lines


def fate_text(status: str, decided_by: str | None, decided_at: float | None, applied_step: int | None) -> str:
    """Who decided a proposal and what became of it, e.g. ``approved by cli:root at ..., applied at step 9``."""
    decided = "approved" if status in ("applied", "failed") else status
    fate = f"{decided} by {decided_by or 'unknown'} at {clock(decided_at)}"
    if status in ("applied", "failed"):
        fate += f", {status}" + (f" at step {applied_step}" if applied_step is not None else "")
    return fate


def format_fate(p: "ProposalRow") -> str:
    if p.status == "proposed":
        return "waiting for a decision"
    return fate_text(p.status, p.decided_by, p.decided_at, p.applied_step)


def format_decision(o: DecisionOutcome) -> str:
    """What the decider is told: the decision and the queued commands, or who decided first."""
    verb = "approved" if o.decision == "approved" else "rejected"
    if not o.won:
        status = o.after.status
        if status in ("applied", "failed"):  # approved earlier, and carried out since
            status = f"approved (since {o.after.status})"
        return (f"proposal {o.after.id} was already {status} by {o.after.decided_by or 'unknown'}"
                f" at {clock(o.after.decided_at)}; not {verb} again")
    p = o.before
    lines = [f"{o.decision} proposal #{p.id} {p.policy}/{p.kind}: {p.reason} (by {o.by})"]
    if o.commands:
        lines.append(f"queued {len(o.commands)} command(s) for the trainer (applied at its next step boundary):")
        lines += [f"  {describe_action(c.payload or {'kind': c.kind})}  [{c.id}]" for c in o.commands]
    elif o.decision == "approved":
        lines.append("no trainer commands: the supervisor carries this proposal out itself")
    return "\n".join(lines)


# -- history -----------------------------------------------------------------------------------


def history_events(journal: "Journal") -> list[dict[str, Any]]:
    """Evaluations' speech figures, phase transitions, proposals (with their fate) and commands
    (with their acks), oldest first."""
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
    for ev in journal.latest_evals(100_000):
        if ev.speech is not None:
            events.append({"time": ev.wall_time, "type": "speech", "step": ev.step,
                           "speech": ev.speech.model_dump()})
    order = {"speech": 0, "phase": 1, "proposal": 2, "command": 3}
    events.sort(key=lambda e: (e["time"], order[e["type"]]))
    return events


def format_event(e: dict[str, Any]) -> str:
    when = clock(e["time"])
    at = f" at step {e['step']}" if e.get("step") is not None else ""
    if e["type"] == "phase":
        reason = f": {e['reason']}" if e["reason"] else ""
        return f"{when}  phase     {e['from'] or '(start)'} -> {e['to']}{at}{reason}"
    if e["type"] == "speech":
        return f"{when}  speech   {at}: {speech_line(e['speech'])}"
    if e["type"] == "proposal":
        fate = e["status"]
        if e["decided_by"]:
            fate = fate_text(e["status"], e["decided_by"], e["decided_at"], e["applied_step"])
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
        result = (f"{'ok' if e['ok'] else 'FAILED'}{dup} at step {e['ack_step']}, {clock(e['acked_at'])}"
                  + (f": {e['detail']}" if e["detail"] else ""))
    else:
        result = e["status"] + (f" ({e['deliveries']} deliveries)" if e["deliveries"] > 1 else "")
    return f"{when}  command   {e['action']} [{e['id']}] from {e['source']}{via} -> {result}"
