"""Tacotron2 loss: masked mel MSE (before and after the postnet), weighted gate BCE,
and the guided-attention loss of Tachibana et al. (2017).

Everything is averaged over *real* frames / tokens only, so the loss scale does not
depend on how much padding a batch happens to carry (NVIDIA averages over padding).
Weights that a supervisor may change while training live in :class:`LossWeights`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from trainer.config import LossConfig
from trainer.model.tacotron2 import TacotronOutput, lengths_to_mask


@dataclass
class LossWeights:
    """The mutable part of the loss: changed by control commands, saved in checkpoints."""

    gate_pos_weight: float
    guided_attention_weight: float
    guided_attention_sigma: float
    mel_loss: str = "mse"  # fixed for a run (loss.mel_loss); carried here so every caller uses the same

    @classmethod
    def from_config(cls, cfg: LossConfig) -> "LossWeights":
        return cls(cfg.gate_pos_weight, cfg.guided_attention_weight, cfg.guided_attention_sigma, cfg.mel_loss)

    def state_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "mel_loss"}

    def load_state_dict(self, state: dict[str, float]) -> None:
        for key, value in state.items():
            if hasattr(self, key) and key != "mel_loss":
                setattr(self, key, float(value))


@dataclass
class LossParts:
    total: torch.Tensor
    mel: torch.Tensor
    mel_postnet: torch.Tensor
    gate: torch.Tensor
    guided_attention: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in asdict(self).items()}


def guided_attention_penalty(text_lengths: torch.Tensor, step_lengths: torch.Tensor, n_steps: int, n_tokens: int,
                             sigma: float) -> torch.Tensor:
    """W[b, t, n] = 1 - exp(-(n/N_b - t/T_b)^2 / (2 sigma^2)), zero outside the real region."""
    device = text_lengths.device
    t = torch.arange(n_steps, device=device).unsqueeze(0) / step_lengths.unsqueeze(1).clamp(min=1)
    n = torch.arange(n_tokens, device=device).unsqueeze(0) / text_lengths.unsqueeze(1).clamp(min=1)
    w = 1.0 - torch.exp(-((n.unsqueeze(1) - t.unsqueeze(2)) ** 2) / (2.0 * sigma**2))
    mask = lengths_to_mask(step_lengths, n_steps).unsqueeze(2) & lengths_to_mask(text_lengths, n_tokens).unsqueeze(1)
    return w * mask


def tacotron2_loss(out: TacotronOutput, mel_target: torch.Tensor, gate_target: torch.Tensor,
                   mel_lengths: torch.Tensor, text_lengths: torch.Tensor, r: int, weights: LossWeights) -> LossParts:
    """``gate_target`` is per decoder step [B, T/r] (see data.collate); losses are in float32."""
    frame_mask = lengths_to_mask(mel_lengths, mel_target.size(2)).unsqueeze(1)  # [B, 1, T]
    n_values = frame_mask.sum() * mel_target.size(1)
    error = (lambda x: (x - mel_target).abs()) if weights.mel_loss == "l1" else (lambda x: (x - mel_target) ** 2)
    mel = (error(out.mel.float()) * frame_mask).sum() / n_values
    mel_post = (error(out.mel_postnet.float()) * frame_mask).sum() / n_values

    step_lengths = (mel_lengths + r - 1) // r
    step_mask = lengths_to_mask(step_lengths, gate_target.size(1))
    gate_all = F.binary_cross_entropy_with_logits(
        out.gate.float(), gate_target, reduction="none",
        pos_weight=torch.tensor(weights.gate_pos_weight, device=gate_target.device),
    )
    gate = (gate_all * step_mask).sum() / step_mask.sum()

    if weights.guided_attention_weight > 0:
        w = guided_attention_penalty(text_lengths, step_lengths, out.alignments.size(1), out.alignments.size(2),
                                     weights.guided_attention_sigma)
        # Expected off-diagonal penalty per decoder step, averaged over real steps.
        guided = (out.alignments.float() * w).sum() / step_mask.sum()
    else:
        guided = mel.new_zeros(())
    total = mel + mel_post + gate + weights.guided_attention_weight * guided
    return LossParts(total, mel, mel_post, gate, guided)
