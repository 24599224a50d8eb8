"""The floor under a default-hparams Tacotron2 step on this CPU: the bare decoder recurrence.

Two nn.LSTMCell layers with NVIDIA's default sizes (attention RNN 768->1024, decoder
RNN 1536->1024), batch 8, 400 steps, forward and backward, nothing else. NVIDIA's
decoder runs exactly these cells once per frame, so no implementation built on
nn.LSTMCell can take less than this per step at those settings.

    python bench/decoder_floor.py [--threads 2] [--batch 8] [--steps 400]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    attention_rnn, decoder_rnn = torch.nn.LSTMCell(768, 1024), torch.nn.LSTMCell(1536, 1024)
    prenet_out = torch.randn(args.steps, args.batch, 256)
    context = torch.randn(args.batch, 512)

    def run() -> float:
        t0 = time.perf_counter()
        h1 = c1 = h2 = c2 = torch.zeros(args.batch, 1024)
        outs = []
        for t in range(args.steps):
            h1, c1 = attention_rnn(torch.cat((prenet_out[t], context), -1), (h1, c1))
            h2, c2 = decoder_rnn(torch.cat((h1, context), -1), (h2, c2))
            outs.append(h2)
        torch.stack(outs).pow(2).mean().backward()
        return time.perf_counter() - t0

    run()
    seconds = min(run(), run())
    print(f"bare decoder recurrence, 2 LSTMCells, batch {args.batch}, {args.steps} steps, fwd+bwd, "
          f"{args.threads} threads: {seconds:.2f} s")


if __name__ == "__main__":
    main()
