"""Checkpoints: NVIDIA-compatible, atomic, verified on load, pruned by policy.

A checkpoint is a dict with NVIDIA/tacotron2's keys (``iteration``, ``state_dict``,
``optimizer``, ``learning_rate``) so their tools read ours, plus a ``smart_tuner``
entry with everything needed to resume exactly: config, schedule, RNG states, data
position, loss weights, gradient clip, metrics at save, applied command ids.

Files are written to a temporary name in the same folder, fsynced and renamed, so a
``kill -9`` at any moment leaves either the old file set or the new one, never a
half-written checkpoint under a real name.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.errors import UserError
from trainer.fsutil import atomic_write, sweep_temp_files

FORMAT_VERSION = 1
_NAME = re.compile(r"^checkpoint_(\d{8,})\.pt$")
NVIDIA_KEYS = ("iteration", "state_dict", "optimizer", "learning_rate")


class CheckpointError(UserError):
    pass


def atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_write(path) as fh:
        torch.save(obj, fh)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and sanity-check a checkpoint (ours or NVIDIA's) onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        # weights_only=False: NVIDIA checkpoints and our RNG states hold numpy objects.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path}: checkpoint is truncated or corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            "use an earlier checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Tacotron2 checkpoint (no 'state_dict' entry)")
    return ckpt


@dataclass(frozen=True)
class CheckpointFile:
    step: int
    path: Path


class CheckpointManager:
    """Owns one folder of ``checkpoint_XXXXXXXX.pt`` files plus ``best.pt``."""

    def __init__(self, directory: Path, keep_last: int, keep_best: bool) -> None:
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.keep_best = keep_best

    @property
    def best_path(self) -> Path:
        return self.directory / "best.pt"

    def path_for(self, step: int) -> Path:
        return self.directory / f"checkpoint_{step:08d}.pt"

    def list(self) -> list[CheckpointFile]:
        """Periodic checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [CheckpointFile(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found, key=lambda c: c.step)

    def save(self, payload: dict[str, Any], step: int, best: bool = False) -> Path:
        path = self.path_for(step)
        atomic_torch_save(payload, path)
        if best and self.keep_best:
            atomic_torch_save(payload, self.best_path)
        self._prune()
        return path

    def _prune(self) -> None:
        for old in self.list()[: -self.keep_last]:
            old.path.unlink(missing_ok=True)
        # Temp files of writers killed mid-save are garbage.
        sweep_temp_files(self.directory)

    @property
    def abandoned_dir(self) -> Path:
        return self.directory / "abandoned"

    def set_aside_after(self, step: int) -> int:
        """After a rollback to ``step``, move the later checkpoints out of the way.

        They belong to the abandoned branch: left in place they would look newest to
        ``--resume`` and to pruning. They are kept (not deleted) for post-mortems.
        """
        moved = 0
        for entry in self.list():
            if entry.step > step:
                self.abandoned_dir.mkdir(exist_ok=True)
                entry.path.replace(self.abandoned_dir / entry.path.name)
                moved += 1
        return moved

    def load_latest_good(self, at_or_before: int | None = None) -> tuple[Path, dict[str, Any]] | None:
        """Newest checkpoint that loads, skipping (and reporting) corrupt ones."""
        for entry in reversed(self.list()):
            if at_or_before is not None and entry.step > at_or_before:
                continue
            try:
                return entry.path, load_checkpoint(entry.path)
            except CheckpointError as exc:
                print(f"warning: {exc}; falling back to the previous checkpoint", flush=True)
        return None
