"""The data audit's suspects reach the alignment-stall policy as short phrases."""

from __future__ import annotations

import threading

from agent.data_hints import audit_hints, collect_in_background

from conftest import micro_config


def test_long_clips_are_named_with_their_share_and_an_example(espeak_dataset, tmp_path):
    config = micro_config(espeak_dataset, tmp_path / "run", data__max_audio_seconds=0.5)
    hints = audit_hints(config)
    [too_long] = [h for h in hints if "longer than data.max_audio_seconds (0.5 s)" in h]
    # Every espeak clip of 12+ characters lasts over 0.5 s: all 12 are named, with a file:line.
    assert too_long.startswith("12 clips (100%)") and ".txt:" in too_long


def test_clean_data_gives_no_hints(espeak_dataset, tmp_path):
    assert audit_hints(micro_config(espeak_dataset, tmp_path / "run")) == ()


def test_background_audit_delivers_or_reports_its_error(espeak_dataset, tmp_path):
    got: list = []
    done = threading.Event()
    config = micro_config(espeak_dataset, tmp_path / "run", data__max_audio_seconds=0.5)
    collect_in_background(config, lambda h: (got.append(h), done.set()), lambda e: (got.append(e), done.set()))
    assert done.wait(60) and isinstance(got[0], tuple) and got[0]
    broken = micro_config(espeak_dataset, tmp_path / "run2", data__training_files=str(tmp_path / "missing.txt"))
    done.clear()
    got.clear()
    collect_in_background(broken, lambda h: (got.append(h), done.set()), lambda e: (got.append(e), done.set()))
    assert done.wait(60)
    # A missing filelist is an audit *error* (training stops on it anyway), not an alignment suspect.
    assert got == [()]
