"""LJSpeech/NVIDIA filelists: one ``path|text`` per line.

Relative audio paths are resolved against the folder that holds the filelist, so a
dataset folder can be moved or mounted anywhere. NVIDIA's ``DUMMY/`` prefix (a
placeholder for "your LJSpeech folder") is accepted with ``audio_root``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UserError


class FilelistError(UserError):
    """A filelist that cannot be used; names the file and line and says what to do."""


@dataclass(frozen=True)
class Entry:
    audio_path: Path
    text: str
    line: int  # 1-based line number in the filelist, for error messages
    filelist: Path

    @property
    def where(self) -> str:
        return f"{self.filelist}:{self.line}"


def read_filelist(path: str | Path) -> list[Entry]:
    """Parse a filelist; malformed lines raise :class:`FilelistError` naming file and line."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FilelistError(f"{path}: filelist not found (check data.training_files / data.validation_files)") from None
    except UnicodeDecodeError as exc:
        raise FilelistError(f"{path}: not UTF-8 text (byte {exc.start}); save the filelist as UTF-8") from None
    except OSError as exc:
        raise FilelistError(f"{path}: cannot read filelist ({exc.strerror})") from None
    base = path.resolve().parent
    entries: list[Entry] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("|")
        if len(parts) < 2:
            raise FilelistError(
                f"{path}:{number}: expected 'path|text', found no '|' in {line[:80]!r}"
            )
        # Multi-speaker NVIDIA-style lists carry a third field (speaker id); the text
        # is always the second field.
        audio, text = parts[0].strip(), parts[1].strip()
        if not audio:
            raise FilelistError(f"{path}:{number}: empty audio path")
        audio_path = Path(audio)
        if not audio_path.is_absolute():
            audio_path = base / audio_path
        entries.append(Entry(audio_path=audio_path, text=text, line=number, filelist=path))
    if not entries:
        raise FilelistError(f"{path}: filelist has no entries")
    return entries
