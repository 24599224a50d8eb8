"""CPU training-step speed and memory, against NVIDIA/tacotron2's figures from the issue.

    python bench/cpu_step.py --json runs/bench-cpu.json

For every (setting, data mode) pair a fresh Python process builds a ``Trainer``,
runs ``--warmup`` untimed steps and ``--steps`` timed steps, and reports:

* s/step: wall time per step *including* waiting for the batch (what a run sees);
  the train-step time alone (NVIDIA's "s/it" excludes the loader) is in the JSON;
* peak RSS: ``ru_maxrss`` of that process (model, optimizer, data, activations);
  GB = 10**9 bytes. A DataLoader worker's own peak is in the JSON (``worker_peak_rss_gb``);
* padding: padded mel frames per batch / real frames.

Settings (``--settings``):

* ``default``  configs/default.yaml (NVIDIA's hparams), batch 8, r = 1
* ``small``    default.yaml with embedding 128, encoder 128, attention and decoder RNN
               256, prenet 128, postnet 128 channels, r = 1, batch 16
* ``tiny-cpu`` configs/tiny-cpu.yaml as it is (r = 3, batch 16, 6 s clip limit)

Data modes (``--modes``):

* ``ours``         length-bucketed batches from the mel cache (the trainer's default)
* ``nvidia-like``  the same cache but ``data.bucket_batches=1``: a bucket is one batch,
                   so batches are random, as NVIDIA's DataLoader(shuffle=True) draws them
* ``per-step-lstm`` ours, but the decoder's LSTM weight gradients summed step by step
                   as ``nn.LSTMCell`` (and NVIDIA) do, instead of one GEMM per sequence
                   (trainer/model/recurrent.py): isolates that speed-up

Both modes use the same seed and dataset. The data is an espeak-ng dataset whose
clips average ~4.4 s (as in the NVIDIA measurement), built once into ``--data-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run from a checkout without installing the package: the repository root goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tables import print_rows  # noqa: E402  (bench/tables.py; scripts run from bench/)

# The NVIDIA/tacotron2 reference: measured with their own code, on 2 cores, on espeak
# clips of ~4.4 s. These are the numbers, not measured by this script.
NVIDIA_REFERENCE = {
    "default": {"s_per_step": 14.3, "peak_rss_gb": 2.78},
    "small": {"s_per_step": 2.5, "peak_rss_gb": 3.2},
}
REFERENCE_NOTE = ("reference figures measured with NVIDIA/tacotron2 on this machine class, from the issue "
                  "(2 cores, espeak clips of ~4.4 s); not measured by this run")

SMALL = {
    "model.symbols_embedding_dim": 128,
    "model.encoder_embedding_dim": 128,
    "model.attention_rnn_dim": 256,
    "model.decoder_rnn_dim": 256,
    "model.prenet_dim": 128,
    "model.postnet_embedding_dim": 128,
    "model.n_frames_per_step": 1,
    "data.batch_size": 16,
}
# name -> (config, overrides, default warm-up steps, default timed steps)
SETTINGS = {
    "default": ("default", {"data.batch_size": 8, "model.n_frames_per_step": 1}, 2, 5),
    "small": ("default", SMALL, 3, 10),
    "tiny-cpu": ("tiny-cpu", {}, 3, 20),
}
MODES = {
    "ours": {},
    "nvidia-like": {"data.bucket_batches": 1},
    "per-step-lstm": {},
}
TARGET_MEAN_SECONDS = (4.2, 4.6)
RESULT_PREFIX = "BENCH_RESULT "
BYTES_PER_GB = 1e9


# -- data ---------------------------------------------------------------------------------
def clip_seconds(filelist: Path) -> list[float]:
    import soundfile as sf

    out = []
    for line in filelist.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(sf.info(str(filelist.parent / line.split("|", 1)[0])).duration)
    return out


def prepare_data(args: argparse.Namespace) -> dict:
    """Build (or reuse) the espeak dataset and fill its mel cache; return its description."""
    from trainer.config import load_config
    from trainer.data.dataset import TextMelDataset
    from trainer.data.espeak import build_espeak_dataset

    data_dir = Path(args.data_dir)
    t0 = time.perf_counter()
    print(f"dataset: espeak-ng, {args.n} sentences of {args.min_chars}..{args.max_chars} characters "
          f"into {data_dir} (clips already there are reused)", flush=True)
    summary = build_espeak_dataset(data_dir, n=args.n, min_chars=args.min_chars, max_chars=args.max_chars,
                                   seed=args.seed, jobs=args.jobs)
    print("  " + summary.replace("\n", "\n  "), flush=True)
    train, val = data_dir / "train.txt", data_dir / "val.txt"
    seconds = clip_seconds(train)
    mean = statistics.fmean(seconds)
    print(f"  measured train clips: {len(seconds)}, mean {mean:.2f} s, min {min(seconds):.2f} s, "
          f"max {max(seconds):.2f} s", flush=True)
    if not TARGET_MEAN_SECONDS[0] <= mean <= TARGET_MEAN_SECONDS[1]:
        print(f"  WARNING: mean clip length {mean:.2f} s is outside {TARGET_MEAN_SECONDS[0]}-"
              f"{TARGET_MEAN_SECONDS[1]} s, so it does not match the reference data (~4.4 s); "
              "adjust --min-chars/--max-chars", flush=True)
    # Fill the mel cache here, once, so that no timed process computes mels. All settings
    # share the audio section, hence the cache (the key is the audio settings).
    cfg = load_config("default", {"data.training_files": str(train), "data.validation_files": str(val)})
    for filelist in (train, val):
        TextMelDataset(filelist, cfg.data, cfg.audio, cfg.text)
    print(f"  mel cache ready ({time.perf_counter() - t0:.0f} s for dataset and cache)", flush=True)
    return {"dir": str(data_dir.resolve()), "n": args.n, "train_clips": len(seconds), "min_chars": args.min_chars,
            "max_chars": args.max_chars, "mean_clip_seconds": round(mean, 3),
            "min_clip_seconds": round(min(seconds), 3), "max_clip_seconds": round(max(seconds), 3)}


# -- one configuration, in a fresh process -------------------------------------------------
def peak_rss_kib(who: int = resource.RUSAGE_SELF) -> int:
    return resource.getrusage(who).ru_maxrss  # KiB on Linux


def run_child(spec: dict) -> dict:
    import gc

    import torch

    from trainer.config import load_config
    from trainer.loop import Trainer

    run_dir = tempfile.mkdtemp(prefix="bench-cpu-run-")
    try:
        overrides = dict(spec["overrides"])
        overrides["run_dir"] = run_dir
        config = load_config(spec["config"], overrides)
        t0 = time.perf_counter()
        trainer = Trainer(config)
        trainer.model.decoder.deferred_weight_grad = not spec.get("per_step_lstm", False)
        init_seconds = time.perf_counter() - t0
        rss_after_init = peak_rss_kib()
        r = config.model.n_frames_per_step
        walls, computes, padded, real, dec_steps, text_pad, text_real = [], [], [], [], [], [], []
        for i in range(spec["warmup"] + spec["steps"]):
            t0 = time.perf_counter()
            batch = trainer.next_batch()
            t1 = time.perf_counter()
            record = trainer.train_step(batch)
            t2 = time.perf_counter()
            if not record.finite:
                print(f"  warning: step {record.step} was not finite (loss {record.loss})", file=sys.stderr)
            if i >= spec["warmup"]:
                walls.append(t2 - t0)
                computes.append(t2 - t1)
                b, _, t = batch.mel.shape
                padded.append(b * t)
                real.append(int(batch.mel_lengths.sum()))
                dec_steps.append(t // r)
                text_pad.append(b * batch.text.size(1))
                text_real.append(int(batch.text_lengths.sum()))
            print(f"  {'warm-up' if i < spec['warmup'] else 'timed'} step {i + 1}: {t2 - t0:.2f} s "
                  f"(batch {batch.mel.size(0)} x {batch.mel.size(2)} frames)", file=sys.stderr, flush=True)
        peak_self = peak_rss_kib()
        # Shut the DataLoader workers down, so that their peak shows in RUSAGE_CHILDREN.
        if trainer._stream is not None:
            trainer._stream.close()
        gc.collect()
        peak_workers = peak_rss_kib(resource.RUSAGE_CHILDREN)
        return {
            "train_clips": len(trainer.train_set),
            "batch_size": config.data.batch_size,
            "bucket_batches": config.data.bucket_batches,
            "num_workers": config.data.num_workers,
            "r": r,
            "torch_threads": torch.get_num_threads(),
            "parameters_m": round(sum(p.numel() for p in trainer.model.parameters()) / 1e6, 3),
            "init_seconds": round(init_seconds, 2),
            "steps": len(walls),
            "s_per_step": statistics.fmean(walls),
            "s_per_step_compute": statistics.fmean(computes),
            "s_per_step_stdev": statistics.stdev(walls) if len(walls) > 1 else 0.0,
            "step_seconds": [round(w, 3) for w in walls],
            "peak_rss_kib": peak_self,
            "peak_rss_gb": peak_self * 1024 / BYTES_PER_GB,
            "rss_after_init_gb": rss_after_init * 1024 / BYTES_PER_GB,
            "worker_peak_rss_gb": peak_workers * 1024 / BYTES_PER_GB if peak_workers else None,
            "mean_padded_frames": statistics.fmean(padded),
            "mean_real_frames": statistics.fmean(real),
            "padding_ratio": sum(padded) / sum(real),
            "mean_decoder_steps": statistics.fmean(dec_steps),
            "text_padding_ratio": sum(text_pad) / sum(text_real),
            "s_per_1k_real_frames": sum(walls) / sum(real) * 1000,
        }
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def launch(setting: str, mode: str, args: argparse.Namespace, data: dict) -> dict:
    config, overrides, warmup, steps = SETTINGS[setting]
    data_dir = Path(data["dir"])
    spec = {
        "config": config,
        "overrides": {
            **overrides,
            **MODES[mode],
            "data.training_files": str(data_dir / "train.txt"),
            "data.validation_files": str(data_dir / "val.txt"),
            "train.device": "cpu",
            "train.torch_threads": args.threads,
            "train.seed": args.seed,
            "train.max_steps": 10**9,
            "tracking.enabled": False,
            "eval.every_steps": 10**9,
            "checkpoint.every_steps": 10**9,
        },
        "per_step_lstm": mode == "per-step-lstm",
        "warmup": args.warmup if args.warmup is not None else warmup,
        "steps": args.steps if args.steps is not None else steps,
    }
    print(f"\n[{setting} / {mode}] {spec['warmup']} warm-up + {spec['steps']} timed steps in a fresh process",
          flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--_child", json.dumps(spec)], stdout=subprocess.PIPE,
                          text=True, timeout=args.child_timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stdout.write(proc.stdout)
        raise SystemExit(f"[{setting} / {mode}] failed (exit {proc.returncode}); see the output above")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result.update(setting=setting, data=mode, process_seconds=round(time.perf_counter() - t0, 1),
                  config=config, overrides=spec["overrides"], warmup=spec["warmup"])
    print(f"  -> {result['s_per_step']:.2f} s/step, peak RSS {result['peak_rss_gb']:.2f} GB, "
          f"padding x{result['padding_ratio']:.2f}", flush=True)
    return result


# -- report ---------------------------------------------------------------------------------
def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def add_ratios(results: list[dict]) -> list[dict]:
    """Ratios against the NVIDIA reference, and bucketed/random from this run."""
    by_key = {(r["setting"], r["data"]): r for r in results}
    comparisons = []
    for r in results:
        ref = NVIDIA_REFERENCE.get(r["setting"])
        r["nvidia_s_per_step"] = ref["s_per_step"] if ref else None
        r["nvidia_peak_rss_gb"] = ref["peak_rss_gb"] if ref else None
        r["time_ratio_vs_nvidia"] = r["s_per_step"] / ref["s_per_step"] if ref else None
        r["memory_ratio_vs_nvidia"] = r["peak_rss_gb"] / ref["peak_rss_gb"] if ref else None
    for setting in dict.fromkeys(r["setting"] for r in results):
        ours, rand = by_key.get((setting, "ours")), by_key.get((setting, "nvidia-like"))
        if ours and rand:
            comparisons.append({
                "setting": setting,
                "time_ratio": ours["s_per_step"] / rand["s_per_step"],
                "time_per_real_frame_ratio": ours["s_per_1k_real_frames"] / rand["s_per_1k_real_frames"],
                "memory_ratio": ours["peak_rss_gb"] / rand["peak_rss_gb"],
                "padded_frames_ratio": ours["mean_padded_frames"] / rand["mean_padded_frames"],
            })
        per_step = by_key.get((setting, "per-step-lstm"))
        if ours and per_step:
            comparisons.append({
                "setting": setting, "against": "per-step-lstm",
                "time_ratio": ours["s_per_step"] / per_step["s_per_step"],
                "time_per_real_frame_ratio": ours["s_per_1k_real_frames"] / per_step["s_per_1k_real_frames"],
                "memory_ratio": ours["peak_rss_gb"] / per_step["peak_rss_gb"],
                "padded_frames_ratio": ours["mean_padded_frames"] / per_step["mean_padded_frames"],
            })
    return comparisons


def print_table(results: list[dict], comparisons: list[dict], data: dict) -> None:
    print("\n" + "=" * 100)
    print(f"CPU training step, {results[0]['torch_threads']} torch threads, data {data['dir']}: "
          f"{data['train_clips']} train clips, mean {data['mean_clip_seconds']:.2f} s")
    print(f"NVIDIA columns: {REFERENCE_NOTE}.")
    print("s/step = wall time per step including the wait for the batch; GB = 10^9 bytes of peak RSS "
          "(ru_maxrss of the training process).")
    header = ["setting", "data", "s/step", "peak RSS GB", "NVIDIA s/step", "NVIDIA GB", "time ours/NVIDIA",
              "mem ours/NVIDIA", "padded/real frames", "clips", "steps"]
    rows = [[r["setting"], r["data"], _fmt(r["s_per_step"], ".2f"), _fmt(r["peak_rss_gb"], ".2f"),
             _fmt(r["nvidia_s_per_step"], ".1f"), _fmt(r["nvidia_peak_rss_gb"], ".2f"),
             _fmt(r["time_ratio_vs_nvidia"], ".2f"), _fmt(r["memory_ratio_vs_nvidia"], ".2f"),
             _fmt(r["padding_ratio"], ".2f"), str(r["train_clips"]), str(r["steps"])] for r in results]
    print_rows(header, rows)
    if comparisons:
        print("\nMeasured in this run: ours / random batches (nvidia-like) or ours / per-step LSTM weight "
              "gradients (per-step-lstm); same model, data and seed")
        header = ["setting", "ours vs", "time ratio", "time per real frame", "memory ratio", "padded frames ratio"]
        rows = [[c["setting"], c.get("against", "nvidia-like"), f"{c['time_ratio']:.2f}",
                 f"{c['time_per_real_frame_ratio']:.2f}", f"{c['memory_ratio']:.2f}",
                 f"{c['padded_frames_ratio']:.2f}"] for c in comparisons]
        print_rows(header, rows)
    few = [f"{r['setting']}/{r['data']}" for r in results if r["steps"] < 5]
    if few:
        print(f"\nNOTE: fewer than 5 timed steps for {', '.join(few)}: these figures are a smoke test, not a "
              "measurement.")
    print("NOTE: bucketed batches differ in length from batch to batch, so with few timed steps their mean "
          "s/step depends on which buckets were drawn; 'time per real frame' corrects for that.")


def machine_info() -> dict:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "load_average_at_start": load,
            "processor": platform.processor() or platform.machine()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default="default,small,tiny-cpu",
                   help=f"comma-separated, from {', '.join(SETTINGS)} (default: all)")
    p.add_argument("--modes", default="ours,nvidia-like", help=f"comma-separated, from {', '.join(MODES)}")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per configuration (default: default 5, small 10, tiny-cpu 20)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed warm-up steps first (default: default 2, small 3, tiny-cpu 3)")
    p.add_argument("--data-dir", type=Path, default=Path("runs/bench-data"),
                   help="espeak dataset folder, built if missing, reused otherwise (default runs/bench-data)")
    p.add_argument("--n", type=int, default=400, help="utterances in the dataset (default 400)")
    p.add_argument("--min-chars", type=int, default=55, help="shortest sentence (default 55)")
    p.add_argument("--max-chars", type=int, default=100,
                   help="longest sentence (default 100; 55..100 gives a mean clip of ~4.4 s)")
    p.add_argument("--seed", type=int, default=1234, help="dataset choice and training seed (default 1234)")
    p.add_argument("--threads", type=int, default=2, help="train.torch_threads (default 2)")
    p.add_argument("--jobs", type=int, default=None, help="parallel espeak-ng processes while building data")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    p.add_argument("--child-timeout", type=int, default=3600, help=argparse.SUPPRESS)
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._child is not None:
        result = run_child(json.loads(args._child))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [s for s in settings if s not in SETTINGS] + [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown setting or mode: {', '.join(bad)} (settings: {', '.join(SETTINGS)}; "
                f"modes: {', '.join(MODES)})")
    if (args.steps is not None and args.steps < 1) or (args.warmup is not None and args.warmup < 0):
        p.error("--steps must be at least 1 and --warmup at least 0")

    info = machine_info()
    if info["load_average_at_start"] and info["load_average_at_start"][0] > 0.5:
        print(f"WARNING: load average {info['load_average_at_start'][0]:.2f} at start: something else is using "
              "the CPU, so the timings will be slow", flush=True)
    started = time.time()
    data = prepare_data(args)
    results = [launch(s, m, args, data) for s in settings for m in modes]
    comparisons = add_ratios(results)
    print_table(results, comparisons, data)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "cpu_step", "reference_note": REFERENCE_NOTE, "nvidia_reference": NVIDIA_REFERENCE,
            "machine": info, "data": data, "results": results, "bucketed_vs_random": comparisons,
            "total_seconds": round(time.time() - started, 1),
        }, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
