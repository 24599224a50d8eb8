"""The fast teacher-forced decoder gives the plain per-step decoder's numbers.

What can be checked on CPU: the projections hoisted out of the loop, the padding to a
CUDA-graph bucket and the cut back, and the once-cast LSTM cell. The CUDA graph
replay itself is checked against the eager loop where a GPU is present.
"""

from __future__ import annotations

import pytest
import torch

from trainer.config import ModelConfig
from trainer.data.dataset import Collate
from trainer.model.graphed import GraphedDecoder, bucket_up, call_padded
from trainer.model.recurrent import CastLSTMCell
from trainer.model.tacotron2 import Tacotron2, lengths_to_mask

from conftest import MICRO_MODEL

TOL = 1e-5


def _model(r: int = 1, device: str = "cpu", **sizes) -> Tacotron2:
    # Dropout off everywhere (the prenet's included): the paths must agree number for number.
    cfg = ModelConfig(**{**MICRO_MODEL, **sizes, "n_frames_per_step": r, "prenet_dropout": 0.0,
                         "p_attention_dropout": 0.0, "p_decoder_dropout": 0.0, "encoder_dropout": 0.0})
    torch.manual_seed(0)
    return Tacotron2(cfg, 60, 80).to(device).train()


def _batch(r: int, lengths=(13, 9, 6), device: str = "cpu"):
    gen = torch.Generator().manual_seed(1)
    items = [(torch.randint(1, 60, (n,), generator=gen), torch.randn(80, 3 * n + 1, generator=gen)) for n in lengths]
    return Collate(r)(items).to(torch.device(device))


def per_step_reference(decoder, memory, mels, text_lengths):
    """The decoder as NVIDIA writes it: each step projects its own frame and gate."""
    steps_in = decoder.group_frames(mels)
    go = steps_in.new_zeros(steps_in.size(0), 1, steps_in.size(2))
    prenet_out = decoder.prenet(torch.cat((go, steps_in[:, :-1]), dim=1))
    processed = decoder.attention_layer.memory_layer(memory)
    pad_mask = ~lengths_to_mask(text_lengths, memory.size(1))
    state = decoder.initial_state(memory)
    outs, gates, aligns = [], [], []
    for i in range(prenet_out.size(1)):
        out, gate, state = decoder.step(prenet_out[:, i], state, memory, processed, pad_mask)
        outs.append(out)
        gates.append(gate)
        aligns.append(state.attention_weights)
    return decoder.ungroup_frames(torch.stack(outs, 1)), torch.stack(gates, 1), torch.stack(aligns, 1)


def _outputs_and_grads(model, batch, decode):
    """Decoder outputs and the gradients of a loss that touches every output, wrt memory and weights."""
    model.zero_grad(set_to_none=True)
    memory = model.encode(batch.text, batch.text_lengths).detach().requires_grad_(True)
    mel, gate, align = decode(memory, batch.mel, batch.text_lengths)
    gen = torch.Generator().manual_seed(2)
    loss = sum((o * torch.randn(o.shape, generator=gen).to(o.device)).sum() for o in (mel, gate, align))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.decoder.named_parameters() if p.grad is not None}
    grads["memory"] = memory.grad.clone()
    return (mel.detach(), gate.detach(), align.detach()), grads


def _assert_close(a, b):
    (outs_a, grads_a), (outs_b, grads_b) = a, b
    for x, y in zip(outs_a, outs_b):
        assert x.shape == y.shape
        assert torch.allclose(x, y, atol=TOL, rtol=TOL), (x - y).abs().max()
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        scale = grads_b[name].abs().max().clamp(min=1.0)
        assert (grads_a[name] - grads_b[name]).abs().max() <= TOL * scale, name


@pytest.mark.parametrize("r,deferred", [(1, True), (1, False), (2, True)])
def test_hoisted_projections_match_the_per_step_decoder(r, deferred):
    model = _model(r)
    model.decoder.deferred_weight_grad = deferred
    batch = _batch(r)
    fast = _outputs_and_grads(model, batch, model.decoder)
    plain = _outputs_and_grads(model, batch, lambda m, x, n: per_step_reference(model.decoder, m, x, n))
    _assert_close(fast, plain)


@pytest.mark.parametrize("r", [1, 3])
def test_padding_to_a_graph_bucket_and_cutting_back_changes_nothing(r):
    model = _model(r)
    batch = _batch(r)
    graphs = GraphedDecoder(model.decoder, frame_bucket=12, text_bucket=16)
    tokens, frames = graphs.padded_shape(batch.text.new_zeros(3, batch.text.size(1), 1), batch.mel)
    assert tokens > batch.text.size(1) and frames > batch.mel.size(2)  # the check pads for real
    assert frames % r == 0 and (frames // r) % 12 == 0
    padded = _outputs_and_grads(
        model, batch, lambda m, x, n: call_padded(model.decoder, m, x, n, tokens, frames, r))
    plain = _outputs_and_grads(model, batch, model.decoder)
    _assert_close(padded, plain)


def test_padding_would_be_caught_if_the_cut_were_wrong():
    # The comparison above is not blind: cutting one step too few is a shape mismatch,
    # and padding the text *without* masking it changes the attention.
    model = _model(1)
    batch = _batch(1)
    mel, gate, align = call_padded(model.decoder, model.encode(batch.text, batch.text_lengths), batch.mel,
                                   batch.text_lengths, 32, 64, 1)
    assert mel.shape == batch.mel.shape and align.shape[1:] == (batch.mel.size(2), batch.text.size(1))
    memory = model.encode(batch.text, batch.text_lengths)
    unmasked = torch.full_like(batch.text_lengths, 32)
    _, _, wrong = model.decoder(torch.nn.functional.pad(memory, (0, 0, 0, 32 - memory.size(1))), batch.mel, unmasked)
    assert not torch.allclose(wrong[:, :, :memory.size(1)], align, atol=1e-3)


def test_bucket_up():
    assert [bucket_up(v, 64) for v in (1, 64, 65, 128)] == [64, 64, 128, 128]


def test_graphs_stand_aside_on_cpu_and_without_grad():
    model = _model(1)
    batch = _batch(1)
    graphs = GraphedDecoder(model.decoder)
    memory = model.encode(batch.text, batch.text_lengths)
    out = graphs(memory, batch.mel, batch.text_lengths)
    assert graphs.shapes == []  # nothing captured: CPU runs the eager loop
    assert torch.allclose(out[0], model.decoder(memory, batch.mel, batch.text_lengths)[0], atol=TOL)


def test_a_dropout_command_makes_the_graphs_capture_again():
    # A capture bakes the dropout rate in: after a live change the old graphs must go.
    model = _model(1)
    graphs = GraphedDecoder(model.decoder)
    graphs._graphs[("fake",)] = model.decoder  # stands for a captured shape
    assert not graphs.forget_if_settings_changed()
    assert graphs.shapes == [("fake",)]
    model.decoder.p_attention_dropout = 0.3  # what the dropout command does
    assert graphs.forget_if_settings_changed()
    assert graphs.shapes == []
    model.decoder.prenet.dropout = 0.4
    assert graphs.forget_if_settings_changed()
    assert not graphs.forget_if_settings_changed()


def test_cast_lstm_cell_is_the_cell():
    torch.manual_seed(3)
    cell = torch.nn.LSTMCell(12, 16)
    x, h, c = torch.randn(4, 12), torch.randn(4, 16), torch.randn(4, 16)
    ours = CastLSTMCell(cell, torch.float32)(x, (h, c))
    theirs = cell(x, (h, c))
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-6)
    # and it does cast: a bf16 cell differs from the fp32 one by bf16 rounding, not by nothing
    low = CastLSTMCell(cell, torch.bfloat16)(x.bfloat16(), (h.bfloat16(), c.bfloat16()))
    assert low[0].dtype == torch.bfloat16
    assert 0 < (low[0].float() - theirs[0]).abs().max() < 0.05


# -- GPU only --------------------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("r", [1, 2])
def test_cuda_graph_replay_matches_the_eager_decoder(r):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = _model(r, "cuda", attention_rnn_dim=256, decoder_rnn_dim=256)
    graphs = GraphedDecoder(model.decoder, frame_bucket=16, text_bucket=16)
    batch = _batch(r, device="cuda")
    first = _outputs_and_grads(model, batch, graphs)  # captures
    assert len(graphs.shapes) == 1
    replay = _outputs_and_grads(model, batch, graphs)  # replays
    eager = _outputs_and_grads(model, batch, model.decoder)
    _assert_close(first, eager)
    _assert_close(replay, eager)
    # A second batch of another shape gets its own graph and still matches.
    other = _batch(r, lengths=(40, 33, 30, 21), device="cuda")
    _assert_close(_outputs_and_grads(model, other, graphs), _outputs_and_grads(model, other, model.decoder))
    assert len(graphs.shapes) == 2


@cuda
def test_bf16_decoder_keeps_attention_state_in_float32():
    model = _model(1, "cuda")
    batch = _batch(1, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        memory = model.encode(batch.text, batch.text_lengths)
        mel, gate, align = model.decoder(memory, batch.mel, batch.text_lengths)
    assert align.dtype == torch.float32
    assert torch.allclose(align.sum(-1), torch.ones_like(align.sum(-1)), atol=1e-3)
