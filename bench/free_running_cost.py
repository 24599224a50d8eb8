"""What the free-running evaluation costs against the training it interrupts.

    python bench/free_running_cost.py --config tiny-cpu --data runs/speech-bench/data
    python bench/free_running_cost.py --config default --data runs/speech-bench/data --steps 2

Builds a ``Trainer`` for the config on an espeak-ng dataset (as ``bench/time_to_speech.py``
builds it), times ``--steps`` training steps after ``--warmup`` untimed ones, and the
free-running pass (``Evaluator.speech.run``, after one untimed pass that pays for
imports and DTW's just-in-time compilation) on the untrained weights as they are and
with the gate forced never to fire, so that every utterance runs to its runaway limit:
the slowest the pass can be. Prints them and their ratio at the config's
``eval.every_steps``:

    share = pass seconds / (eval.every_steps x seconds per step)

which the product keeps under 25% at its shipped evaluation frequencies.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny-cpu")
    ap.add_argument("--data", type=Path, required=True, help="espeak-ng dataset folder (train.txt, val.txt)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="train.torch_threads (default: the config's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    import torch

    from trainer.config import load_config, parse_overrides
    from trainer.evaluate import EVAL_SEED
    from trainer.loop import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"run_dir": tmp, "data.training_files": str(args.data / "train.txt"),
                     "data.validation_files": str(args.data / "val.txt"), "tracking.enabled": False,
                     **({"train.torch_threads": args.threads} if args.threads else {}),
                     **parse_overrides(args.set)}
        config = load_config(args.config, overrides)
        trainer = Trainer(config)
        speech = trainer.evaluator.speech

        def timed_pass():
            trainer.model.eval()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(EVAL_SEED)
                t0 = time.perf_counter()
                out = speech.run(trainer.model, step=0)
                seconds = time.perf_counter() - t0
            trainer.model.train()
            return out, seconds

        timed_pass()  # imports, numba's compilation of the DTW: once per process
        passes = {"as initialised": timed_pass()}
        # The slowest the pass can be: a gate that never fires, so that every utterance
        # runs to its runaway limit (2x its true length, the probes' decoder-step cap).
        gate = trainer.model.decoder.gate_layer.linear_layer
        saved = (gate.weight.detach().clone(), gate.bias.detach().clone())
        with torch.no_grad():
            gate.weight.zero_()
            gate.bias.fill_(-30.0)
        passes["gate never fires"] = timed_pass()
        with torch.no_grad():
            gate.weight.copy_(saved[0])
            gate.bias.copy_(saved[1])
        for _ in range(args.warmup):
            trainer.train_step(trainer.next_batch())
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(trainer.next_batch())
        step_seconds = (time.perf_counter() - t0) / args.steps
    every = config.eval.every_steps
    between = every * step_seconds
    print(f"{args.config}: {torch.get_num_threads()} thread(s), batch {config.data.batch_size}; training "
          f"{step_seconds:.3f} s/step; eval.every_steps {every} -> {between:.1f} s between evaluations")
    for name, (result, seconds) in passes.items():
        s = result.summary
        print(f"  free-running pass, {name}: {s.synthesized} utterances ({s.runaway} ran to their limit) "
              f"{seconds:.2f} s -> {seconds / between:.1%} of that")
    return 0


if __name__ == "__main__":
    sys.exit(main())
