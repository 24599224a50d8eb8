"""Time to alignment: steps and minutes until attention is aligned.

Runs (or reads) a training run of a config on the espeak demo data and reports the
first evaluation at which the run counts as aligned: mean diagonality >= 0.9 and
mean focus >= 0.5 (see trainer/metrics.py), as the supervisor's `aligned` signal
also requires them, here for one evaluation. Minutes are wall time from the first
training step's timestamp.

    python bench/time_to_align.py --run-dir runs/align-vanilla --config tiny-cpu --minutes 60   # train, then report
    python bench/time_to_align.py --run-dir runs/align-supervised --supervised --minutes 60    # the same, supervised
    python bench/time_to_align.py --run-dir /work/runs/baseline-vanilla --report-only           # report a finished run
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def report(run_dir: Path, diagonality: float = 0.9, focus: float = 0.5) -> dict:
    db = sqlite3.connect(run_dir / "mlflow.db")
    rows = db.execute("SELECT key, step, value, timestamp FROM metrics WHERE key IN "
                      "('diagonality', 'focus', 'step_seconds', 'loss') ORDER BY step").fetchall()
    by_step: dict[int, dict] = {}
    for key, step, value, ts in rows:
        by_step.setdefault(step, {})[key] = value
        by_step[step].setdefault("ts", ts)
    start_ts = min(v["ts"] for v in by_step.values())
    evals = [(s, v) for s, v in sorted(by_step.items()) if "diagonality" in v]
    aligned = next(((s, v) for s, v in evals if v["diagonality"] >= diagonality and v["focus"] >= focus), None)
    last_step = max(by_step)
    step_secs = [v["step_seconds"] for v in by_step.values() if "step_seconds" in v]
    out = {
        "run_dir": str(run_dir),
        "steps_trained": last_step,
        "minutes_trained": round((max(v["ts"] for v in by_step.values()) - start_ts) / 60000, 1),
        "mean_step_seconds": round(sum(step_secs) / len(step_secs), 3),
        "aligned_at_step": aligned[0] if aligned else None,
        "aligned_after_minutes": round((aligned[1]["ts"] - start_ts) / 60000, 1) if aligned else None,
        "evals": [{"step": s, "diagonality": round(v["diagonality"], 3), "focus": round(v["focus"], 3)}
                  for s, v in evals],
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--config", default="tiny-cpu")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "demo", help="espeak demo dataset folder")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--supervised", action="store_true", help="train under the supervisor (smart-tuner run)")
    ap.add_argument("--threads", type=int, default=None, help="train.torch_threads")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not args.report_only:
        if not (args.data / "train.txt").exists():
            subprocess.run([sys.executable, "-m", "trainer.cli", "data", "espeak", "--out", str(args.data),
                            "--n", "240", "--max-chars", "60", "--min-chars", "15"], check=True, cwd=ROOT)
        command = ["agent.cli", "run"] if args.supervised else ["trainer.cli", "train"]
        threads = ["--set", f"train.torch_threads={args.threads}"] if args.threads else []
        threads += [x for kv in args.set for x in ("--set", kv)]
        subprocess.run([sys.executable, "-m", *command, "--config", args.config, *threads,
                        "--set", f"run_dir={args.run_dir}", "--set", f"train.max_minutes={args.minutes}",
                        "--set", "train.max_steps=1000000",
                        "--set", f"data.training_files={args.data / 'train.txt'}",
                        "--set", f"data.validation_files={args.data / 'val.txt'}"], check=True, cwd=ROOT)
    result = report(args.run_dir)
    evals = result.pop("evals")
    print(json.dumps(result, indent=1))
    print("step  diagonality  focus")
    for e in evals:
        print(f"{e['step']:>5}  {e['diagonality']:.3f}        {e['focus']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({**result, "evals": evals}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
