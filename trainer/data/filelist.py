"""LJSpeech/NVIDIA filelists: one ``path|text`` per line.

Relative audio paths are resolved against the folder that holds the filelist, so a
dataset folder can be moved or mounted anywhere. Every malformed line is found (one
:class:`FilelistError` each, with its line number); LJSpeech's own ``metadata.csv``
given as a filelist is refused with the ``smart-tuner data prepare`` command to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UserError


class FilelistError(UserError):
    """A filelist that cannot be used; names the file and line and says what to do."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line  # 1-based, None for a problem of the whole file


@dataclass(frozen=True)
class Entry:
    audio_path: Path
    text: str
    line: int  # 1-based line number in the filelist, for error messages
    filelist: Path

    @property
    def where(self) -> str:
        return f"{self.filelist}:{self.line}"


def _decode_line(path: Path, number: int, raw: bytes) -> str | FilelistError:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        column = len(raw[:exc.start].decode("utf-8", errors="replace")) + 1
        return FilelistError(
            f"{path}:{number}: not UTF-8 text (byte 0x{raw[exc.start]:02X} at column {column}); re-save the "
            "filelist as UTF-8 (an editor's 'save with encoding', or: "
            "iconv -f ITS-ENCODING -t UTF-8 old.txt > new.txt)",
            line=number,
        )


def parse_filelist(path: str | Path) -> tuple[list[Entry], list[FilelistError]]:
    """Entries of a filelist and one error for *every* malformed line (file:line: what, fix).

    Problems of the whole file (missing, unreadable, no entries, LJSpeech's metadata.csv
    instead of a filelist) raise :class:`FilelistError`.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FilelistError(f"{path}: filelist not found (check data.training_files / data.validation_files)") from None
    except IsADirectoryError:
        raise FilelistError(f"{path}: is a folder, not a filelist (check data.training_files / "
                            "data.validation_files)") from None
    except OSError as exc:
        raise FilelistError(f"{path}: cannot read filelist ({exc.strerror})") from None
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark (Windows editors)
        data = data[3:]
    base = path.resolve().parent
    entries: list[Entry] = []
    errors: list[FilelistError] = []
    # bytes.splitlines: \n, \r\n and \r, the line numbers an editor shows.
    for number, raw in enumerate(data.splitlines(), start=1):
        line = _decode_line(path, number, raw)
        if isinstance(line, FilelistError):
            errors.append(line)
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("|")
        if len(parts) < 2:
            errors.append(FilelistError(f"{path}:{number}: expected 'path|text', found no '|' in {line[:80]!r}",
                                        line=number))
            continue
        # Multi-speaker NVIDIA-style lists carry a third field (speaker id); the text
        # is always the second field.
        audio, text = parts[0].strip(), parts[1].strip()
        if not audio:
            errors.append(FilelistError(f"{path}:{number}: empty audio path", line=number))
            continue
        audio_path = Path(audio)
        if not audio_path.is_absolute():
            audio_path = base / audio_path
        entries.append(Entry(audio_path=audio_path, text=text, line=number, filelist=path))
    if not entries and not errors:
        raise FilelistError(f"{path}: filelist has no entries")
    _refuse_ljspeech_metadata(path, entries)
    return entries, errors


def _refuse_ljspeech_metadata(path: Path, entries: list[Entry]) -> None:
    """LJSpeech's ``metadata.csv`` (``id|text|normalized text``) given as a filelist: its
    first field is a clip id, not a path. Say what to run instead of 'LJ001-0001 not found'."""
    if not entries or any(e.audio_path.suffix for e in entries[:20]):
        return
    first = entries[0].audio_path
    if first.exists():
        return
    if path.name.lower() == "metadata.csv" or (path.resolve().parent / "wavs" / f"{first.name}.wav").is_file():
        folder = path.resolve().parent
        raise FilelistError(
            f"{path}: this is LJSpeech's metadata.csv ('id|text|normalized text'), not a filelist of "
            f"'path/to/clip.wav|text' lines; make train.txt and val.txt from it with: "
            f"smart-tuner data prepare --ljspeech {folder} --out {folder}"
        )


def read_filelist(path: str | Path) -> list[Entry]:
    """Parse a filelist; a malformed line raises :class:`FilelistError` naming file and line
    (the first one, and how many more there are)."""
    entries, errors = parse_filelist(path)
    if errors:
        first = errors[0]
        more = len(errors) - 1
        if more:
            raise FilelistError(f"{first} (and {more} more malformed line{'s' if more > 1 else ''}; "
                                "'smart-tuner data check' lists them all)", line=first.line)
        raise first
    return entries
