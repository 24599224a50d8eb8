"""``smart-tuner data check``: find what would break or hurt training before it starts.

Every entry of both filelists is checked: the audio file (exists, readable, sample
rate, mono, length, leading/trailing silence) and the text (non-empty, only symbols
the model knows after cleaning). Headers are read with ``soundfile.info``; audio is
decoded only for the silence check, in a thread pool (libsndfile releases the GIL).

Problems are *errors* when training would fail or silently learn garbage
(:attr:`AuditReport.ok` is then False) and *warnings* when training runs but worse.
"""

from __future__ import annotations

import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from trainer.config import AudioConfig, DataConfig, TextConfig
from trainer.data.filelist import Entry, FilelistError, parse_filelist

ERROR = "error"
WARNING = "warning"

# A clip whose loudest sample stays below this level holds no usable speech (16-bit
# dither and room noise sit far below; quiet real speech peaks around -30..-20 dBFS).
SILENT_PEAK_DBFS = -50.0


def silent_peak_dbfs(y: np.ndarray) -> float | None:
    """The clip's peak in dBFS when it is silent or near-silent, else None."""
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak <= 0.0:
        return float("-inf")
    level = 20.0 * float(np.log10(peak))
    return level if level < SILENT_PEAK_DBFS else None


def describe_silence(level: float) -> str:
    if level == float("-inf"):
        return "every sample is zero"
    return f"loudest sample at {level:.0f} dBFS (below {SILENT_PEAK_DBFS:g} dBFS)"


@dataclass(frozen=True)
class ProblemKind:
    severity: str
    title: str
    advice: str  # one line; may use {sampling_rate}, {max_audio_seconds}, ... from the report


# Order = order of the report.
PROBLEM_KINDS: dict[str, ProblemKind] = {
    "malformed_filelist": ProblemKind(
        ERROR, "malformed filelist",
        "fix the lines shown: each line must be 'path/to/file.wav|text' in UTF-8; "
        "nothing else in that filelist was checked: fix it and run the check again",
    ),
    "missing_file": ProblemKind(
        ERROR, "missing audio file",
        "relative paths are resolved against the filelist's folder; fix the path or remove the line",
    ),
    "unreadable_file": ProblemKind(
        ERROR, "unreadable audio file",
        "convert to 16-bit PCM WAV with: ffmpeg -i in.x -ac 1 -ar {sampling_rate} -c:a pcm_s16le out.wav",
    ),
    "empty_audio": ProblemKind(
        ERROR, "audio file with no samples",
        "re-export the clip or remove the line",
    ),
    "out_of_range": ProblemKind(
        ERROR, "samples outside [-1, 1]",
        "normalise with: sox in.wav -b 16 out.wav gain -n -1",
    ),
    "wrong_sample_rate": ProblemKind(
        ERROR, "wrong sample rate",
        "resample with: sox in.wav -r {sampling_rate} out.wav "
        "(or set audio.sampling_rate if all clips share another rate)",
    ),
    "not_mono": ProblemKind(
        ERROR, "not mono",
        "mix down with: sox in.wav -c 1 out.wav",
    ),
    "silent": ProblemKind(
        ERROR, "silent clip",
        "remove the line or re-record the clip; if the speech is there but far too quiet, "
        "normalise it with: sox in.wav out.wav gain -n -1",
    ),
    "empty_text": ProblemKind(
        ERROR, "empty text",
        "write the transcript after the '|' or remove the line",
    ),
    "unknown_characters": ProblemKind(
        ERROR, "characters outside the symbol set",
        "spell them out in the transcript (e.g. '%' -> 'percent') or check text.language / text.cleaners",
    ),
    "too_long": ProblemKind(
        WARNING, "clip longer than data.max_audio_seconds",
        "split long clips at pauses, or raise data.max_audio_seconds ({max_audio_seconds:g} s) "
        "if memory allows",
    ),
    "edge_silence": ProblemKind(
        WARNING, "long leading/trailing silence",
        "trim with: sox in.wav out.wav silence 1 0.05 1% reverse silence 1 0.05 1% reverse "
        "(silence > {max_edge_silence_seconds:g} s hurts alignment)",
    ),
    "duplicate": ProblemKind(
        WARNING, "audio file listed more than once",
        "a clip in both train and val makes validation loss look better than it is; keep it in one list",
    ),
}


@dataclass(frozen=True)
class Problem:
    kind: str
    filelist: Path
    line: int | None
    detail: str

    @property
    def severity(self) -> str:
        return PROBLEM_KINDS[self.kind].severity

    @property
    def where(self) -> str:
        return f"{self.filelist}:{self.line}" if self.line is not None else str(self.filelist)


@dataclass
class FilelistSummary:
    path: Path
    entries: int = 0
    seconds: float = 0.0  # audio that could be measured
    readable: bool = True  # False: malformed, its entries were not checked
    malformed_lines: int = 0


@dataclass
class AuditReport:
    problems: list[Problem] = field(default_factory=list)
    filelists: list[FilelistSummary] = field(default_factory=list)
    clip_seconds: list[float] = field(default_factory=list)
    sampling_rate: int = 22050
    max_audio_seconds: float = 15.0
    max_edge_silence_seconds: float = 0.5

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        """False when training would fail (or learn from broken data)."""
        return not self.errors

    @property
    def counts(self) -> dict[str, int]:
        """Problems per kind, only kinds that occurred, in report order."""
        out = {kind: 0 for kind in PROBLEM_KINDS}
        for p in self.problems:
            out[p.kind] += 1
        return {k: v for k, v in out.items() if v}

    def by_kind(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]

    @property
    def entries(self) -> int:
        return sum(f.entries for f in self.filelists)

    @property
    def total_hours(self) -> float:
        return sum(self.clip_seconds) / 3600.0

    @property
    def clip_stats(self) -> dict[str, float] | None:
        """min / median / max clip length in seconds (None when no clip could be measured)."""
        if not self.clip_seconds:
            return None
        return {
            "min": min(self.clip_seconds),
            "median": statistics.median(self.clip_seconds),
            "max": max(self.clip_seconds),
        }

    def format(self, show: int = 5) -> str:
        lines: list[str] = []
        for f in self.filelists:
            if f.readable:
                lines.append(f"{f.path}: {f.entries} entries, {f.seconds / 60:.1f} min of audio")
            else:
                why = (f"{f.malformed_lines} malformed line{'s' if f.malformed_lines > 1 else ''}"
                       if f.malformed_lines else "the filelist cannot be read")
                lines.append(f"{f.path}: not checked, {why} (see below)")
        stats = self.clip_stats
        if stats is not None:
            lines.append(
                f"total {self.total_hours:.2f} h in {len(self.clip_seconds)} clips; clip length "
                f"min {stats['min']:.2f} s, median {stats['median']:.2f} s, max {stats['max']:.2f} s"
            )
        params = {
            "sampling_rate": self.sampling_rate,
            "max_audio_seconds": self.max_audio_seconds,
            "max_edge_silence_seconds": self.max_edge_silence_seconds,
        }
        for kind, count in self.counts.items():
            info = PROBLEM_KINDS[kind]
            lines.append("")
            lines.append(f"{info.severity.upper()}: {info.title}: {count}")
            for p in self.by_kind(kind)[: max(show, 0)]:
                if kind == "malformed_filelist":
                    lines.append(f"  {p.detail}")  # the FilelistError message names file:line
                else:
                    lines.append(f"  {p.where}: {p.detail}")
            if count > show:
                lines.append(f"  ... and {count - show} more")
            lines.append(f"  fix: {info.advice.format(**params)}")
        lines.append("")
        n_err, n_warn = len(self.errors), len(self.warnings)
        if self.ok:
            verdict = "OK: ready to train" + (f" ({n_warn} warnings)" if n_warn else "")
        else:
            verdict = f"NOT READY: {n_err} errors, {n_warn} warnings; fix the errors before training"
        lines.append(verdict)
        return "\n".join(lines)


def nonsilent_bounds(
    y: np.ndarray, top_db: float, frame_length: int = 1024, hop_length: int = 256
) -> tuple[int, int] | None:
    """Sample range ``[start, end)`` between the first and last frame louder than
    ``max - top_db`` (frame RMS, like ``librosa.effects.trim``); None if all silent."""
    if y.ndim > 1:
        y = y.mean(axis=1)
    n = len(y)
    if n == 0:
        return None
    if frame_length % hop_length == 0:
        # Fast path: energy per hop-sized block, frames = runs of blocks.
        k = frame_length // hop_length
        blocks = -(-n // hop_length)
        padded = np.zeros(blocks * hop_length, dtype=np.float32)
        padded[:n] = y
        grid = padded.reshape(blocks, hop_length)
        block_energy = np.einsum("ij,ij->i", grid, grid, dtype=np.float64)
        power = np.concatenate([[0.0], np.cumsum(block_energy)])
        first = np.arange(0, max(blocks - k, 0) + 1)
        starts = first * hop_length
        starts = starts[starts < n]
        first = first[: len(starts)]
        ends = np.minimum(starts + frame_length, n)
        frame_power = (power[np.minimum(first + k, blocks)] - power[first]) / (ends - starts)
    else:
        power = np.concatenate([[0.0], np.cumsum(y.astype(np.float64) ** 2)])
        starts = np.arange(0, max(n - frame_length, 0) + hop_length, hop_length)
        starts = starts[starts < n]
        ends = np.minimum(starts + frame_length, n)
        frame_power = (power[ends] - power[starts]) / (ends - starts)
    peak = frame_power.max()
    if peak <= 1e-20:  # digital silence
        return None
    loud = np.nonzero(10.0 * np.log10(np.maximum(frame_power, 1e-20) / peak) > -top_db)[0]
    return int(starts[loud[0]]), int(ends[loud[-1]])


def edge_silence_seconds(y: np.ndarray, sr: int, top_db: float) -> tuple[float, float] | None:
    """(leading, trailing) silence in seconds; None for an all-silent clip."""
    bounds = nonsilent_bounds(y, top_db)
    if bounds is None:
        return None
    start, end = bounds
    return start / sr, (len(y) - end) / sr


def _check_audio(entry: Entry, data: DataConfig, audio: AudioConfig) -> tuple[list[Problem], float | None]:
    """Problems of one entry's audio file, and its length in seconds when known."""

    def problem(kind: str, detail: str) -> Problem:
        return Problem(kind, entry.filelist, entry.line, detail)

    path = entry.audio_path
    if not path.exists():
        return [problem("missing_file", f"{path} does not exist")], None
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile's errors are RuntimeError / LibsndfileError
        reason = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
        return [problem("unreadable_file", f"{path}: {reason}")], None
    if info.frames <= 0 or info.samplerate <= 0:
        return [problem("empty_audio", f"{path} has no samples")], None
    seconds = info.frames / info.samplerate
    problems: list[Problem] = []
    if info.samplerate != audio.sampling_rate:
        problems.append(problem("wrong_sample_rate",
                                f"{path} is {info.samplerate} Hz, expected {audio.sampling_rate} Hz"))
    if info.channels != 1:
        problems.append(problem("not_mono", f"{path} has {info.channels} channels"))
    if seconds > data.max_audio_seconds:
        problems.append(problem("too_long", f"{path} is {seconds:.2f} s (> {data.max_audio_seconds:g} s)"))
    if any(p.kind != "too_long" for p in problems):
        return problems, seconds  # the file will be rejected anyway; skip decoding it
    try:
        y, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as exc:
        reason = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
        unreadable = problem("unreadable_file", f"{path}: header ok but audio cannot be decoded ({reason})")
        return problems + [unreadable], None
    peak = float(np.abs(y).max()) if y.size else 0.0
    if not np.isfinite(peak) or peak > 1.0:
        # Only float WAVs can do this; the trainer's load_wav rejects them.
        return problems + [problem("out_of_range", f"{path}: float samples reach {peak:g}, outside [-1, 1]")], seconds
    level = silent_peak_dbfs(y)
    edges = edge_silence_seconds(y, sr, data.silence_top_db) if level is None else None
    if level is not None:
        problems.append(problem("silent", f"{path}: {describe_silence(level)}"))
    elif edges is not None:  # a clip loud enough always has frames above the threshold
        lead, trail = edges
        if max(lead, trail) > data.max_edge_silence_seconds:
            problems.append(problem(
                "edge_silence",
                f"{path}: {lead:.2f} s leading, {trail:.2f} s trailing silence "
                f"(> {data.max_edge_silence_seconds:g} s at -{data.silence_top_db:g} dB)",
            ))
    return problems, seconds


def _check_text(entry: Entry, text_config: TextConfig, cache: dict[str, list[str]]) -> list[Problem]:
    from trainer.text import unknown_characters

    if not entry.text.strip():
        return [Problem("empty_text", entry.filelist, entry.line, "no text after '|'")]
    if entry.text not in cache:
        cache[entry.text] = list(unknown_characters(entry.text, text_config))
    unknown = cache[entry.text]
    if unknown:
        # Code points make invisible characters (no-break space, zero-width joiner) findable.
        shown = ", ".join(f"{c!r} (U+{ord(c):04X})" if len(c) == 1 else repr(c) for c in unknown)
        return [Problem("unknown_characters", entry.filelist, entry.line,
                        f"{shown} in {_snippet(entry.text, unknown)!r}")]
    return []


def _snippet(text: str, unknown: list[str], width: int = 70) -> str:
    """The transcript, or the part of a long one around the first unknown character."""
    if len(text) <= width:
        return text
    hits = [text.find(c) for c in unknown if c in text]
    at = min(hits) if hits else 0
    start = max(0, min(at - width // 2, len(text) - width))
    return ("..." if start else "") + text[start:start + width] + ("..." if start + width < len(text) else "")


def audit_dataset(
    data: DataConfig, audio: AudioConfig, text: TextConfig, jobs: int | None = None
) -> AuditReport:
    """Check every entry of ``data.training_files`` and ``data.validation_files``."""
    report = AuditReport(
        sampling_rate=audio.sampling_rate,
        max_audio_seconds=data.max_audio_seconds,
        max_edge_silence_seconds=data.max_edge_silence_seconds,
    )
    lists: list[tuple[FilelistSummary, list[Entry]]] = []
    for path in (data.training_files, data.validation_files):
        summary = FilelistSummary(Path(path))
        report.filelists.append(summary)
        try:
            entries, bad_lines = parse_filelist(path)
        except FilelistError as exc:
            entries, bad_lines = [], [exc]
        if bad_lines:
            # Every malformed line is listed; the entries of that filelist are not checked.
            report.problems.extend(Problem("malformed_filelist", Path(path), e.line, str(e)) for e in bad_lines)
            summary.readable = False
            summary.malformed_lines = sum(e.line is not None for e in bad_lines)
            entries = []
        summary.entries = len(entries)
        lists.append((summary, entries))

    all_entries = [e for _, entries in lists for e in entries]
    cache: dict[str, list[str]] = {}
    text_problems = {id(e): _check_text(e, text, cache) for e in all_entries}

    # Each file once, even if listed twice.
    unique: dict[Path, Entry] = {}
    first_seen: dict[Path, Entry] = {}
    for e in all_entries:
        key = e.audio_path.resolve()
        if key in first_seen:
            other = first_seen[key]
            report.problems.append(Problem("duplicate", e.filelist, e.line, f"{e.audio_path} is also at {other.where}"))
        else:
            first_seen[key] = e
            unique[key] = e
    workers = jobs or min(32, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = dict(zip(unique, pool.map(lambda e: _check_audio(e, data, audio), unique.values())))

    seconds_of = {key: seconds for key, (_, seconds) in results.items()}
    for summary, entries in lists:
        for e in entries:
            key = e.audio_path.resolve()
            if unique.get(key) is e:
                report.problems.extend(results[key][0])
                if results[key][1] is not None:
                    report.clip_seconds.append(results[key][1])
            report.problems.extend(text_problems[id(e)])
            if seconds_of.get(key) is not None:
                summary.seconds += seconds_of[key]
    # Report order: by kind (as in PROBLEM_KINDS), then filelist order and line.
    order = {kind: i for i, kind in enumerate(PROBLEM_KINDS)}
    list_order = {s.path: i for i, s in enumerate(report.filelists)}
    report.problems.sort(key=lambda p: (order[p.kind], list_order.get(p.filelist, 99), p.line or 0))
    return report

