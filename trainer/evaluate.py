"""Validation: teacher-forced losses and alignment metrics, plus free-running speech.

Prenet dropout stays on at evaluation (it does in Tacotron2 inference too), so the
evaluation runs under a forked, fixed-seed RNG: the same weights give the same
numbers, and the training RNG stream is untouched (exact resume depends on that).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

from trainer.config import EvalConfig
from trainer.control import EvalRecord
from trainer.custom_metrics import CustomMetric, MetricSettings
from trainer.data.dataset import Batch, Collate, TextMelDataset
from trainer.loss import LossWeights, tacotron2_loss
from trainer.metrics import alignment_scores, gate_balanced_accuracy
from trainer.model.tacotron2 import Tacotron2
from trainer.plotting import save_alignment_png
from trainer.speech.freerun import FreeRunningEvaluator, SpeechResult

EVAL_SEED = 20170104


class Evaluator:
    def __init__(self, dataset: TextMelDataset, collate: Collate, batch_size: int, cfg: EvalConfig,
                 gate_threshold: float, image_dir: Path, speech: FreeRunningEvaluator | None = None,
                 metrics: Sequence[tuple[CustomMetric, MetricSettings]] = ()) -> None:
        self.cfg = cfg
        self.speech = speech
        self.metrics = list(metrics)  # custom metrics (trainer/custom_metrics.py) with their settings
        self.gate_threshold = gate_threshold
        self.image_dir = Path(image_dir)
        # Fixed order, sorted by length: the same batches every time, little padding.
        order = sorted(range(len(dataset)), key=lambda i: dataset.lengths[i])
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        if cfg.max_batches and len(batches) > cfg.max_batches:
            # Evenly spaced over the length range, not just the shortest clips.
            step = (len(batches) - 1) / max(cfg.max_batches - 1, 1)
            batches = [batches[round(i * step)] for i in range(cfg.max_batches)]
        self.batches = [collate([dataset[i] for i in b]) for b in batches]

    @torch.no_grad()
    def run(self, model: Tacotron2, weights: LossWeights, step: int, device: torch.device,
            autocast) -> EvalRecord:
        was_training = model.training
        model.eval()
        r = model.n_frames_per_step
        sums = dict.fromkeys(("total", "mel", "mel_postnet", "gate", "guided_attention"), 0.0)
        extra = {m.name: 0.0 for m, _ in self.metrics}
        focus, diag, gate_acc, n_utts = [], [], [], 0
        shown: tuple | None = None  # (alignment, mel, diagonality) of one mid-length clip
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(EVAL_SEED)
            for cpu_batch in self.batches:
                batch: Batch = cpu_batch.to(device)
                with autocast():
                    out = model(batch.text, batch.text_lengths, batch.mel)
                parts = tacotron2_loss(out, batch.mel, batch.gate, batch.mel_lengths, batch.text_lengths, r, weights)
                b = batch.text.size(0)
                for k, v in parts.as_floats().items():
                    sums[k] += v * b
                steps = (batch.mel_lengths + r - 1) // r
                f, d = alignment_scores(out.alignments, steps, batch.text_lengths, self.cfg.diagonal_band)
                focus.append(f)
                diag.append(d)
                gate_acc.append(gate_balanced_accuracy(out.gate, batch.gate, steps, self.gate_threshold) * b)
                for metric, settings in self.metrics:
                    extra[metric.name] += float(metric.measure(batch, out, settings)) * b
                n_utts += b
                if shown is None and len(self.batches) // 2 == len(focus) - 1:
                    n, s = int(batch.text_lengths[0]), int(steps[0])
                    shown = (out.alignments[0, :s, :n].float().cpu().numpy(),
                             out.mel_postnet[0, :, : int(batch.mel_lengths[0])].float().cpu().numpy(), float(d[0]))
            speech = self.speech.run(model, step, autocast) if self.speech is not None else None
        model.train(was_training)
        focus_t, diag_t = torch.cat(focus), torch.cat(diag)
        aligned = ((focus_t >= self.cfg.aligned_focus) & (diag_t >= self.cfg.aligned_diagonality)).float().mean()
        image = None
        if shown is not None:
            image = str(save_alignment_png(shown[0], self.image_dir / f"step_{step:08d}.png",
                                           f"step {step}: diagonality {shown[2]:.2f}", mel=shown[1]))
        return EvalRecord(
            step=step, wall_time=time.time(),
            val_loss=sums["total"] / n_utts, val_mel_loss=sums["mel"] / n_utts,
            val_mel_postnet_loss=sums["mel_postnet"] / n_utts, val_gate_loss=sums["gate"] / n_utts,
            val_guided_attention_loss=sums["guided_attention"] / n_utts,
            diagonality=float(diag_t.mean()), focus=float(focus_t.mean()), aligned_fraction=float(aligned),
            gate_accuracy=sum(gate_acc) / n_utts, alignment_image=image,
            extra={name: total / n_utts for name, total in extra.items()},
            **(speech_fields(speech) if speech is not None else {}),
        )


def speech_fields(result: SpeechResult) -> dict:
    """The EvalRecord fields of a free-running pass."""
    s = result.summary
    return {"speech_score": s.score, "mcd_dtw": s.mcd_dtw, "speech": s,
            "speech_image": str(result.image) if result.image else None,
            "speech_audio": [str(p) for p in result.audio],
            "speech_details": str(result.details) if result.details else None}
