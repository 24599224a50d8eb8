"""Inference: checkpoint -> model, text -> mel -> audio (Griffin-Lim) + alignment plot."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.audio import griffin_lim, save_wav
from trainer.checkpoint import CheckpointError, load_checkpoint
from trainer.config import RunConfig, config_from_checkpoint
from trainer.model.tacotron2 import Tacotron2
from trainer.plotting import save_alignment_png
from trainer.text import TextError, symbols_for, text_to_sequence

# Mel frames per text token when a checkpoint does not say (NVIDIA's): LJSpeech reads
# about 15 characters a second, 86 frames a second at hop 256 and 22050 Hz.
DEFAULT_FRAMES_PER_TOKEN = 5.5


@dataclass
class Synthesis:
    """What ``synthesize`` and ``speak`` return: the mel, the audio and the attention,
    with what looks wrong with them in words."""

    mel: np.ndarray  # [n_mels, frames]
    audio: np.ndarray  # float waveform in [-1, 1]
    alignment: np.ndarray  # [decoder steps, tokens]
    stopped: bool  # did the gate fire before max_decoder_steps
    expected_frames: int = 0  # how long the text should take, from the checkpoint's data
    problems: tuple[str, ...] = ()  # what is wrong with this audio, in words (empty: nothing seen)
    parts: int = 1  # how many parts a long text was split into (at sentence ends)


def load_model(checkpoint: str | Path, config: RunConfig | None = None,
               device: str | torch.device = "cpu") -> tuple[Tacotron2, RunConfig]:
    """Our checkpoints carry their config; an NVIDIA checkpoint needs ``config`` (default: NVIDIA hparams)."""
    return model_from(load_checkpoint(checkpoint), checkpoint, config, device)


def model_from(ckpt: dict, checkpoint: str | Path, config: RunConfig | None = None,
               device: str | torch.device = "cpu") -> tuple[Tacotron2, RunConfig]:
    """The model of a loaded checkpoint (``checkpoint`` names it in errors)."""
    ours = ckpt.get("smart_tuner")
    if config is None:
        config = config_from_checkpoint(ours["config"]) if ours else RunConfig()
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
    if not any(ch.isalnum() for ch in text):
        raise TextError(f"{text[:60]!r} has no words to say (only punctuation and spaces): give words to speak")
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
    # griffin_lim_iters 0: the caller makes the audio (from several parts joined).
    audio = griffin_lim(mel, config.audio, n_iter=griffin_lim_iters) if griffin_lim_iters else np.zeros(0, np.float32)
    return Synthesis(mel, audio, alignment, stopped, expected, tuple(problems))


def _judge(alignment: np.ndarray, stopped: bool, frames: int, expected: int, limit: int,
           config: RunConfig) -> list[str]:
    from trainer.speech.attention import attention_health

    a = config.audio
    seconds = frames * a.hop_length / a.sampling_rate
    wanted = expected * a.hop_length / a.sampling_rate
    health = attention_health(alignment, config.eval.speech.end_tokens)
    if not stopped and not health.reached_end:
        read = _share_read(alignment)
        return [f"the text was cut off after about {read:.0%} of it: the decoder-step limit ({limit} steps, "
                f"{seconds:.1f} s) came before the attention reached its end; split it into shorter sentences "
                f"(or raise --max-decoder-steps)"]
    if not stopped:
        return [f"the stop gate never fired within {limit} decoder steps, though the attention reached the end of "
                "the text: the audio runs on to the limit (train longer, or lower --gate-threshold)"]
    if frames < config.eval.speech.premature_ratio * expected:
        return [f"the stop gate fired after {seconds:.2f} s, {frames / expected:.0%} of the ~{wanted:.1f} s this text "
                "takes: the model stops far too early (not trained enough to speak? smart-tuner eval tells)"]
    return []


def _share_read(alignment: np.ndarray) -> float:
    """How far into the text the attention got: the furthest token it focused on, as a share."""
    if alignment.size == 0:
        return 0.0
    return float((alignment.argmax(axis=1).max() + 1) / alignment.shape[1])


# -- long text: split at sentence ends -------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
_CLAUSE_END = re.compile(r"(?<=[,])\s+")
# A part is planned to fill at most this share of the decoder-step limit: speaking rates vary.
_PLAN_SHARE = 0.7
# Silence between parts, seconds.
_PAUSE_SECONDS = 0.2


def split_text(text: str, max_chars: int) -> list[str]:
    """``text`` in parts of at most ``max_chars`` characters where it can be, cut at
    sentence ends (then at commas for a sentence too long alone); consecutive short
    sentences share a part. A clause longer than ``max_chars`` stays whole."""
    def pieces(chunk: str, patterns: list[re.Pattern]) -> list[str]:
        if len(chunk) <= max_chars or not patterns:
            return [chunk]
        out: list[str] = []
        for piece in patterns[0].split(chunk):
            out += pieces(piece, patterns[1:])
        return out

    parts: list[str] = []
    for piece in pieces(" ".join(text.split()), [_SENTENCE_END, _CLAUSE_END]):
        if parts and len(parts[-1]) + 1 + len(piece) <= max_chars:
            parts[-1] += " " + piece
        else:
            parts.append(piece)
    return [p for p in parts if any(ch.isalnum() for ch in p)] or [text]


def speak(model: Tacotron2, config: RunConfig, text: str, max_decoder_steps: int | None = None,
          gate_threshold: float | None = None, griffin_lim_iters: int = 60, seed: int = 0,
          frames_per_token: float = DEFAULT_FRAMES_PER_TOKEN, split: bool = True) -> Synthesis:
    """Speak ``text`` of any length: a text longer than the decoder-step limit allows (at the
    checkpoint's speaking rate) is split at sentence ends, each part spoken on its own and
    the parts joined with a short pause; ``split=False`` speaks it in one go."""
    if not text or not text.strip():
        raise TextError("the text is empty: give the sentence to speak, e.g. --text \"Hello there.\"")
    limit = max_decoder_steps or model.cfg.max_decoder_steps
    tokens = len(text_to_sequence(text, config.text)) if any(ch.isalnum() for ch in text) else 0
    budget_tokens = _PLAN_SHARE * limit * model.n_frames_per_step / frames_per_token
    parts = [text]
    if split and tokens > budget_tokens:
        parts = split_text(text, max(1, int(budget_tokens * len(text) / tokens)))
    kwargs: dict[str, Any] = dict(max_decoder_steps=limit, gate_threshold=gate_threshold,
                                  griffin_lim_iters=griffin_lim_iters, seed=seed, frames_per_token=frames_per_token)
    if len(parts) == 1:
        return synthesize(model, config, parts[0], **kwargs)
    spoken = []
    problems: list[str] = []
    for i, part in enumerate(parts):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said once below, with the part they belong to
            one = synthesize(model, config, part, **{**kwargs, "griffin_lim_iters": 0})
        spoken.append(one)
        first_words = " ".join(part.split()[:5])
        problems += [f"part {i + 1} of {len(parts)} ({first_words!r}...): {p}" for p in one.problems]
    a = config.audio
    pause = np.full((a.n_mel_channels, round(_PAUSE_SECONDS * a.sampling_rate / a.hop_length)),
                    float(min(one.mel.min() for one in spoken)), dtype=np.float32)
    mels = [m for one in spoken for m in (one.mel, pause)][:-1]
    mel = np.concatenate(mels, axis=1)
    alignment = np.zeros((sum(o.alignment.shape[0] for o in spoken), sum(o.alignment.shape[1] for o in spoken)),
                         dtype=np.float32)
    r = c = 0
    for one in spoken:  # block diagonal: each part attends to its own text
        alignment[r:r + one.alignment.shape[0], c:c + one.alignment.shape[1]] = one.alignment
        r, c = r + one.alignment.shape[0], c + one.alignment.shape[1]
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    return Synthesis(mel, griffin_lim(mel, config.audio, n_iter=griffin_lim_iters), alignment,
                     all(o.stopped for o in spoken), sum(o.expected_frames for o in spoken), tuple(problems),
                     parts=len(parts))


def frames_per_token_of(ckpt: dict) -> float:
    """The speaking rate of the data a checkpoint was trained on (saved with it), or the default."""
    rate = (ckpt.get("smart_tuner") or {}).get("frames_per_token")
    return float(rate) if rate else DEFAULT_FRAMES_PER_TOKEN


def synthesize_to_files(checkpoint: str | Path, text: str, out: str | Path, config: RunConfig | None = None,
                        **kwargs) -> tuple[Path, Path, Synthesis]:
    ckpt = load_checkpoint(checkpoint)
    model, config = model_from(ckpt, checkpoint, config)
    kwargs.setdefault("frames_per_token", frames_per_token_of(ckpt))
    result = speak(model, config, text, **kwargs)
    out = Path(out)
    save_wav(out, result.audio, config.audio.sampling_rate)
    plot = save_alignment_png(result.alignment, out.with_suffix(".png"),
                              f"{out.name}: {result.problems[0][:90] if result.problems else 'stopped'}",
                              mel=result.mel)
    return out, plot, result
