"""``smart-tuner data espeak``: real espeak-ng, tiny datasets, a second or two each."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trainer.data.audit import edge_silence_seconds
from trainer.data.espeak import (
    LJSPEECH_SENTENCES,
    EspeakError,
    EspeakNotInstalled,
    build_espeak_dataset,
)
from trainer.data.filelist import read_filelist
from trainer.errors import UserError

REPO = Path(__file__).resolve().parent.parent

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (sudo apt-get install espeak-ng)",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (sudo apt-get install espeak-ng)")
    out = tmp_path_factory.mktemp("espeak") / "ds"
    build_espeak_dataset(out, n=6, max_chars=40, val_fraction=0.2, seed=7, jobs=4)
    return out


def test_packaged_sentences_are_ljspeech_text():
    lines = LJSPEECH_SENTENCES.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 13100
    ids = [line.split("|", 1)[0] for line in lines]
    assert ids == sorted(set(ids))
    assert lines[0].startswith("LJ001-0001|Printing, in the only sense")
    assert all(line.count("|") == 1 for line in lines)


@needs_espeak
def test_wav_format(tiny):
    wavs = sorted((tiny / "wavs").glob("*.wav"))
    assert len(wavs) == 6
    for wav in wavs:
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (22050, 1, "PCM_16", "WAV")
        assert 0.3 < info.duration < 6.0
        y, sr = sf.read(str(wav), dtype="float32")
        assert np.abs(y).max() > 0.05
        lead, trail = edge_silence_seconds(y, sr, top_db=40)
        # Trimmed to a ~50 ms margin each side (espeak-ng itself trails ~0.3 s).
        assert lead < 0.1 and trail < 0.1, (wav, lead, trail)
    assert not list((tiny / "wavs").glob(".*")), "temporary files left behind"


@needs_espeak
def test_filelists_resolve_and_split(tiny):
    train = read_filelist(tiny / "train.txt")
    val = read_filelist(tiny / "val.txt")
    assert (len(train), len(val)) == (5, 1)  # round(6 * 0.2) = 1
    names = [e.audio_path.name for e in train + val]
    assert len(set(names)) == 6
    for e in train + val:
        assert e.audio_path.is_file()
        assert e.text and len(e.text) <= 40
        assert e.audio_path.stem.startswith("LJ")
    # Transcripts are the packaged LJSpeech text of the same id.
    packaged = dict(
        line.split("|", 1) for line in LJSPEECH_SENTENCES.read_text(encoding="utf-8").splitlines()
    )
    assert all(packaged[e.audio_path.stem] == e.text for e in train + val)
    for line in (tiny / "train.txt").read_text(encoding="utf-8").splitlines():
        assert line.startswith("wavs/") and ".wav|" in line
    readme = (tiny / "README.txt").read_text(encoding="utf-8")
    assert "espeak-ng" in readme.lower() and "en-us" in readme and "seed 7" in readme


@needs_espeak
def test_rerun_is_idempotent_and_repairs(tiny, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(tiny, out)
    wavs = sorted((out / "wavs").glob("*.wav"))
    before = {w.name: w.stat().st_mtime_ns for w in wavs}
    train_before = (out / "train.txt").read_text()
    summary = build_espeak_dataset(out, n=6, max_chars=40, val_fraction=0.2, seed=7, jobs=4)
    assert "0 made, 6 already there" in summary
    assert {w.name: w.stat().st_mtime_ns for w in wavs} == before
    assert (out / "train.txt").read_text() == train_before

    # An interrupted build: one clip missing, one truncated, a stray temp file.
    wavs[0].unlink()
    wavs[1].write_bytes(wavs[1].read_bytes()[:20])
    (out / "wavs" / f".{wavs[2].stem}.123.part.wav").write_bytes(b"junk")
    summary = build_espeak_dataset(out, n=6, max_chars=40, val_fraction=0.2, seed=7, jobs=4)
    assert "2 made, 4 already there" in summary
    assert sf.info(str(wavs[0])).samplerate == 22050
    assert sf.info(str(wavs[1])).frames > 1000
    assert (out / "train.txt").read_text() == train_before
    assert not list((out / "wavs").glob(".*"))


@needs_espeak
def test_same_seed_same_dataset(tiny, tmp_path):
    build_espeak_dataset(tmp_path / "again", n=6, max_chars=40, val_fraction=0.2, seed=7, jobs=2)
    assert (tmp_path / "again" / "train.txt").read_text() == (tiny / "train.txt").read_text()
    assert (tmp_path / "again" / "val.txt").read_text() == (tiny / "val.txt").read_text()


@needs_espeak
def test_other_settings_in_same_folder_are_refused(tiny, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(tiny, out)
    with pytest.raises(EspeakError, match="different voice"):
        build_espeak_dataset(out, n=6, max_chars=40, voice="en-gb", seed=7)


@needs_espeak
def test_russian_sentences_file(tmp_path):
    sentences = tmp_path / "ru.txt"
    sentences.write_text(
        "Привет, мир.\n"
        "\n"
        "- Мама мыла раму.\n"          # a leading dash must not be taken for an option
        "Съешь же ещё этих мягких французских булок.\n"
        "\"Кавычки\" и -- не опция.\n"
        "Ёлка стоит в лесу.\n"
        "Hello, мир.\n",                # Latin letters: not in the Russian alphabet, skipped
        encoding="utf-8",
    )
    out = tmp_path / "ds"
    summary = build_espeak_dataset(out, n=5, voice="ru", sentences_file=sentences, val_fraction=0.2, seed=1, jobs=2)
    assert "5 utterances" in summary and "'ru'" in summary
    entries = read_filelist(out / "train.txt") + read_filelist(out / "val.txt")
    assert len(entries) == 5
    texts = {e.text for e in entries}
    assert "- Мама мыла раму." in texts and "Ёлка стоит в лесу." in texts
    # Named after the line in the sentences file (line 2 is blank).
    assert {e.audio_path.stem for e in entries} == {"utt_00001", "utt_00003", "utt_00004", "utt_00005", "utt_00006"}
    with pytest.raises(EspeakError, match=r"only 5 of 6 sentences .* \(1 more have other characters\)"):
        build_espeak_dataset(tmp_path / "ds6", n=6, voice="ru", sentences_file=sentences)
    for e in entries:
        info = sf.info(str(e.audio_path))
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        assert info.duration > 0.5


def test_missing_espeak_binary(tmp_path, monkeypatch):
    monkeypatch.setitem(os.environ, "PATH", "")
    with pytest.raises(EspeakNotInstalled) as info:
        build_espeak_dataset(tmp_path / "ds", n=4, max_chars=40)
    assert isinstance(info.value, UserError)
    assert str(info.value) == (
        "espeak-ng is not installed: run 'sudo apt-get install espeak-ng' (Debian/Ubuntu) "
        "or 'brew install espeak-ng' (macOS)"
    )


@needs_espeak
def test_unknown_voice(tmp_path):
    with pytest.raises(EspeakError, match=r"espeak-ng --voices") as info:
        build_espeak_dataset(tmp_path / "ds", n=4, max_chars=40, voice="xx-nosuchvoice")
    assert "xx-nosuchvoice" in str(info.value)
    # The failed attempt does not lock the folder to the bad voice.
    build_espeak_dataset(tmp_path / "ds", n=2, max_chars=20, jobs=1)


def test_too_few_sentences(tmp_path):
    with pytest.raises(EspeakError) as info:
        build_espeak_dataset(tmp_path / "ds", n=50, max_chars=14)
    message = str(info.value)
    assert "--max-chars" in message and "--n is 50" in message
    assert "only " in message and " of 13100 sentences" in message
    assert not (tmp_path / "ds").exists()  # nothing written before the check


def test_sentences_file_errors(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(EspeakError, match="nope.txt: sentences file not found"):
        build_espeak_dataset(tmp_path / "ds", n=2, sentences_file=missing)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Caf\xe9 au lait.\nSecond line.\n".encode("latin-1"))
    with pytest.raises(EspeakError, match="latin1.txt: not UTF-8"):
        build_espeak_dataset(tmp_path / "ds", n=2, sentences_file=latin1)


def test_bad_options(tmp_path):
    with pytest.raises(EspeakError, match="--val-fraction"):
        build_espeak_dataset(tmp_path / "ds", n=4, val_fraction=1.0)
    with pytest.raises(EspeakError, match="--n must be at least 2"):
        build_espeak_dataset(tmp_path / "ds", n=1)


@needs_espeak
def test_cli(tmp_path):
    out = tmp_path / "ds"
    run = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "data", "espeak", "--out", str(out), "--n", "3",
         "--max-chars", "30", "--jobs", "2"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "3 utterances" in run.stdout and str(out / "train.txt") in run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "data", "espeak", "--out", str(tmp_path / "x"), "--n", "3",
         "--voice", "xx-nosuchvoice"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "espeak-ng --voices" in bad.stderr
