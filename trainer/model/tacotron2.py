"""Tacotron2 (Shen et al. 2018) with NVIDIA/tacotron2's parameter names and shapes.

Differences from NVIDIA's implementation, all without changing the state_dict:

* ``n_frames_per_step`` (r) > 1 works end to end: the decoder emits r frames and one
  stop-gate logit per step; targets are grouped the same way (see ``group_frames``).
* Padding is not faked inside the model (NVIDIA forces padded gate logits to 1e3);
  the loss masks padded frames instead, so the gate sees honest gradients.
* Masked attention energies use the dtype's most negative finite value, not -inf,
  so fp16/bf16 autocast cannot turn a fully masked row into NaN.
* Inference is batched with a per-utterance stop, and reports which ones stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from trainer.config import ModelConfig
from trainer.model.layers import ConvNorm, LinearNorm, conv_bn
from trainer.model.recurrent import CastLSTMCell, DeferredLSTMCell, use_deferred_weight_grad


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """[B] lengths -> [B, max_len] bool mask, True on real positions (device-agnostic)."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class LocationLayer(nn.Module):
    def __init__(self, n_filters: int, kernel_size: int, attention_dim: int) -> None:
        super().__init__()
        self.location_conv = ConvNorm(2, n_filters, kernel_size, bias=False)
        self.location_dense = LinearNorm(n_filters, attention_dim, bias=False, w_init_gain="tanh")

    def forward(self, attention_weights_cat: torch.Tensor) -> torch.Tensor:
        return self.location_dense(self.location_conv(attention_weights_cat).transpose(1, 2))


class Attention(nn.Module):
    """Location-sensitive additive attention."""

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int, n_filters: int, kernel_size: int) -> None:
        super().__init__()
        self.query_layer = LinearNorm(query_dim, attention_dim, bias=False, w_init_gain="tanh")
        self.memory_layer = LinearNorm(memory_dim, attention_dim, bias=False, w_init_gain="tanh")
        self.v = LinearNorm(attention_dim, 1, bias=False)
        self.location_layer = LocationLayer(n_filters, kernel_size, attention_dim)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, processed_memory: torch.Tensor,
                weights_cat: torch.Tensor, pad_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        energies = self.v(torch.tanh(
            self.query_layer(query).unsqueeze(1) + self.location_layer(weights_cat) + processed_memory
        )).squeeze(-1)
        if pad_mask is not None:
            energies = energies.masked_fill(pad_mask, torch.finfo(energies.dtype).min)
        weights = F.softmax(energies, dim=1)
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)
        return context, weights


class Prenet(nn.Module):
    """Two bottleneck layers with dropout that stays on at inference (as in the paper).

    Dropout is drawn from torch's global RNG; evaluation seeds it (see metrics) so
    validation numbers are repeatable.
    """

    def __init__(self, in_dim: int, sizes: list[int], dropout: float) -> None:
        super().__init__()
        dims = [in_dim] + sizes[:-1]
        self.layers = nn.ModuleList(LinearNorm(i, o, bias=False) for i, o in zip(dims, sizes))
        self.dropout: float = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.dropout(F.relu(layer(x)), p=self.dropout, training=True)
        return x


class Postnet(nn.Module):
    def __init__(self, n_mels: int, channels: int, kernel_size: int, n_convolutions: int,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout: float = dropout
        dims = [n_mels] + [channels] * (n_convolutions - 1) + [n_mels]
        gains = ["tanh"] * (n_convolutions - 1) + ["linear"]
        self.convolutions = nn.ModuleList(
            conv_bn(i, o, kernel_size, g) for i, o, g in zip(dims[:-1], dims[1:], gains)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.convolutions) - 1
        for i, conv in enumerate(self.convolutions):
            x = conv(x)
            x = F.dropout(x if i == last else torch.tanh(x), self.dropout, self.training)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.encoder_embedding_dim
        self.convolutions = nn.ModuleList(
            conv_bn(cfg.symbols_embedding_dim if i == 0 else dim, dim, cfg.encoder_kernel_size, "relu")
            for i in range(cfg.encoder_n_convolutions)
        )
        self.lstm = nn.LSTM(dim, dim // 2, 1, batch_first=True, bidirectional=True)
        self.dropout = cfg.encoder_dropout

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        for conv in self.convolutions:
            x = F.dropout(F.relu(conv(x)), self.dropout, self.training)
        x = x.transpose(1, 2)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        return out


@dataclass
class DecoderState:
    attention_hidden: torch.Tensor
    attention_cell: torch.Tensor
    decoder_hidden: torch.Tensor
    decoder_cell: torch.Tensor
    attention_weights: torch.Tensor
    attention_weights_cum: torch.Tensor
    attention_context: torch.Tensor


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, n_mels: int) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.r = cfg.n_frames_per_step
        self.enc_dim = cfg.encoder_embedding_dim
        self.attention_rnn_dim = cfg.attention_rnn_dim
        self.decoder_rnn_dim = cfg.decoder_rnn_dim
        self.p_attention_dropout = cfg.p_attention_dropout
        self.p_decoder_dropout = cfg.p_decoder_dropout
        self.prenet: Prenet = Prenet(n_mels * self.r, [cfg.prenet_dim, cfg.prenet_dim], cfg.prenet_dropout)
        self.attention_rnn = nn.LSTMCell(cfg.prenet_dim + self.enc_dim, cfg.attention_rnn_dim)
        self.attention_layer = Attention(cfg.attention_rnn_dim, self.enc_dim, cfg.attention_dim,
                                         cfg.attention_location_n_filters, cfg.attention_location_kernel_size)
        self.decoder_rnn = nn.LSTMCell(cfg.attention_rnn_dim + self.enc_dim, cfg.decoder_rnn_dim)
        self.linear_projection = LinearNorm(cfg.decoder_rnn_dim + self.enc_dim, n_mels * self.r)
        self.gate_layer = LinearNorm(cfg.decoder_rnn_dim + self.enc_dim, 1, bias=True, w_init_gain="sigmoid")
        # CPU training forms the LSTM weight gradients once per sequence instead of once
        # per frame (see trainer/model/recurrent.py); off only to measure or compare.
        self.deferred_weight_grad = True

    def initial_state(self, memory: torch.Tensor) -> DecoderState:
        b, t, _ = memory.shape
        zeros = memory.new_zeros
        # Attention weights and their running sum stay float32 even when the memory is
        # bf16/fp16: the sum adds ~1/N per frame for hundreds of frames.
        weights_dtype = torch.promote_types(memory.dtype, torch.float32)
        return DecoderState(
            zeros(b, self.attention_rnn_dim), zeros(b, self.attention_rnn_dim),
            zeros(b, self.decoder_rnn_dim), zeros(b, self.decoder_rnn_dim),
            zeros(b, t, dtype=weights_dtype), zeros(b, t, dtype=weights_dtype), zeros(b, self.enc_dim),
        )

    def step_features(self, prenet_out: torch.Tensor, s: DecoderState, memory: torch.Tensor,
                      processed_memory: torch.Tensor, pad_mask: torch.Tensor | None, cells: tuple | None = None
                      ) -> tuple[torch.Tensor, DecoderState]:
        """One decoder step up to the projections' input: [B, decoder_rnn_dim + enc_dim]."""
        attention_rnn, decoder_rnn = cells or (self.attention_rnn, self.decoder_rnn)
        ah, ac = attention_rnn(torch.cat((prenet_out, s.attention_context), -1), (s.attention_hidden, s.attention_cell))
        ah = F.dropout(ah, self.p_attention_dropout, self.training)
        weights_cat = torch.stack((s.attention_weights, s.attention_weights_cum), dim=1)
        context, weights = self.attention_layer(ah, memory, processed_memory, weights_cat, pad_mask)
        dh, dc = decoder_rnn(torch.cat((ah, context), -1), (s.decoder_hidden, s.decoder_cell))
        dh = F.dropout(dh, self.p_decoder_dropout, self.training)
        new = DecoderState(ah, ac, dh, dc, weights, s.attention_weights_cum + weights, context)
        return torch.cat((dh, context), -1), new

    def project(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder features [..., D] -> r frames [..., n_mels*r] and the gate logit [...]."""
        return self.linear_projection(features), self.gate_layer(features).squeeze(-1)

    def step(self, prenet_out: torch.Tensor, s: DecoderState, memory: torch.Tensor, processed_memory: torch.Tensor,
             pad_mask: torch.Tensor | None, cells: tuple | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, DecoderState]:
        features, new = self.step_features(prenet_out, s, memory, processed_memory, pad_mask, cells)
        frames, gate = self.project(features)
        return frames, gate, new

    def group_frames(self, mels: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, T] (T a multiple of r) -> [B, T/r, n_mels*r], r frames per decoder step."""
        b, n, t = mels.shape
        return mels.transpose(1, 2).reshape(b, t // self.r, n * self.r)

    def ungroup_frames(self, steps: torch.Tensor) -> torch.Tensor:
        """[B, S, n_mels*r] -> [B, n_mels, S*r]."""
        b, s, _ = steps.shape
        return steps.reshape(b, s * self.r, self.n_mels).transpose(1, 2)

    def forward(self, memory: torch.Tensor, mels: torch.Tensor, text_lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced decoding. Returns mel [B, n_mels, T], gate logits [B, T/r], alignments [B, T/r, N]."""
        if torch.is_autocast_enabled(memory.device.type):
            # Once here, not in every step: otherwise each step's attention bmm casts the
            # whole memory again and keeps that copy for backward (a B x N x 512 tensor per frame).
            memory = memory.to(torch.get_autocast_dtype(memory.device.type))
        steps_in = self.group_frames(mels)
        go = steps_in.new_zeros(steps_in.size(0), 1, steps_in.size(2))
        prenet_out = self.prenet(torch.cat((go, steps_in[:, :-1]), dim=1))
        processed_memory = self.attention_layer.memory_layer(memory)
        pad_mask = ~lengths_to_mask(text_lengths, memory.size(1))
        state = self.initial_state(memory)
        cells = self._loop_cells(memory)
        features, aligns = [], []
        for i in range(prenet_out.size(1)):
            feature, state = self.step_features(prenet_out[:, i], state, memory, processed_memory, pad_mask, cells)
            features.append(feature)
            aligns.append(state.attention_weights)
        # The projections need no recurrence: one GEMM over all steps instead of one per step.
        frames, gates = self.project(torch.stack(features, 1))
        return self.ungroup_frames(frames), gates, torch.stack(aligns, 1)

    def _loop_cells(self, reference: torch.Tensor) -> tuple | None:
        """The LSTM cells the teacher-forced loop runs (None: the modules themselves)."""
        if self.deferred_weight_grad and use_deferred_weight_grad(reference):
            return DeferredLSTMCell(self.attention_rnn), DeferredLSTMCell(self.decoder_rnn)
        if reference.is_cuda and torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype("cuda")
            return CastLSTMCell(self.attention_rnn, dtype), CastLSTMCell(self.decoder_rnn, dtype)
        return None

    @torch.no_grad()
    def infer(self, memory: torch.Tensor, text_lengths: torch.Tensor, max_steps: int, gate_threshold: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Free-running decoding with a per-utterance stop.

        Returns mel [B, n_mels, S*r], gate logits [B, S], alignments [B, S, N],
        frame lengths [B] and a bool [B] telling which utterances' gates fired.
        """
        b = memory.size(0)
        processed_memory = self.attention_layer.memory_layer(memory)
        pad_mask = ~lengths_to_mask(text_lengths, memory.size(1)) if b > 1 else None
        state = self.initial_state(memory)
        frame = memory.new_zeros(b, self.n_mels * self.r)
        stopped = torch.zeros(b, dtype=torch.bool, device=memory.device)
        step_lengths = torch.full((b,), max_steps, dtype=torch.long, device=memory.device)
        outs, gates, aligns = [], [], []
        for i in range(max_steps):
            frame, gate, state = self.step(self.prenet(frame), state, memory, processed_memory, pad_mask)
            outs.append(frame)
            gates.append(gate)
            aligns.append(state.attention_weights)
            fired = (torch.sigmoid(gate) > gate_threshold) & ~stopped
            step_lengths[fired] = i + 1
            stopped |= fired
            if bool(stopped.all()):
                break
        return (self.ungroup_frames(torch.stack(outs, 1)), torch.stack(gates, 1), torch.stack(aligns, 1),
                step_lengths * self.r, stopped)


@dataclass
class TacotronOutput:
    mel: torch.Tensor  # before postnet [B, n_mels, T]
    mel_postnet: torch.Tensor  # [B, n_mels, T]
    gate: torch.Tensor  # logits, one per decoder step [B, T/r]
    alignments: torch.Tensor  # [B, T/r, N]


@dataclass
class InferenceOutput(TacotronOutput):
    lengths: torch.Tensor  # frames per utterance [B]
    stopped: torch.Tensor  # did the gate fire before max steps [B]


class Tacotron2(nn.Module):
    def __init__(self, cfg: ModelConfig, n_symbols: int, n_mels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_frames_per_step = cfg.n_frames_per_step
        self.embedding = nn.Embedding(n_symbols, cfg.symbols_embedding_dim)
        bound = 3.0 ** 0.5 * (2.0 / (n_symbols + cfg.symbols_embedding_dim)) ** 0.5  # Xavier-like, as NVIDIA
        self.embedding.weight.data.uniform_(-bound, bound)
        self.encoder = Encoder(cfg)
        self.decoder: Decoder = Decoder(cfg, n_mels)
        self.postnet = Postnet(n_mels, cfg.postnet_embedding_dim, cfg.postnet_kernel_size, cfg.postnet_n_convolutions,
                               cfg.postnet_dropout)

    def encode(self, text: torch.Tensor, text_lengths: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embedding(text).transpose(1, 2), text_lengths)

    def forward(self, text: torch.Tensor, text_lengths: torch.Tensor, mels: torch.Tensor,
                decoder: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
                ) -> TacotronOutput:
        """Teacher-forced pass; ``decoder`` stands in for ``self.decoder`` (e.g. its CUDA-graph replay)."""
        memory = self.encode(text, text_lengths)
        mel, gate, align = (decoder or self.decoder)(memory, mels, text_lengths)
        return TacotronOutput(mel, mel + self.postnet(mel), gate, align)

    @torch.no_grad()
    def infer(self, text: torch.Tensor, text_lengths: torch.Tensor | None = None, max_decoder_steps: int | None = None,
              gate_threshold: float | None = None) -> InferenceOutput:
        if text_lengths is None:
            text_lengths = torch.full((text.size(0),), text.size(1), dtype=torch.long, device=text.device)
        memory = self.encode(text, text_lengths)
        mel, gate, align, lengths, stopped = self.decoder.infer(
            memory, text_lengths, max_decoder_steps or self.cfg.max_decoder_steps,
            self.cfg.gate_threshold if gate_threshold is None else gate_threshold,
        )
        return InferenceOutput(mel, mel + self.postnet(mel), gate, align, lengths, stopped)
