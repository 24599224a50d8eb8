"""Audio front end: WAV in and out, log-mel features, Griffin-Lim vocoder.

``mel_spectrogram`` reproduces NVIDIA/tacotron2's ``TacotronSTFT.mel_spectrogram``
(reflect padding, periodic Hann window, magnitude STFT, librosa's Slaney mel basis,
natural log clamped at 1e-5) so that their checkpoints and vocoders fit our
features. NVIDIA computes the STFT as a strided convolution with a windowed Fourier
basis; ``torch.stft`` with ``center=True`` is the same transform, faster.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.config import AudioConfig
from trainer.errors import UserError
from trainer.fsutil import atomic_write


class AudioError(UserError):
    """An audio file that cannot be used; the message names it and says what to do."""


# ---------------------------------------------------------------------------
# Mel front end
# ---------------------------------------------------------------------------

# Hashable slice of AudioConfig that the STFT and mel basis depend on (pydantic
# models are not hashable, and the cache must not depend on unrelated fields).
_StftKey = tuple[int, int, int, int, int, float, float]


def _stft_key(config: AudioConfig) -> _StftKey:
    return (
        config.sampling_rate, config.filter_length, config.hop_length, config.win_length,
        config.n_mel_channels, float(config.mel_fmin), float(config.mel_fmax),
    )


@lru_cache(maxsize=8)
def _mel_basis(key: _StftKey) -> np.ndarray:
    """Slaney-normalised mel filterbank, ``[n_mels, filter_length // 2 + 1]`` float64."""
    # Slow to import; only needed the first time a basis is built. The submodule by name:
    # librosa's lazy attribute loading failed on a GPU image that had it installed with
    # pip --target ("module 'librosa' has no attribute 'filters'").
    from librosa.filters import mel

    sampling_rate, n_fft, _, _, n_mels, fmin, fmax = key
    return mel(sr=sampling_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float64)


def _window(key: _StftKey) -> np.ndarray:
    """Periodic Hann of ``win_length``, zero-padded to ``filter_length`` around the centre."""
    _, n_fft, _, win_length, _, _, _ = key
    n = np.arange(win_length)
    # Periodic ("fftbins") Hann: scipy.signal.get_window('hann', N, fftbins=True).
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    left = (n_fft - win_length) // 2
    return np.pad(hann, (left, n_fft - win_length - left))


@lru_cache(maxsize=16)
def _stft_constants(key: _StftKey, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(window, mel basis) on ``device`` in ``dtype``, built once per setting."""
    window = torch.from_numpy(_window(key)).to(device=device, dtype=dtype)
    basis = torch.from_numpy(_mel_basis(key)).to(device=device, dtype=dtype)
    return window, basis


def _check_waveform(x: torch.Tensor, min_length: int) -> None:
    if not (x.is_floating_point()):
        # An int16 array passed as is gives a plausible-looking but wrong mel.
        raise ValueError(f"audio must be float in [-1, 1], got {x.dtype}; divide int16 samples by 32768")
    if x.dim() not in (1, 2):
        raise ValueError(f"audio must be [samples] or [batch, samples], got shape {tuple(x.shape)}")
    if x.shape[-1] <= min_length:
        raise ValueError(
            f"audio too short: {x.shape[-1]} samples; reflect padding needs more than "
            f"filter_length // 2 = {min_length}"
        )
    peak = float(x.abs().max()) if x.numel() else 0.0
    if not np.isfinite(peak) or peak > 1.0:
        raise ValueError(f"audio must lie in [-1, 1], peak is {peak:g}; normalise it first")


def mel_spectrogram(audio: np.ndarray | torch.Tensor, config: AudioConfig | None = None) -> np.ndarray | torch.Tensor:
    """Log-mel ``[n_mels, frames]`` (or ``[B, n_mels, frames]``), frames = 1 + samples // hop.

    Numpy in, numpy out; tensor in, tensor out (on the input's device). Float32 out.
    Numpy input is computed in float64, tensors in their own precision (float32 on
    GPU is NVIDIA's precision and fast).
    """
    config = config or AudioConfig()
    key = _stft_key(config)
    as_numpy = not isinstance(audio, torch.Tensor)
    x = torch.from_numpy(np.asarray(audio)) if as_numpy else audio
    _check_waveform(x, config.filter_length // 2)
    if as_numpy:
        x = x.to(torch.float64)
    elif x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)  # half precision is too coarse for the log of small bins
    window, basis = _stft_constants(key, str(x.device), x.dtype)
    spec = torch.stft(
        x, n_fft=config.filter_length, hop_length=config.hop_length, win_length=config.filter_length,
        window=window, center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True,
    )
    magnitude = spec.abs()
    mel = torch.matmul(basis, magnitude)
    log_mel = torch.log(torch.clamp(mel, min=config.log_clamp)).to(torch.float32)
    return log_mel.numpy() if as_numpy else log_mel


# ---------------------------------------------------------------------------
# Griffin-Lim: the vocoder that needs no weights
# ---------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _inverse_mel_basis(key: _StftKey) -> np.ndarray:
    return np.linalg.pinv(_mel_basis(key))


def griffin_lim(
    mel: np.ndarray | torch.Tensor,
    config: AudioConfig | None = None,
    n_iter: int = 60,
    power: float = 1.5,
    momentum: float = 0.99,
    seed: int = 0,
) -> np.ndarray:
    """Waveform in [-1, 1] from a log-mel ``[n_mels, frames]``.

    The linear magnitude comes from the pseudo-inverse of the mel basis (clamped at
    zero); ``power`` > 1 sharpens harmonics against the smearing that inversion
    causes, at the same peak level. Phase is recovered with the fast (momentum)
    Griffin-Lim of Perraudin et al. 2013; ``seed`` fixes the initial phase so the
    same mel always gives the same audio.
    """
    config = config or AudioConfig()
    key = _stft_key(config)
    log_mel = torch.as_tensor(mel).detach().to(device="cpu", dtype=torch.float32)
    if log_mel.dim() != 2 or log_mel.shape[0] != config.n_mel_channels:
        raise ValueError(f"mel must be [{config.n_mel_channels}, frames], got shape {tuple(log_mel.shape)}")
    if log_mel.shape[1] < 2:
        # A model whose gate fires at its first decoder step (r = 1) says one frame: no
        # signal to invert (the STFT frames span nothing), so that much silence.
        return np.zeros(log_mel.shape[1] * config.hop_length, dtype=np.float32)
    inverse = torch.from_numpy(_inverse_mel_basis(key)).to(torch.float32)
    magnitude = torch.clamp(inverse @ torch.exp(log_mel), min=0.0)
    peak = float(magnitude.max())
    if peak > 0:
        magnitude = (magnitude / peak) ** power * peak

    window = torch.from_numpy(_window(key)).to(torch.float32)
    stft_args: dict[str, Any] = dict(
        n_fft=config.filter_length, hop_length=config.hop_length, win_length=config.filter_length,
        window=window, center=True,
    )
    length = (log_mel.shape[1] - 1) * config.hop_length
    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator) * (2 * np.pi)
    angles = torch.polar(torch.ones_like(magnitude), phase)
    previous = torch.zeros_like(angles)
    # Reflection needs more samples than half a window; a mel of a few frames (a model
    # whose gate fires at once) is padded with zeros instead.
    pad_mode = "reflect" if length > config.filter_length // 2 else "constant"
    for _ in range(n_iter):
        audio = torch.istft(magnitude * angles, length=length, **stft_args)
        rebuilt = torch.stft(audio, pad_mode=pad_mode, return_complex=True, **stft_args)
        # Momentum step: push past the projection in the direction it moved.
        angles = rebuilt - (momentum / (1 + momentum)) * previous
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    audio = torch.istft(magnitude * angles, length=length, **stft_args)
    return np.clip(audio.numpy(), -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------
# WAV files
# ---------------------------------------------------------------------------


def load_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a mono audio file as float32 in [-1, 1]; returns (samples, sampling rate)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        what = "is a folder, not an audio file" if path.is_dir() else "not found"
        raise AudioError(f"{path}: {what}; check the audio path in the filelist")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(
            f"{path}: cannot read audio ({exc}); re-encode it as 16-bit PCM WAV, "
            f"e.g. ffmpeg -i {path.name} -c:a pcm_s16le out.wav"
        ) from None
    if data.shape[1] != 1:
        raise AudioError(
            f"{path}: has {data.shape[1]} channels, the trainer needs mono; "
            f"convert it with: sox {path.name} -c 1 out.wav"
        )
    if data.shape[0] == 0:
        raise AudioError(f"{path}: contains no samples; re-record it or remove it from the filelist")
    samples = data[:, 0]
    peak = float(np.abs(samples).max())
    if not np.isfinite(peak) or peak > 1.0:
        # Only float WAVs can do this; integer PCM always decodes into [-1, 1).
        raise AudioError(
            f"{path}: float samples reach {peak:g}, outside [-1, 1]; "
            f"normalise it, e.g. sox {path.name} -b 16 out.wav gain -n -1"
        )
    return np.ascontiguousarray(samples), int(rate)


def save_wav(path: str | Path, audio: np.ndarray | torch.Tensor, sampling_rate: int) -> None:
    """Write 16-bit PCM WAV atomically: a reader never sees a half-written file."""
    import soundfile as sf

    path = Path(path)
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    samples = np.asarray(audio, dtype=np.float64).squeeze()
    if samples.ndim != 1:
        raise ValueError(f"save_wav needs mono audio [samples], got shape {np.shape(audio)}")
    if not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive integer, got {sampling_rate!r}")
    # Explicit conversion, so clipping and rounding do not depend on libsndfile settings.
    pcm = np.round(np.clip(np.nan_to_num(samples), -1.0, 1.0) * 32767.0).astype(np.int16)

    with atomic_write(path) as handle:
        sf.write(handle, pcm, int(sampling_rate), format="WAV", subtype="PCM_16")


