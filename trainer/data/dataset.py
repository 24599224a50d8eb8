"""Training data: cached mels, tokenised text, length-bucketed resumable batches.

* Mels are computed once into ``<cache_dir>/<audio settings fingerprint>/`` and read
  back as ``.npy`` files; changing any audio setting changes the fingerprint, so a
  stale cache is never used. A clip's cache entry is also keyed by its size and
  modification time, so re-recorded audio is recomputed.
* Batches come from buckets of similar length (less padding, fewer decoder steps)
  in an order that depends only on (seed, epoch), so a run resumes at the exact
  batch where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from trainer.audio import AudioError, load_wav, mel_spectrogram
from trainer.config import AudioConfig, DataConfig, TextConfig
from trainer.data.audit import SILENT_PEAK_DBFS, describe_silence, silent_peak_dbfs
from trainer.data.filelist import Entry, read_filelist
from trainer.errors import UserError
from trainer.fsutil import atomic_write
from trainer.text import TextError, text_to_sequence


class DatasetError(UserError):
    pass


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    # A cache: recomputable, so no fsync; but never a torn file under the real name.
    with atomic_write(path, durable=False) as fh:
        np.save(fh, array)


class MelCache:
    def __init__(self, root: Path, audio: AudioConfig) -> None:
        self.audio = audio
        self.dir = Path(root) / audio.cache_key()
        self.dir.mkdir(parents=True, exist_ok=True)
        settings = self.dir / "settings.json"
        if not settings.exists():
            settings.write_text(json.dumps(audio.model_dump(), indent=1))

    def path_for(self, entry: Entry) -> Path:
        stat = entry.audio_path.stat()
        key = f"{entry.audio_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        return self.dir / f"{entry.audio_path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.npy"

    @staticmethod
    def silent_marker(mel_path: Path) -> Path:
        """Beside a silent clip's mel: the warning is repeated when the mel comes from the cache."""
        return mel_path.with_suffix(".silent")

    def ensure(self, entry: Entry) -> tuple[Path, int]:
        """Cache path and frame count of a clip, computing its mel if needed."""
        path = self.path_for(entry)
        if path.exists():
            try:
                # Header only: reading every mel in full at start-up would cost GBs of I/O.
                return path, int(np.load(path, mmap_mode="r").shape[1])
            except (ValueError, OSError, EOFError, IndexError):
                pass  # a damaged cache entry is recomputed, never trusted
        mel, silent = self._compute(entry)
        marker = self.silent_marker(path)
        if silent:
            marker.write_text(silent + "\n", encoding="utf-8")  # before the mel: never a mel without it
        else:
            marker.unlink(missing_ok=True)
        _atomic_save_npy(path, mel)
        return path, mel.shape[1]

    def silence_of(self, mel_path: Path) -> str | None:
        """Why the clip of a cached mel counts as silent, or None."""
        try:
            return self.silent_marker(mel_path).read_text(encoding="utf-8").strip() or "silent"
        except OSError:
            return None

    def _check_header(self, entry: Entry) -> None:
        """Every problem of the file's format at once, with the filelist line."""
        import soundfile as sf

        path, cfg = entry.audio_path, self.audio
        try:
            info = sf.info(str(path))
        except Exception as exc:  # libsndfile's errors are RuntimeError / LibsndfileError
            reason = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
            raise DatasetError(
                f"{entry.where}: cannot read audio {path} ({reason}); re-encode it with: ffmpeg -i in.x -ac 1 "
                f"-ar {cfg.sampling_rate} -c:a pcm_s16le out.wav "
                "(or run 'smart-tuner data check' to list every problem)"
            ) from None
        problems: list[str] = []
        fixes: list[str] = []
        if info.channels != 1:
            problems.append(f"{info.channels} channels (the trainer needs mono)")
            fixes.append("-c 1")
        if info.samplerate != cfg.sampling_rate:
            problems.append(f"{info.samplerate} Hz (audio.sampling_rate is {cfg.sampling_rate})")
            fixes.append(f"-r {cfg.sampling_rate}")
        if info.frames <= 0:
            problems.append("no samples")
        elif info.frames <= cfg.filter_length // 2:
            problems.append(f"{info.frames} samples, too short for a {cfg.filter_length}-point STFT")
        if not problems:
            return
        if fixes:
            fix = f"convert it with: sox in.wav {' '.join(fixes)} out.wav"
            if len(problems) > len(fixes):
                fix += ", or remove the line"
        else:
            fix = "remove the line or re-record the clip"
        raise DatasetError(f"{entry.where}: {path}: {'; '.join(problems)}; {fix} "
                           "(or run 'smart-tuner data check' to list every problem)")

    def _compute(self, entry: Entry) -> tuple[np.ndarray, str | None]:
        """The clip's mel, and why it is silent (None when it is not)."""
        self._check_header(entry)
        try:
            audio, _ = load_wav(entry.audio_path)  # the rate was checked in the header
        except AudioError as exc:
            raise DatasetError(f"{entry.where}: {exc}") from None
        level = silent_peak_dbfs(audio)
        mel = mel_spectrogram(audio.astype(np.float32), self.audio).astype(np.float32)
        return mel, (describe_silence(level) if level is not None else None)


@dataclass(frozen=True)
class Utterance:
    entry: Entry
    text_ids: np.ndarray
    mel_path: Path
    n_frames: int


class TextMelDataset(Dataset):
    """(text ids, mel) pairs; every mel is in the cache after construction."""

    def __init__(self, filelist: Path, data: DataConfig, audio: AudioConfig, text: TextConfig,
                 cache_root: Path | None = None, progress: bool = False) -> None:
        entries = read_filelist(filelist)
        self.cache = MelCache(cache_root or data.cache_dir or Path(filelist).resolve().parent / ".mel_cache", audio)
        self.items: list[Utterance] = []
        too_long: list[str] = []
        if text.phonemes == "espeak":
            from trainer.text.phonemes import warm

            made = warm([e.text for e in entries], self.cache.dir.parent / "phonemes.json")
            if made and progress:
                print(f"  phonemized {made} transcripts with espeak-ng", flush=True)
        max_frames = int(data.max_audio_seconds * audio.sampling_rate / audio.hop_length) + 1
        silent: list[str] = []
        for i, entry in enumerate(entries):
            if not entry.audio_path.is_file():
                raise DatasetError(f"{entry.where}: audio file {entry.audio_path} not found; "
                                   "fix the path or run 'smart-tuner data check' to list every problem")
            if not entry.text:
                raise DatasetError(f"{entry.where}: empty transcript; remove the line or add its text")
            try:
                ids = np.asarray(text_to_sequence(entry.text, text), dtype=np.int64)
            except TextError as exc:
                raise DatasetError(f"{entry.where}: {exc}") from None
            mel_path, n_frames = self.cache.ensure(entry)
            if self.cache.silence_of(mel_path) is not None:
                silent.append(entry.where)  # still trained on: one bad clip of thousands is no reason to stop
            if n_frames > max_frames:
                too_long.append(entry.where)
                continue
            self.items.append(Utterance(entry, ids, mel_path, n_frames))
            if progress and (i + 1) % 500 == 0:
                print(f"  mel cache: {i + 1}/{len(entries)} clips", flush=True)
        if too_long:
            # Not silent: the user is told how many and where.
            print(f"warning: left out {len(too_long)} clip(s) longer than data.max_audio_seconds="
                  f"{data.max_audio_seconds}: {', '.join(too_long[:5])}{' ...' if len(too_long) > 5 else ''}",
                  flush=True)
        if silent:
            print(f"warning: {len(silent)} silent clip(s) (loudest sample below {SILENT_PEAK_DBFS:g} dBFS) teach "
                  f"the model nothing: {', '.join(silent[:5])}{' ...' if len(silent) > 5 else ''}; remove those lines "
                  "or re-record them ('smart-tuner data check' lists them all)", flush=True)
        if not self.items:
            raise DatasetError(f"{filelist}: no usable utterances")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> list[int]:
        return [u.n_frames for u in self.items]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.items[index]
        return torch.from_numpy(u.text_ids), torch.from_numpy(np.load(u.mel_path))


class BucketBatchSampler:
    """Deterministic, resumable batches of similar-length utterances.

    Per epoch: shuffle (seeded by seed and epoch), sort by length within windows of
    ``batch_size * bucket_batches`` utterances, cut into batches, shuffle the batches.
    """

    def __init__(self, lengths: list[int], batch_size: int, bucket_batches: int, seed: int) -> None:
        self.lengths = lengths
        self.batch_size = min(batch_size, len(lengths))
        self.bucket = self.batch_size * bucket_batches
        self.seed = seed

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches: list[list[int]] = []
        for start in range(0, len(order), self.bucket):
            window = sorted(order[start:start + self.bucket], key=lambda i: self.lengths[i])
            batches += [window[i:i + self.batch_size] for i in range(0, len(window), self.batch_size)]
        # Drop ragged batches (they make step times and BatchNorm statistics uneven).
        batches = [b for b in batches if len(b) == self.batch_size]
        rng.shuffle(batches)
        return batches


@dataclass
class Batch:
    text: torch.Tensor  # [B, N] long
    text_lengths: torch.Tensor  # [B]
    mel: torch.Tensor  # [B, n_mels, T], T a multiple of r
    mel_lengths: torch.Tensor  # [B] real frames
    gate: torch.Tensor  # [B, T/r] 1.0 from the decoder step holding the last real frame on

    def to(self, device: torch.device) -> "Batch":
        nb = device.type == "cuda"
        return Batch(*(t.to(device, non_blocking=nb) for t in (self.text, self.text_lengths, self.mel,
                                                                 self.mel_lengths, self.gate)))

    def pin_memory(self) -> "Batch":
        return Batch(*(t.pin_memory() for t in (self.text, self.text_lengths, self.mel, self.mel_lengths, self.gate)))


class Collate:
    """Pads a list of (text ids, mel) into a :class:`Batch` for r frames per step."""

    def __init__(self, n_frames_per_step: int) -> None:
        self.r = n_frames_per_step

    def __call__(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> Batch:
        b = len(items)
        text_lengths = torch.tensor([len(t) for t, _ in items], dtype=torch.long)
        mel_lengths = torch.tensor([m.size(1) for _, m in items], dtype=torch.long)
        n_mels = items[0][1].size(0)
        t_max = int(mel_lengths.max())
        t_max += (-t_max) % self.r
        text = torch.zeros(b, int(text_lengths.max()), dtype=torch.long)
        mel = torch.zeros(b, n_mels, t_max)
        gate = torch.zeros(b, t_max // self.r)
        for i, (t, m) in enumerate(items):
            text[i, : t.numel()] = t
            mel[i, :, : m.size(1)] = m
            gate[i, (m.size(1) - 1) // self.r:] = 1.0
        return Batch(text, text_lengths, mel, mel_lengths, gate)
