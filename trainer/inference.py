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
from trainer.text import TextError, symbols_for, text_to_sequence


# Mel frames per text token when a checkpoint does not say (NVIDIA's): LJSpeech reads
# about 15 characters a second, 86 frames a second at hop 256 and 22050 Hz.
DEFAULT_FRAMES_PER_TOKEN = 5.5


@dataclass
class Synthesis:
    mel: np.ndarray  # [n_mels, frames]
    audio: np.ndarray  # float waveform in [-1, 1]
    alignment: np.ndarray  # [decoder steps, tokens]
    stopped: bool  # did the gate fire before max_decoder_steps
    expected_frames: int = 0  # how long the text should take, from the checkpoint's data
    problems: tuple[str, ...] = ()  # what is wrong with this audio, in words (empty: nothing seen)


def load_model(checkpoint: str | Path, config: RunConfig | None = None,
               device: str | torch.device = "cpu") -> tuple[Tacotron2, RunConfig]:
    """Our checkpoints carry their config; an NVIDIA checkpoint needs ``config`` (default: NVIDIA hparams)."""
    return model_from(load_checkpoint(checkpoint), checkpoint, config, device)


def model_from(ckpt: dict, checkpoint: str | Path, config: RunConfig | None = None,
               device: str | torch.device = "cpu") -> tuple[Tacotron2, RunConfig]:
    """The model of a loaded checkpoint (``checkpoint`` names it in errors)."""
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
               gate_threshold: float | None = None, griffin_lim_iters: int = 60, seed: int = 0,
               frames_per_token: float = DEFAULT_FRAMES_PER_TOKEN) -> Synthesis:
    """Speak ``text``. What looks wrong with the result (cut off at the step limit, a gate
    that fired far too early or never) comes back in ``problems`` and as a warning."""
    if not text or not text.strip():
        raise TextError("the text is empty: give the sentence to speak, e.g. --text \"Hello there.\"")
    device = next(model.parameters()).device
    tokens = text_to_sequence(text, config.text)
    if not tokens:
        raise TextError(f"{text[:60]!r} has nothing to say once cleaned (only punctuation?): give words to speak")
    ids = torch.tensor([tokens], dtype=torch.long, device=device)
    limit = max_decoder_steps or model.cfg.max_decoder_steps
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # prenet dropout is on at inference: seed it for repeatable audio
        out = model.infer(ids, max_decoder_steps=limit, gate_threshold=gate_threshold)
    n = int(out.lengths[0])
    mel = out.mel_postnet[0, :, :n].float().cpu().numpy()
    steps = (n + model.n_frames_per_step - 1) // model.n_frames_per_step
    alignment = out.alignments[0, :steps].float().cpu().numpy()
    stopped = bool(out.stopped[0])
    expected = max(1, round(frames_per_token * len(tokens)))
    problems = _judge(alignment, stopped, n, expected, limit, config)
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    audio = griffin_lim(mel, config.audio, n_iter=griffin_lim_iters)
    return Synthesis(mel, audio, alignment, stopped, expected, tuple(problems))


def _judge(alignment: np.ndarray, stopped: bool, frames: int, expected: int, limit: int, config: RunConfig) -> list[str]:
    from trainer.speech.attention import attention_health

    a = config.audio
    seconds = frames * a.hop_length / a.sampling_rate
    wanted = expected * a.hop_length / a.sampling_rate
    health = attention_health(alignment, config.eval.speech.end_tokens)
    if not stopped and not health.reached_end:
        return [f"the text was cut off: the decoder-step limit ({limit} steps, {seconds:.1f} s) came before the "
                f"attention reached the end of the text; split it into shorter sentences (or raise "
                f"--max-decoder-steps)"]
    if not stopped:
        return [f"the stop gate never fired within {limit} decoder steps, though the attention reached the end of "
                "the text: the audio runs on to the limit (train longer, or lower --gate-threshold)"]
    if frames < config.eval.speech.premature_ratio * expected:
        return [f"the stop gate fired after {seconds:.2f} s, {frames / expected:.0%} of the ~{wanted:.1f} s this text "
                "takes: the model stops far too early (not trained enough to speak? smart-tuner eval tells)"]
    return []


def frames_per_token_of(ckpt: dict) -> float:
    """The speaking rate of the data a checkpoint was trained on (saved with it), or the default."""
    rate = (ckpt.get("smart_tuner") or {}).get("frames_per_token")
    return float(rate) if rate else DEFAULT_FRAMES_PER_TOKEN


def synthesize_to_files(checkpoint: str | Path, text: str, out: str | Path, config: RunConfig | None = None,
                        **kwargs) -> tuple[Path, Path, Synthesis]:
    ckpt = load_checkpoint(checkpoint)
    model, config = model_from(ckpt, checkpoint, config)
    kwargs.setdefault("frames_per_token", frames_per_token_of(ckpt))
    result = synthesize(model, config, text, **kwargs)
    out = Path(out)
    save_wav(out, result.audio, config.audio.sampling_rate)
    plot = save_alignment_png(result.alignment, out.with_suffix(".png"),
                              f"{out.name}: {result.problems[0][:90] if result.problems else 'stopped'}",
                              mel=result.mel)
    return out, plot, result
