"""``smart-tuner data prepare --ljspeech``: LJSpeech as downloaded becomes train/val filelists.

LJSpeech-1.1 unpacks to ``metadata.csv`` (``id|transcription|normalized transcription``,
UTF-8, no header, no quoting) and ``wavs/ID.wav``. The trainer reads ``path|text``
filelists, so this writes ``train.txt`` and ``val.txt`` into ``--out``:

* text: the normalized column (numbers and abbreviations spelled out), the
  transcription where the normalized column is empty;
* audio paths relative to ``--out`` (``wavs/ID.wav`` when ``--out`` is the LJSpeech
  folder), which the trainer resolves against the filelist's folder;
* split: the ids shuffled with ``random.Random(seed)``, the first
  ``round(n * val_fraction)`` (at least one) to validation; each list in
  ``metadata.csv`` order. The same metadata, fraction and seed give the same files.

Nothing is written when a line is malformed or a wav is missing.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from trainer.data.filelist import FilelistError, _decode_line
from trainer.errors import UserError
from trainer.fsutil import atomic_write

METADATA = "metadata.csv"
_SHOW = 10  # problems listed per kind


class PrepareError(UserError):
    """The corpus folder cannot be turned into filelists; says what is wrong and what to do."""


@dataclass(frozen=True)
class Clip:
    id: str
    text: str
    line: int  # in metadata.csv
    normalized: bool  # False: the normalized column was empty, the transcription is used


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f" ... and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


def read_ljspeech_metadata(metadata: Path) -> tuple[list[Clip], list[str]]:
    """Clips of ``metadata.csv`` and a message (file:line: what) for every bad line."""
    try:
        data = metadata.read_bytes()
    except OSError as exc:
        raise PrepareError(f"{metadata}: cannot read ({exc.strerror})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    clips: list[Clip] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(data.splitlines(), start=1):
        line = _decode_line(metadata, number, raw)
        if isinstance(line, FilelistError):
            problems.append(str(line).replace(" filelist ", " file "))
            continue
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) not in (2, 3):
            problems.append(f"{metadata}:{number}: expected 'id|text|normalized text', found "
                            f"{len(parts) - 1} '|' in {line[:80]!r}")
            continue
        clip_id = parts[0].strip()
        text = parts[2].strip() if len(parts) == 3 else ""
        normalized = bool(text)
        if not text:
            text = parts[1].strip()
        if not clip_id:
            problems.append(f"{metadata}:{number}: empty id")
        elif not text:
            problems.append(f"{metadata}:{number}: {clip_id} has no text in either column")
        elif clip_id in seen:
            problems.append(f"{metadata}:{number}: {clip_id} is also on line {seen[clip_id]}")
        else:
            seen[clip_id] = number
            clips.append(Clip(clip_id, text, number, normalized))
    return clips, problems


def prepare_ljspeech(folder: str | Path, out_dir: str | Path, val_fraction: float = 0.05,
                     seed: int = 1234) -> str:
    """Write ``out_dir/train.txt`` and ``out_dir/val.txt`` from an LJSpeech folder.

    Returns what was written (counts, paths, split) for the user.
    """
    folder, out_dir = Path(folder), Path(out_dir)
    if not 0.0 < val_fraction < 1.0:
        raise PrepareError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if folder.is_file() and folder.name == METADATA:
        folder = folder.parent
    metadata = folder / METADATA
    if not metadata.is_file():
        what = "does not exist" if not folder.exists() else f"holds no {METADATA}"
        raise PrepareError(f"{folder} {what}: --ljspeech takes the unpacked LJSpeech-1.1 folder, "
                           f"the one with {METADATA} and wavs/")

    clips, problems = read_ljspeech_metadata(metadata)
    wav_dir = folder / "wavs"
    missing = [c.id for c in clips if not (wav_dir / f"{c.id}.wav").is_file()]
    if missing:
        problems.append(f"{len(missing)} of {len(clips)} clips in {metadata} have no wav in {wav_dir}: "
                        f"{_listed(missing)}; unpack the whole archive again (or delete those lines)")
    if not problems and len(clips) < 2:
        problems.append(f"{metadata}: {len(clips)} clip(s); a training and a validation list need at least 2")
    if problems:
        shown = problems[:_SHOW] + ([f"... and {len(problems) - _SHOW} more"] if len(problems) > _SHOW else [])
        raise PrepareError(
            f"cannot prepare {folder}: {len(problems)} problem{'s' if len(problems) > 1 else ''}, nothing written\n"
            + "\n".join(f"  {p}" for p in shown)
        )

    order = [c.id for c in clips]
    random.Random(seed).shuffle(order)
    n_val = min(len(clips) - 1, max(1, round(len(clips) * val_fraction)))
    val_ids = set(order[:n_val])
    val = [c for c in clips if c.id in val_ids]
    train = [c for c in clips if c.id not in val_ids]

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrepareError(f"{out_dir}: cannot create the folder ({exc.strerror})") from None
    base = out_dir.resolve()

    def audio_path(c: Clip) -> str:
        wav = (wav_dir / f"{c.id}.wav").resolve()
        try:
            return Path(os.path.relpath(wav, base)).as_posix()
        except ValueError:  # another drive (Windows): no relative path exists
            return str(wav)

    written = []
    for name, part in (("train.txt", train), ("val.txt", val)):
        with atomic_write(out_dir / name, "w", encoding="utf-8") as fh:
            fh.write("".join(f"{audio_path(c)}|{c.text}\n" for c in part))
        written.append(out_dir / name)

    fallback = sum(not c.normalized for c in clips)
    column = "normalized text (3rd column)" + (f"; the 2nd column for {fallback} clip(s) where it is empty"
                                               if fallback else "")
    example = audio_path(train[0])
    return (
        f"{len(clips)} clips from {metadata}, text: {column}\n"
        f"split: {len(train)} train, {len(val)} val (val fraction {val_fraction:g}, seed {seed}; "
        "the same seed gives the same split)\n"
        f"wrote {written[0]} and {written[1]}; audio paths relative to {out_dir} (e.g. {example})\n"
        f"next: set data.training_files and data.validation_files to these files, then run "
        "'smart-tuner data check --config YOUR.yaml'"
    )
