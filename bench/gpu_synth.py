"""Inference speed on a GPU: real-time factor of the model and of ``synth``.

    python bench/gpu_synth.py --json $OUT/gpu_synth.json

Default hparams (configs/default.yaml), a randomly initialised model (speed does not
depend on what the weights say; its gate never fires here, so every utterance runs
exactly ``--steps`` decoder steps and the figure is per second of audio produced).

* model: ``Tacotron2.infer`` (encoder, free-running decoder with its per-step stop
  check, postnet) at each batch size in ``--batch-sizes``; RTF = wall seconds / seconds
  of audio produced by the whole batch (22050 Hz, hop 256).
* synth: ``trainer.inference.synthesize`` at batch 1, end to end as ``smart-tuner synth``
  runs it (text to ids, the model, Griffin-Lim 60 iterations on the CPU), same RTF.

RTF below 1 is faster than real time. Timings are synchronised, after one untimed run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tables import print_rows  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the quiet green woods."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--steps", type=int, default=500, help="decoder steps per utterance (default 500, ~5.8 s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import torch

    from trainer.config import load_config
    from trainer.inference import synthesize
    from trainer.model.tacotron2 import Tacotron2
    from trainer.text import symbols_for, text_to_sequence

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_synth: no CUDA device is available; run it on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    config = load_config("default", {"tracking.enabled": False})
    torch.manual_seed(0)
    model = Tacotron2(config.model, len(symbols_for(config.text)), config.audio.n_mel_channels).to(device).eval()
    ids = torch.tensor(text_to_sequence(TEXT, config.text), device=device)
    seconds_per_frame = config.audio.hop_length / config.audio.sampling_rate

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    rows, results = [], []
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        text = ids.unsqueeze(0).repeat(b, 1)
        times = []
        for i in range(args.repeats + 1):
            sync()
            t0 = time.perf_counter()
            out = model.infer(text, max_decoder_steps=args.steps, gate_threshold=1.0)  # never stops
            sync()
            if i:
                times.append(time.perf_counter() - t0)
        audio = b * int(out.mel.size(2)) * seconds_per_frame
        wall = statistics.fmean(times)
        results.append({"what": "model", "batch_size": b, "seconds": wall, "audio_seconds": audio,
                        "rtf": wall / audio, "decoder_steps_per_second": args.steps / wall})
        rows.append(["model (infer)", str(b), f"{wall:.3f}", f"{audio:.1f}", f"{wall / audio:.4f}",
                     f"{args.steps / wall:.0f}"])
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the gate never fired": expected of random weights
        for i in range(args.repeats + 1):
            sync()
            t0 = time.perf_counter()
            syn = synthesize(model, config, TEXT, max_decoder_steps=args.steps, gate_threshold=1.0)
            sync()
            if i:
                times.append(time.perf_counter() - t0)
    audio = len(syn.audio) / config.audio.sampling_rate
    wall = statistics.fmean(times)
    results.append({"what": "synth", "batch_size": 1, "seconds": wall, "audio_seconds": audio, "rtf": wall / audio})
    rows.append(["synth (model + Griffin-Lim 60 it. on CPU)", "1", f"{wall:.3f}", f"{audio:.1f}",
                 f"{wall / audio:.4f}", "-"])
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"\nInference on {name}, torch {torch.__version__}, default hparams, {args.steps} decoder steps per "
          f"utterance, mean of {args.repeats} runs after one untimed")
    print_rows(["what", "batch", "wall s", "audio s", "RTF", "decoder steps/s"], rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "gpu_synth", "device": name, "torch": torch.__version__,
                                         "python": platform.python_version(), "steps": args.steps,
                                         "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
