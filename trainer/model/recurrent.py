"""LSTM cells for the teacher-forced decoder loop, with the weight gradient formed once.

Why this exists: the decoder runs its two LSTM cells once per output frame. With
``nn.LSTMCell`` every one of those ~400 steps adds its own rank-B product ``g.T @ x``
into the weight gradient during backward. At batch 8 that product is a thin GEMM
(M = 8) that CPU BLAS runs at a fraction of its peak, and it streams the whole
gradient matrix through memory once per step; the profile of a default-hparams step
on CPU showed 65% of self time in those products.

Here the per-step backward only forms the input gradient ``g @ W`` (needed to keep
back-propagating through time) and files ``(x, g)`` with a bank, which folds every
64 steps into the weight gradient with one tall GEMM (M = 64 x batch), the shape BLAS
is fast at; when autograd has finished every step it reaches the weight's *tap*,
which hands the finished gradient to the weight.
Same arithmetic, summed in a different order (float rounding differs at ~1e-6).

The parameters stay those of the ``nn.LSTMCell`` modules (NVIDIA's names and
shapes); only the way the step is computed changes. Used for CPU training; CUDA,
autocast and no-grad paths keep ``nn.LSTMCell`` (cuDNN-backed, and unmeasured here).
"""

from __future__ import annotations

import torch
from torch import nn


class _GradBank:
    """Collects every step's (input, output-gradient) pair during backward and folds
    them into the weight gradient a block of steps at a time: one tall GEMM per block
    (M = steps x batch) keeps BLAS efficient while the banked tensors stay bounded."""

    BLOCK_STEPS = 64

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        self.weight_grad: torch.Tensor | None = None

    def add(self, x: torch.Tensor, g: torch.Tensor) -> None:
        self.inputs.append(x)
        self.grads.append(g)
        if len(self.inputs) >= self.BLOCK_STEPS:
            self.fold()

    def fold(self) -> None:
        if not self.inputs:
            return
        x, g = torch.cat(self.inputs), torch.cat(self.grads)
        self.inputs.clear()
        self.grads.clear()
        if self.weight_grad is None:
            self.weight_grad = g.t().mm(x)
        else:
            self.weight_grad.addmm_(g.t(), x)

    def take(self) -> torch.Tensor | None:
        self.fold()
        out, self.weight_grad = self.weight_grad, None
        return out


class _WeightTap(torch.autograd.Function):
    """Identity on the weight; its backward forms the whole-sequence weight gradient.

    Autograd runs this node only after every step that used the weight has run its
    backward, so the bank is complete by then.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, bank: _GradBank) -> torch.Tensor:  # type: ignore[override]
        ctx.bank = bank
        # The steps return no weight gradient of their own: don't build zeros for it.
        ctx.set_materialize_grads(False)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None) -> tuple[torch.Tensor | None, None]:  # type: ignore[override]
        weight_grad = ctx.bank.take()
        if weight_grad is None:
            return grad, None
        return (weight_grad if grad is None else grad + weight_grad), None


class _DeferredLinear(torch.autograd.Function):
    """``x @ W.T`` whose backward returns only the input gradient and banks (x, g)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bank: _GradBank) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.bank = bank
        return x.mm(weight.t())

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        ctx.bank.add(x, g)
        return g.mm(weight), None, None


class DeferredLSTMCell:
    """One sequence's use of an ``nn.LSTMCell`` with the weight gradient deferred.

    Build one per forward pass (it concatenates the cell's input and hidden weights
    once, so each step is a single GEMM), then call it like the cell.
    """

    def __init__(self, cell: nn.LSTMCell) -> None:
        if cell.bias_ih is None or cell.bias_hh is None:
            raise ValueError("DeferredLSTMCell needs an LSTMCell with biases (Tacotron2's have them)")
        self._bank = _GradBank()
        weight = torch.cat((cell.weight_ih, cell.weight_hh), dim=1)
        self._weight = _WeightTap.apply(weight, self._bank)
        self._bias = cell.bias_ih + cell.bias_hh

    def __call__(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        gates = _DeferredLinear.apply(torch.cat((x, h), dim=1), self._weight, self._bank) + self._bias
        # nn.LSTMCell's gate order: input, forget, cell candidate, output.
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class CastLSTMCell:
    """An ``nn.LSTMCell`` whose weights are cast to the autocast dtype once per sequence.

    Under autocast every call of the cell casts its weights again (and inside a CUDA
    graph the cast cache is off, so it always does): ~18 M parameters read and written
    per decoder frame. Cast once, the per-frame cast is a no-op. Same arithmetic.
    """

    def __init__(self, cell: nn.LSTMCell, dtype: torch.dtype) -> None:
        self._weights = tuple(None if w is None else w.to(dtype)
                              for w in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh))

    def __call__(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        w_ih, w_hh, b_ih, b_hh = self._weights
        return torch.lstm_cell(x, state, w_ih, w_hh, b_ih, b_hh)


def use_deferred_weight_grad(reference: torch.Tensor) -> bool:
    """The deferred path pays off on CPU training; elsewhere keep ``nn.LSTMCell``."""
    return (reference.device.type == "cpu" and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu"))
