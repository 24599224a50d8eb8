"""Training-step time and peak memory: NVIDIA/tacotron2's own model against ours, side by side.

    python bench/nvidia_side_by_side.py --nvidia-src /path/to/NVIDIA/tacotron2 [--setting default]

NVIDIA's code is not part of this project: point ``--nvidia-src`` at a checkout of
https://github.com/NVIDIA/tacotron2 (its ``model.py`` and ``layers.py`` are imported
from there). Their ``utils.py`` calls ``.cuda()`` and ``layers.py`` pulls in their STFT
modules, so this script installs small CPU stand-ins for ``utils``, ``stft`` and
``audio_processing`` before importing ``model``; the model code itself runs unchanged.

Both sides train on the *same* batches (random batches of the bench dataset, sorted by
text length as NVIDIA's collate does, gate targets padded with 1 as theirs), with the
same optimiser (Adam, lr 1e-3, weight decay 1e-6, gradient clip 1.0), each in a fresh
process so that peak RSS belongs to one model:

* ``nvidia``: their ``Tacotron2`` + their loss (MSE before and after the postnet + gate BCE);
* ``ours``: ``trainer.loop.Trainer.train_step`` on the same batches (masked loss, and
  on CPU the decoder's deferred LSTM weight gradients).

Timed: forward, loss, backward, clip and optimiser step (no data loading on either side).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tables import print_rows  # noqa: E402

RESULT_PREFIX = "SIDE_BY_SIDE "
SETTINGS = {
    "default": {"data.batch_size": 8, "model.n_frames_per_step": 1},
    "small": {"model.symbols_embedding_dim": 128, "model.encoder_embedding_dim": 128,
              "model.attention_rnn_dim": 256, "model.decoder_rnn_dim": 256, "model.prenet_dim": 128,
              "model.postnet_embedding_dim": 128, "model.n_frames_per_step": 1, "data.batch_size": 16},
}


def load_run_config(setting: str, data_dir: Path, threads: int):
    from trainer.config import load_config

    return load_config("default", {
        **SETTINGS[setting], "data.training_files": str(data_dir / "train.txt"),
        "data.validation_files": str(data_dir / "val.txt"), "train.device": "cpu", "train.torch_threads": threads,
        "tracking.enabled": False, "eval.every_steps": 10**9, "checkpoint.every_steps": 10**9,
        "run_dir": tempfile.mkdtemp(prefix="side-by-side-"), "optim.warmup_steps": 0,
    })


def fixed_batches(config, n: int, seed: int) -> list:
    """``n`` random batches (NVIDIA-like: no bucketing), sorted by text length, descending."""
    import torch

    from trainer.data.dataset import Collate, TextMelDataset

    dataset = TextMelDataset(config.data.training_files, config.data, config.audio, config.text)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=gen).tolist()
    size = config.data.batch_size
    batches = []
    for i in range(n):
        items = [dataset[j] for j in order[i * size:(i + 1) * size]]
        items.sort(key=lambda item: len(item[0]), reverse=True)
        batches.append(Collate(1)(items))
    return batches


# -- NVIDIA side ---------------------------------------------------------------------------
def import_nvidia_model(src: Path):
    """Their model.py, with CPU stand-ins for the helper modules it imports."""
    import torch

    def get_mask_from_lengths(lengths):
        ids = torch.arange(int(lengths.max()), device=lengths.device)
        return ids.unsqueeze(0) < lengths.unsqueeze(1)

    utils = types.ModuleType("utils")
    utils.to_gpu = lambda x: x.contiguous()
    utils.get_mask_from_lengths = get_mask_from_lengths
    stft = types.ModuleType("stft")
    stft.STFT = object  # only TacotronSTFT (not used for training) needs these
    audio_processing = types.ModuleType("audio_processing")
    audio_processing.dynamic_range_compression = audio_processing.dynamic_range_decompression = None
    for name, module in (("utils", utils), ("stft", stft), ("audio_processing", audio_processing)):
        sys.modules[name] = module
    sys.path.insert(0, str(src))
    import model as nvidia_model  # noqa: PLC0415  (their file)

    return nvidia_model


def nvidia_hparams(config):
    m = config.model
    return types.SimpleNamespace(
        **m.model_dump(), n_symbols=148, n_mel_channels=config.audio.n_mel_channels, mask_padding=True,
        fp16_run=False,
    )


def run_nvidia(spec: dict) -> dict:
    import torch
    from torch.nn import functional as F

    config = load_run_config(spec["setting"], Path(spec["data_dir"]), spec["threads"])
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    batches = fixed_batches(config, spec["warmup"] + spec["steps"], spec["seed"])
    nvidia_model = import_nvidia_model(Path(spec["nvidia_src"]))
    model = nvidia_model.Tacotron2(nvidia_hparams(config)).train()
    optim = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-6, weight_decay=1e-6)
    times = []
    for i, b in enumerate(batches):
        # NVIDIA's collate: gate padded with 1 from the last real frame on.
        gate = (torch.arange(b.mel.size(2)).unsqueeze(0) >= (b.mel_lengths - 1).unsqueeze(1)).float()
        t0 = time.perf_counter()
        mel, mel_post, gate_out, _ = model((b.text, b.text_lengths, b.mel, int(b.text_lengths.max()), b.mel_lengths))
        loss = F.mse_loss(mel, b.mel) + F.mse_loss(mel_post, b.mel) + F.binary_cross_entropy_with_logits(
            gate_out.reshape(-1, 1), gate.reshape(-1, 1))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
        print(f"  nvidia step {i + 1}: {time.perf_counter() - t0:.2f} s (batch {b.mel.size(0)} x {b.mel.size(2)})",
              file=sys.stderr, flush=True)
    return summary(times, batches, spec)


# -- our side ------------------------------------------------------------------------------
def run_ours(spec: dict) -> dict:
    import torch

    from trainer.loop import Trainer

    config = load_run_config(spec["setting"], Path(spec["data_dir"]), spec["threads"])
    torch.manual_seed(spec["seed"])
    batches = fixed_batches(config, spec["warmup"] + spec["steps"], spec["seed"])
    trainer = Trainer(config)
    times = []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        trainer.train_step(b)
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
        print(f"  ours step {i + 1}: {time.perf_counter() - t0:.2f} s (batch {b.mel.size(0)} x {b.mel.size(2)})",
              file=sys.stderr, flush=True)
    return summary(times, batches, spec)


def summary(times: list[float], batches: list, spec: dict) -> dict:
    frames = [int(b.mel.size(2)) for b in batches[spec["warmup"]:]]
    return {"s_per_step": statistics.fmean(times), "step_seconds": [round(t, 3) for t in times],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            "mean_padded_frames": statistics.fmean(frames)}


# -- driver --------------------------------------------------------------------------------
def launch(side: str, spec: dict) -> dict:
    print(f"[{spec['setting']} / {side}] {spec['warmup']} warm-up + {spec['steps']} timed steps", flush=True)
    proc = subprocess.run([sys.executable, __file__, "--_child", side, json.dumps(spec)], stdout=subprocess.PIPE,
                          text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stdout.write(proc.stdout)
        raise SystemExit(f"[{spec['setting']} / {side}] failed (exit {proc.returncode})")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    print(f"  -> {result['s_per_step']:.2f} s/step, peak RSS {result['peak_rss_gb']:.2f} GB", flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nvidia-src", type=Path, help="a checkout of NVIDIA/tacotron2 (model.py, layers.py)")
    ap.add_argument("--settings", default="default,small")
    ap.add_argument("--data-dir", type=Path, default=ROOT / "runs" / "bench-data",
                    help="the espeak dataset of bench/cpu_step.py (run that first to build it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        side, spec = args._child[0], json.loads(args._child[1])
        result = run_nvidia(spec) if side == "nvidia" else run_ours(spec)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    if args.nvidia_src is None or not (args.nvidia_src / "model.py").exists():
        ap.error("--nvidia-src must be a checkout of NVIDIA/tacotron2 (a folder with model.py and layers.py)")
    if not (args.data_dir / "train.txt").exists():
        ap.error(f"{args.data_dir}/train.txt not found: run bench/cpu_step.py once to build the bench dataset")
    rows, results = [], []
    for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
        spec = {"setting": setting, "data_dir": str(args.data_dir), "threads": args.threads, "steps": args.steps,
                "warmup": args.warmup, "seed": args.seed, "nvidia_src": str(args.nvidia_src.resolve())}
        nv, ours = launch("nvidia", spec), launch("ours", spec)
        results.append({"setting": setting, "nvidia": nv, "ours": ours})
        rows.append([setting, f"{nv['s_per_step']:.2f}", f"{ours['s_per_step']:.2f}",
                     f"{ours['s_per_step'] / nv['s_per_step']:.2f}", f"{nv['peak_rss_gb']:.2f}",
                     f"{ours['peak_rss_gb']:.2f}", f"{ours['peak_rss_gb'] / nv['peak_rss_gb']:.2f}",
                     f"{ours['mean_padded_frames']:.0f}"])
    print(f"\nSame batches, {args.threads} torch threads, {args.steps} timed steps after {args.warmup} warm-up")
    print_rows(["setting", "NVIDIA s/step", "ours s/step", "time ours/NVIDIA", "NVIDIA GB", "ours GB",
                "memory ours/NVIDIA", "frames/batch"], rows)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
