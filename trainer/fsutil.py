"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader (or a process restarted after ``kill -9``) sees either the old file or the
complete new one, never a torn one. Temp names start with '.' and end with '.tmp' so
that leftovers of a killed writer are easy to recognise and sweep.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from trainer.errors import UserError

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


# Write failures that no restart heals, by errno: the reason the trainer reports to the
# daemon (journal state child_status), which then gives up at once instead of retrying.
UNHEALABLE_ERRNOS = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EROFS: "unwritable",
                     errno.EACCES: "unwritable", errno.EPERM: "unwritable"}
UNHEALABLE_REASONS = frozenset(UNHEALABLE_ERRNOS.values())


class StorageError(UserError, OSError):
    """A write failed for a reason a restart cannot fix (disk full, read-only or foreign
    folder). Still an OSError (``errno`` kept) for code that catches those; ``str()`` is
    the one-line message; ``reason`` is ``disk_full`` or ``unwritable``."""

    def __init__(self, err: int, message: str, reason: str, filename: str | None = None) -> None:
        OSError.__init__(self, err, message, filename)
        self.message, self.reason = message, reason

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # picklable (multiprocessing workers) with the message intact
        return type(self), (self.errno, self.message, self.reason, self.filename)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _existing_folder(path: Path) -> Path:
    """The nearest folder of ``path`` (or above it) that exists."""
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}" if hasattr(os, "geteuid") else "this user"


def storage_error(exc: OSError, path: str | Path | None = None, needed: int | None = None) -> StorageError | None:
    """The one-line StorageError for an OSError that no restart heals (see UNHEALABLE_ERRNOS),
    naming ``path`` (default: the error's filename), or None for any other error.

    Disk full: the free space there and, with ``needed`` (bytes), about what the write needed.
    Not writable: the folder, and what to do (chmod/chown, or another run_dir)."""
    if isinstance(exc, StorageError):
        return exc
    reason = UNHEALABLE_ERRNOS.get(exc.errno) if exc.errno is not None else None
    if reason is None:
        return None
    where = Path(path if path is not None else (exc.filename or "."))
    folder = _existing_folder(where)
    if reason == "disk_full":
        try:
            free: int | None = shutil.disk_usage(folder).free
        except OSError:
            free = None
        quota = " (disk quota exceeded)" if exc.errno == errno.EDQUOT else ""
        message = (f"{where}: no space left on device{quota}: {human_bytes(free)} free in {folder}"
                   + (f", about {human_bytes(needed)} needed" if needed else "")
                   + "; free some space there (old checkpoints, checkpoints/abandoned, other runs) "
                     "or use a run_dir on another disk")
    else:
        why = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        fix = ("remount it read-write" if exc.errno == errno.EROFS
               else f"make it writable for {_user()} (chmod u+w {folder}, or chown)")
        message = f"{where}: cannot write there ({why}): {fix}, or use another run_dir"
    return StorageError(exc.errno, message, reason, str(where))


def check_writable(folder: str | Path) -> None:
    """Raise StorageError when a file cannot be created in ``folder`` (read-only, not ours)."""
    folder = Path(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        err = storage_error(exc, folder)
        if err is None:
            raise
        raise err from None


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", durable: bool = True,
                 encoding: str | None = None, needed: int | None = None) -> Iterator[IO]:
    """``with atomic_write(p) as fh: fh.write(...)`` publishes ``p`` only on success.

    ``durable=False`` skips the fsyncs (for caches that can be recomputed). A write that
    fails for good (disk full, folder not writable) raises :class:`StorageError`, one
    line naming ``p`` (and, disk full, the free space there vs ``needed`` bytes, if
    given); the temporary file is removed on any failure.
    """
    path = Path(path)
    try:
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
    except OSError as exc:
        err = storage_error(exc, path, needed)
        if err is None or err is exc:
            raise
        raise err from None
    if durable:
        fsync_dir(path.parent)


def sweep_temp_files(folder: Path) -> int:
    """Remove temp files left by writers that were killed mid-write."""
    removed = 0
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed
