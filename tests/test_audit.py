"""``smart-tuner data check``: a clean espeak-ng dataset passes, each kind of damage is found."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trainer.config import AudioConfig, DataConfig, TextConfig
from trainer.data.audit import audit_dataset, edge_silence_seconds
from trainer.text import unknown_characters

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (sudo apt-get install espeak-ng)")
    from trainer.data.espeak import build_espeak_dataset

    out = tmp_path_factory.mktemp("audit") / "clean"
    build_espeak_dataset(out, n=8, max_chars=40, val_fraction=0.25, seed=3, jobs=4)
    return out


@pytest.fixture
def dataset(clean, tmp_path) -> Path:
    """A private copy of the clean dataset to damage."""
    out = tmp_path / "ds"
    shutil.copytree(clean, out)
    return out


def config_for(ds: Path, **data) -> DataConfig:
    return DataConfig(training_files=ds / "train.txt", validation_files=ds / "val.txt", **data)


def audit(ds: Path, **data):
    return audit_dataset(config_for(ds, **data), AudioConfig(), TextConfig())


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def write_lines(path: Path, rows: list[str]) -> None:
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


def test_clean_dataset_passes(clean):
    report = audit(clean)
    assert report.ok, report.format()
    assert report.problems == []
    assert report.entries == 8
    assert [f.entries for f in report.filelists] == [6, 2]
    stats = report.clip_stats
    assert 0.3 < stats["min"] <= stats["median"] <= stats["max"] < 6
    assert report.total_hours == pytest.approx(sum(report.clip_seconds) / 3600)
    text = report.format()
    assert "OK: ready to train" in text and "8 clips" in text


def test_each_error_is_reported_with_its_line(dataset):
    train = dataset / "train.txt"
    rows = lines(train)
    wav = lambda row: dataset / row.split("|")[0]  # noqa: E731

    # line 1: missing wav
    wav(rows[0]).unlink()
    # line 2: 16 kHz
    y, sr = sf.read(str(wav(rows[1])), dtype="float32")
    sf.write(str(wav(rows[1])), y[::2][: len(y) * 16000 // 22050], 16000, subtype="PCM_16")
    # line 3: empty text
    rows[2] = rows[2].split("|")[0] + "|"
    # line 4: a character outside the symbol set
    assert unknown_characters("price # 5", TextConfig()) == ["#"]
    rows[3] = rows[3] + " #5"
    # line 5: stereo
    y, sr = sf.read(str(wav(rows[4])), dtype="float32")
    sf.write(str(wav(rows[4])), np.stack([y, y], axis=1), sr, subtype="PCM_16")
    # line 6: not audio at all
    wav(rows[5]).write_bytes(b"this is not a wav file" * 10)
    write_lines(train, rows)

    report = audit(dataset)
    assert not report.ok
    assert report.counts == {
        "missing_file": 1, "unreadable_file": 1, "wrong_sample_rate": 1,
        "not_mono": 1, "empty_text": 1, "unknown_characters": 1,
    }
    where = {p.kind: p.where for p in report.problems}
    assert where == {
        "missing_file": f"{train}:1", "wrong_sample_rate": f"{train}:2", "empty_text": f"{train}:3",
        "unknown_characters": f"{train}:4", "not_mono": f"{train}:5", "unreadable_file": f"{train}:6",
    }
    assert "16000 Hz, expected 22050 Hz" in report.by_kind("wrong_sample_rate")[0].detail
    assert "'#'" in report.by_kind("unknown_characters")[0].detail
    assert "2 channels" in report.by_kind("not_mono")[0].detail
    assert len(report.errors) == 6 and report.warnings == []

    text = report.format(show=5)
    for kind, loc in where.items():
        assert loc in text
    assert "sox in.wav -r 22050 out.wav" in text
    assert "sox in.wav -c 1 out.wav" in text
    assert "NOT READY: 6 errors" in text


def test_malformed_filelist_is_reported_not_raised(dataset):
    val = dataset / "val.txt"
    rows = lines(val)
    write_lines(val, [rows[0], "wavs/broken.wav no pipe here", *rows[1:]])
    report = audit(dataset)
    assert not report.ok
    assert report.counts == {"malformed_filelist": 1}
    problem = report.by_kind("malformed_filelist")[0]
    assert problem.line == 2 and problem.where == f"{val}:2"
    assert f"{val}:2" in report.format()
    # The training list is still checked.
    assert [f.entries for f in report.filelists] == [6, 0]


def test_missing_filelist(dataset):
    (dataset / "val.txt").unlink()
    report = audit(dataset)
    assert not report.ok
    assert "filelist not found" in report.by_kind("malformed_filelist")[0].detail


def test_warnings_do_not_fail(dataset):
    train, val = dataset / "train.txt", dataset / "val.txt"
    rows = lines(train)
    # 1 s of silence before the first clip.
    path = dataset / rows[0].split("|")[0]
    y, sr = sf.read(str(path), dtype="float32")
    sf.write(str(path), np.concatenate([np.zeros(sr, np.float32), y]), sr, subtype="PCM_16")
    lead, _ = edge_silence_seconds(sf.read(str(path), dtype="float32")[0], sr, 40)
    assert lead > 0.9
    # The second training clip also listed in val.
    write_lines(val, [*lines(val), rows[1]])

    report = audit(dataset, max_audio_seconds=0.5)  # every clip is longer
    assert report.ok, report.format()
    counts = report.counts
    assert counts["edge_silence"] == 1 and counts["duplicate"] == 1 and counts["too_long"] == 8
    assert report.by_kind("edge_silence")[0].where == f"{train}:1"
    dup = report.by_kind("duplicate")[0]
    assert dup.where == f"{val}:3" and f"{train}:2" in dup.detail
    text = report.format(show=1)
    assert "WARNING: long leading/trailing silence: 1" in text and "OK: ready to train" in text


def test_show_limits_lines(dataset):
    train = dataset / "train.txt"
    write_lines(train, [r.split("|")[0] + "|" for r in lines(train)])
    text = audit(dataset).format(show=2)
    assert "ERROR: empty text: 6" in text and "... and 4 more" in text
    assert f"{train}:2:" in text and f"{train}:3:" not in text


def write_config(path: Path, ds: Path) -> Path:
    path.write_text(
        f"data:\n  training_files: {ds / 'train.txt'}\n  validation_files: {ds / 'val.txt'}\n",
        encoding="utf-8",
    )
    return path


def run_check(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer.cli", "data", "check", "--config", str(config)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )


def test_cli_exit_codes(dataset, tmp_path):
    config = write_config(tmp_path / "check.yaml", dataset)
    ok = run_check(config)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK: ready to train" in ok.stdout

    train = dataset / "train.txt"
    first = lines(train)[0]
    (dataset / first.split("|")[0]).unlink()
    broken = run_check(config)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert f"{train}:1" in broken.stdout and "missing audio file" in broken.stdout


def test_float_wav_out_of_range(dataset):
    train = dataset / "train.txt"
    path = dataset / lines(train)[0].split("|")[0]
    y, sr = sf.read(str(path), dtype="float32")
    sf.write(str(path), y * 3.0, sr, subtype="FLOAT")
    report = audit(dataset)
    assert not report.ok
    assert report.counts == {"out_of_range": 1}
    assert report.by_kind("out_of_range")[0].where == f"{train}:1"


def test_russian_dataset_passes_with_russian_text_config(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (sudo apt-get install espeak-ng)")
    from trainer.data.espeak import build_espeak_dataset

    sentences = tmp_path / "ru.txt"
    sentences.write_text("Привет, мир.\nЁлка стоит в лесу.\n«Мама» мыла раму — 5 раз.\n", encoding="utf-8")
    build_espeak_dataset(tmp_path / "ru", n=3, voice="ru", sentences_file=sentences, val_fraction=0.3, jobs=2)
    ru = TextConfig(language="ru", cleaners=["russian_cleaners"])
    report = audit_dataset(config_for(tmp_path / "ru"), AudioConfig(), ru)
    assert report.ok, report.format()
    # The same Cyrillic text is all unknown to the English symbol set.
    report = audit_dataset(config_for(tmp_path / "ru"), AudioConfig(), TextConfig())
    assert report.counts == {"unknown_characters": 3}
