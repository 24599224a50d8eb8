"""Data-parallel scaling on this machine: 1 process against N processes under torchrun.

    .venv/bin/python bench/ddp_scaling.py --data-dir runs/bench-data --nproc 2

The same global batch (``--batch-size``, default 16) either in one process or split over
``--nproc`` processes (gloo on CPU, NCCL with ``--device cuda``; ``--nproc 1``: plain
training against a 1-process DDP run, DDP's own overhead), each process pinned to
its own CPU core with one torch thread (on CPU), the tiny-cpu model (``--config``) on the
espeak dataset of ``bench/cpu_step.py`` (build it with that script first). Each side
trains ``--warmup`` untimed and ``--steps`` timed steps from the same seed; reported:
seconds per step of the global batch (rank 0's wall clock between steps), real mel
frames per second, and the speed-up of N processes over one (ideal: N).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULT = "DDP_RESULT "


def child(spec: dict) -> None:
    import torch

    from trainer import distributed
    from trainer.callbacks import BaseCallback
    from trainer.config import load_config
    from trainer.loop import Trainer

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if spec["device"] == "cpu" and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {spec["cores"][local % len(spec["cores"])]})
    data = Path(spec["data_dir"])
    config = load_config(spec["config"], {
        "run_dir": spec["run_dir"], "data.training_files": str(data / "train.txt"),
        "data.validation_files": str(data / "val.txt"), "data.batch_size": spec["batch_size"],
        "data.num_workers": 0, "train.device": spec["device"], "train.torch_threads": 1,
        "train.cuda_graphs": False,  # DDP runs the decoder eagerly: so does the plain side here
        "train.max_steps": spec["warmup"] + spec["steps"], "tracking.enabled": False,
        "eval.every_steps": 10**9, "checkpoint.every_steps": 10**9})
    stamps: list[tuple[float, int]] = []

    class Clock(BaseCallback):
        def on_step(self, trainer, record) -> None:
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append((time.perf_counter(), 0))

    trainer = Trainer(config)
    trainer.callbacks.append(Clock())
    frames: list[int] = []
    step = trainer.train_step

    def counting(batch):
        frames.append(int(batch.mel_lengths.sum()))
        return step(batch)

    trainer.train_step = counting
    trainer.save_checkpoint = lambda *a, **k: Path(spec["run_dir"])  # timing only: no final checkpoint
    trainer.train()
    group = trainer.group
    total = torch.tensor([float(sum(frames[spec["warmup"]:]))])
    total = distributed.mean_over_ranks(total, group) * (group.world if group else 1)
    if group is None or group.is_main:
        times = [b[0] - a[0] for a, b in zip(stamps[spec["warmup"] - 1:], stamps[spec["warmup"]:])]
        print(RESULT + json.dumps({"processes": group.world if group else 1, "s_per_step": statistics.fmean(times),
                                   "frames_per_second": float(total) / sum(times), "steps": len(times)}), flush=True)
    distributed.leave()


def run(nproc: int, args: argparse.Namespace, torchrun: bool) -> dict:
    spec = {"device": args.device, "cores": args.cores, "data_dir": str(args.data_dir), "config": args.config,
            "batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps,
            "run_dir": tempfile.mkdtemp(prefix="ddp-scaling-")}
    script = [str(Path(__file__).resolve()), "--_child", json.dumps(spec)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *script]
           if torchrun else [sys.executable, *script])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    how = "under torchrun (DDP)" if torchrun else "plain"
    print(f"[{nproc} process(es), {how}] {args.warmup} warm-up + {args.steps} timed steps, "
          f"global batch {args.batch_size}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        sys.stdout.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{nproc} process(es): failed (exit {proc.returncode})")
    result = json.loads(lines[-1][len(RESULT):])
    print(f"  -> {result['s_per_step']:.3f} s/step, {result['frames_per_second']:.0f} frames/s", flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT / "runs" / "bench-data")
    ap.add_argument("--config", default="tiny-cpu")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--cores", default="0,1", help="CPU cores, one per process (default 0,1)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        child(json.loads(args._child))
        return 0
    args.cores = [int(c) for c in args.cores.split(",")]
    if not (args.data_dir / "train.txt").is_file():
        raise SystemExit(f"{args.data_dir}: no train.txt; build the dataset with bench/cpu_step.py first")
    one = run(1, args, torchrun=False)
    many = run(args.nproc, args, torchrun=True)  # --nproc 1: DDP's overhead on one device
    speedup = many["frames_per_second"] / one["frames_per_second"]
    print(f"\n{args.nproc} processes: {speedup:.2f}x the frames/s of one (ideal {args.nproc}.00x), "
          f"global batch {args.batch_size} ({args.batch_size // args.nproc} per process), {args.config}, "
          f"{args.device}")
    if args.json:
        args.json.write_text(json.dumps({"one": one, "many": many, "speedup": speedup, "nproc": args.nproc,
                                         "batch_size": args.batch_size, "config": args.config,
                                         "device": args.device}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
