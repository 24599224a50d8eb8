"""``smart-tuner data prepare --ljspeech``: LJSpeech as downloaded (metadata.csv + wavs/) becomes
train.txt / val.txt; metadata.csv given as a filelist says to run it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.config import AudioConfig, DataConfig, TextConfig
from trainer.data.audit import audit_dataset
from trainer.data.dataset import TextMelDataset
from trainer.data.filelist import FilelistError, read_filelist


@pytest.fixture
def ljspeech(espeak_dataset, tmp_path) -> Path:
    """A 12-clip LJSpeech-1.1-shaped folder made from real espeak-ng clips.

    metadata.csv: ``id|transcription|normalized transcription``; the transcription column
    differs from the normalized one so that the test can tell which one was used; the
    third clip's normalized column is empty (the 2nd column must be used).
    """
    root = tmp_path / "LJSpeech-1.1"
    (root / "wavs").mkdir(parents=True)
    source = [line for name in ("train.txt", "val.txt")
              for line in (espeak_dataset / name).read_text(encoding="utf-8").splitlines()]
    assert len(source) == 12
    rows = []
    for i, line in enumerate(source, start=1):
        wav, text = line.split("|")
        clip_id = f"LJ001-{i:04d}"
        shutil.copy(espeak_dataset / wav, root / "wavs" / f"{clip_id}.wav")
        normalized = "" if i == 3 else text
        rows.append(f"{clip_id}|RAW {text} No. {i}|{normalized}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "README").write_text("LJ Speech stand-in\n", encoding="utf-8")
    return root


def prepare(*args: str) -> int:
    return main(["data", "prepare", *args])


def test_prepare_writes_filelists_with_a_reproducible_split(ljspeech, tmp_path, capsys):
    out = tmp_path / "lists"
    assert prepare("--ljspeech", str(ljspeech), "--out", str(out), "--val-fraction", "0.25", "--seed", "5") == 0
    printed = capsys.readouterr().out
    train_txt, val_txt = out / "train.txt", out / "val.txt"
    assert str(train_txt) in printed and str(val_txt) in printed
    assert "12 clips" in printed and "9 train" in printed and "3 val" in printed and "seed 5" in printed

    train, val = read_filelist(train_txt), read_filelist(val_txt)
    assert len(train) == 9 and len(val) == 3
    ids = sorted(e.audio_path.stem for e in train + val)
    assert ids == [f"LJ001-{i:04d}" for i in range(1, 13)]
    for e in train + val:
        assert e.audio_path.resolve() == (ljspeech / "wavs" / f"{e.audio_path.stem}.wav").resolve()
        assert e.audio_path.is_file()
        # The normalized column, except where it is empty.
        assert e.text.startswith("RAW ") == (e.audio_path.stem == "LJ001-0003")
    assert [e.audio_path.stem for e in train] == sorted(e.audio_path.stem for e in train)

    # Same seed: the same files byte for byte; another seed: another split.
    again = tmp_path / "again"
    assert prepare("--ljspeech", str(ljspeech), "--out", str(again), "--val-fraction", "0.25", "--seed", "5") == 0
    assert (again / "val.txt").read_bytes() == val_txt.read_bytes()
    other = tmp_path / "other"
    splits = set()
    for seed in ("1", "2", "3"):
        assert prepare("--ljspeech", str(ljspeech), "--out", str(other), "--val-fraction", "0.25", "--seed", seed) == 0
        splits.add((other / "val.txt").read_text(encoding="utf-8"))
    assert len(splits) > 1

    # The result passes the audit and loads for training.
    data = DataConfig(training_files=train_txt, validation_files=val_txt, cache_dir=tmp_path / "cache")
    report = audit_dataset(data, AudioConfig(), TextConfig())
    assert report.ok, report.format()
    assert len(TextMelDataset(train_txt, data, AudioConfig(), TextConfig())) == 9


def test_prepare_into_the_ljspeech_folder_writes_relative_paths(ljspeech, capsys):
    assert prepare("--ljspeech", str(ljspeech), "--out", str(ljspeech)) == 0
    first = (ljspeech / "train.txt").read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("wavs/LJ001-") and first.split("|")[0].endswith(".wav")
    # 12 clips at the default 0.05: one for validation.
    assert len(read_filelist(ljspeech / "val.txt")) == 1


def test_prepare_refuses_missing_wavs_and_bad_lines(ljspeech, tmp_path, capsys):
    (ljspeech / "wavs" / "LJ001-0004.wav").unlink()
    (ljspeech / "wavs" / "LJ001-0009.wav").unlink()
    with (ljspeech / "metadata.csv").open("a", encoding="utf-8") as fh:
        fh.write("LJ001-0013 has no separator\n")
    out = tmp_path / "lists"
    assert prepare("--ljspeech", str(ljspeech), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "LJ001-0004" in err and "LJ001-0009" in err and "2 of 12" in err
    assert f"{ljspeech / 'metadata.csv'}:13" in err
    assert not (out / "train.txt").exists()


def test_prepare_refuses_a_folder_that_is_not_ljspeech(tmp_path, capsys):
    assert prepare("--ljspeech", str(tmp_path), "--out", str(tmp_path / "lists")) == 2
    assert "metadata.csv" in capsys.readouterr().err


def test_metadata_csv_as_a_filelist_says_to_run_prepare(ljspeech, tmp_path):
    metadata = ljspeech / "metadata.csv"
    with pytest.raises(FilelistError, match="data prepare --ljspeech"):
        read_filelist(metadata)
    data = DataConfig(training_files=metadata, validation_files=metadata)
    report = audit_dataset(data, AudioConfig(), TextConfig())
    assert report.counts == {"malformed_filelist": 2}
    assert "smart-tuner data prepare --ljspeech" in report.format()
    assert "does not exist" not in report.format()
