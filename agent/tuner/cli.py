"""The tuner's commands, mounted by ``agent.cli``: ``tune`` (an offline study),
``tune-now`` (ask the supervisor of a running run for a tuning round) and ``trials``
(the journal's trial rows). Importing this module imports neither Optuna nor torch."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

from trainer.errors import UserError

# The Optuna storage URL for `tune` (environment or .env): where a URL with a password goes.
STORAGE_ENV = "SMART_TUNER_TUNER_STORAGE"


def add_commands(sub: argparse._SubParsersAction,
                 add_run_dir_options: Callable[[argparse.ArgumentParser], None]) -> None:
    tu = sub.add_parser("tune", help="run (or resume) an Optuna study from scratch; writes the best config as YAML")
    tu.add_argument("--config", required=True, help="config file or shipped config name (default, tiny-cpu)")
    tu.add_argument("--trials", type=int, required=True, metavar="N", help="trials to run now (a resumed study adds N)")
    tu.add_argument("--steps", type=int, required=True, metavar="S", help="training steps per trial")
    tu.add_argument("--storage", metavar="URL", default=None,
                    help="Optuna storage: a journal file path or an SQLAlchemy URL without a password "
                         "(postgresql://user@host/db for several machines); a URL with a password goes in "
                         f"{STORAGE_ENV} (environment or .env); default RUN_DIR/study/optuna.journal")
    tu.add_argument("--study-name", metavar="NAME", default=None, help="default: the run folder's name")
    tu.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set tuner.sampler=random (repeatable)")
    tu.set_defaults(func=_cmd_tune)

    tn = sub.add_parser("tune-now", help="ask the run's supervisor for a tuning round now (no plateau needed)")
    add_run_dir_options(tn)
    tn.set_defaults(func=_cmd_tune_now)

    tr = sub.add_parser("trials", help="the tuning trials of a supervised run (journal rows)")
    add_run_dir_options(tr)
    tr.add_argument("--json", action="store_true", help="print them as JSON")
    tr.set_defaults(func=_cmd_trials)


def _cmd_tune(args: argparse.Namespace) -> int:
    from agent.tuner.config import tuner_config
    from agent.tuner.offline import run_study
    from trainer.config import load_config, parse_overrides

    config = load_config(args.config, parse_overrides(args.set))
    cfg = tuner_config(config.tuner)
    outcome = run_study(config, cfg, trials=args.trials, steps=args.steps, storage=storage_url(args.storage),
                        study_name=args.study_name)
    return 0 if outcome.results and any(r.state != "failed" for r in outcome.results) else 1


def storage_url(argv_value: str | None) -> str | None:
    """``--storage``, else ``SMART_TUNER_TUNER_STORAGE`` (environment, then .env), else None
    (the config's ``tuner.storage`` or the default journal file). A password on the
    command line is refused: every user of the machine can read it in the process list."""
    from trainer.envfile import setting
    from trainer.redact import has_secret, mask_text

    if argv_value is not None:
        if has_secret(argv_value):
            raise UserError(f"--storage {mask_text(argv_value)}: a password on the command line can be read by "
                            "every user of this machine (ps) and stays in the shell history; put the URL in "
                            f"{STORAGE_ENV} (the environment or .env) and leave --storage out")
        return argv_value
    return setting(STORAGE_ENV)


def _cmd_tune_now(args: argparse.Namespace) -> int:
    from agent.cli import _Run, _user

    run = _Run(args)
    by = f"cli:{_user()}"
    with run.open() as journal:
        waiting = [p for p in journal.pending_proposals() if p.kind == "tune"]
        open_round = [p for p in journal.proposals("approved", 20) if p.kind == "tune"]
        if open_round:
            print(f"tuning round #{open_round[0].id} is already approved (phase {journal.current_phase()}); "
                  "smart-tuner trials shows its trials")
            return 1
        if waiting:
            journal.decide(waiting[0].id, "approved", by=by)
            pid = waiting[0].id
        else:
            step = journal.latest_steps(1)
            pid = journal.add_proposal(policy="cli", kind="tune", actions=[], aim="val_loss", mode="ask",
                                       step=step[0].step if step else None, approve_by=by, source=by,
                                       reason="A tuning round was requested on the command line.").id
    print(f"tuning round #{pid} approved by {by}; the supervisor starts it at its next tick once the run is "
          "stable or aligning (smart-tuner status shows the phase, smart-tuner trials the trials)")
    return 0


def _trial_dict(t: Any) -> dict[str, Any]:
    return {"round": t.round, "number": t.number, "status": t.status, "baseline": t.baseline,
            "winner": t.winner, "base_step": t.base_step, "steps": t.steps, "objective": t.objective,
            "params": t.params, "started_at": t.started_at, "finished_at": t.finished_at, "pid": t.pid,
            "folder": t.folder, "checkpoint": t.checkpoint, "detail": t.detail, "mlflow_run_id": t.mlflow_run_id}


def _cmd_trials(args: argparse.Namespace) -> int:
    from agent.cli import _Run

    run = _Run(args)
    with run.open(readonly=True) as journal:
        rows = journal.trials()
    if args.json:
        print(json.dumps([_trial_dict(t) for t in rows], indent=2))
        return 0
    if not rows:
        print(f"no tuning trials in {run.run_dir}")
        return 0
    for t in rows:
        objective = f"{t.objective:.4f}" if t.objective is not None else "-"
        marks = (" baseline" if t.baseline else "") + (" WINNER" if t.winner else "")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t.started_at))
        values = "current settings" if t.baseline else ", ".join(f"{k}={v:.3g}" for k, v in t.params.items())
        print(f"{when}  round #{t.round} trial {t.number}{marks}: {t.status}, {t.steps or 0} steps from step "
              f"{t.base_step}, objective {objective}  [{values}]")
        if t.detail and t.status != "complete":
            print(f"    {t.detail.splitlines()[0]}")
    return 0
