"""Validation metrics that tell whether Tacotron2 is learning to *speak*.

Attention diagonality
---------------------
For one utterance with T real decoder steps and N real tokens and alignment
``A[t, n]`` (each row sums to 1), define

* ``focus`` = mean over t of ``max_n A[t, n]`` — how sharp the attention is;
* ``diagonality`` = mean over t of the attention mass within a band around the
  normalised diagonal: ``sum_n A[t, n] * [ |n/(N-1) - t/(T-1)| <= band ]``
  (``band`` = ``eval.diagonal_band``, default 0.2).

An utterance is *aligned* when ``focus >= eval.aligned_focus`` (0.5) and
``diagonality >= eval.aligned_diagonality`` (0.9). Attention parked on the first or
last token does not score: it lies inside the band only while the diagonal passes
that token, i.e. for at most ``band`` of the steps at each end (diagonality <= 0.2
for "all on token 0", <= ~0.4 for "first half on the first token, second half on the
last"). Uniform attention scores about ``2 * band`` on diagonality and 1/N on focus.
The batch value is the mean over utterances; ``aligned_fraction`` is the share of
aligned utterances.

Gate accuracy
-------------
Per decoder step, predict "stop" when ``sigmoid(gate) > threshold``. With one or two
positive steps per utterance against hundreds of negatives, plain accuracy rewards a
gate that never fires (99%+). We report the *balanced* accuracy, the mean of the
true-positive rate and the true-negative rate over the real steps of the batch, so a
never-firing gate scores 0.5.
"""

from __future__ import annotations

import torch

from trainer.model.tacotron2 import lengths_to_mask


def alignment_scores(alignments: torch.Tensor, step_lengths: torch.Tensor, text_lengths: torch.Tensor,
                     band: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-utterance (focus, diagonality) for alignments [B, T, N]."""
    a = alignments.float()
    b, t_max, n_max = a.shape
    step_mask = lengths_to_mask(step_lengths, t_max)
    token_mask = lengths_to_mask(text_lengths, n_max)
    a = a * token_mask.unsqueeze(1)
    t_pos = torch.arange(t_max, device=a.device).unsqueeze(0) / (step_lengths.unsqueeze(1) - 1).clamp(min=1)
    n_pos = torch.arange(n_max, device=a.device).unsqueeze(0) / (text_lengths.unsqueeze(1) - 1).clamp(min=1)
    in_band = (n_pos.unsqueeze(1) - t_pos.unsqueeze(2)).abs() <= band + 1e-6
    steps = step_mask.sum(1).clamp(min=1)
    focus = (a.max(dim=2).values * step_mask).sum(1) / steps
    diagonality = ((a * in_band).sum(2) * step_mask).sum(1) / steps
    return focus, diagonality


def gate_balanced_accuracy(gate_logits: torch.Tensor, gate_target: torch.Tensor, step_lengths: torch.Tensor,
                           threshold: float) -> float:
    mask = lengths_to_mask(step_lengths, gate_target.size(1))
    predicted = torch.sigmoid(gate_logits.float()) > threshold
    positive = (gate_target > 0.5) & mask
    negative = (gate_target <= 0.5) & mask
    tpr = (predicted & positive).sum() / positive.sum().clamp(min=1)
    tnr = (~predicted & negative).sum() / negative.sum().clamp(min=1)
    return float((tpr + tnr) / 2)
