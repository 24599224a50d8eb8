"""Overhead of the supervisor: step time supervised / vanilla, and the daemon's ready time.

Step time: the same config, data, seed and step budget trained vanilla (``Trainer`` with
the callbacks of ``smart-tuner train``, run by ``bench/faults.py --_vanilla``) and
supervised (``python -m agent.cli run``), alternating in ABBA order (vanilla,
supervised, supervised, vanilla, ...) so that a drift in machine speed cancels out.
Each run is a fresh process and run folder. Two figures per step, both from the
trainer's own step records (vanilla: a recorder callback; supervised: the run journal):

* ``step_seconds``: the time inside ``Trainer.train_step`` (forward, backward, optimizer),
  what the journal and MLflow log. It shows the daemon's competition for the CPU, not
  the trainer's own journal calls, which happen outside ``train_step``;
* ``interval``: wall time from the end of one step to the end of the next, i.e. the
  whole loop iteration: commands poll, telemetry emit, callbacks, the next batch and the
  step. This is the figure that carries the full cost of supervision.

The first ``--warmup`` steps of each run are left out, and so are intervals that contain
an evaluation or a checkpoint (by default both are pushed beyond the budget).

Ready time: ``--ready-launches`` times, ``smart-tuner run`` is started on a fresh run
folder and the time to its ``daemon ready`` log line is measured from the launch (the
interpreter start and imports included), next to the ``seconds`` field the line carries
(from the daemon's start of work: journal open, phase restored, child launched) and its
``since_process_start``. Each daemon is then stopped with SIGTERM.

    python bench/overhead.py --json runs/bench-overhead.json
    python bench/overhead.py --quick          # micro model, smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import faults as fb  # noqa: E402  (bench/faults.py: the vanilla runner and the launch helpers)
from tables import print_rows  # noqa: E402  (bench/tables.py; scripts run from bench/)

STEP_TARGET = 1.02
READY_TARGET_S = 2.0


# -- step time ---------------------------------------------------------------------------------------
def step_stats(records: list[dict], warmup: int, busy_steps: set[int]) -> dict:
    """Mean and median step_seconds and loop interval, leaving out warm-up and eval/checkpoint steps."""
    compute = [r["step_seconds"] for r in records if r["step"] > warmup]
    intervals = []
    for prev, cur in zip(records, records[1:]):
        if cur["step"] == prev["step"] + 1 and prev["step"] >= warmup and prev["step"] not in busy_steps:
            intervals.append(cur["wall_time"] - prev["wall_time"])
    return {"steps": len(compute), "intervals": len(intervals),
            "step_seconds_mean": _mean(compute), "step_seconds_median": _median(compute),
            "interval_mean": _mean(intervals), "interval_median": _median(intervals),
            "step_seconds": compute, "interval_seconds": intervals}


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def train_run(mode: str, index: int, args: argparse.Namespace, sets: list[str]) -> dict:
    run_dir = (args.out / f"{mode}-{index}").resolve()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cmd = (fb.vanilla_command if mode == "vanilla" else fb.supervised_command)(args.config, sets, run_dir)
    print(f"\n[{mode} #{index}] {args.steps} steps in {run_dir}", flush=True)
    t0 = time.monotonic()
    proc = fb.launch(cmd, run_dir / fb.CONSOLE_NAME, fb.run_env(None, 0))
    try:
        code = proc.wait(timeout=args.run_timeout * 60)
    except subprocess.TimeoutExpired:
        print("  timed out; stopping it", flush=True)
        fb.stop_gracefully(proc, 120)
        code = proc.returncode
    finally:
        if proc.poll() is None:
            fb.kill_group(proc)
            proc.wait()
        if mode == "supervised":
            fb.kill_orphan_trainer(run_dir)
    wall = time.monotonic() - t0
    got = fb.collect_vanilla(run_dir) if mode == "vanilla" else fb.collect_supervised(run_dir)
    busy = {s for s in range(1, args.steps + 1) if s % args.eval_every == 0 or s % args.checkpoint_every == 0}
    stats = step_stats(got["step_records"], args.warmup, busy)
    applied = [i for i in got.get("interventions", []) if i["status"] == "applied"]
    out = {"mode": mode, "index": index, "run_dir": str(run_dir), "exit_code": code, "wall_seconds": round(wall, 1),
           "steps_reached": got["steps_reached"], "interventions_applied": applied, **stats}
    if code != 0 or got["steps_reached"] != args.steps:
        print(f"  WARNING: exit {code}, reached step {got['steps_reached']} of {args.steps}; see "
              f"{run_dir / fb.CONSOLE_NAME}", flush=True)
    if applied:
        print(f"  WARNING: the supervisor applied {', '.join(i['kind'] for i in applied)}: the step cost may have "
              "changed for reasons other than supervision", flush=True)
    print(f"  -> step_seconds {fb._fmt(out['step_seconds_mean'], '.4f')} s, interval "
          f"{fb._fmt(out['interval_mean'], '.4f')} s (means over {out['steps']} steps), {wall:.0f} s in all",
          flush=True)
    return out


def pooled(runs: list[dict], mode: str) -> dict:
    mine = [r for r in runs if r["mode"] == mode]
    compute = [x for r in mine for x in r["step_seconds"]]
    intervals = [x for r in mine for x in r["interval_seconds"]]
    return {"runs": len(mine), "steps": len(compute), "step_seconds_mean": _mean(compute),
            "step_seconds_median": _median(compute), "interval_mean": _mean(intervals),
            "interval_median": _median(intervals)}


# -- ready time -------------------------------------------------------------------------------------
def ready_launch(index: int, args: argparse.Namespace, sets: list[str]) -> dict:
    run_dir = (args.out / f"ready-{index}").resolve()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cmd = fb.supervised_command(args.config, sets, run_dir)
    lines: queue.Queue = queue.Queue()
    log_path = args.out / f"ready-{index}.log"
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=fb.ROOT, env=fb.run_env(None, 0), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def pump() -> None:  # timestamp each line as it arrives; keep draining so the daemon never blocks
        with open(log_path, "wb") as log:
            for raw in proc.stdout:
                lines.put((time.monotonic(), raw))
                log.write(raw)
                log.flush()
        lines.put((time.monotonic(), None))

    threading.Thread(target=pump, daemon=True).start()
    found = None
    deadline = t0 + args.ready_timeout
    while found is None and time.monotonic() < deadline:
        try:
            at, raw = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if raw is None:
            break
        text = raw.decode(errors="replace").strip()
        if "daemon ready" not in text or not text.startswith("{"):
            continue
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "daemon ready":
            found = (at, event)
    try:
        proc.send_signal(signal.SIGTERM)  # the daemon stops its trainer (SIGTERM) and exits 0
        code = proc.wait(timeout=args.ready_timeout)
    except subprocess.TimeoutExpired:
        fb.kill_group(proc)
        code = proc.wait()
    fb.kill_orphan_trainer(run_dir)
    if found is None:
        print(f"  launch {index}: no 'daemon ready' line within {args.ready_timeout} s (see {log_path})", flush=True)
        return {"index": index, "ready": False, "exit_code": code, "log": str(log_path)}
    at, event = found
    out = {"index": index, "ready": True, "launch_to_line_seconds": round(at - t0, 3),
           "seconds": event.get("seconds"), "since_process_start": event.get("since_process_start"),
           "phase": event.get("phase"), "exit_code": code, "log": str(log_path)}
    print(f"  launch {index}: 'daemon ready' {out['launch_to_line_seconds']:.3f} s after launch; line says "
          f"seconds={out['seconds']}, since_process_start={out['since_process_start']}; daemon exit {code}",
          flush=True)
    return out


# -- report -------------------------------------------------------------------------------------------
def print_report(args: argparse.Namespace, runs: list[dict], v: dict, s: dict, ready: list[dict]) -> dict:
    def ratio(key: str) -> float | None:
        return s[key] / v[key] if v.get(key) and s.get(key) is not None else None

    ratios = {k: ratio(k) for k in ("step_seconds_mean", "step_seconds_median", "interval_mean", "interval_median")}
    print("\n" + "=" * 100)
    print(f"Supervisor overhead: config {args.config}{' (--quick: micro model)' if args.quick else ''}, "
          f"{args.steps} steps a run ({args.warmup} warm-up left out), {args.rounds} round(s) in ABBA order")
    header = ["figure", "vanilla s", "supervised s", "supervised/vanilla"]
    rows = [
        ["step_seconds mean (train_step)", v["step_seconds_mean"], s["step_seconds_mean"], ratios["step_seconds_mean"]],
        ["step_seconds median", v["step_seconds_median"], s["step_seconds_median"], ratios["step_seconds_median"]],
        ["interval mean (whole loop)", v["interval_mean"], s["interval_mean"], ratios["interval_mean"]],
        ["interval median", v["interval_median"], s["interval_median"], ratios["interval_median"]],
    ]
    table = [[r[0], fb._fmt(r[1], ".4f"), fb._fmt(r[2], ".4f"), fb._fmt(r[3], ".3f")] for r in rows]
    print_rows(header, table)
    print("\nper run: " + ", ".join(f"{r['mode'][0]}{r['index']} {fb._fmt(r['interval_mean'], '.4f')}"
                                    for r in runs) + " (interval mean, s; in the order run)")
    ok = [r for r in ready if r["ready"]]
    verdict = {"step_ratio": ratios["interval_mean"], "step_target": STEP_TARGET,
               "step_target_met": ratios["interval_mean"] is not None and ratios["interval_mean"] <= STEP_TARGET}
    if ready:
        print(f"\nDaemon ready time over {len(ready)} launch(es) of smart-tuner run (fresh run folders)")
        header = ["launch", "launch -> 'daemon ready' s", "line: seconds", "line: since_process_start"]
        table = [[str(r["index"]), fb._fmt(r.get("launch_to_line_seconds"), ".3f"), fb._fmt(r.get("seconds"), ".3f"),
                  fb._fmt(r.get("since_process_start"), ".3f")] for r in ready]
        print_rows(header, table)
        worst = max((r["launch_to_line_seconds"] for r in ok), default=None)
        verdict.update(ready_worst_seconds=worst, ready_target_seconds=READY_TARGET_S,
                       ready_target_met=len(ok) == len(ready) and worst is not None and worst < READY_TARGET_S)
    print(f"\ntarget step time supervised/vanilla <= {STEP_TARGET} (interval mean): "
          f"{fb._fmt(ratios['interval_mean'], '.3f')} -> {'MET' if verdict['step_target_met'] else 'NOT MET'}")
    if ready:
        met = "MET" if verdict["ready_target_met"] else "NOT MET"
        print(f"target ready time < {READY_TARGET_S:g} s (launch to line, worst): "
              f"{fb._fmt(verdict['ready_worst_seconds'], '.3f')} -> {met}")
    if args.quick:
        print("NOTE: --quick times a micro model for a few steps: it checks the script, not the figures.")
    return {"ratios": ratios, **verdict}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", default="tiny-cpu", help="config file or shipped name (default tiny-cpu)")
    p.add_argument("--data", type=Path, default=fb.ROOT / "data" / "demo",
                   help="espeak dataset folder, built if missing (default data/demo)")
    p.add_argument("--steps", type=int, default=None, help="steps a run (default 80; --quick 20)")
    p.add_argument("--warmup", type=int, default=None, help="first steps of each run left out (default 5; --quick 3)")
    p.add_argument("--rounds", type=int, default=2, help="vanilla+supervised pairs, in ABBA order (default 2)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="eval.every_steps (and checkpoints); 0 = beyond the budget, the default")
    p.add_argument("--threads", type=int, default=None, help="train.torch_threads (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every run")
    p.add_argument("--ready-launches", type=int, default=3, help="daemon start-ups to time (default 3; 0: none)")
    p.add_argument("--ready-timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    p.add_argument("--run-timeout", type=float, default=120.0, help="minutes before a run is stopped (default 120)")
    p.add_argument("--quick", action="store_true", help="smoke test: the tests' micro model, 20 steps, no MLflow")
    p.add_argument("--out", type=Path, default=fb.ROOT / "runs" / "bench-overhead",
                   help="run folders go here, replaced if present (default runs/bench-overhead)")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = p.parse_args(argv)
    args.steps = args.steps or (20 if args.quick else 80)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.quick else 5)
    if args.steps <= args.warmup + 1 or args.rounds < 1:
        p.error("--steps must exceed --warmup + 1, and --rounds must be at least 1")
    args.eval_every = args.eval_every or args.steps * 10
    args.checkpoint_every = args.eval_every
    args.out = args.out.resolve()
    args.data = args.data.resolve()
    fb.ensure_data(args.data)

    sets = [f"data.training_files={args.data / 'train.txt'}", f"data.validation_files={args.data / 'val.txt'}",
            f"train.max_steps={args.steps}", f"eval.every_steps={args.eval_every}",
            f"checkpoint.every_steps={args.checkpoint_every}"]
    if args.quick:
        sets += fb.QUICK_SETS
    if args.threads:
        sets.append(f"train.torch_threads={args.threads}")
    sets += args.set

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load and load[0] > 0.5:
        print(f"WARNING: load average {load[0]:.2f} at start: something else is using the CPU, so the timings "
              "are not a measurement", flush=True)
    started = time.time()
    runs = []
    for i in range(args.rounds):
        order = ("vanilla", "supervised") if i % 2 == 0 else ("supervised", "vanilla")
        for mode in order:
            runs.append(train_run(mode, i + 1, args, sets))
    v, s = pooled(runs, "vanilla"), pooled(runs, "supervised")
    ready = []
    if args.ready_launches:
        # The daemon's start-up only: one step, so the trainer it launches stops at once when told.
        ready_sets = [*sets, "train.max_steps=1"]
        print(f"\ntiming {args.ready_launches} daemon start-up(s)", flush=True)
        ready = [ready_launch(i + 1, args, ready_sets) for i in range(args.ready_launches)]
    verdict = print_report(args, runs, v, s, ready)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "overhead", "config": args.config, "quick": args.quick, "steps": args.steps,
            "warmup": args.warmup, "rounds": args.rounds, "overrides": sets,
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "load_average_at_start": load},
            "vanilla": v, "supervised": s, **verdict, "ready": ready,
            "runs": runs, "total_seconds": round(time.time() - started, 1),
        }, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
