"""Mel cache, bucketed resumable batches, collate, schedule."""

from __future__ import annotations

import os

import numpy as np
import pytest

from trainer.config import AudioConfig, DataConfig, OptimConfig, TextConfig
from trainer.data.dataset import BucketBatchSampler, TextMelDataset
from trainer.loop import Trainer
from trainer.schedule import LRSchedule

from conftest import micro_config


def test_mel_cache_is_computed_once_and_invalidated_by_settings_and_audio(espeak_dataset, tmp_path):
    data = DataConfig(training_files=espeak_dataset / "train.txt", validation_files=espeak_dataset / "val.txt")
    cache = tmp_path / "cache"
    ds = TextMelDataset(data.training_files, data, AudioConfig(), TextConfig(), cache_root=cache)
    files = sorted((cache / AudioConfig().cache_key()).glob("*.npy"))
    assert len(files) == len(ds)
    mtimes = [f.stat().st_mtime_ns for f in files]
    TextMelDataset(data.training_files, data, AudioConfig(), TextConfig(), cache_root=cache)
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # read back, not recomputed

    other = AudioConfig(mel_fmax=7600.0)
    assert other.cache_key() != AudioConfig().cache_key()
    ds2 = TextMelDataset(data.training_files, data, other, TextConfig(), cache_root=cache)
    assert len(list((cache / other.cache_key()).glob("*.npy"))) == len(ds2)

    # Re-recorded audio (new mtime) gets a new cache entry.
    wav = ds.items[0].entry.audio_path
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))
    TextMelDataset(data.training_files, data, AudioConfig(), TextConfig(), cache_root=cache)
    assert len(list((cache / AudioConfig().cache_key()).glob("*.npy"))) == len(ds) + 1


def test_bucketing_is_deterministic_and_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 800, size=400).tolist()
    bucketed = BucketBatchSampler(lengths, 16, 8, seed=1)
    random_batches = BucketBatchSampler(lengths, 16, 1, seed=1)
    assert bucketed.epoch_batches(3) == BucketBatchSampler(lengths, 16, 8, seed=1).epoch_batches(3)
    assert bucketed.epoch_batches(3) != bucketed.epoch_batches(4)

    def padded_share(sampler):
        total = real = 0
        for b in sampler.epoch_batches(0):
            total += max(lengths[i] for i in b) * len(b)
            real += sum(lengths[i] for i in b)
        return 1 - real / total

    assert padded_share(bucketed) < 0.5 * padded_share(random_batches)
    seen = sorted(i for b in bucketed.epoch_batches(0) for i in b)
    assert seen == list(range(400))  # 400 = 25 full batches: nothing dropped, nothing twice


def test_schedule_warmup_decay_and_commanded_rate():
    s = LRSchedule(OptimConfig(learning_rate=1e-3, warmup_steps=10, decay_start=100, decay_rate=0.5,
                               decay_steps=100, min_learning_rate=1e-4))
    assert s.lr(0) == pytest.approx(1e-4) and s.lr(9) == pytest.approx(1e-3) and s.lr(50) == pytest.approx(1e-3)
    assert s.lr(200) == pytest.approx(5e-4) and s.lr(10_000) == pytest.approx(1e-4)
    s.set_current(200, 2e-4)
    assert s.lr(200) == pytest.approx(2e-4) and s.lr(300) == pytest.approx(1e-4)


def test_data_loader_worker_gives_the_same_batches(espeak_dataset, tmp_path):
    zero = Trainer(micro_config(espeak_dataset, tmp_path / "a"))
    one = Trainer(micro_config(espeak_dataset, tmp_path / "b", data__num_workers=1))
    for _ in range(3):
        a, b = zero.next_batch(), one.next_batch()
        assert a.text.equal(b.text) and a.mel.equal(b.mel) and a.gate.equal(b.gate)
