"""The teacher-forced decoder loop replayed from CUDA graphs.

Why: on a GPU each decoder frame is a few dozen tiny kernels (two LSTM cells, the
location-sensitive attention), launched one after another by Python and autograd.
At batch 64 the card finishes each kernel faster than the host can launch the next,
so eager training runs at the speed of the launch loop, not of the GPU. A CUDA graph
records the whole loop (forward, and its backward) once and replays it with one launch.

How: graphs need static shapes, so a batch is padded up to a *bucket* (decoder steps
rounded up to ``frame_bucket`` steps, text up to ``text_bucket`` tokens) and each
bucket shape is captured the first time it is seen, with
:func:`torch.cuda.make_graphed_callables` (which makes forward and backward replayable
inside autograd). All captures share one memory pool. The padded decoder runs extra
steps past the end of the longest utterance and attends over extra masked tokens;
its outputs are cut back to the batch's own shape, so everything after the decoder
(postnet, loss, metrics) sees exactly what the eager loop produces: the extra steps
come after every real one (the recurrence is causal), masked tokens get zero weight,
and the cut-off outputs get zero gradient.

Limits: one graph per (batch size, bucket, dtype) up to ``max_graphs`` (then the
eager loop runs and says so once); gradient accumulation over several batches before
an optimiser step is not supported (the trainer does not accumulate); param.grad must
be reset with ``zero_grad(set_to_none=True)`` each step, as the trainer does.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

DecoderOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class _TeacherForced(nn.Module):
    """A module whose parameters are the decoder's, as make_graphed_callables needs.

    One per captured shape: make_graphed_callables replaces this module's forward with
    the replay, and leaves the decoder itself untouched.
    """

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, memory: torch.Tensor, mels: torch.Tensor, text_lengths: torch.Tensor) -> DecoderOutputs:
        return self.decoder(memory, mels, text_lengths)


def bucket_up(value: int, bucket: int) -> int:
    return int(math.ceil(value / bucket) * bucket)


def call_padded(decoder: Callable[..., DecoderOutputs], memory: torch.Tensor, mels: torch.Tensor,
                text_lengths: torch.Tensor, tokens: int, frames: int, r: int) -> DecoderOutputs:
    """Run ``decoder`` on the batch padded to ``tokens`` x ``frames``; cut its outputs back."""
    n, t = memory.size(1), mels.size(2)
    steps = t // r
    mel, gate, align = decoder(F.pad(memory, (0, 0, 0, tokens - n)), F.pad(mels, (0, frames - t)), text_lengths)
    return mel[:, :, :t], gate[:, :steps], align[:, :steps, :n]


class GraphedDecoder:
    """Callable like ``Decoder.forward``; replays a CUDA graph for the batch's bucket."""

    def __init__(self, decoder: Any, frame_bucket: int = 64, text_bucket: int = 32, max_graphs: int = 16,
                 warmup_iters: int = 2) -> None:
        self.decoder = decoder  # trainer.model.tacotron2.Decoder (Any: its r is an int attribute)
        self.frame_bucket = frame_bucket  # decoder steps (r frames each)
        self.text_bucket = text_bucket
        self.max_graphs = max_graphs
        self.warmup_iters = warmup_iters
        self._graphs: dict[tuple, Callable[..., DecoderOutputs]] = {}
        self._eager_shapes: set[tuple] = set()  # shapes refused for lack of GPU memory
        self._pool: Any = None
        self._said_full = False
        self._bytes_per_cell: float | None = None  # pool growth per (batch x tokens x frames), from captures
        self.capture_seconds = 0.0
        self._baked = self._settings()

    def _settings(self) -> tuple[float, float, float]:
        """What a capture bakes in besides the weights: the dropout rates a control command may change."""
        d = self.decoder
        return d.prenet.dropout, d.p_attention_dropout, d.p_decoder_dropout

    def forget_if_settings_changed(self) -> bool:
        """Drop every graph when a dropout rate changed since they were captured (they would
        keep replaying the old rate); the next batches capture again. True if it dropped."""
        now = self._settings()
        if now == self._baked:
            return False
        log.info("CUDA graphs: decoder dropout changed %s -> %s; capturing again", self._baked, now)
        self._graphs.clear()
        self._eager_shapes.clear()
        self._pool = None
        self._said_full = False
        self._baked = now
        return True

    @property
    def shapes(self) -> list[tuple]:
        return list(self._graphs)

    def padded_shape(self, memory: torch.Tensor, mels: torch.Tensor) -> tuple[int, int]:
        """(tokens, frames) after padding up to the buckets."""
        r = self.decoder.r
        steps = mels.size(2) // r
        return bucket_up(memory.size(1), self.text_bucket), bucket_up(steps, self.frame_bucket) * r

    def __call__(self, memory: torch.Tensor, mels: torch.Tensor, text_lengths: torch.Tensor) -> DecoderOutputs:
        usable = (memory.is_cuda and torch.is_grad_enabled() and self.decoder.training
                  and not torch.cuda.is_current_stream_capturing())
        if not usable:
            return self.decoder(memory, mels, text_lengths)
        self.forget_if_settings_changed()
        if torch.is_autocast_enabled("cuda"):
            # The decoder casts the memory itself; doing it here keys the graph on the dtype it runs in.
            memory = memory.to(torch.get_autocast_dtype("cuda"))
        tokens, frames = self.padded_shape(memory, mels)
        autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        key = (memory.size(0), tokens, frames, memory.size(2), memory.dtype, autocast, memory.requires_grad)
        graphed = self._graphs.get(key)
        if graphed is None:
            if key in self._eager_shapes:
                return self.decoder(memory, mels, text_lengths)
            if len(self._graphs) >= self.max_graphs:
                if not self._said_full:
                    log.warning("CUDA graphs: %d shapes captured (train.cuda_graph_max_shapes); batches of other "
                                "shapes run the eager decoder loop", self.max_graphs)
                    self._said_full = True
                return self.decoder(memory, mels, text_lengths)
            if not self._fits(key, memory.device):
                self._eager_shapes.add(key)
                return self.decoder(memory, mels, text_lengths)
            graphed = self._capture(key, memory, mels)
        return call_padded(graphed, memory, mels, text_lengths, tokens, frames, self.decoder.r)

    def _fits(self, key: tuple, device: torch.device) -> bool:
        """Is there GPU memory for one more graph of this shape?

        Each captured shape keeps a share of the graph pool that later, other-sized
        captures cannot fully reuse (measured: batch 256 fp32 on a 140 GB card ran out
        at its second shape). The need is estimated from the earlier captures' pool
        growth per batch x tokens x frames; the first capture needs what an eager step
        of that shape needs.
        """
        if self._bytes_per_cell is None:
            return True
        batch, tokens, frames = key[0], key[1], key[2]
        need = self._bytes_per_cell * batch * tokens * frames
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        if need < 0.9 * (free + cached):
            return True
        log.warning("CUDA graphs: no GPU memory for another graph (batch %d x %d tokens x %d frames needs about "
                    "%.1f GiB, %.1f GiB free); batches of that shape run the eager decoder loop",
                    batch, tokens, frames, need / 2**30, (free + cached) / 2**30)
        return False

    def _capture(self, key: tuple, memory: torch.Tensor, mels: torch.Tensor) -> Callable[..., DecoderOutputs]:
        batch, tokens, frames = key[0], key[1], key[2]
        t0 = time.perf_counter()
        reserved_before = torch.cuda.memory_reserved(memory.device)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        sample = (
            torch.randn(batch, tokens, memory.size(2), device=memory.device, dtype=memory.dtype,
                        requires_grad=memory.requires_grad),
            torch.zeros(batch, mels.size(1), frames, device=mels.device, dtype=mels.dtype),
            torch.full((batch,), tokens, device=memory.device, dtype=torch.long),
        )
        module = _TeacherForced(self.decoder)
        graphed = torch.cuda.make_graphed_callables(module, sample, num_warmup_iters=self.warmup_iters,
                                                    pool=self._pool)
        # The module itself comes back, its forward now the replay.
        self._graphs[key] = graphed  # type: ignore[assignment]
        grown = max(torch.cuda.memory_reserved(memory.device) - reserved_before, 0)
        per_cell = grown / (batch * tokens * frames)
        self._bytes_per_cell = max(self._bytes_per_cell or 0.0, per_cell)
        took = time.perf_counter() - t0
        self.capture_seconds += took
        log.info("CUDA graph captured for batch %d x %d tokens x %d frames in %.1f s (%d shapes so far)",
                 batch, tokens, frames, took, len(self._graphs))
        return graphed  # type: ignore[return-value]
