"""Data errors name the filelist line and say what to do: encodings, clip formats, silence,
every malformed line of a filelist."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from trainer.cli import main
from trainer.config import AudioConfig, DataConfig, TextConfig
from trainer.data.audit import audit_dataset
from trainer.data.dataset import DatasetError, TextMelDataset
from trainer.data.filelist import FilelistError, read_filelist

from conftest import micro_config


@pytest.fixture
def ds(espeak_dataset, tmp_path) -> Path:
    """A private copy of the session's espeak-ng dataset (10 train, 2 val) to damage."""
    out = tmp_path / "ds"
    shutil.copytree(espeak_dataset, out, ignore=shutil.ignore_patterns(".cache", ".mel_cache"))
    return out


def rows(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def wav_of(ds: Path, row: str) -> Path:
    return ds / row.split("|")[0]


def data_config(ds: Path) -> DataConfig:
    return DataConfig(training_files=ds / "train.txt", validation_files=ds / "val.txt", cache_dir=ds / ".cache")


def test_non_utf8_filelist_names_the_line(ds):
    train = ds / "train.txt"
    lines = rows(train)
    lines[2] += " caf\u00e9"  # Latin-1 'é' on line 3: one byte 0xE9, invalid in UTF-8
    train.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(FilelistError) as info:
        read_filelist(train)
    message = str(info.value)
    assert message.startswith(f"{train}:3: ") and "UTF-8" in message and "re-save" in message
    assert "column" in message  # where in the line, not a byte offset into the file


def test_data_check_reports_every_malformed_line_and_exits_2(ds, tmp_path, capsys):
    train = ds / "train.txt"
    lines = rows(train)
    lines[1] = "wavs/x.wav no separator here"  # line 2
    lines[4] = "|an empty path"  # line 5
    body = ("\n".join(lines) + "\n").encode("utf-8")
    body = body.replace(lines[7].encode("utf-8"), (lines[7] + " na\u00efve").encode("latin-1"))  # line 8
    train.write_bytes(body)
    config = tmp_path / "check.yaml"
    config.write_text(f"data:\n  training_files: {train}\n  validation_files: {ds / 'val.txt'}\n", encoding="utf-8")

    code = main(["data", "check", "--config", str(config)])
    out = capsys.readouterr().out
    assert code == 2, out
    assert "ERROR: malformed filelist: 3" in out
    for line in (2, 5, 8):
        assert f"{train}:{line}: " in out
    assert "not UTF-8" in out

    data = DataConfig(training_files=train, validation_files=ds / "val.txt")
    report = audit_dataset(data, AudioConfig(), TextConfig())
    assert [p.line for p in report.by_kind("malformed_filelist")] == [2, 5, 8]
    # Training stops on the first one, and says there are more.
    with pytest.raises(FilelistError, match=rf"^{train}:2: .*and 2 more malformed lines"):
        read_filelist(train)


def test_train_names_every_problem_of_a_stereo_44k_clip_with_its_line(ds, tmp_path, capsys):
    train = ds / "train.txt"
    clip = wav_of(ds, rows(train)[3])  # line 4
    y, sr = sf.read(str(clip), dtype="float32")
    resampled = np.interp(np.arange(0, len(y), sr / 44100), np.arange(len(y)), y).astype(np.float32)
    sf.write(str(clip), np.stack([resampled, resampled], axis=1), 44100, subtype="PCM_16")
    data = data_config(ds)
    with pytest.raises(DatasetError) as info:
        TextMelDataset(train, data, AudioConfig(), TextConfig())
    message = str(info.value)
    assert message.startswith(f"{train}:4: ")
    assert "2 channels" in message and "44100 Hz" in message and "22050" in message
    assert "sox in.wav -c 1 -r 22050 out.wav" in message

    # What 'smart-tuner train' prints: one error line, no traceback.
    cfg = micro_config(ds, tmp_path / "run")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")), encoding="utf-8")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {train}:4: ") and "2 channels" in err and "44100 Hz" in err
    assert "Traceback" not in err


def test_silent_clips_warn_in_training_and_fail_data_check(ds, capsys):
    train = ds / "train.txt"
    lines = rows(train)
    zeros, quiet = wav_of(ds, lines[1]), wav_of(ds, lines[5])  # lines 2 and 6
    y, sr = sf.read(str(zeros), dtype="float32")
    sf.write(str(zeros), np.zeros_like(y), sr, subtype="PCM_16")
    y, sr = sf.read(str(quiet), dtype="float32")
    sf.write(str(quiet), (y * 0.002).astype(np.float32), sr, subtype="PCM_16")  # speech at about -60 dBFS

    data = data_config(ds)
    TextMelDataset(train, data, AudioConfig(), TextConfig())
    out = capsys.readouterr().out
    assert "warning:" in out and "2 silent clip" in out
    assert f"{train}:2" in out and f"{train}:6" in out
    # Said again on the next start, when the mels come from the cache.
    TextMelDataset(train, data, AudioConfig(), TextConfig())
    again = capsys.readouterr().out
    assert f"{train}:2" in again and f"{train}:6" in again

    data = DataConfig(training_files=train, validation_files=ds / "val.txt")
    report = audit_dataset(data, AudioConfig(), TextConfig())
    assert not report.ok
    assert [p.where for p in report.by_kind("silent")] == [f"{train}:2", f"{train}:6"]
    assert "NOT READY" in report.format()


def test_clean_dataset_gives_no_silence_warning(ds, capsys):
    TextMelDataset(ds / "train.txt", data_config(ds), AudioConfig(), TextConfig())
    assert "warning" not in capsys.readouterr().out
