"""Free-running evaluation of any checkpoint (``smart-tuner eval``), ours or NVIDIA's.

The checkpoint's weights, the run's validation set and probe sentences: our
checkpoints carry their config; an NVIDIA checkpoint needs ``--config`` (its data
section says where the validation set is). Runs on the CPU with the evaluation's
seed: the same checkpoint always gets the same verdicts. They can differ a little from
the figures the run logged at that step, where the free-running pass drew its prenet
dropout after the teacher-forced batches (and maybe on a GPU).
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.config import RunConfig
from trainer.speech.freerun import SpeechResult, build_free_running


def evaluate_checkpoint(checkpoint: str | Path, config: RunConfig | None = None, out_dir: Path | None = None,
                        step: int | None = None, device: str = "cpu") -> SpeechResult:
    from trainer.data.dataset import TextMelDataset
    from trainer.evaluate import EVAL_SEED
    from trainer.inference import load_model

    model, config = load_model(checkpoint, config, device)
    d = config.data
    val_set = TextMelDataset(d.validation_files, d, config.audio, config.text)
    speech_cfg = config.eval.model_copy(update={"speech": config.eval.speech.model_copy(update={"enabled": True})})
    evaluator = build_free_running(val_set, speech_cfg, config.text, config.audio, d,
                                   config.model.n_frames_per_step, d.batch_size, out_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EVAL_SEED)
        return evaluator.run(model, step)
