"""Model layout parity with NVIDIA, r > 1, masking, and metrics on known alignments."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.config import LossConfig, ModelConfig
from trainer.data.dataset import Collate
from trainer.loss import LossWeights, guided_attention_penalty, tacotron2_loss
from trainer.metrics import alignment_scores, gate_balanced_accuracy
from trainer.model.recurrent import _GradBank
from trainer.model.tacotron2 import Tacotron2
from trainer.text import symbols_for

from conftest import MICRO_MODEL

REFERENCE = Path(__file__).parent / "fixtures" / "nvidia_tacotron2_state_dict.txt"


def test_state_dict_matches_nvidia_reference_at_default_hparams():
    reference = {}
    for line in REFERENCE.read_text().splitlines():
        name, shape, dtype = line.split("\t")
        reference[name] = (shape, dtype)
    model = Tacotron2(ModelConfig(), len(symbols_for()), 80)
    ours = {k: (str(tuple(v.shape)), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()}
    assert list(ours) == list(reference)  # same names, same order (optimizer state lines up)
    assert ours == reference
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 28193153


def _batch(r: int, lengths=(13, 9, 6), n_mels=80):
    torch.manual_seed(0)
    items = [(torch.randint(1, 60, (n,)), torch.randn(n_mels, 3 * n + 1)) for n in lengths]
    return Collate(r)(items)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_frames_per_step_trains_and_infers(r):
    cfg = ModelConfig(**{**MICRO_MODEL, "n_frames_per_step": r})
    model = Tacotron2(cfg, 148, 80)
    b = _batch(r)
    assert b.mel.size(2) % r == 0 and b.gate.size(1) == b.mel.size(2) // r
    out = model(b.text, b.text_lengths, b.mel)
    assert out.mel_postnet.shape == b.mel.shape
    assert out.alignments.shape == (3, b.mel.size(2) // r, b.text.size(1))
    parts = tacotron2_loss(out, b.mel, b.gate, b.mel_lengths, b.text_lengths, r,
                           LossWeights.from_config(LossConfig(guided_attention_weight=1.0)))
    parts.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    inf = model.eval().infer(b.text, b.text_lengths, max_decoder_steps=7)
    assert inf.mel.size(2) % r == 0 and inf.mel.size(2) <= 7 * r
    assert inf.lengths.max() <= 7 * r


@pytest.mark.parametrize("r,block", [(1, 64), (1, 3), (2, 5)])
def test_deferred_lstm_weight_gradient_equals_per_step_lstmcell(r, block, monkeypatch):
    """The CPU decoder's blocked weight gradient must equal nn.LSTMCell's per-step sum
    (block 64 holds the whole sequence; 3 and 5 fold it in several blocks)."""
    monkeypatch.setattr(_GradBank, "BLOCK_STEPS", block)
    cfg = ModelConfig(**{**MICRO_MODEL, "n_frames_per_step": r, "p_attention_dropout": 0.0,
                         "p_decoder_dropout": 0.0, "prenet_dropout": 0.0})
    b = _batch(r)
    grads, outputs = [], []
    for deferred in (False, True):
        torch.manual_seed(1)
        model = Tacotron2(cfg, 148, 80).train()
        model.decoder.deferred_weight_grad = deferred
        out = model(b.text, b.text_lengths, b.mel)
        (out.mel_postnet.pow(2).mean() + out.gate.pow(2).mean() + out.alignments.pow(3).sum()).backward()
        outputs.append(out.mel_postnet.detach())
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-4)  # summation order differs
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        # atol covers biases ahead of batch norm, whose true gradient is zero (pure rounding).
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)
    # The rnn weights really got gradients (not zeros from a tap that never fired).
    assert grads[1]["decoder.decoder_rnn.weight_hh"].abs().sum() > 0
    assert grads[1]["decoder.attention_rnn.weight_ih"].abs().sum() > 0


def test_gate_target_marks_the_step_holding_the_last_real_frame():
    b = Collate(2)([(torch.tensor([1, 2]), torch.zeros(80, 5)), (torch.tensor([3]), torch.zeros(80, 8))])
    # 5 frames, r=2 -> steps (0,1) (2,3) (4,pad): the third step stops; 8 frames -> the fourth.
    assert b.gate.tolist() == [[0, 0, 1, 1], [0, 0, 0, 1]]


def test_loss_does_not_depend_on_padding():
    """The same utterance with and without 20 padded frames of garbage gives the same loss."""
    from trainer.model.tacotron2 import TacotronOutput

    torch.manual_seed(1)
    t, n, r = 10, 6, 2
    target, pred, post = torch.randn(1, 80, t), torch.randn(1, 80, t), torch.randn(1, 80, t)
    gate_logits, align = torch.randn(1, t // r), torch.softmax(torch.randn(1, t // r, n), -1)
    gate_target = torch.zeros(1, t // r)
    gate_target[0, -1] = 1
    weights = LossWeights(5.0, 1.0, 0.2)
    lengths = (torch.tensor([t]), torch.tensor([n]))
    plain = tacotron2_loss(TacotronOutput(pred, post, gate_logits, align), target, gate_target, *lengths, r, weights)

    def pad(x, extra, dim, value):
        shape = list(x.shape)
        shape[dim] = extra
        return torch.cat([x, torch.full(shape, value)], dim)

    padded = tacotron2_loss(
        TacotronOutput(pad(pred, 20, 2, 99.0), pad(post, 20, 2, -99.0), pad(gate_logits, 10, 1, -50.0),
                       pad(pad(align, 10, 1, 0.5), 4, 2, 0.5)),
        pad(target, 20, 2, 0.0), pad(gate_target, 10, 1, 1.0), *lengths, r, weights)
    for name in ("mel", "mel_postnet", "gate", "guided_attention", "total"):
        assert getattr(padded, name).item() == pytest.approx(getattr(plain, name).item(), rel=1e-6), name


def _diag_alignment(t: int, n: int) -> torch.Tensor:
    a = torch.zeros(t, n)
    for i in range(t):
        a[i, round(i * (n - 1) / (t - 1))] = 1.0
    return a


def test_diagonality_separates_aligned_from_edge_piled_and_uniform():
    t, n = 60, 20
    lengths = (torch.tensor([t]), torch.tensor([n]))
    diagonal = _diag_alignment(t, n)
    first_token = torch.zeros(t, n)
    first_token[:, 0] = 1
    edges = torch.zeros(t, n)
    edges[: t // 2, 0] = 1
    edges[t // 2:, -1] = 1
    uniform = torch.full((t, n), 1.0 / n)
    scores = {name: alignment_scores(a.unsqueeze(0), *lengths, band=0.2)
              for name, a in [("diag", diagonal), ("first", first_token), ("edges", edges), ("uniform", uniform)]}
    focus, diag = (float(x) for x in scores["diag"])
    assert focus == 1.0 and diag == 1.0
    assert float(scores["first"][1]) <= 0.25
    assert float(scores["edges"][1]) <= 0.45
    assert float(scores["uniform"][0]) == pytest.approx(1 / n) and float(scores["uniform"][1]) < 0.5


def test_diagonality_ignores_padding_rows_and_columns():
    a = torch.zeros(1, 30, 15)
    a[0, :20, :10] = _diag_alignment(20, 10)
    a[0, 20:, 12] = 1.0  # garbage in the padded region
    focus, diag = alignment_scores(a, torch.tensor([20]), torch.tensor([10]), band=0.2)
    assert float(diag) == 1.0 and float(focus) == 1.0


def test_gate_balanced_accuracy_does_not_reward_a_silent_gate():
    target = torch.zeros(2, 50)
    target[:, 40:] = 1
    steps = torch.tensor([41, 41])
    never = torch.full((2, 50), -10.0)
    assert gate_balanced_accuracy(never, target, steps, 0.5) == pytest.approx(0.5)
    perfect = torch.where(target > 0, 10.0, -10.0)
    assert gate_balanced_accuracy(perfect, target, steps, 0.5) == pytest.approx(1.0)


def test_guided_attention_penalty_is_zero_on_the_diagonal_and_outside_lengths():
    w = guided_attention_penalty(torch.tensor([10]), torch.tensor([10]), 12, 14, sigma=0.2)
    assert w.shape == (1, 12, 14)
    assert torch.allclose(torch.diagonal(w[0, :10, :10]), torch.zeros(10))
    assert w[0, 10:].abs().sum() == 0 and w[0, :, 10:].abs().sum() == 0
    assert w[0, 0, 9] > 0.9
