"""``smart-tuner data espeak``: a synthetic LJSpeech-format dataset spoken by espeak-ng.

Useful to check the whole pipeline (and that attention aligns) in minutes without
downloading a corpus: espeak-ng is deterministic, so a small model learns it fast.

Layout written to ``out/``::

    wavs/NAME.wav     22050 Hz, 16-bit PCM, mono, edge silence trimmed to ~50 ms
    train.txt         wavs/NAME.wav|sentence
    val.txt
    README.txt        how the dataset was made

Every file is written to a temporary name and renamed, so an interrupted build can
simply be re-run: clips already present and valid are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from trainer.errors import UserError
from trainer.fsutil import atomic_write

SAMPLING_RATE = 22050
EDGE_MARGIN_SECONDS = 0.05
TRIM_TOP_DB = 40.0
LJSPEECH_SENTENCES = Path(__file__).parent / "ljspeech_sentences.txt"
_MANIFEST = ".espeak_build.json"


class EspeakError(UserError):
    """espeak-ng could not be used or the build options cannot work."""


class EspeakNotInstalled(EspeakError):
    def __init__(self) -> None:
        super().__init__(
            "espeak-ng is not installed: run 'sudo apt-get install espeak-ng' (Debian/Ubuntu) "
            "or 'brew install espeak-ng' (macOS)"
        )


@dataclass(frozen=True)
class Sentence:
    name: str  # file stem: the LJSpeech id, or utt_NNNNN (line number in the sentences file)
    text: str


def _find_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EspeakNotInstalled()
    return exe


def load_sentences(sentences_file: Path | None) -> tuple[list[Sentence], str]:
    """Sentences and a description of their source.

    Default: the packaged LJSpeech transcripts (``ID|text`` lines, public domain).
    Otherwise a UTF-8 file with one sentence per line; a sentence is named after its
    line number (``utt_00042``) so names stay stable when the file is re-used.
    Blank lines, lines starting with '#' and lines containing '|' are skipped.
    """
    if sentences_file is None:
        out = []
        for line in LJSPEECH_SENTENCES.read_text(encoding="utf-8").splitlines():
            name, _, text = line.partition("|")
            if text.strip():
                out.append(Sentence(name, text.strip()))
        return out, "the LJSpeech transcripts (public domain) shipped with smart-tuner"
    path = Path(sentences_file)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EspeakError(f"{path}: sentences file not found (--sentences)") from None
    except IsADirectoryError:
        raise EspeakError(f"{path}: is a folder; --sentences needs a text file, one sentence per line") from None
    except UnicodeDecodeError as exc:
        raise EspeakError(f"{path}: not UTF-8 text (byte {exc.start}); save the sentences file as UTF-8") from None
    except OSError as exc:
        raise EspeakError(f"{path}: cannot read sentences file ({exc.strerror})") from None
    out = []
    for number, line in enumerate(raw.splitlines(), start=1):
        text = " ".join(line.split())
        if not text or text.startswith("#") or "|" in text:
            continue
        out.append(Sentence(f"utt_{number:05d}", text.lstrip("\ufeff")))
    if not out:
        raise EspeakError(f"{path}: no sentences in the file (one sentence per line, UTF-8)")
    return out, f"{path.name} ({len(out)} sentences)"


def _text_config_for(voice: str):
    """The default text config of the language a voice speaks, if the trainer has one."""
    from trainer.config import TextConfig

    language = voice.lower().split("-")[0].split("+")[0]
    if language == "en":
        return TextConfig(language="en", cleaners=["english_cleaners"])
    if language == "ru":
        return TextConfig(language="ru", cleaners=["russian_cleaners"])
    return None


def _espeak_version(exe: str) -> str:
    try:
        run = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
        if not run.stdout.strip():
            return "espeak-ng (version unknown)"
        return run.stdout.strip().splitlines()[0].split("  Data at")[0].strip()
    except (OSError, subprocess.SubprocessError):
        return "espeak-ng (version unknown)"


def _synthesize(exe: str, voice: str, rate: int | None, text: str, wav_path: Path) -> None:
    """Speak ``text`` into ``wav_path`` (text via stdin: safe with leading dashes and quotes)."""
    cmd = [exe, "-v", voice, "-b", "1", "-w", str(wav_path)]
    if rate is not None:
        cmd += ["-s", str(rate)]
    cmd.append("--stdin")
    try:
        run = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=120)
    except FileNotFoundError:
        raise EspeakNotInstalled() from None
    except subprocess.TimeoutExpired:
        raise EspeakError(f"espeak-ng took over 120 s on {text[:60]!r}") from None
    stderr = run.stderr.decode("utf-8", "replace").strip()
    if "voice does not exist" in stderr.lower():
        raise EspeakError(
            f"espeak-ng has no voice {voice!r}: list the voices with 'espeak-ng --voices' "
            "(e.g. en-us, en-gb, ru) and pass one with --voice"
        )
    if run.returncode != 0 or not wav_path.exists():
        raise EspeakError(f"espeak-ng failed (exit {run.returncode}) on {text[:60]!r}: {stderr or 'no message'}")


def _trim(y: np.ndarray, sr: int) -> np.ndarray:
    """Make edge silence exactly ``EDGE_MARGIN_SECONDS`` each side (cut, or pad with zeros:
    espeak-ng starts speaking within a few ms but trails ~0.3 s of silence)."""
    from trainer.data.audit import nonsilent_bounds

    bounds = nonsilent_bounds(y, TRIM_TOP_DB, frame_length=256, hop_length=64)
    if bounds is None:
        return y
    margin = int(round(EDGE_MARGIN_SECONDS * sr))
    start, end = bounds
    core = y[max(0, start - margin): min(len(y), end + margin)]
    pad_left = max(0, margin - start)
    pad_right = max(0, end + margin - len(y))
    return np.pad(core, (pad_left, pad_right))


def _is_valid_clip(path: Path) -> bool:
    try:
        info = sf.info(str(path))
    except Exception:
        return False
    return (
        info.samplerate == SAMPLING_RATE and info.channels == 1
        and info.subtype == "PCM_16" and info.frames > 0
    )


def _make_clip(exe: str, voice: str, rate: int | None, sentence: Sentence, wav_dir: Path) -> bool:
    """Write ``wav_dir/NAME.wav`` unless a valid one is there; True if it was made."""
    target = wav_dir / f"{sentence.name}.wav"
    if _is_valid_clip(target):
        return False
    fd, raw_name = tempfile.mkstemp(prefix=f".{sentence.name}.", suffix=".raw.wav", dir=wav_dir)
    os.close(fd)
    raw = Path(raw_name)
    part = wav_dir / f".{sentence.name}.{os.getpid()}.part.wav"
    try:
        _synthesize(exe, voice, rate, sentence.text, raw)
        y, sr = sf.read(str(raw), dtype="float32", always_2d=True)
        y = y.mean(axis=1)
        if sr != SAMPLING_RATE:
            import librosa

            y = librosa.resample(y, orig_sr=sr, target_sr=SAMPLING_RATE)
        y = _trim(y, SAMPLING_RATE)
        if len(y) == 0:
            raise EspeakError(f"espeak-ng produced no audio for {sentence.text[:60]!r}")
        sf.write(str(part), np.clip(y, -1.0, 1.0), SAMPLING_RATE, subtype="PCM_16", format="WAV")
        os.replace(part, target)
    finally:
        raw.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
    return True


def _write_atomic(path: Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def _check_manifest(out_dir: Path, manifest: dict) -> None:
    """Refuse to mix clips made with another voice, rate or sentence source."""
    path = out_dir / _MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old is not None and old != manifest:
            changed = ", ".join(k for k in manifest if old.get(k) != manifest[k])
            raise EspeakError(
                f"{out_dir} was built with a different {changed}; its clips would not match: "
                "choose a new --out folder or delete this one"
            )


def build_espeak_dataset(
    out_dir: str | Path,
    n: int = 200,
    voice: str = "en-us",
    sentences_file: str | Path | None = None,
    max_chars: int | None = None,
    min_chars: int = 1,
    val_fraction: float = 0.1,
    seed: int = 1234,
    rate: int | None = None,
    jobs: int | None = None,
) -> str:
    """Speak ``n`` sentences with espeak-ng into an LJSpeech-format dataset at ``out_dir``.

    Returns a short human summary (utterances, minutes of audio, mean clip length,
    where the filelists are).
    """
    out_dir = Path(out_dir)
    if n < 2:
        raise EspeakError(f"--n must be at least 2 (one training and one validation utterance), got {n}")
    if not 0.0 < val_fraction < 1.0:
        raise EspeakError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if min_chars < 0 or (max_chars is not None and max_chars < max(min_chars, 1)):
        raise EspeakError(f"--max-chars ({max_chars}) must be at least --min-chars ({min_chars}) and positive")
    if rate is not None and not 10 <= rate <= 1000:
        raise EspeakError(f"--rate is in words per minute (espeak-ng default 175), got {rate}")
    if jobs is not None and jobs < 1:
        raise EspeakError(f"--jobs must be at least 1, got {jobs}")

    sentences, source = load_sentences(Path(sentences_file) if sentences_file is not None else None)
    candidates = [
        s for s in sentences
        if len(s.text) >= min_chars and (max_chars is None or len(s.text) <= max_chars)
    ]
    # Sentences the trainer could not spell (e.g. Latin words in Russian text) would
    # only fail 'data check' later: leave them out. Checked lazily, in seeded random
    # order, until n are found (checking all 13k LJSpeech lines would take a second).
    text_config = _text_config_for(voice)
    if text_config is not None:
        from trainer.text import unknown_characters

        def spellable(s: Sentence) -> bool:
            return not unknown_characters(s.text, text_config)
    else:
        def spellable(s: Sentence) -> bool:
            return True

    order = list(candidates)
    random.Random(seed).shuffle(order)
    chosen: list[Sentence] = []
    for sentence in order:
        if spellable(sentence):
            chosen.append(sentence)
            if len(chosen) == n:
                break
    if len(chosen) < n:
        unspellable = len(candidates) - len(chosen)  # all were checked
        if max_chars is not None:
            bounds = f"between {min_chars} and {max_chars} characters"
        else:
            bounds = f"at least {min_chars} characters"
        skipped = (
            f" and only symbols of the {text_config.language!r} alphabet ({unspellable} more have other "
            "characters)" if unspellable else ""
        )
        fixes = ["raise --max-chars"] if max_chars is not None else []
        fixes += ["lower --min-chars"] if min_chars > 1 else []
        fixes += ["lower --n"] + (["pass a longer --sentences file"] if sentences_file is not None else [])
        raise EspeakError(
            f"only {len(chosen)} of {len(sentences)} sentences in {source} have {bounds}{skipped}, "
            f"but --n is {n}: {', '.join(fixes[:-1])} or {fixes[-1]}"
        )

    exe = _find_espeak()
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    val = sorted(chosen[:n_val], key=lambda s: s.name)
    train = sorted(chosen[n_val:], key=lambda s: s.name)

    wav_dir = out_dir / "wavs"
    try:
        wav_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EspeakError(f"{out_dir}: cannot create the dataset folder ({exc.strerror})") from None
    if sentences_file is None:
        digest = "ljspeech"
    else:
        digest = hashlib.sha1("\n".join(f"{s.name}|{s.text}" for s in sentences).encode()).hexdigest()[:16]
    manifest = {"voice": voice, "rate": rate, "sentences": digest}
    _check_manifest(out_dir, manifest)
    for leftover in [*wav_dir.glob(".*.raw.wav"), *wav_dir.glob(".*.part.wav")]:
        leftover.unlink(missing_ok=True)  # from an interrupted build

    todo = [s for s in chosen if not _is_valid_clip(wav_dir / f"{s.name}.wav")]
    if todo:
        # One clip first: a bad voice fails once, clearly, not n times in parallel.
        _make_clip(exe, voice, rate, todo[0], wav_dir)
    # Recorded once espeak-ng has accepted the voice, so a typo does not lock the folder.
    _write_atomic(out_dir / _MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    if todo:
        workers = jobs or os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(lambda s: _make_clip(exe, voice, rate, s, wav_dir), todo[1:]):
                pass

    _write_atomic(out_dir / "train.txt", "".join(f"wavs/{s.name}.wav|{s.text}\n" for s in train))
    _write_atomic(out_dir / "val.txt", "".join(f"wavs/{s.name}.wav|{s.text}\n" for s in val))

    seconds = [sf.info(str(wav_dir / f"{s.name}.wav")).duration for s in chosen]
    total_min = sum(seconds) / 60
    mean_s = statistics.fmean(seconds)
    version = _espeak_version(exe)
    chars = f"{min_chars}..{max_chars}" if max_chars is not None else f">= {min_chars}"
    _write_atomic(out_dir / "README.txt", (
        "Synthetic speech dataset made by 'smart-tuner data espeak'.\n\n"
        f"Engine:     {version}\n"
        f"Voice:      {voice}\n"
        f"Rate:       {rate if rate is not None else 'espeak-ng default (175 wpm)'}\n"
        f"Sentences:  {n} from {source}, {chars} characters, chosen with seed {seed}\n"
        f"Split:      {len(train)} train (train.txt), {len(val)} validation (val.txt)\n"
        f"Audio:      wavs/*.wav, {SAMPLING_RATE} Hz 16-bit PCM mono, edge silence trimmed to "
        f"{int(EDGE_MARGIN_SECONDS * 1000)} ms; {total_min:.1f} min in all, mean clip {mean_s:.2f} s\n\n"
        "Filelist lines are 'wavs/NAME.wav|text', paths relative to this folder.\n"
        "Re-running the same command keeps existing clips and only makes missing ones.\n"
    ))
    made = len(todo)
    reused = n - made
    return (
        f"{n} utterances ({len(train)} train, {len(val)} val) spoken by espeak-ng voice {voice!r}: "
        f"{total_min:.1f} min of audio, mean clip {mean_s:.2f} s"
        + (f" ({made} made, {reused} already there)" if reused else "")
        + f"\nfilelists: {out_dir / 'train.txt'} and {out_dir / 'val.txt'}"
    )


def speak_references(sentences: list[str], out_dir: str | Path, voice: str = "en-us", rate: int | None = None,
                     name: str = "references") -> Path:
    """Recordings of ``sentences`` (the probe sentences, say) by espeak-ng, for judging what a
    model trained on espeak-ng data says: ``out_dir/wavs/NAME_<hash of the text>.wav`` and
    the filelist ``out_dir/NAME.txt`` (``wavs/....wav|sentence``), both written atomically.
    Existing valid clips are kept (the name changes with the text)."""
    out_dir = Path(out_dir)
    wav_dir = out_dir / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    exe = _find_espeak()
    items = [Sentence(f"{name}_{hashlib.sha1(' '.join(s.split()).encode()).hexdigest()[:10]}", " ".join(s.split()))
             for s in sentences]
    for item in items:
        if not item.text:
            raise EspeakError(f"reference sentence {item.name} is empty")
        _make_clip(exe, voice, rate, item, wav_dir)
    filelist = out_dir / f"{name}.txt"
    _write_atomic(filelist, "".join(f"wavs/{s.name}.wav|{s.text}\n" for s in items))
    return filelist
