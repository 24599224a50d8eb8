"""Shared fixtures: one small real espeak-ng dataset and a micro Tacotron2 config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trainer.config import RunConfig, parse_config

MICRO_MODEL = {
    "symbols_embedding_dim": 32, "encoder_embedding_dim": 32, "encoder_n_convolutions": 2,
    "n_frames_per_step": 2, "attention_rnn_dim": 64, "decoder_rnn_dim": 64, "prenet_dim": 32,
    "attention_dim": 16, "attention_location_n_filters": 8, "attention_location_kernel_size": 7,
    "postnet_embedding_dim": 32, "postnet_n_convolutions": 3, "max_decoder_steps": 60,
}


@pytest.fixture(autouse=True)
def _no_real_telegram(monkeypatch):
    """No test may start a bot that talks to api.telegram.org: a developer's token (in the
    environment or in ./.env) is hidden; the Telegram tests use a stand-in on 127.0.0.1."""
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)  # a systemd credential, under a service
    monkeypatch.setenv("SMART_TUNER_ENV_FILE", "")


@pytest.fixture(scope="session")
def espeak_dataset(tmp_path_factory) -> Path:
    """12 short real utterances spoken by espeak-ng (10 train, 2 val)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    from trainer.data.espeak import build_espeak_dataset

    out = tmp_path_factory.mktemp("espeak") / "ds"
    build_espeak_dataset(out_dir=out, n=12, voice="en-us", sentences_file=None, max_chars=30, min_chars=12,
                         val_fraction=0.17, seed=7, rate=None, jobs=2)
    return out


def fake_bot_token(bot_id: int, secret: str) -> str:
    """A made-up Telegram bot token (``<bot id>:<secret>``), put together at run time so that
    no token-shaped string sits in the sources."""
    return f"{bot_id}:{secret}"


def kill_daemon_and_child(proc, run_dir: Path) -> None:
    """A test's daemon (a Popen, or None), and the trainer it started: a SIGKILLed daemon
    leaves its trainer running by design, and a test must not leak it."""
    import json
    import os
    import signal

    from agent.daemon import child_pid_path

    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    try:
        pid = int(json.loads(child_pid_path(run_dir).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_until(fn, seconds: float, what: str = "", every: float = 0.05):
    """Call ``fn`` until it returns something truthy (returned), failing after ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what or fn}")


def micro_config(dataset: Path, run_dir: Path, **overrides) -> RunConfig:
    """A model small enough for a real training step in ~0.1 s on CPU."""
    raw = {
        "run_dir": str(run_dir),
        "data": {"training_files": str(dataset / "train.txt"), "validation_files": str(dataset / "val.txt"),
                 "batch_size": 4, "cache_dir": str(dataset / ".cache")},
        "model": dict(MICRO_MODEL),
        "loss": {"gate_pos_weight": 5.0},
        "optim": {"learning_rate": 2e-3},
        "train": {"max_steps": 6, "log_every": 1, "torch_threads": 1},
        "eval": {"every_steps": 3, "probe_sentences": ["Hello there."], "probe_max_decoder_steps": 20},
        "checkpoint": {"every_steps": 3, "keep_last": 5},
        "tracking": {"enabled": False},
    }
    for dotted, value in overrides.items():
        target = raw
        *parents, leaf = dotted.split("__")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    import yaml

    return parse_config(yaml.safe_dump(raw), "<test>")
