"""MCD-DTW: mel-cepstral distortion between two log-mel spectrograms after time warping.

Cepstra come from the log-mel frames by a DCT-II over the mel axis, scaled as the
cepstrum of a log amplitude spectrum is (``log S(w) = c0 + 2 sum_d c_d cos(d w)``, so
``c_d = 1/M sum_m log S_m cos(pi d (m + 1/2) / M)`` for M mel bands): the
mel-frequency cepstrum of the trainer's own features. Coefficient 0 (overall
loudness) is left out, as is usual for MCD, and coefficients 1..``n_coefficients``
are compared. The two sequences are aligned by dynamic time warping
(``librosa.sequence.dtw``, Euclidean frame distance), and the distortion of each
aligned frame pair is ``10 / ln(10) * sqrt(2 * sum_d (c_d - c'_d)^2)`` dB; MCD-DTW
is its mean along the warping path.

The decibel figure is relative to these features (natural-log mel magnitudes of
NVIDIA's front end), not to SPTK mel-cepstra, so it is not comparable with MCDs
published elsewhere. What a value means here comes from a calibration on espeak-ng
speech (docs/benchmarks.md, ``bench/mcd_calibration.py``): the same sentence at
another speaking rate, a different sentence, and noise.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.fft import dct

N_COEFFICIENTS = 24
_DB = 10.0 / math.log(10.0) * math.sqrt(2.0)


def mel_cepstrum(log_mel: np.ndarray, n_coefficients: int = N_COEFFICIENTS) -> np.ndarray:
    """``[n_mels, frames]`` natural-log mel -> ``[n_coefficients, frames]`` cepstra (c1..cK)."""
    log_mel = np.asarray(log_mel, dtype=np.float64)
    if log_mel.ndim != 2 or log_mel.shape[1] == 0:
        raise ValueError(f"expected a log-mel [n_mels, frames] with at least one frame, got {log_mel.shape}")
    if n_coefficients >= log_mel.shape[0]:
        raise ValueError(f"n_coefficients ({n_coefficients}) must be below the number of mel bands "
                         f"({log_mel.shape[0]})")
    # scipy's unnormalised DCT-II is 2 sum_m x_m cos(...): divide by 2M for c_d above.
    return dct(log_mel, type=2, axis=0)[1:n_coefficients + 1] / (2 * log_mel.shape[0])


def mcd_dtw(generated: np.ndarray, reference: np.ndarray, n_coefficients: int = N_COEFFICIENTS) -> float:
    """MCD-DTW in dB between two log-mels ``[n_mels, frames]`` (any lengths)."""
    from librosa.sequence import dtw  # by name: see trainer/audio.py on librosa's lazy loading

    x = mel_cepstrum(generated, n_coefficients)
    y = mel_cepstrum(reference, n_coefficients)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan
    _, path = dtw(X=x, Y=y, metric="euclidean", backtrack=True)
    diff = x[:, path[:, 0]] - y[:, path[:, 1]]
    return float(_DB * np.sqrt((diff ** 2).sum(axis=0)).mean())
