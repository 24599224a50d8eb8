"""Time to speech: supervised against unsupervised training, side by side, same data and seed.

    python bench/time_to_speech.py --minutes 25 --out runs/speech-bench [--config tiny-cpu] [--set K=V ...]
    python bench/time_to_speech.py --report-only --out runs/speech-bench

Builds the demo's data (espeak-ng LJSpeech sentences and recordings of the probe
sentences, as ``smart-tuner demo`` does) once in ``OUT/data``, then trains two runs of
the same config at the same time, each pinned to its own core with one torch thread:

* ``OUT/unsupervised``: ``smart-tuner train`` (the config as it is, nobody intervening);
* ``OUT/supervised``:   ``smart-tuner run`` (the supervisor's daemon and policies).

Both evaluate free-running every ``eval.every_steps`` and write each evaluation's
verdicts to ``RUN/speech/step_N.json``. The report reads those files:

* time to speech: the first evaluation whose speech score reaches ``--target`` (0.75),
  in steps and in minutes from the run's start;
* the speech score, MCD-DTW, read and in-range-stop counts at every evaluation step both
  runs reached (equal step budgets);
* what the free-running pass cost: its seconds against the wall time between evaluations.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARMS = {"unsupervised": ("trainer.cli", "train"), "supervised": ("agent.cli", "run")}


def build_data(out: Path, n: int, probes: list[str]) -> Path:
    sys.path.insert(0, str(ROOT))
    from trainer.data.espeak import build_espeak_dataset, speak_references

    data = out / "data"
    if not (data / "train.txt").exists():
        print(build_espeak_dataset(out_dir=data, n=n, voice="en-us", sentences_file=None, max_chars=60,
                                   min_chars=15, val_fraction=0.05, seed=1234, rate=None, jobs=None), flush=True)
    return speak_references(probes, data, name="probes")


def launch(arm: str, core: int, out: Path, args: argparse.Namespace, references: Path) -> subprocess.Popen:
    module, command = ARMS[arm]
    data = out / "data"
    sets = [f"run_dir={out / arm}", f"train.max_minutes={args.minutes}", "train.max_steps=1000000",
            f"data.training_files={data / 'train.txt'}", f"data.validation_files={data / 'val.txt'}",
            f"eval.speech.probe_references={references}", "train.torch_threads=1", *args.set]
    if arm == "unsupervised":
        sets.append("tracking.enabled=false")
    cmd = ["taskset", "-c", str(core), sys.executable, "-m", module, command, "--config", args.config]
    cmd += [x for kv in sets for x in ("--set", kv)]
    log = open(out / f"{arm}.log", "w")
    (out / f"{arm}.started").write_text(repr(time.time()))
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def evaluations(run_dir: Path) -> list[dict]:
    rows = []
    for path in sorted((run_dir / "speech").glob("step_*.json")):
        d = json.loads(path.read_text())
        rows.append({"step": d["step"], "wall_time": d.get("wall_time", path.stat().st_mtime), **d["summary"]})
    return sorted(rows, key=lambda r: r["step"])


def report(out: Path, target: float) -> dict:
    result = {}
    for arm in ARMS:
        run = out / arm
        if not (run / "speech").is_dir():
            continue
        started = float((out / f"{arm}.started").read_text()) if (out / f"{arm}.started").exists() else None
        evals = evaluations(run)
        t0 = started if started is not None else (evals[0]["wall_time"] if evals else 0.0)
        first = next((e for e in evals if e["score"] is not None and e["score"] >= target), None)
        gaps = [b["wall_time"] - a["wall_time"] for a, b in zip(evals, evals[1:])]
        cost = [e["seconds"] for e in evals[1:]]
        result[arm] = {
            "steps": evals[-1]["step"] if evals else 0,
            "minutes": round((evals[-1]["wall_time"] - t0) / 60, 1) if evals else 0,
            "speech_at_step": first["step"] if first else None,
            "speech_after_minutes": round((first["wall_time"] - t0) / 60, 1) if first else None,
            "best_score": max((e["score"] or 0.0) for e in evals) if evals else None,
            # Share of the wall time between evaluations spent speaking free-running.
            "free_running_share": round(sum(cost) / sum(gaps), 3) if gaps and sum(gaps) > 0 else None,
            "evals": [{k: e[k] for k in ("step", "score", "mcd_dtw", "spoken", "utterances", "read", "synthesized",
                                          "stopped", "premature", "runaway", "seconds")}
                      | {"minutes": round((e["wall_time"] - t0) / 60, 2)} for e in evals],
        }
    return result


def print_report(result: dict, target: float) -> None:
    for arm, r in result.items():
        reached = (f"speech score >= {target:.0%} at step {r['speech_at_step']} ({r['speech_after_minutes']} min)"
                   if r["speech_at_step"] is not None else f"speech score never reached {target:.0%}")
        print(f"{arm}: {r['steps']} steps in {r['minutes']} min; {reached}; best score {r['best_score']}; "
              f"free-running pass {r['free_running_share']:.1%} of the time between evaluations"
              if r["free_running_share"] is not None else f"{arm}: {r['steps']} steps; {reached}")
    arms = list(result)
    steps = sorted(set.intersection(*[{e["step"] for e in result[a]["evals"]} for a in arms])) if arms else []
    print("step  | " + " | ".join(f"{a}: score, MCD-DTW dB, read, in range" for a in arms))
    for s in steps:
        cells = []
        for a in arms:
            e = next(x for x in result[a]["evals"] if x["step"] == s)
            score = "-" if e["score"] is None else f"{e['spoken']}/{e['utterances']}"
            cells.append(f"{score}, {e['mcd_dtw']:.2f}, {e['read']}/{e['synthesized']}, "
                         f"{e['stopped']}/{e['synthesized']}")
        print(f"{s:>5} | " + " | ".join(cells))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "speech-bench")
    ap.add_argument("--config", default="tiny-cpu")
    ap.add_argument("--minutes", type=float, default=25.0, help="wall-time budget of each run")
    ap.add_argument("--n", type=int, default=1900, help="espeak-ng utterances in the dataset")
    ap.add_argument("--target", type=float, default=0.75, help="speech score that counts as speaking")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, both arms")
    ap.add_argument("--arms", default="unsupervised,supervised")
    ap.add_argument("--cores", default="0,1", help="the core each arm is pinned to, in --arms order")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        sys.path.insert(0, str(ROOT))
        from trainer.config import load_config

        probes = load_config(args.config).eval.probe_sentences
        references = build_data(args.out, args.n, probes)
        arms = [a for a in args.arms.split(",") if a]
        cores = [int(c) for c in args.cores.split(",")]
        procs = [launch(arm, core, args.out, args, references) for arm, core in zip(arms, cores, strict=True)]
        codes = [p.wait() for p in procs]
        if any(codes):
            print(f"a run failed (exit codes {codes}); see {args.out}/*.log", file=sys.stderr)
    result = report(args.out, args.target)
    print_report(result, args.target)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
