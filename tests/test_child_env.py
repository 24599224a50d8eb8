"""The processes Smart Tuner starts get an allow-listed environment: never the Telegram
bot token or other secrets of the daemon's environment or ``.env``; PATH, locale, the
math libraries' and MLflow's settings (and, for the trainer, MLflow's credentials) yes.

Each test starts a real process that writes its environment to a file.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import yaml

from agent.daemon import run_daemon
from agent.paths import child_config_path

from conftest import kill_daemon_and_child, micro_config

TOKEN = "not-a-bot-token-but-a-SECRET"  # not token-shaped: the daemon starts no bot with it
PASSWORD = "s3cret-pw"


def _dump_env_code(out: Path) -> str:
    return f"import json, os; open({str(out)!r}, 'w').write(json.dumps(dict(os.environ)))"


def _secret_environment(monkeypatch, tmp_path: Path) -> None:
    """A daemon environment (and .env) with secrets in it, and settings a trainer needs."""
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-SECRET")
    monkeypatch.setenv("SMART_TUNER_TUNER_STORAGE", f"postgresql://tuner:{PASSWORD}@db/optuna")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "mluser")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    (tmp_path / "credentials").mkdir(exist_ok=True)  # systemd's LoadCredential= folder (the bot token's file)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "credentials"))
    env_file = tmp_path / "dot.env"
    env_file.write_text(f"TELEGRAM_BOT_TOKEN=123456789:AAdotenvSECRET\nOTHER_DOTENV_SECRET=dotenv-SECRET\n"
                        f"MLFLOW_TRACKING_PASSWORD={PASSWORD}\n")
    monkeypatch.setenv("SMART_TUNER_ENV_FILE", str(env_file))


def _assert_no_secrets(env: dict[str, str], cuda: str = "1") -> None:
    assert "TELEGRAM_BOT_TOKEN" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env and "OTHER_DOTENV_SECRET" not in env
    assert "SMART_TUNER_TUNER_STORAGE" not in env and "CREDENTIALS_DIRECTORY" not in env
    joined = "\n".join(f"{k}={v}" for k, v in env.items())
    assert "SECRET" not in joined
    assert env["PATH"] == os.environ["PATH"] and env["HOME"] == os.environ["HOME"]
    assert env["LANG"] == "C.UTF-8" and env["LC_ALL"] == "C.UTF-8"
    assert env["CUDA_VISIBLE_DEVICES"] == cuda and env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert env["SMART_TUNER_ENV_FILE"] == ""  # the child reads no .env of its own


def test_trainer_child_gets_no_bot_token_but_what_it_needs(tmp_path, monkeypatch):
    _secret_environment(monkeypatch, tmp_path)
    out = tmp_path / "child-env.json"
    run = tmp_path / "run"
    real_uri = f"http://mluser:{PASSWORD}@127.0.0.1:9/"
    config = micro_config(tmp_path / "ds", run, tracking__enabled=True, tracking__tracking_uri=real_uri,
                          supervisor={"process": {"backoff_seconds": 0.05, "stop_grace_seconds": 5},
                                      "tick_seconds": 0.2, "digest_minutes": 0})
    try:  # the daemon runs in this process; its child writes its environment and exits
        rc = run_daemon(config, echo_child=False, child_command=[sys.executable, "-c", _dump_env_code(out)])
    finally:
        kill_daemon_and_child(None, run)
    assert rc == 0
    env = json.loads(out.read_text())
    _assert_no_secrets(env)
    assert env["OMP_NUM_THREADS"] == "3" and env["PYTHONUNBUFFERED"] == "1"
    # MLflow's credentials reach the trainer (from the environment and from .env) ...
    assert env["MLFLOW_TRACKING_USERNAME"] == "mluser" and env["MLFLOW_TRACKING_PASSWORD"] == PASSWORD
    # ... and so does the real tracking URI, which its run-config.yaml holds masked.
    assert env["SMART_TUNER_TRACKING_URI"] == real_uri
    written = child_config_path(run).read_text()
    assert PASSWORD not in written
    assert yaml.safe_load(written)["tracking"]["tracking_uri"] == "http://mluser:***@127.0.0.1:9/"


def test_trial_process_gets_no_secrets(tmp_path, monkeypatch):
    from agent.tuner.trial_child import TrialSpec
    from agent.tuner.trial_runner import run_trial

    _secret_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("SMART_TUNER_FAULTS", "[]")
    out = tmp_path / "trial-env.json"
    fake_python = tmp_path / "python"  # run_trial starts `python -m agent.tuner.trial_child --spec ...`
    fake_python.write_text(f"#!{sys.executable}\n{_dump_env_code(out)}\n")
    fake_python.chmod(0o755)
    spec = TrialSpec(config=micro_config(tmp_path / "ds", tmp_path / "trial").model_dump(mode="json"), steps=1)
    outcome = run_trial(spec, tmp_path / "trial", on_report=lambda progress, record: False, device="0",
                        python=str(fake_python), timeout=60)
    assert outcome.status == "failed"  # it wrote no protocol, as expected of the stand-in
    env = json.loads(out.read_text())
    _assert_no_secrets(env, cuda="0")  # the trial's own device, not the daemon's
    # A trial logs nothing to MLflow: no credentials, no faults of the main trainer.
    assert "MLFLOW_TRACKING_PASSWORD" not in env and "MLFLOW_TRACKING_USERNAME" not in env
    assert "SMART_TUNER_FAULTS" not in env


def test_bot_helper_processes_get_no_bot_token(tmp_path, monkeypatch):
    from agent.media import run_tool

    _secret_environment(monkeypatch, tmp_path)
    out = tmp_path / "tool-env.json"
    code, tail = asyncio.run(run_tool([sys.executable, "-c", _dump_env_code(out)], timeout=60))
    assert code == 0, tail
    env = json.loads(out.read_text())
    _assert_no_secrets(env)
    assert env["OMP_NUM_THREADS"] == "1" and "MLFLOW_TRACKING_PASSWORD" not in env


def test_more_names_can_be_passed_on_purpose(monkeypatch):
    from agent.childenv import child_env

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    assert "AWS_ACCESS_KEY_ID" not in child_env()
    monkeypatch.setenv("SMART_TUNER_CHILD_ENV", "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY")
    env = child_env()
    assert env["AWS_ACCESS_KEY_ID"] == "key-id" and env["AWS_SECRET_ACCESS_KEY"] == "aws-secret"
    assert "TELEGRAM_BOT_TOKEN" not in env

