"""The journal's errors, and the lines the CLI and the daemon print for them."""

from __future__ import annotations

from pathlib import Path


class JournalError(Exception):
    """The journal cannot be opened or used as asked."""


class JournalVersionError(JournalError):
    """The journal was written by a newer Smart Tuner (a newer schema)."""


class JournalEmptyError(JournalError):
    """The file exists but holds no run journal (0 bytes, or an SQLite file without any table)."""


def unreadable_message(path: str | Path, exc: BaseException) -> str:
    """The one line for a journal SQLite cannot read (random bytes, a torn copy): the CLI and
    ``smart-tuner run`` say the same, with the way out."""
    return (f"{path}: cannot open the run journal ({exc}); restore it from a backup, or move it aside and "
            f"start a new history with smart-tuner run --new-journal (training resumes from the checkpoints)")


def empty_message(path: str | Path) -> str:
    return (f"{path} is empty: it holds no run journal; restore it from a backup, or start a new history "
            f"with smart-tuner run --new-journal (training resumes from the checkpoints)")

