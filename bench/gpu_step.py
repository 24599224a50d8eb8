"""GPU training-step speed and memory: NVIDIA's model, ours eager and ours from CUDA graphs.

    python bench/gpu_step.py --nvidia-src ~/src/tacotron2 --batch-sizes 64,128 --json $OUT/gpu.json

Modes: ``nvidia`` (NVIDIA/tacotron2's own ``model.py`` from the checkout given with
``--nvidia-src``, their loss, fp32: the reference), ``fp32``/``bf16``/``fp16`` (ours,
eager) and ``fp32-graphs``/``bf16-graphs``/``fp16-graphs`` (ours with
``train.cuda_graphs``: the teacher-forced decoder replayed from CUDA graphs). Every
mode of one batch size trains on the same batches.

Default hparams (configs/default.yaml). Each mode runs in a
fresh Python process: it builds a ``Trainer`` and feeds ``Trainer.train_step`` the
same synthetic-but-realistic batches (random symbol ids of 80-150 tokens, random
log-mel targets of 400-800 frames, length-bucketed so that a batch holds similar
lengths, pinned as the DataLoader pins them), ``--warmup`` untimed steps, then
``--steps`` timed steps with ``torch.cuda.synchronize()`` around each. Reports the
mean step time and ``torch.cuda.max_memory_allocated()`` (weights, gradients, Adam
state and activations) per mode, side by side, with ratios against our fp32 and
against NVIDIA's. Graph modes first run one untimed step per bucket shape the timed
batches use (the captures), then the timed steps; capture time is reported apart.
NVIDIA's side gets each batch with its rows sorted by text length (their encoder
packs sequences sorted) and their gate targets (1 from the last frame on).

Needs only torch and this package: no dataset (the ``Trainer`` is built on a
two-clip placeholder filelist that no step reads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
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

RESULT_PREFIX = "BENCH_RESULT "
MODES = ("nvidia", "fp32", "bf16", "fp16", "fp32-graphs", "bf16-graphs", "fp16-graphs")
AMP_OF = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}
GIB = 1024**3
# Frames per symbol of espeak/LJSpeech-like speech at 22050 Hz, hop 256 (~5.3).
FRAMES_PER_SYMBOL = 5.3


# -- synthetic data ---------------------------------------------------------------------------
def synthetic_batches(n_batches: int, batch_size: int, n_symbols: int, n_mels: int, r: int, seed: int,
                      text_range: tuple[int, int], frame_range: tuple[int, int], bucket_batches: int = 8):
    """Length-bucketed batches of random ids and random log-mels, as ``Collate`` makes them."""
    import numpy as np
    import torch

    from trainer.data.dataset import Collate

    rng = np.random.default_rng(seed)
    pool = n_batches * batch_size
    lo_t, hi_t = text_range
    lo_f, hi_f = frame_range
    text_lengths = rng.integers(lo_t, hi_t + 1, size=pool)
    # Frames follow the text (speech takes ~5 frames a symbol) with +-15 % jitter, kept in range.
    span_t = max(hi_t - lo_t, 1)
    frames = lo_f + (text_lengths - lo_t) / span_t * (hi_f - lo_f)
    frames = np.clip(frames * rng.uniform(0.85, 1.15, size=pool), lo_f, hi_f).astype(int)
    order = rng.permutation(pool).tolist()
    window = batch_size * bucket_batches
    groups = []
    for start in range(0, pool, window):
        chunk = sorted(order[start:start + window], key=lambda i: frames[i])
        groups += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    groups = [g for g in groups if len(g) == batch_size]
    random.Random(seed).shuffle(groups)
    collate = Collate(r)
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for group in groups[:n_batches]:
        items = []
        for i in group:
            ids = torch.randint(1, n_symbols, (int(text_lengths[i]),), generator=gen, dtype=torch.long)
            # Log-mel-like values: mostly between log(1e-5) = -11.5 and ~2, speech around -5.
            mel = (torch.randn(n_mels, int(frames[i]), generator=gen) * 2.0 - 5.0).clamp(-11.5, 2.0)
            items.append((ids, mel))
        batches.append(collate(items))
    return batches


def placeholder_dataset(folder: Path, audio) -> tuple[Path, Path]:
    """Two tiny clips and their filelists, only so that ``Trainer`` can be built."""
    import wave

    import numpy as np

    from trainer.data.dataset import MelCache
    from trainer.data.filelist import read_filelist

    wavs = folder / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):  # stdlib wave: no soundfile needed
        with wave.open(str(wavs / f"{name}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(audio.sampling_rate)
            w.writeframes(rng.integers(-3000, 3000, audio.sampling_rate // 2, dtype=np.int16).tobytes())
    train, val = folder / "train.txt", folder / "val.txt"
    train.write_text("wavs/a.wav|placeholder one.\n", encoding="utf-8")
    val.write_text("wavs/b.wav|placeholder two.\n", encoding="utf-8")
    # Pre-fill the mel cache so no mel (and no librosa import) is computed; if the cache
    # layout ever changes, the trainer simply computes these two mels itself.
    cache = MelCache(folder / ".mel_cache", audio)
    n_frames = audio.sampling_rate // 2 // audio.hop_length + 1
    for filelist in (train, val):
        for entry in read_filelist(filelist):
            np.save(cache.path_for(entry), np.full((audio.n_mel_channels, n_frames), -5.0, dtype=np.float32))
    return train, val


# -- one mode, in a fresh process -------------------------------------------------------------
def precision(mode: str) -> str:
    return mode.split("-")[0]


def run_child(spec: dict) -> dict:
    if spec["mode"] == "nvidia":
        return run_nvidia(spec)
    return run_ours(spec)


def bench_batches(spec: dict, config) -> list:
    from trainer.text import symbols_for

    batches = synthetic_batches(spec["warmup"] + spec["steps"], spec["batch_size"], len(symbols_for(config.text)),
                                config.audio.n_mel_channels, config.model.n_frames_per_step, spec["seed"],
                                tuple(spec["text_range"]), tuple(spec["frame_range"]))
    # Rows sorted by text length, longest first, for both sides (NVIDIA's encoder needs it).
    return [b.__class__(*(t[order] for t in (b.text, b.text_lengths, b.mel, b.mel_lengths, b.gate)))
            for b in batches for order in [b.text_lengths.argsort(descending=True)]]


def timed_loop(spec: dict, batches: list, step, label: str) -> tuple[list[float], list[int], list[int]]:
    """``step(batch) -> loss`` over the batches, synchronised; the timed ones' seconds and frames."""
    import torch

    def sync() -> None:
        if torch.cuda.is_available() and spec.get("device", "cuda") == "cuda":
            torch.cuda.synchronize()

    times, frames, padded = [], [], []
    for i, batch in enumerate(batches):
        sync()
        t0 = time.perf_counter()
        loss = step(batch)
        sync()
        dt = time.perf_counter() - t0
        if i >= spec["warmup"]:
            times.append(dt)
            frames.append(int(batch.mel_lengths.sum()))
            padded.append(batch.mel.size(0) * batch.mel.size(2))
        print(f"  [{label}] {'warm-up' if i < spec['warmup'] else 'timed'} step {i + 1}: {dt:.3f} s "
              f"(batch {batch.mel.size(0)} x {batch.mel.size(2)} frames, loss {loss:.3f})", file=sys.stderr, flush=True)
    return times, frames, padded


def timing_summary(spec: dict, times: list[float], frames: list[int], padded: list[int]) -> dict:
    return {
        "mode": spec["mode"], "batch_size": spec["batch_size"], "steps": len(times),
        "s_per_step": statistics.fmean(times), "s_per_step_median": statistics.median(times),
        "s_per_step_stdev": statistics.stdev(times) if len(times) > 1 else 0.0,
        "step_seconds": [round(t, 4) for t in times], "real_frames_per_second": sum(frames) / sum(times),
        "mean_padded_frames": statistics.fmean(padded), "padding_ratio": sum(padded) / sum(frames),
    }


def run_nvidia(spec: dict) -> dict:
    """NVIDIA/tacotron2's model.py on the same batches (their code, from --nvidia-src)."""
    import torch
    from nvidia_side_by_side import import_nvidia_model, nvidia_hparams
    from torch.nn import functional as F

    from trainer.config import load_config
    from trainer.text import symbols_for

    config = load_config(spec["config"], spec["overrides"])
    batches = bench_batches(spec, config)
    torch.manual_seed(spec["seed"])
    hparams = nvidia_hparams(config)
    hparams.n_symbols = len(symbols_for(config.text))
    model = import_nvidia_model(Path(spec["nvidia_src"])).Tacotron2(hparams).cuda().train()
    optim = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-6, weight_decay=1e-6)
    batches = [b.pin_memory() for b in batches]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()

    def step(b) -> float:
        text, text_lengths, mel, mel_lengths = (t.cuda(non_blocking=True) for t in
                                                (b.text, b.text_lengths, b.mel, b.mel_lengths))
        # Their collate: gate target 1 from the last real frame on.
        gate = (torch.arange(mel.size(2), device=mel.device).unsqueeze(0) >= (mel_lengths - 1).unsqueeze(1)).float()
        mel_out, mel_post, gate_out, _ = model((text, text_lengths, mel, int(b.text_lengths.max()), mel_lengths))
        loss = F.mse_loss(mel_out, mel) + F.mse_loss(mel_post, mel) + F.binary_cross_entropy_with_logits(
            gate_out.reshape(-1, 1), gate.reshape(-1, 1))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        return float(loss)

    result = timing_summary(spec, *timed_loop(spec, batches, step, "nvidia"))
    result.update({
        "device": torch.cuda.get_device_name(0), "amp_dtype": "float32", "r": 1,
        "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
        "max_memory_reserved_gib": torch.cuda.max_memory_reserved() / GIB,
        "skipped_steps_timed": 0, "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
    })
    return result


def run_ours(spec: dict) -> dict:
    import resource

    import torch

    from trainer.config import load_config
    from trainer.loop import Trainer

    device = spec["device"]
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        base = load_config(spec["config"], spec["overrides"])
        train, val = placeholder_dataset(work / "data", base.audio)
        overrides = {
            **spec["overrides"],
            "run_dir": str(work / "run"),
            "data.training_files": str(train),
            "data.validation_files": str(val),
            "data.cache_dir": str(work / "data" / ".mel_cache"),
            "data.batch_size": spec["batch_size"],
            "data.num_workers": 0,
            "train.device": device,
            "train.amp": AMP_OF[precision(spec["mode"])],
            "train.cuda_graphs": spec["mode"].endswith("-graphs"),
            "train.max_steps": 10**9,
            "tracking.enabled": False,
            "eval.every_steps": 10**9,
            "checkpoint.every_steps": 10**9,
        }
        config = load_config(spec["config"], overrides)
        trainer = Trainer(config)
        dev = trainer.device
        batches = bench_batches(spec, config)
        capture_seconds, shapes = 0.0, 0
        if dev.type == "cuda":
            batches = [b.pin_memory() for b in batches]
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()  # the captures' peak counts too
            graphs = trainer.graphed_decoder
            if graphs is not None:
                # One untimed step per bucket shape: the captures happen here, not in the timed steps.
                seen = set()
                for b in batches:
                    shape = graphs.padded_shape(b.text.new_zeros(b.text.size(0), b.text.size(1), 1), b.mel)
                    if shape not in seen:
                        seen.add(shape)
                        trainer.train_step(b)
                capture_seconds, shapes = graphs.capture_seconds, len(graphs.shapes)
                print(f"  [{spec['mode']}] {shapes} shapes captured in {capture_seconds:.1f} s",
                      file=sys.stderr, flush=True)

        seen = {"steps": 0, "skipped_before": 0, "record": None}

        def step(batch) -> float:
            if seen["steps"] == spec["warmup"]:
                seen["skipped_before"] = trainer.skipped_steps
            seen["steps"] += 1
            seen["record"] = trainer.train_step(batch)
            return seen["record"].loss

        result = timing_summary(spec, *timed_loop(spec, batches, step, spec["mode"]))
        result.update({
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "amp_dtype": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "float32",
            "grad_scaler": trainer.scaler is not None,
            "r": config.model.n_frames_per_step,
            "skipped_steps_timed": trainer.skipped_steps - seen["skipped_before"],
            "skipped_steps_total": trainer.skipped_steps,
            "graph_shapes": shapes,
            "capture_seconds": round(capture_seconds, 1),
            "final_loss": seen["record"].loss,
            "parameters_m": round(sum(p.numel() for p in trainer.model.parameters()) / 1e6, 3),
        })
        if dev.type == "cuda":
            result["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(dev) / GIB
            result["max_memory_reserved_gib"] = torch.cuda.max_memory_reserved(dev) / GIB
        else:
            result["max_memory_allocated_gib"] = None
            result["max_memory_reserved_gib"] = None
            result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def launch(mode: str, batch_size: int, args: argparse.Namespace) -> dict:
    spec = {
        "mode": mode, "device": args.device, "config": args.config, "overrides": args.overrides,
        "batch_size": batch_size, "warmup": args.warmup, "steps": args.steps, "seed": args.seed,
        "text_range": args.text_range, "frame_range": args.frame_range,
        "nvidia_src": str(args.nvidia_src) if args.nvidia_src else None,
    }
    print(f"\n[{mode}] {args.warmup} warm-up + {args.steps} timed steps at batch {batch_size} "
          "in a fresh process", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--_child", json.dumps(spec)], stdout=subprocess.PIPE,
                              text=True, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        print(f"  [{mode}] timed out after {args.child_timeout} s; left out", flush=True)
        return {"mode": mode, "batch_size": batch_size, "error": f"timed out after {args.child_timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stdout.write(proc.stdout)
        print(f"  [{mode}] failed (exit {proc.returncode}); see above. Left out.", flush=True)
        return {"mode": mode, "batch_size": batch_size, "error": f"exit {proc.returncode}"}
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["process_seconds"] = round(time.perf_counter() - t0, 1)
    mem = result["max_memory_allocated_gib"]
    print(f"  -> {result['s_per_step']:.3f} s/step, {result['real_frames_per_second']:.0f} frames/s"
          + (f", max allocated {mem:.2f} GiB" if mem is not None else ""), flush=True)
    return result


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    ok = [r for r in results if "error" not in r]
    print("\n" + "=" * 96)
    where = ok[0]["device"] if ok else args.device
    print(f"GPU training step on {where}: config {args.config}, synthetic bucketed batches of "
          f"{args.text_range[0]}-{args.text_range[1]} symbols and {args.frame_range[0]}-{args.frame_range[1]} frames, "
          f"{args.warmup} warm-up + {args.steps} timed steps per mode")
    if args.device == "cpu":
        print("DEBUG RUN ON CPU: the trainer turns AMP off on CPU, so every mode ran in float32; memory is "
              "peak RSS, not CUDA memory.")
    header = ["batch", "mode", "s/step", "median s/step", "frames/s", "max alloc GiB", "vs NVIDIA fp32 (speed)",
              "vs our fp32 (speed)", "memory vs our fp32", "shapes (capture s)", "skipped"]
    rows = []

    def memory(r: dict) -> float | None:
        return r["max_memory_allocated_gib"] if r.get("max_memory_allocated_gib") is not None else r.get("peak_rss_gib")

    for r in results:
        if "error" in r:
            rows.append([str(r["batch_size"]), r["mode"], "failed: " + r["error"]] + [""] * (len(header) - 3))
            continue
        same = [o for o in ok if o["batch_size"] == r["batch_size"]]
        nvidia = next((o for o in same if o["mode"] == "nvidia"), None)
        # Ours against our eager fp32 of the same batch size; graph modes against fp32-graphs too.
        base = next((o for o in same if o["mode"] == "fp32"), None)
        r["speed_vs_nvidia_fp32"] = r["real_frames_per_second"] / nvidia["real_frames_per_second"] if nvidia else None
        r["speed_vs_fp32"] = r["real_frames_per_second"] / base["real_frames_per_second"] if base else None
        r["memory_vs_fp32"] = memory(r) / memory(base) if base and memory(base) and memory(r) else None
        mem = memory(r)
        rows.append([
            str(r["batch_size"]), r["mode"], f"{r['s_per_step']:.3f}", f"{r['s_per_step_median']:.3f}",
            f"{r['real_frames_per_second']:.0f}", f"{mem:.2f}" if mem is not None else "-",
            f"{r['speed_vs_nvidia_fp32']:.2f}x" if r["speed_vs_nvidia_fp32"] else "-",
            f"{r['speed_vs_fp32']:.2f}x" if r["speed_vs_fp32"] else "-",
            f"{r['memory_vs_fp32']:.2f}" if r["memory_vs_fp32"] else "-",
            f"{r.get('graph_shapes', 0)} ({r.get('capture_seconds', 0):.0f})" if r.get("graph_shapes") else "-",
            str(r.get("skipped_steps_timed", 0)),
        ])
    print_rows(header, rows)
    print("frames/s: real (unpadded) mel frames per second of training, mean over the timed steps, synchronised; "
          "speed ratios are frames/s ratios at the same batch size; max alloc: torch.cuda.max_memory_allocated() "
          "over captures, warm-up and timed steps (weights, gradients, Adam state, activations, graph pools); "
          "skipped: non-finite steps (fp16 loss-scale probing) in the timed window.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="nvidia,fp32,fp32-graphs,bf16-graphs",
                   help=f"comma-separated, from {', '.join(MODES)} (default: nvidia,fp32,fp32-graphs,bf16-graphs; "
                        "nvidia is left out without --nvidia-src)")
    p.add_argument("--batch-sizes", default="64", help="comma-separated (default 64)")
    p.add_argument("--nvidia-src", type=Path, default=None,
                   help="a checkout of https://github.com/NVIDIA/tacotron2 for the nvidia mode")
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps per mode (default 5)")
    p.add_argument("--config", default="default", help="config file or shipped name (default: default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.cudnn_benchmark=true (repeatable)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    p.add_argument("--child-timeout", type=int, default=240, help="seconds per mode before it is abandoned")
    # Debug only: check the code path on a machine without a GPU.
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help=argparse.SUPPRESS)
    p.add_argument("--text-range", default=None, help=argparse.SUPPRESS)  # "80,150"
    p.add_argument("--frame-range", default=None, help=argparse.SUPPRESS)  # "400,800"
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._child is not None:
        print(RESULT_PREFIX + json.dumps(run_child(json.loads(args._child))), flush=True)
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_step: no CUDA device is available (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Run this on a machine with an "
              "NVIDIA GPU and a CUDA build of torch; for CPU figures use bench/cpu_step.py.", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    batch_sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    if args.steps < 1 or args.warmup < 0 or not batch_sizes or min(batch_sizes) < 1:
        p.error("--steps and --batch-sizes must be at least 1, --warmup at least 0")
    if "nvidia" in modes and args.nvidia_src is None:
        print("note: no --nvidia-src given; leaving the nvidia mode out", flush=True)
        modes.remove("nvidia")
    elif "nvidia" in modes and not (args.nvidia_src / "model.py").is_file():
        p.error(f"--nvidia-src {args.nvidia_src}: no model.py there; point it at a checkout of NVIDIA/tacotron2")

    def parse_range(text: str | None, default: tuple[int, int]) -> list[int]:
        if text is None:
            return list(default)
        lo, hi = (int(x) for x in text.split(","))
        return [lo, hi]

    tiny = args.device == "cpu"
    args.text_range = parse_range(args.text_range, (8, 16) if tiny else (80, 150))
    args.frame_range = parse_range(args.frame_range, (16, 32) if tiny else (400, 800))
    import yaml

    args.overrides = {}
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep:
            p.error(f"--set {pair!r}: expected section.key=value")
        args.overrides[key.strip()] = yaml.safe_load(value)

    if args.device == "cuda" and not torch.cuda.is_bf16_supported():
        print("note: this GPU does not support bf16; leaving bf16 out", flush=True)
        modes = [m for m in modes if precision(m) != "bf16"]

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
            "platform": platform.platform(), "cpu_count": os.cpu_count()}
    started = time.time()
    results = [launch(m, b, args) for b in batch_sizes for m in modes]
    print_table(results, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "gpu_step", "machine": info, "config": args.config, "overrides": args.overrides,
            "batch_sizes": batch_sizes, "warmup": args.warmup, "steps": args.steps,
            "text_range": args.text_range, "frame_range": args.frame_range, "results": results,
            "total_seconds": round(time.time() - started, 1),
        }, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
