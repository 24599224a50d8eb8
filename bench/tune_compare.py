"""Tuning benchmarks on tiny-cpu (results in docs/benchmarks.md).

1. ``study``: TPE with median pruning against random search without pruning, the same
   number of trials of the same step budget, same seed, same first trial (the config
   as it is). Compute = training steps actually run (pruned trials stop early). Reported:
   the best objective each reached, and the steps each spent until it first reached
   the objective both arms reached (the worse of the two bests).
2. ``inrun``: in-run tuning against none at an equal total step budget T. "none" trains
   T steps. "tuned" trains T0 steps, runs one round of K trials of S steps forked from
   there (every trial step counts against T), continues from the winner and trains the
   steps left. Reported: final validation loss, mel loss and diagonality of both.

Every training process is pinned where this script runs (use ``taskset``) and uses
``train.torch_threads`` threads. Small runs give a quick figure, not a verdict:

    taskset -c 1 .venv/bin/python bench/tune_compare.py --out runs/bench-tune --trials 5 --steps 16 \\
        --report-every 8 --total-steps 48 --fork-at 16 --round-trials 3 --round-steps 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import print_rows  # noqa: E402


def _config(args, run_dir: Path, extra: dict | None = None):
    from trainer.config import load_config, parse_overrides

    overrides = {"run_dir": str(run_dir), "train.torch_threads": args.threads, "tracking.enabled": False,
                 **parse_overrides(args.set), **(extra or {})}
    return load_config(args.config, overrides)


def study_arm(args, name: str, tuner: dict) -> dict:
    from agent.tuner.config import tuner_config
    from agent.tuner.offline import run_study

    config = _config(args, Path(args.out) / f"study-{name}", {"tuner": tuner})
    t0 = time.time()
    outcome = run_study(config, tuner_config(config.tuner), trials=args.trials, steps=args.steps,
                        out=lambda line: print(f"[{name}] {line}", flush=True))
    spent, best, curve = 0, float("inf"), []
    for r in outcome.results:  # in trial order: compute spent so far, best objective so far
        spent += r.outcome.progress
        if r.state == "complete" and r.score is not None:
            best = min(best, r.score.total)
        curve.append((spent, best, r.state))
    return {"arm": name, "curve": curve, "best": best, "steps": spent, "minutes": (time.time() - t0) / 60,
            "pruned": sum(r.state == "pruned" for r in outcome.results),
            "failed": sum(r.state == "failed" for r in outcome.results)}


def run_study_bench(args) -> list[dict]:
    common = {"report_every": args.report_every, "seed": args.seed, "tpe_startup_trials": args.tpe_startup}
    pruner = {"kind": "median", "startup_trials": args.pruner_startup, "warmup_reports": args.pruner_warmup}
    tpe = study_arm(args, "tpe-pruned", {**common, "sampler": "tpe", "pruner": pruner})
    rnd = study_arm(args, "random", {**common, "sampler": "random", "pruner": {"kind": "none"}})
    target = max(tpe["best"], rnd["best"])
    for arm in (tpe, rnd):
        arm["target"] = target
        arm["steps_to_target"] = next((spent for spent, best, _ in arm["curve"] if best <= target + 1e-12), None)
    return [tpe, rnd]


def _final_eval(trainer) -> dict:
    from agent.tuner.config import tuner_config
    from agent.tuner.objective import score

    record = trainer.evaluate()
    s = record.speech
    return {"val_loss": record.val_loss, "val_mel_postnet_loss": record.val_mel_postnet_loss,
            "diagonality": record.diagonality, "gate_accuracy": record.gate_accuracy,
            "speech": f"{s.spoken}/{s.utterances}" if s else "-", "mcd_dtw": record.mcd_dtw,
            "read": f"{s.read}/{s.synthesized}" if s else "-",
            "objective": score(record, tuner_config(trainer.config.tuner).objective).total}


def run_inrun_bench(args) -> list[dict]:
    from agent.tuner.config import tuner_config
    from agent.tuner.rounds import run_round
    from agent.tuner.space import config_values
    from trainer.loop import Trainer

    out = Path(args.out)
    no_saves = {"checkpoint.every_steps": 10**9, "eval.every_steps": 10**9}
    # none: T steps straight.
    t0 = time.time()
    plain = Trainer(_config(args, out / "inrun-none", {**no_saves, "train.max_steps": args.total_steps}))
    plain.train()
    none = {"arm": "none", "main_steps": plain.step, "trial_steps": 0, **_final_eval(plain),
            "minutes": (time.time() - t0) / 60}

    # tuned: T0 steps, a round, the winner's checkpoint, the rest.
    t0 = time.time()
    tuner = {"report_every": args.round_report_every, "seed": args.seed, "tpe_startup_trials": args.tpe_startup,
             "pruner": {"kind": "median", "startup_trials": 1, "warmup_reports": 0},
             "round": {"trials": args.round_trials, "steps": args.round_steps}}
    cfg = _config(args, out / "inrun-tuned", {**no_saves, "train.max_steps": args.fork_at, "tuner": tuner})
    first = Trainer(cfg)
    first.train()  # saves its final checkpoint: the base
    base = first.checkpoints.path_for(first.step)
    current = {**config_values(cfg), "learning_rate": first.current_lr}
    summary = run_round(cfg.model_dump(mode="json"), tuner_config(tuner), base, current, round_id=1)
    trial_steps = sum(r.outcome.progress for r in summary.results)
    winner = summary.winner
    rest = args.total_steps - args.fork_at - trial_steps
    if winner is None or rest < 0:
        raise SystemExit(f"no winner or budget exceeded (trial steps {trial_steps}, rest {rest})")
    final_step = winner.outcome.step + rest
    cont = Trainer(_config(args, out / "inrun-tuned", {**no_saves, "train.max_steps": final_step, "tuner": tuner}),
                   resume=True)
    cont.continue_from(winner.outcome.checkpoint)
    cont.train()
    tuned = {"arm": f"tuned (winner: trial {winner.number}{', baseline' if winner.baseline else ''})",
             "main_steps": cont.step, "trial_steps": trial_steps, **_final_eval(cont),
             "minutes": (time.time() - t0) / 60,
             "trials": [(r.number, r.state, r.outcome.progress, r.score.total if r.score else None)
                        for r in summary.results]}
    return [none, tuned]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="tiny-cpu")
    p.add_argument("--out", default="runs/bench-tune")
    p.add_argument("--parts", default="study,inrun")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--report-every", type=int, default=25)
    p.add_argument("--tpe-startup", type=int, default=3)
    # The product's defaults (agent/tuner/config.py PrunerConfig); 1/0 prunes on one finished trial at once.
    p.add_argument("--pruner-startup", type=int, default=2, help="median pruner: finished trials before pruning")
    p.add_argument("--pruner-warmup", type=int, default=1, help="median pruner: reports before a trial may be pruned")
    p.add_argument("--total-steps", type=int, default=600)
    p.add_argument("--fork-at", type=int, default=200)
    p.add_argument("--round-trials", type=int, default=4)
    p.add_argument("--round-steps", type=int, default=50)
    p.add_argument("--round-report-every", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    args.round_report_every = args.round_report_every or max(args.round_steps // 2, 1)
    results: dict = {"command": " ".join(sys.argv)}
    if "study" in args.parts:
        arms = run_study_bench(args)
        results["study"] = arms
        print(f"\nTPE + median pruning vs random search: {args.trials} trials x {args.steps} steps each, "
              f"{args.config}; target = objective both reached ({arms[0]['target']:.4f})")
        print_rows(["arm", "best objective", "steps spent", "steps to target", "pruned", "failed", "minutes"],
                   [[a["arm"], f"{a['best']:.4f}", str(a["steps"]), str(a["steps_to_target"]), str(a["pruned"]),
                     str(a["failed"]), f"{a['minutes']:.1f}"] for a in arms])
    if "inrun" in args.parts:
        arms = run_inrun_bench(args)
        results["inrun"] = arms
        print(f"\nIn-run tuning vs none at {args.total_steps} total steps ({args.config}; round at step "
              f"{args.fork_at}: {args.round_trials} trials x {args.round_steps} steps)")
        print_rows(["arm", "main-line steps", "trial steps", "objective", "spoken", "MCD-DTW dB", "read",
                    "val mel (postnet)", "diagonality", "minutes"],
                   [[a["arm"], str(a["main_steps"]), str(a["trial_steps"]), f"{a['objective']:.3f}", a["speech"],
                     f"{a['mcd_dtw']:.2f}" if a["mcd_dtw"] is not None else "-", a["read"],
                     f"{a['val_mel_postnet_loss']:.4f}", f"{a['diagonality']:.3f}", f"{a['minutes']:.1f}"]
                    for a in arms])
        if "trials" in arms[1]:
            print("round trials (number, state, steps, objective):", arms[1]["trials"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
