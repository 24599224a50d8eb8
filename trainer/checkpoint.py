"""Checkpoints: NVIDIA-compatible, atomic, verified on load, pruned by policy.

A checkpoint is a dict with NVIDIA/tacotron2's keys (``iteration``, ``state_dict``,
``optimizer``, ``learning_rate``) so their tools read ours, plus a ``smart_tuner``
entry with everything needed to resume exactly: config, schedule, RNG states, data
position, loss weights, gradient clip, metrics at save, applied command ids.

Files are written to a temporary name in the same folder, fsynced and renamed, so a
``kill -9`` at any moment leaves either the old file set or the new one, never a
half-written checkpoint under a real name.

Loading reads tensors and plain values only (``torch.load(weights_only=True)``): a
crafted ``.pt`` cannot run code when it is unpickled. Saving turns what the payload
holds into such values (numpy scalars into numbers, paths into text, ...); the numpy
arrays and scalars that checkpoints of early versions held are allow-listed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from trainer.errors import UserError
from trainer.fsutil import atomic_write, sweep_temp_files

FORMAT_VERSION = 1
_NAME = re.compile(r"^checkpoint_(\d{8,})\.pt$")
NVIDIA_KEYS = ("iteration", "state_dict", "optimizer", "learning_rate")


class CheckpointError(UserError):
    pass


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts, lists, tuples): about a checkpoint's size."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


class _WriteRecorder:
    """A file wrapper that keeps the OSError its ``write`` raised: ``torch.save`` turns a
    failed write (``No space left on device``) into a RuntimeError that does not say so."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically; a full disk or a folder that cannot be written
    raises a one-line StorageError (trainer.fsutil) naming ``path``, the free space there
    and about how much the checkpoint needs; no temporary file is left behind."""
    with atomic_write(path, needed=tensor_bytes(obj)) as fh:
        out = _WriteRecorder(fh)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None  # atomic_write names the path and the free space
            raise


def plain(value: Any) -> Any:
    """``value`` as tensors and plain values (dict, list, tuple, str, int, float, bool, None),
    which ``torch.load(weights_only=True)`` reads: numpy scalars become numbers, numpy
    arrays tensors, paths text, enums their values, sets lists, pydantic models and
    dataclasses dicts. Anything else is saved as its text (a checkpoint that cannot be
    loaded is worse)."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.generic):  # before float: np.float64 is a float
        return value.item()
    if isinstance(value, enum.Enum):  # before int and str: IntEnum, StrEnum
        return plain(value.value)
    for base in (bool, int, float, str, bytes):
        if isinstance(value, base):
            return value if type(value) is base else base(value)
    if isinstance(value, np.ndarray):
        try:
            return torch.from_numpy(np.array(value))  # a copy, contiguous
        except TypeError:  # no such tensor dtype (objects, strings, ...)
            return plain(value.tolist())
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, OrderedDict):
        return OrderedDict((plain(k), plain(v)) for k, v in value.items())
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [plain(v) for v in sorted(value, key=repr)]
    if hasattr(value, "model_dump"):  # pydantic
        return plain(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    return str(value)


def plain_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint payload with everything but the model's and the optimizer's state dicts
    (torch's own, already loadable) made :func:`plain`."""
    return {k: v if k in ("state_dict", "optimizer") else plain(v) for k, v in payload.items()}


@lru_cache(maxsize=1)
def _numpy_globals() -> list[Any]:
    """The numpy globals that unpickle numeric arrays and scalars, nothing else: checkpoints
    of early versions held numpy's RNG state (a uint32 array) and perhaps numpy scalars.
    An object array still needs numpy's ObjectDType, which stays refused."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
             np.float16, np.float32, np.float64)
    found: list[Any] = [np.ndarray, np.dtype, *{type(np.dtype(k)) for k in kinds}]
    for fn in (multiarray._reconstruct, multiarray.scalar):
        found.append(fn)
        if _TORCH_VERSION >= (2, 6):  # (global, name) pairs: pickles name them after the numpy that
            # wrote them, numpy.core (1.x) or numpy._core (2.x)
            found += [(fn, f"numpy.core.multiarray.{fn.__name__}"), (fn, f"numpy._core.multiarray.{fn.__name__}")]
    return found


_TORCH_VERSION = tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2])


def _numpy_allowed() -> Any:
    """A context in which a tensors-only load also reads numeric numpy arrays and scalars."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    if scoped is not None:
        return scoped(_numpy_globals())
    torch.serialization.add_safe_globals(_numpy_globals())  # torch 2.4: no scoped form
    return contextlib.nullcontext()


RESAVE_DOC = "docs/migration-from-nvidia.md#checkpoints-that-hold-python-objects"
_REFUSED = re.compile(r"GLOBAL ([\w.]+)|but got <class '([^']+)'>")


def _refused_message(path: Path, name: str) -> str:
    # The way out needs an unrestricted unpickle, which this project never runs itself:
    # the command is in the docs, for the user to run on a file they trust.
    return (f"{path}: not loaded: it holds pickled Python objects ({name}) besides tensors and plain values, "
            "and unpickling them could run any code; if you trust this file, save its weights alone "
            f"({RESAVE_DOC}) and use that file (with train, as --warm-start)")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and sanity-check a checkpoint (ours or NVIDIA's) onto the CPU: tensors and plain
    values only (``weights_only=True``), so that a crafted file cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with _numpy_allowed():
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load of arbitrary bytes raises anything
        refused = _REFUSED.search(str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        if refused:
            raise CheckpointError(_refused_message(path, refused.group(1) or refused.group(2))) from None
        first = (str(exc).splitlines() or [""])[0][:120]
        raise CheckpointError(
            f"{path}: checkpoint is truncated or corrupt ({type(exc).__name__}: {first}); use an earlier checkpoint"
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
        payload = plain_payload(payload)
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
