"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader (or a process restarted after ``kill -9``) sees either the old file or the
complete new one, never a torn one. Temp names start with '.' and end with '.tmp' so
that leftovers of a killed writer are easy to recognise and sweep.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

# mkstemp creates files 0600; published files get the usual permissions instead.
_UMASK = os.umask(0)
os.umask(_UMASK)


def fsync_dir(folder: Path) -> None:
    """Make a rename durable; not every platform can open a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", durable: bool = True,
                 encoding: str | None = None) -> Iterator[IO]:
    """``with atomic_write(p) as fh: fh.write(...)`` publishes ``p`` only on success.

    ``durable=False`` skips the fsyncs (for caches that can be recomputed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def sweep_temp_files(folder: Path) -> int:
    """Remove temp files left by writers that were killed mid-write."""
    removed = 0
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed
