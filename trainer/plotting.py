"""Alignment and spectrogram images (PNG), written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.fsutil import atomic_write


def save_alignment_png(alignment: np.ndarray, path: Path, title: str = "",
                       mel: np.ndarray | None = None) -> Path:
    """``alignment`` is [decoder steps, tokens]; tokens on the y axis as NVIDIA plots it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # the OO API needs no global pyplot state

    rows = 2 if mel is not None else 1
    fig = Figure(figsize=(8, 3.2 * rows), dpi=90)
    ax = fig.add_subplot(rows, 1, 1)
    im = ax.imshow(alignment.T, aspect="auto", origin="lower", interpolation="none", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("decoder step")
    ax.set_ylabel("encoder token")
    ax.set_title(title)
    if mel is not None:
        ax2 = fig.add_subplot(rows, 1, 2)
        ax2.imshow(mel, aspect="auto", origin="lower", interpolation="none")
        ax2.set_xlabel("frame")
        ax2.set_ylabel("mel channel")
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, durable=False) as fh:
        fig.savefig(fh, format="png")
    return path
