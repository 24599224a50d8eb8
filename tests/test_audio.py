"""Audio front end: mel parity with an independent float64 reference, WAV I/O, Griffin-Lim."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from trainer.audio import AudioError, griffin_lim, load_wav, mel_spectrogram, save_wav
from trainer.config import AudioConfig
from trainer.errors import UserError

SR = 22050


# ---------------------------------------------------------------------------
# Reference: NVIDIA's TacotronSTFT written out from first principles in float64.
# ---------------------------------------------------------------------------

def _hz_to_mel(hz):
    """Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(hz < min_log_hz, hz / f_sp, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(mel < min_log_mel, mel * f_sp, min_log_hz * np.exp(logstep * (mel - min_log_mel)))


def reference_mel_basis(sr, n_fft, n_mels, fmin, fmax):
    """Triangular filters on FFT bin frequencies, each scaled to unit area (Slaney)."""
    bin_hz = np.arange(n_fft // 2 + 1) * sr / n_fft
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    basis = np.zeros((n_mels, bin_hz.size))
    for i in range(n_mels):
        lo, centre, hi = edges[i], edges[i + 1], edges[i + 2]
        rising = (bin_hz - lo) / (centre - lo)
        falling = (hi - bin_hz) / (hi - centre)
        basis[i] = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (hi - lo))
    return basis


def reference_mel(audio, cfg: AudioConfig):
    x = np.asarray(audio, dtype=np.float64)
    n_fft, hop, win = cfg.filter_length, cfg.hop_length, cfg.win_length
    padded = np.pad(x, (n_fft // 2, n_fft // 2), mode="reflect")
    n_frames = 1 + (padded.size - n_fft) // hop
    frames = np.stack([padded[i * hop : i * hop + n_fft] for i in range(n_frames)])
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left : left + win] = hann
    spectrum = np.fft.rfft(frames * window, axis=1)
    magnitude = np.sqrt(spectrum.real**2 + spectrum.imag**2).T  # [bins, frames]
    basis = reference_mel_basis(cfg.sampling_rate, n_fft, cfg.n_mel_channels, cfg.mel_fmin, cfg.mel_fmax)
    return np.log(np.maximum(basis @ magnitude, 1e-5))


def chirps(seconds=1.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    x = (
        0.3 * np.sin(2 * np.pi * (100 * t + 2000 * t**2))
        + 0.2 * np.sin(2 * np.pi * (3000 * t - 1200 * t**2))
        + 0.1 * np.sin(2 * np.pi * 440 * t) * np.exp(-3 * t)
        + 0.02 * rng.standard_normal(t.size)
    )
    return (x / np.abs(x).max() * 0.9).astype(np.float32)


def near_silence(seconds=0.7, seed=1):
    # Noise this faint puts mel energies around the 1e-5 clamp: some bins below it.
    rng = np.random.default_rng(seed)
    return (1.5e-5 * rng.standard_normal(int(SR * seconds))).astype(np.float32)


def test_reference_filterbank_matches_librosa():
    import librosa

    ours = reference_mel_basis(SR, 1024, 80, 0.0, 8000.0)
    theirs = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0, dtype=np.float64)
    assert np.abs(ours - theirs).max() < 1e-6


@pytest.mark.parametrize("signal", [chirps, near_silence], ids=["chirps", "near-silence"])
def test_mel_matches_reference(signal):
    cfg = AudioConfig()
    audio = signal()
    ref = reference_mel(audio, cfg)
    ours = mel_spectrogram(audio, cfg)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float32
    assert ours.shape == ref.shape == (80, 1 + len(audio) // 256)
    diff = np.abs(ours.astype(np.float64) - ref)
    assert diff.max() < 1e-3 and diff.mean() < 1e-5, (diff.max(), diff.mean())
    if signal is near_silence:
        clamped = (ref <= math.log(1e-5) + 1e-12).mean()
        assert 0.1 < clamped < 0.9, clamped


def test_mel_torch_float32_matches_reference_and_stays_a_tensor():
    cfg = AudioConfig()
    audio = chirps()
    ours = mel_spectrogram(torch.from_numpy(audio), cfg)
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32
    diff = np.abs(ours.numpy().astype(np.float64) - reference_mel(audio, cfg))
    assert diff.max() < 1e-3 and diff.mean() < 1e-5, (diff.max(), diff.mean())


def test_mel_short_window_and_other_settings():
    # win_length < filter_length: the window is zero-padded around the centre.
    cfg = AudioConfig(sampling_rate=16000, filter_length=1024, win_length=800, hop_length=200,
                      n_mel_channels=64, mel_fmin=50.0, mel_fmax=7600.0)
    audio = chirps(0.5)
    ref = reference_mel(audio, cfg)
    ours = mel_spectrogram(audio, cfg)
    assert ours.shape == ref.shape == (64, 1 + len(audio) // 200)
    assert np.abs(ours - ref).max() < 1e-3


def test_mel_batch_equals_per_item():
    a, b = chirps(0.5, seed=2), chirps(0.5, seed=3)
    batch = mel_spectrogram(torch.from_numpy(np.stack([a, b])))
    assert batch.shape == (2, 80, 1 + len(a) // 256)
    for i, item in enumerate((a, b)):
        assert torch.allclose(batch[i], mel_spectrogram(torch.from_numpy(item)), atol=1e-5)


def test_mel_rejects_unscaled_or_short_audio():
    with pytest.raises(ValueError, match="int16"):
        mel_spectrogram(np.zeros(4000, dtype=np.int16))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        mel_spectrogram(np.full(4000, 2.0, dtype=np.float32))
    with pytest.raises(ValueError, match="too short"):
        mel_spectrogram(np.zeros(100, dtype=np.float32))


# ---------------------------------------------------------------------------
# WAV I/O
# ---------------------------------------------------------------------------

def test_save_then_load_round_trip(tmp_path):
    audio = chirps(0.3)
    path = tmp_path / "out.wav"
    save_wav(path, audio, SR)
    assert sf.info(str(path)).subtype == "PCM_16"
    loaded, rate = load_wav(path)
    assert rate == SR and loaded.dtype == np.float32 and loaded.shape == audio.shape
    assert np.abs(loaded - audio).max() < 1.5 / 32767
    # Atomic write leaves no temporary file behind.
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_save_wav_clips_and_accepts_tensors(tmp_path):
    path = tmp_path / "loud.wav"
    save_wav(path, torch.tensor([0.0, 2.0, -3.0, 0.5]), 8000)
    loaded, _ = load_wav(path)
    assert loaded.max() <= 1.0 and loaded.min() >= -1.0 and abs(loaded[1] - 32767 / 32768) < 1e-6


def test_load_wav_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav.*not found"):
        load_wav(path)


def test_load_wav_garbage_names_file_and_fix(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF not really a wave file at all" * 10)
    with pytest.raises(AudioError) as info:
        load_wav(path)
    assert str(path) in str(info.value) and "ffmpeg" in str(info.value)
    assert isinstance(info.value, UserError)


def test_load_wav_stereo_says_how_to_fix(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.zeros((1000, 2), dtype=np.float32), SR, subtype="PCM_16")
    with pytest.raises(AudioError) as info:
        load_wav(path)
    assert str(path) in str(info.value) and "sox" in str(info.value) and "-c 1" in str(info.value)


def test_load_wav_rejects_float_file_out_of_range(tmp_path):
    path = tmp_path / "hot.wav"
    sf.write(str(path), np.array([0.0, 1.5, -0.2], dtype=np.float32), SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="hot.wav"):
        load_wav(path)


# ---------------------------------------------------------------------------
# Griffin-Lim
# ---------------------------------------------------------------------------

def _dominant_hz(audio, sr=SR):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return np.argmax(spectrum) * sr / audio.size


@pytest.mark.parametrize("freq", [440.0, 1500.0])
def test_griffin_lim_keeps_pitch(freq):
    t = np.arange(SR) / SR
    sine = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    audio = griffin_lim(mel_spectrogram(sine), n_iter=30)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - sine.size) <= 256
    assert np.abs(audio).max() <= 1.0 and np.abs(audio).max() > 0.05
    # Mel bands near these frequencies are ~40-100 Hz wide; allow about one band.
    assert abs(_dominant_hz(audio) - freq) < 0.06 * freq + 30


def test_griffin_lim_is_deterministic():
    mel = mel_spectrogram(chirps(0.3))
    assert np.array_equal(griffin_lim(mel, n_iter=5), griffin_lim(mel, n_iter=5))


@pytest.mark.parametrize("frames", [2, 3, 4])
def test_griffin_lim_handles_a_mel_of_a_few_frames(frames):
    # A model whose gate fires at its first decoder step (r = 3) yields 3 frames: still a wav.
    mel = mel_spectrogram(chirps(0.3))[:, :frames]
    audio = griffin_lim(mel, n_iter=3)
    assert audio.shape == ((frames - 1) * 256,) and np.isfinite(audio).all()


def test_griffin_lim_of_one_frame_or_none_is_silence_not_a_crash():
    """A model whose gate fires at its first decoder step (r = 1) says one frame."""
    for frames in (0, 1):
        audio = griffin_lim(np.full((80, frames), -5.0, dtype=np.float32), n_iter=2)
        assert audio.dtype == np.float32 and audio.shape == (frames * 256,) and not audio.any()
    assert griffin_lim(np.full((80, 2), -5.0, dtype=np.float32), n_iter=2).shape == (256,)
