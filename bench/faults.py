"""Fault injection: does a training run survive a fault, vanilla against supervised?

For one config and step budget this runs, one after another, each in its own run folder
under ``--out``:

1. a clean vanilla run (the reference) and a clean supervised run;
2. for each fault, a vanilla run and a supervised run with the fault injected at
   ``--fault-step`` (default 40% of the budget):

   * ``lr_x100``: the learning rate is multiplied by 100 (``SMART_TUNER_FAULTS``);
   * ``nan_batch``: one batch's mel spectrogram is all NaN (``SMART_TUNER_FAULTS``);
   * ``sigkill_trainer``: the trainer SIGKILLs itself (``SMART_TUNER_FAULTS`` sigkill_self);
   * ``sigkill_daemon``: the harness SIGKILLs the daemon's process group when the run
     reaches the step, then starts ``smart-tuner run`` again, as systemd's
     ``Restart=on-failure`` would. A vanilla run has no daemon: its one process is killed,
     and nothing restarts it;
   * ``truncate_checkpoint``: the harness stops the trainer (SIGSTOP), cuts the newest
     checkpoint file to half its size and SIGKILLs the trainer, so a restart must fall
     back to the checkpoint before it.

Vanilla runs are ``trainer.loop.Trainer`` with the same callbacks as ``smart-tuner train``
plus ``agent.faults.FaultInjector`` (this script, ``--_vanilla``); supervised runs are
``python -m agent.cli run --config C --set ...`` with the same overrides. A run
*survived* when it reached the step budget with a finite validation loss at that step
(the budget is a multiple of ``--eval-every``, so the last step evaluates). Nothing
resumes a vanilla run by hand: a killed vanilla run did not survive.

    python bench/faults.py --json runs/bench-faults.json                 # tiny-cpu, 250 steps
    python bench/faults.py --quick --json runs/bench-faults-quick.json   # micro model, smoke test
    python bench/faults.py --faults sigkill_daemon,truncate_checkpoint --modes supervised
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tables import print_rows  # noqa: E402  (bench/tables.py; scripts run from bench/)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAULTS = ("lr_x100", "nan_batch", "sigkill_trainer", "sigkill_daemon", "truncate_checkpoint")
MODES = ("vanilla", "supervised")
# Faults the trainer process fires itself (agent.faults kinds); the rest the harness does.
ENV_FAULTS = {"lr_x100": "lr_x100", "nan_batch": "nan_batch", "sigkill_trainer": "sigkill_self"}
TARGET_RATIO = 1.05
RECORD_NAME = "bench-record.jsonl"  # a vanilla run's steps and evaluations (the harness's own callback)
CONSOLE_NAME = "console.log"  # everything a run's processes printed

# The micro Tacotron2 of tests/conftest.py (MICRO_MODEL), for --quick.
MICRO_MODEL = {
    "symbols_embedding_dim": 32, "encoder_embedding_dim": 32, "encoder_n_convolutions": 2,
    "n_frames_per_step": 2, "attention_rnn_dim": 64, "decoder_rnn_dim": 64, "prenet_dim": 32,
    "attention_dim": 16, "attention_location_n_filters": 8, "attention_location_kernel_size": 7,
    "postnet_embedding_dim": 32, "postnet_n_convolutions": 3, "max_decoder_steps": 60,
}
QUICK_SETS = [f"model.{k}={v}" for k, v in MICRO_MODEL.items()] + [
    "data.batch_size=4", "optim.learning_rate=2e-3", "optim.warmup_steps=0", "train.log_every=1",
    "eval.max_batches=1", "eval.probe_sentences=['Hello there.']", "eval.probe_max_decoder_steps=20",
    "tracking.enabled=false",
    # As the end-to-end tests: a quick supervisor (tick, restart backoff, probation).
    "supervisor.tick_seconds=0.3", "supervisor.digest_minutes=0", "supervisor.process.backoff_seconds=0.5",
    "supervisor.probation.steps=3", "supervisor.probation.evals=1",
]


# -- the vanilla runner (a child process of the harness) ------------------------------------------
def vanilla_main(argv: list[str]) -> int:
    """``--_vanilla``: train like ``smart-tuner train`` (fresh run), plus a recorder and faults."""
    p = argparse.ArgumentParser(prog="bench/faults.py --_vanilla")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--record", type=Path, required=True)
    args = p.parse_args(argv)

    from agent.faults import faults_from_env
    from trainer.callbacks import BaseCallback, ConsoleProgress
    from trainer.config import load_config, parse_overrides
    from trainer.errors import UserError
    from trainer.loop import Trainer

    class Recorder(BaseCallback):
        """One JSON line per step, evaluation and checkpoint (flushed: the harness follows the file)."""

        def __init__(self, path: Path) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(path, "a", encoding="utf-8", buffering=1)

        def _w(self, **row: Any) -> None:
            self.fh.write(json.dumps(row) + "\n")

        def on_step(self, trainer, r) -> None:
            self._w(t="step", step=r.step, wall_time=r.wall_time, step_seconds=r.step_seconds, loss=r.loss,
                    finite=r.finite, lr=r.lr)

        def on_eval(self, trainer, r) -> None:
            self._w(t="eval", step=r.step, wall_time=r.wall_time, val_loss=r.val_loss, diagonality=r.diagonality)

        def on_checkpoint(self, trainer, r) -> None:
            self._w(t="checkpoint", step=r.step, path=r.path, reason=r.reason)

        def on_train_end(self, trainer, reason: str) -> None:
            self._w(t="end", step=trainer.step, reason=reason)

    try:
        config = load_config(args.config, parse_overrides(args.set))
        # The callbacks of trainer.cli_train.run_training (smart-tuner train), then ours.
        callbacks: list = [ConsoleProgress(config.train.log_every)]
        if config.tracking.enabled:
            from trainer.tracking import MlflowLogger

            callbacks.append(MlflowLogger(config.tracking, config.run_dir))
        callbacks.append(Recorder(args.record))
        injector = faults_from_env(None)  # SMART_TUNER_FAULTS; no journal in a vanilla run
        if injector is not None:
            callbacks.append(injector)
        trainer = Trainer(config, callbacks=callbacks, resume=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: trainer.request_stop(signal.Signals(signum).name))
    trainer.train()
    return 0


# -- launching and watching runs --------------------------------------------------------------------
def vanilla_command(config: str, sets: list[str], run_dir: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--_vanilla", "--config", config,
            *_set_args([*sets, f"run_dir={run_dir}"]), "--record", str(run_dir / RECORD_NAME)]


def supervised_command(config: str, sets: list[str], run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "agent.cli", "run", "--config", config, *_set_args([*sets, f"run_dir={run_dir}"])]


def _set_args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def launch(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """A process in its own session (its own process group), output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%H:%M:%S')} harness: {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop_gracefully(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the process group; SIGKILL after ``grace`` seconds."""
    kill_group(proc, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        kill_group(proc, signal.SIGKILL)
        proc.wait()


def run_env(fault: str | None, fault_step: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("SMART_TUNER_FAULTS", None)
    if fault in ENV_FAULTS:
        env["SMART_TUNER_FAULTS"] = json.dumps([{"step": fault_step, "kind": ENV_FAULTS[fault]}])
    return env


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by SIGKILL
            pass
    return rows


def current_step(mode: str, run_dir: Path) -> int | None:
    """The newest step the run has recorded (vanilla: the recorder; supervised: the journal)."""
    if mode == "vanilla":
        steps = [r["step"] for r in read_jsonl(run_dir / RECORD_NAME) if r.get("t") == "step"]
        return steps[-1] if steps else None
    from agent.paths import journal_path

    path = journal_path(run_dir)
    if not path.exists():
        return None
    from agent.journal import Journal, JournalError

    try:
        with Journal(path, readonly=True, busy_timeout=5.0) as journal:
            return journal.telemetry_progress(0)[1]  # the highest step written
    except (JournalError, sqlite3.Error):  # not created yet, or busy
        return None


def journal_paused(run_dir: Path) -> bool:
    """The journal's ``paused`` state (the supervisor sets it when it pauses the run and calls a human)."""
    from agent.paths import journal_path

    path = journal_path(run_dir)
    if not path.exists():
        return False
    from agent.journal import Journal, JournalError

    try:
        with Journal(path, readonly=True, busy_timeout=5.0) as journal:
            return journal.get_state("paused") is True
    except (JournalError, sqlite3.Error):
        return False


def trainer_pid(mode: str, run_dir: Path, proc: subprocess.Popen) -> int | None:
    """The training process: the vanilla runner itself, or the daemon's child (its pid file)."""
    if mode == "vanilla":
        return proc.pid
    from agent.daemon import child_pid_path

    try:
        pid = int(json.loads(child_pid_path(run_dir).read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if _is_our_child(pid, run_dir) else None


def _is_our_child(pid: int, run_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return "agent.child" in cmdline and any(str(run_dir.resolve()) in a for a in cmdline)


def newest_checkpoint(run_dir: Path) -> Path | None:
    files = sorted((run_dir / "checkpoints").glob("checkpoint_*.pt"))
    return files[-1] if files else None


def kill_orphan_trainer(run_dir: Path) -> None:
    """After a supervised run: a trainer still running (daemon killed, not restarted) is killed."""
    pid = trainer_pid("supervised", run_dir, None)  # type: ignore[arg-type]
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- one run ------------------------------------------------------------------------------------------
def run_one(name: str, mode: str, fault: str | None, args: argparse.Namespace, sets: list[str],
            timeout_s: float) -> dict:
    run_dir = (args.out / f"{name}-{mode}").resolve()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    log = run_dir / CONSOLE_NAME
    env = run_env(fault, args.fault_step)
    cmd = (vanilla_command if mode == "vanilla" else supervised_command)(args.config, sets, run_dir)
    print(f"\n[{name} / {mode}] {run_dir}" + (f" (fault at step {args.fault_step})" if fault else ""), flush=True)
    t0 = time.monotonic()
    proc = launch(cmd, log, env)
    harness: dict[str, Any] = {}
    timed_out = False
    daemon_exits: list[int] = []
    deadline = t0 + timeout_s
    try:
        if fault in ("sigkill_daemon", "truncate_checkpoint"):
            step = _wait_for_step(mode, run_dir, proc, args.fault_step, deadline)
            if step is not None:
                harness["at_step"] = step
                if fault == "sigkill_daemon":
                    kill_group(proc)  # vanilla: the trainer itself; supervised: the daemon (its child lives on)
                    harness["killed_pid"] = proc.pid
                    if mode == "supervised":  # systemd's Restart=on-failure
                        daemon_exits.append(proc.wait())
                        time.sleep(args.restart_delay)
                        harness["restarted_after_s"] = round(time.monotonic() - t0, 1)
                        proc = launch(cmd, log, env)
                else:
                    harness.update(_truncate_and_kill(mode, run_dir, proc))
        paused_since = None
        while True:
            try:
                code = proc.wait(timeout=min(2.0, max(0.0, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                pass
            if mode == "supervised" and journal_paused(run_dir):
                paused_since = paused_since or time.monotonic()
                if time.monotonic() - paused_since >= args.paused_grace:
                    harness["stopped_paused"] = True
                    print(f"  the supervisor paused the run (a human is called) for {args.paused_grace:g} s; "
                          "stopping it", flush=True)
                    stop_gracefully(proc, 120)
                    code = proc.returncode
                    break
            else:
                paused_since = None
            if time.monotonic() >= deadline:
                timed_out = True
                print(f"  timed out after {timeout_s / 60:.1f} min; stopping it", flush=True)
                stop_gracefully(proc, 120)
                code = proc.returncode
                break
        daemon_exits.append(code)
    finally:
        if proc.poll() is None:  # interrupted: leave nothing running
            kill_group(proc)
            proc.wait()
        if mode == "supervised":
            kill_orphan_trainer(run_dir)
    wall = time.monotonic() - t0
    result = {"name": name, "mode": mode, "fault": fault, "run_dir": str(run_dir), "command": cmd,
              "faults_env": env.get("SMART_TUNER_FAULTS"), "exit_codes": daemon_exits, "timed_out": timed_out,
              "wall_seconds": round(wall, 1), "harness": harness}
    result.update(collect_vanilla(run_dir) if mode == "vanilla" else collect_supervised(run_dir))
    final = result["final_eval"]
    result["survived"] = bool(not timed_out and daemon_exits[-1] == 0 and final is not None
                              and final["step"] == args.steps and math.isfinite(final["val_loss"]))
    result["final_val_loss"] = final["val_loss"] if final is not None and final["step"] == args.steps else None
    fired = result.get("fault_fired") or harness.get("at_step")
    print(f"  -> {'survived' if result['survived'] else 'DID NOT SURVIVE'}: step {result['steps_reached']}, "
          f"final val loss {_fmt(result['final_val_loss'], '.4f')}, exit {daemon_exits}, {wall / 60:.1f} min"
          + (f"; fault fired at step {fired}" if fault else "")
          + (f"; interventions: {result['interventions_text']}" if mode == "supervised" else "")
          + ("; TIMED OUT" if timed_out else "") + ("; stopped while paused by the supervisor"
                                                    if harness.get("stopped_paused") else ""), flush=True)
    return result


def _wait_for_step(mode: str, run_dir: Path, proc: subprocess.Popen, step: int, deadline: float) -> int | None:
    """Poll until the run records ``step`` (the step it had reached then), or None if it ended first."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        now = current_step(mode, run_dir)
        if now is not None and now >= step:
            return now
        time.sleep(0.1)
    return None


def _truncate_and_kill(mode: str, run_dir: Path, proc: subprocess.Popen) -> dict:
    """Stop the trainer, cut the newest checkpoint to half, SIGKILL the trainer."""
    pid = None
    for _ in range(50):  # the daemon may be between two children
        pid = trainer_pid(mode, run_dir, proc)
        if pid is not None:
            break
        time.sleep(0.1)
    out: dict[str, Any] = {"trainer_pid": pid}
    if pid is None:
        out["error"] = "no trainer process found"
        return out
    os.kill(pid, signal.SIGSTOP)  # no checkpoint is written between choosing the file and the kill
    newest = newest_checkpoint(run_dir)
    if newest is not None:
        size = newest.stat().st_size
        os.truncate(newest, size // 2)
        out.update(truncated=newest.name, bytes_before=size, bytes_after=size // 2)
    else:
        out["error"] = "no checkpoint to truncate"
    if mode == "vanilla":
        kill_group(proc)
    else:
        os.kill(pid, signal.SIGKILL)
    return out


# -- what a run left behind -------------------------------------------------------------------------
def _final_eval(evals: list[dict]) -> dict | None:
    """The last evaluation written (after a rollback, the newest branch's)."""
    return evals[-1] if evals else None


def collect_vanilla(run_dir: Path) -> dict:
    rows = read_jsonl(run_dir / RECORD_NAME)
    steps = [r for r in rows if r["t"] == "step"]
    evals = [{"step": r["step"], "val_loss": r["val_loss"], "diagonality": r["diagonality"]}
             for r in rows if r["t"] == "eval"]
    fired = None
    for line in _read_text(run_dir / CONSOLE_NAME).splitlines():
        if line.startswith("fault injected:"):
            fired = line
    return {"steps_reached": max((r["step"] for r in steps), default=None), "evals": evals,
            "final_eval": _final_eval(evals), "fault_fired": fired, "interventions": [], "interventions_text": "-",
            "step_records": steps}


def collect_supervised(run_dir: Path) -> dict:
    from agent.journal import Journal
    from agent.paths import journal_path

    path = journal_path(run_dir)
    empty = {"steps_reached": None, "evals": [], "final_eval": None, "fault_fired": None, "interventions": [],
             "interventions_text": "-", "daemon_events": [], "phases": [], "step_records": []}
    if not path.exists():
        return empty
    with Journal(path, create=False) as j:
        evals = [{"step": r.record.step, "val_loss": r.record.val_loss, "diagonality": r.record.diagonality}
                 for r in j.evals_after(0)]
        steps = [{"step": r.record.step, "wall_time": r.record.wall_time, "step_seconds": r.record.step_seconds,
                  "finite": r.record.finite} for r in j.telemetry_after(0)]
        proposals = list(reversed(j.proposals()))
        audit = j.audit_log(limit=None)
        phases = [p.to_phase for p in j.phase_history()]
        paused = bool(j.get_state("paused", False))
    interventions = [{"id": p.id, "policy": p.policy, "kind": p.kind, "status": p.status, "step": p.step,
                      "applied_step": p.applied_step, "outcome": p.outcome, "reason": p.reason} for p in proposals]
    daemon = [f"{a.action}: {a.detail.splitlines()[0] if a.detail else ''}" for a in audit if a.actor == "daemon"]
    fired = [a.detail for a in audit if a.actor == "faults"]
    applied = [f"{p['kind']}@{p['applied_step']}" for p in interventions if p["status"] == "applied"]
    restarts = sum(1 for a in audit if a.actor == "daemon" and a.action == "restarted")
    orphans = sum(1 for a in audit if a.actor == "daemon" and a.action == "orphan_stopped")
    other = [f"{p['kind']} {p['status']}" for p in interventions if p["status"] != "applied"]
    parts = applied + ([f"{restarts} restart(s)"] if restarts else []) + (
        [f"{orphans} orphan stopped"] if orphans else []) + other
    return {"steps_reached": max((s["step"] for s in steps), default=None), "evals": evals,
            "final_eval": _final_eval(evals), "fault_fired": fired[0] if fired else None,
            "interventions": interventions, "interventions_text": ", ".join(parts) or "none",
            "daemon_events": daemon, "phases": phases, "paused_at_end": paused, "step_records": steps}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


# -- report ------------------------------------------------------------------------------------------
def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(value: float | None, ref: float | None) -> float | None:
    if value is None or ref is None or not math.isfinite(value) or ref == 0:
        return None
    return value / ref


def summarize(results: list[dict], faults: list[str]) -> list[dict]:
    by = {(r["name"], r["mode"]): r for r in results}
    clean_v = (by.get(("clean", "vanilla")) or {}).get("final_val_loss")
    clean_s = (by.get(("clean", "supervised")) or {}).get("final_val_loss")
    rows = []
    for name in ["clean", *faults]:
        v, s = by.get((name, "vanilla")), by.get((name, "supervised"))
        row = {"fault": name}
        for key, r in (("vanilla", v), ("supervised", s)):
            if r is None:
                continue
            row[key] = {
                "survived": r["survived"], "steps_reached": r["steps_reached"],
                "final_val_loss": r["final_val_loss"],
                "ratio_vs_clean_vanilla": _ratio(r["final_val_loss"], clean_v),
                "ratio_vs_clean_supervised": _ratio(r["final_val_loss"], clean_s),
                "wall_minutes": round(r["wall_seconds"] / 60, 2),
                "fault_at_step": r["harness"].get("at_step") or _fired_step(r["fault_fired"]),
                "timed_out": r["timed_out"], "stopped_while_paused": bool(r["harness"].get("stopped_paused")),
            }
        if s is not None:
            row["interventions"] = s["interventions_text"]
            ratio = row["supervised"]["ratio_vs_clean_vanilla"]
            row["supervised_meets_target"] = bool(s["survived"] and ratio is not None and ratio <= TARGET_RATIO)
        rows.append(row)
    return rows


def _fired_step(text: str | None) -> int | None:
    """The step a fault fired at, from agent.faults' 'step N: fired at step M in pid P'."""
    if not text or "fired at step " not in text:
        return None
    try:
        return int(text.split("fired at step ", 1)[1].split()[0])
    except (ValueError, IndexError):
        return None


def print_table(rows: list[dict], args: argparse.Namespace, clean_v: float | None, clean_s: float | None) -> None:
    print("\n" + "=" * 100)
    print(f"Fault injection: config {args.config}{' (--quick: micro model)' if args.quick else ''}, "
          f"{args.steps} steps, eval every {args.eval_every}, checkpoint every {args.checkpoint_every}, "
          f"faults at step {args.fault_step}")
    print(f"clean final val loss: vanilla {_fmt(clean_v, '.4f')}, supervised {_fmt(clean_s, '.4f')}. "
          "val/clean = final val loss / the clean vanilla run's (sup/clean-sup: / the clean supervised run's).")
    print("survived = reached the step budget with a finite val loss at it; killed vanilla runs are not resumed.")
    header = ["fault", "at step", "vanilla survived", "vanilla val/clean", "sup survived", "sup val/clean",
              "sup/clean-sup", "supervisor did", "minutes V/S"]
    table = []
    for r in rows:
        v, s = r.get("vanilla", {}), r.get("supervised", {})
        at = v.get("fault_at_step") or s.get("fault_at_step")
        table.append([
            r["fault"], "-" if r["fault"] == "clean" else _fmt(at, "d"),
            _yn(v.get("survived")), _fmt(v.get("ratio_vs_clean_vanilla"), ".3f"),
            _yn(s.get("survived")), _fmt(s.get("ratio_vs_clean_vanilla"), ".3f"),
            _fmt(s.get("ratio_vs_clean_supervised"), ".3f"),
            r.get("interventions", "-"), f"{_fmt(v.get('wall_minutes'), '.1f')}/{_fmt(s.get('wall_minutes'), '.1f')}",
        ])
    print_rows(header, table)
    faulted = [r for r in rows if r["fault"] != "clean" and "supervised" in r]
    if faulted:
        missed = [r["fault"] for r in faulted if not r["supervised_meets_target"]]
        print(f"\ntarget (every fault survived supervised, final val loss <= {TARGET_RATIO:.2f} x clean): "
              + ("MET" if not missed else f"NOT MET for {', '.join(missed)}"))
    if args.quick:
        print("NOTE: --quick trains a micro model for a few steps: it checks the harness, not the figures.")


def _yn(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


# -- main ----------------------------------------------------------------------------------------------
def parse_list(text: str, known: tuple[str, ...], what: str, p: argparse.ArgumentParser) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in known]
    if bad:
        p.error(f"unknown {what}: {', '.join(bad)} (known: {', '.join(known)})")
    return items


def ensure_data(data: Path) -> None:
    if (data / "train.txt").exists():
        return
    print(f"building the espeak demo dataset in {data}", flush=True)
    subprocess.run([sys.executable, "-m", "trainer.cli", "data", "espeak", "--out", str(data), "--n", "240",
                    "--max-chars", "60", "--min-chars", "15"], check=True, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_vanilla"]:
        return vanilla_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", default="tiny-cpu", help="config file or shipped name (default tiny-cpu)")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "demo",
                   help="espeak dataset folder, built if missing (default data/demo)")
    p.add_argument("--steps", type=int, default=None, help="step budget of every run (default 250; --quick 12)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="eval.every_steps; must divide --steps (default 50; --quick 4)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="checkpoint.every_steps (default: --eval-every; --quick 2)")
    p.add_argument("--fault-step", type=int, default=None,
                   help="step of every fault (default ~40%% of --steps, off a checkpoint step: 110 of 250, 5 of 12)")
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated (default all: {','.join(FAULTS)})")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: vanilla, supervised (default both)")
    p.add_argument("--threads", type=int, default=None, help="train.torch_threads (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run (repeatable), e.g. supervisor.process.backoff_seconds=2")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: the micro model of the tests, 12 steps, no MLflow, a fast supervisor")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-faults",
                   help="run folders go here, one per run, replaced if present (default runs/bench-faults)")
    p.add_argument("--restart-delay", type=float, default=1.0,
                   help="seconds between killing the daemon and starting it again (default 1)")
    p.add_argument("--timeout-factor", type=float, default=4.0,
                   help="a faulted run is stopped after this many times the clean vanilla run's wall time "
                        "(+5 min) and counts as not survived (default 4)")
    p.add_argument("--paused-grace", type=float, default=300.0,
                   help="a supervised run the supervisor keeps paused (it called a human) this many seconds is "
                        "stopped and counts as not survived (default 300)")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = p.parse_args(argv)

    faults = parse_list(args.faults, FAULTS, "fault", p)
    modes = parse_list(args.modes, MODES, "mode", p)
    if args.quick:
        args.steps = args.steps or 12
        args.eval_every = args.eval_every or 4
        args.checkpoint_every = args.checkpoint_every or 2
    args.steps = args.steps or 250
    args.eval_every = args.eval_every or 50
    args.checkpoint_every = args.checkpoint_every or args.eval_every
    if args.fault_step is None:
        # ~40% of the budget, off a checkpoint step (a fault there would race the checkpoint's write).
        args.fault_step = max(1, round(0.4 * args.steps))
        if args.fault_step % args.checkpoint_every == 0:
            args.fault_step += max(1, args.checkpoint_every // 5)
    if args.steps % args.eval_every:
        p.error(f"--eval-every {args.eval_every} must divide --steps {args.steps} (the last step must evaluate)")
    if not 1 <= args.fault_step < args.steps:
        p.error("--fault-step must be between 1 and --steps - 1")
    if "truncate_checkpoint" in faults and args.fault_step < 2 * args.checkpoint_every:
        print(f"WARNING: fewer than two checkpoints before step {args.fault_step}: after truncate_checkpoint the "
              "restart falls back to scratch, not to an earlier checkpoint", flush=True)
    args.out = args.out.resolve()
    args.data = args.data.resolve()
    ensure_data(args.data)

    sets = [f"data.training_files={args.data / 'train.txt'}", f"data.validation_files={args.data / 'val.txt'}",
            f"train.max_steps={args.steps}", f"eval.every_steps={args.eval_every}",
            f"checkpoint.every_steps={args.checkpoint_every}", "checkpoint.keep_last=5"]
    if args.quick:
        sets += QUICK_SETS
    if args.threads:
        sets.append(f"train.torch_threads={args.threads}")
    sets += args.set

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load and load[0] > 0.5:
        print(f"WARNING: load average {load[0]:.2f} at start: something else is using the CPU (wall minutes "
              "and the timeout are affected; survival and val loss are not)", flush=True)
    started = time.time()
    results = []
    clean_timeout = 6 * 3600.0
    results.append(run_one("clean", "vanilla", None, args, sets, clean_timeout))
    clean_wall = results[0]["wall_seconds"]
    timeout = args.timeout_factor * clean_wall + 300
    n_runs = len(faults) * len(modes) + ("supervised" in modes)
    print(f"clean run: {clean_wall / 60:.1f} min; {n_runs} more runs to go (at most ~{n_runs * clean_wall / 60:.0f} "
          f"min at this pace; killed vanilla runs end early)", flush=True)
    if not results[0]["survived"]:
        print("WARNING: the clean vanilla run did not finish: there is no reference val loss", flush=True)
    if "supervised" in modes:
        results.append(run_one("clean", "supervised", None, args, sets, timeout))
    for fault in faults:
        for mode in modes:
            results.append(run_one(fault, mode, fault, args, sets, timeout))

    by = {(r["name"], r["mode"]): r for r in results}
    clean_v = by[("clean", "vanilla")]["final_val_loss"]
    clean_s = (by.get(("clean", "supervised")) or {}).get("final_val_loss")
    rows = summarize(results, faults)
    print_table(rows, args, clean_v, clean_s)
    if args.json:
        for r in results:
            r.pop("step_records", None)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "faults", "config": args.config, "quick": args.quick, "steps": args.steps,
            "eval_every": args.eval_every, "checkpoint_every": args.checkpoint_every, "fault_step": args.fault_step,
            "overrides": sets, "target_ratio": TARGET_RATIO,
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "load_average_at_start": load},
            "clean_val_loss": {"vanilla": clean_v, "supervised": clean_s},
            "summary": rows, "runs": results, "total_seconds": round(time.time() - started, 1),
        }, indent=1, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
