"""Inference: checkpoint -> model, text -> mel -> audio (Griffin-Lim) + alignment plot."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.audio import griffin_lim, save_wav
from trainer.checkpoint import CheckpointError, load_checkpoint
from trainer.config import RunConfig
from trainer.model.tacotron2 import Tacotron2
from trainer.plotting import save_alignment_png
from trainer.text import symbols_for, text_to_sequence


@dataclass
class Synthesis:
    mel: np.ndarray  # [n_mels, frames]
    audio: np.ndarray  # float waveform in [-1, 1]
    alignment: np.ndarray  # [decoder steps, tokens]
    stopped: bool  # did the gate fire before max_decoder_steps


def load_model(checkpoint: str | Path, config: RunConfig | None = None,
               device: str | torch.device = "cpu") -> tuple[Tacotron2, RunConfig]:
    """Our checkpoints carry their config; an NVIDIA checkpoint needs ``config`` (default: NVIDIA hparams)."""
    ckpt = load_checkpoint(checkpoint)
    ours = ckpt.get("smart_tuner")
    if config is None:
        config = RunConfig.model_validate(ours["config"]) if ours else RunConfig()
    n_symbols = len(symbols_for(config.text))
    model = Tacotron2(config.model, n_symbols, config.audio.n_mel_channels)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint}: weights do not fit the model of its config "
                              f"({str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}); "
                              "pass the config it was trained with (--config)") from None
    return model.to(device).eval(), config


def synthesize(model: Tacotron2, config: RunConfig, text: str, max_decoder_steps: int | None = None,
               gate_threshold: float | None = None, griffin_lim_iters: int = 60, seed: int = 0) -> Synthesis:
    device = next(model.parameters()).device
    ids = torch.tensor([text_to_sequence(text, config.text)], dtype=torch.long, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # prenet dropout is on at inference: seed it for repeatable audio
        out = model.infer(ids, max_decoder_steps=max_decoder_steps, gate_threshold=gate_threshold)
    n = int(out.lengths[0])
    mel = out.mel_postnet[0, :, :n].float().cpu().numpy()
    steps = (n + model.n_frames_per_step - 1) // model.n_frames_per_step
    alignment = out.alignments[0, :steps].float().cpu().numpy()
    stopped = bool(out.stopped[0])
    if not stopped:
        warnings.warn(
            f"the stop gate never fired within {out.alignments.size(1)} decoder steps; the audio runs to the "
            "limit (train longer, raise loss.gate_pos_weight, or lower --gate-threshold)", stacklevel=2)
    audio = griffin_lim(mel, config.audio, n_iter=griffin_lim_iters)
    return Synthesis(mel, audio, alignment, stopped)


def synthesize_to_files(checkpoint: str | Path, text: str, out: str | Path, config: RunConfig | None = None,
                        **kwargs) -> tuple[Path, Path, Synthesis]:
    model, config = load_model(checkpoint, config)
    result = synthesize(model, config, text, **kwargs)
    out = Path(out)
    save_wav(out, result.audio, config.audio.sampling_rate)
    plot = save_alignment_png(result.alignment, out.with_suffix(".png"),
                              f"{out.name}: {'stopped' if result.stopped else 'gate never fired'}", mel=result.mel)
    return out, plot, result
