"""Tracking and tuning URLs: a password in one is masked everywhere it is shown or written
(run-config.yaml, MLflow parameters, checkpoints, trial specs, best configs, output,
logs) while the real URL still reaches MLflow and Optuna; a password on the command line
is refused; and a tracking server that is down costs seconds and one line, not minutes.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import micro_config

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret-pw"


def test_mask_text_hides_url_passwords_only():
    from trainer.redact import has_secret, mask_text

    assert mask_text(f"http://mluser:{PASSWORD}@mlflow:5000/") == "http://mluser:***@mlflow:5000/"
    assert mask_text("postgresql+psycopg2://u:p@ss@db/optuna") == "postgresql+psycopg2://u:***@db/optuna"
    assert mask_text(f"see sqlite://a:{PASSWORD}@//tmp/x.db and mysql://h/db?password={PASSWORD}&x=1") == \
        "see sqlite://a:***@//tmp/x.db and mysql://h/db?password=***&x=1"
    for plain in ("http://mlflow:5000/", "sqlite:////tmp/mlflow.db", "http://user@host/", "optim.lr=3e-4"):
        assert mask_text(plain) == plain and not has_secret(plain)


def test_masked_tracking_uri_is_revealed_only_from_the_matching_environment(monkeypatch, tmp_path):
    """The trainer child reads the masked run-config.yaml; the daemon hands it the real URI."""
    from trainer.config import TrackingConfig
    from trainer.tracking import TRACKING_URI_ENV, resolve_tracking_uri

    masked = TrackingConfig(tracking_uri="http://mluser:***@mlflow.example:5000/")
    monkeypatch.delenv(TRACKING_URI_ENV, raising=False)
    assert resolve_tracking_uri(masked, tmp_path) == masked.tracking_uri
    monkeypatch.setenv(TRACKING_URI_ENV, f"http://mluser:{PASSWORD}@other.example:5000/")
    assert resolve_tracking_uri(masked, tmp_path) == masked.tracking_uri  # not the same server: not used
    monkeypatch.setenv(TRACKING_URI_ENV, f"http://mluser:{PASSWORD}@mlflow.example:5000/")
    assert resolve_tracking_uri(masked, tmp_path) == f"http://mluser:{PASSWORD}@mlflow.example:5000/"


@pytest.mark.slow
def test_url_passwords_stay_out_of_mlflow_params_checkpoints_and_output(espeak_dataset, tmp_path, capfd):
    import torch
    from mlflow.tracking import MlflowClient

    from trainer.cli_train import run_training

    run = tmp_path / "run"
    storage = f"postgresql://tuner:{PASSWORD}@db.example/optuna"
    cfg = micro_config(espeak_dataset, run, train__max_steps=2, eval__every_steps=100, checkpoint__every_steps=2,
                       tracking__enabled=True, tuner={"storage": storage})
    run_training(cfg)  # logs to the run's own SQLite store
    output = capfd.readouterr()
    assert PASSWORD not in output.out + output.err

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    (logged,) = client.search_runs([client.get_experiment_by_name("smart-tuner").experiment_id])
    assert logged.info.status == "FINISHED"
    params = logged.data.params
    assert not [k for k, v in params.items() if PASSWORD in v]
    assert params["tuner.storage"] == "postgresql://tuner:***@db.example/optuna"

    checkpoints = sorted((run / "checkpoints").glob("*.pt"))  # checkpoints get handed around
    assert checkpoints
    for ckpt in checkpoints:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)["smart_tuner"]["config"]
        assert PASSWORD not in json.dumps(saved), ckpt
        assert saved["tuner"]["storage"] == "postgresql://tuner:***@db.example/optuna"


class _StandInSupervisor:
    phase = "warmup"

    def __init__(self, journal, cfg, *, warmup_steps):
        self.journal = journal

    def tick(self):
        pass

    def note_child_event(self, kind, detail=""):
        self.journal.audit("daemon", kind, detail)


class _LoginServer:
    """An HTTP server on 127.0.0.1 that wants a login and refuses everyone (401), noting
    the Authorization header of every request."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def _refuse(self) -> None:
                seen.append((self.command, self.path, self.headers.get("Authorization")))
                body = b'{"error_code": "UNAUTHENTICATED", "message": "login refused"}'
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _refuse

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_supervised_trainer_uses_the_real_uri_that_its_run_config_masks(espeak_dataset, tmp_path):
    """run-config.yaml holds the URI masked; the trainer child still logs in with the real password."""
    import base64

    import torch

    from agent.daemon import child_pid_path, run_daemon
    from agent.paths import child_config_path, trainer_log_path

    server = _LoginServer()
    run = tmp_path / "run"
    uri = f"http://mluser:{PASSWORD}@127.0.0.1:{server.port}/"
    cfg = micro_config(espeak_dataset, run, train__max_steps=2, eval__every_steps=100, checkpoint__every_steps=2,
                       tracking__enabled=True, tracking__tracking_uri=uri,
                       supervisor={"process": {"max_restarts": 0, "stop_grace_seconds": 30}, "tick_seconds": 0.5,
                                   "digest_minutes": 0})
    try:
        rc = run_daemon(cfg, supervisor_factory=_StandInSupervisor, echo_child=False)
    finally:
        server.close()
        if child_pid_path(run).exists():  # never leave a trainer behind
            import os
            import signal

            try:
                os.kill(json.loads(child_pid_path(run).read_text())["pid"], signal.SIGKILL)
            except (ProcessLookupError, ValueError, KeyError):
                pass
    log = trainer_log_path(run).read_text()
    assert rc == 0, log
    login = "Basic " + base64.b64encode(f"mluser:{PASSWORD}".encode()).decode()
    assert [path for _, path, auth in server.seen if auth == login and path.startswith("/api/")], server.seen
    assert f"MLflow at http://mluser:***@127.0.0.1:{server.port}/ is unusable" in log, log
    assert PASSWORD not in log
    written = child_config_path(run).read_text()
    assert PASSWORD not in written and f"mluser:***@127.0.0.1:{server.port}" in written
    for ckpt in (run / "checkpoints").glob("*.pt"):
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)["smart_tuner"]["config"]
        assert saved["tracking"]["tracking_uri"] == f"http://mluser:***@127.0.0.1:{server.port}/"


def test_structlog_events_mask_url_passwords():
    from agent.logs import configure_logging, get_logger

    out = io.StringIO()
    configure_logging("test-run", json=True, stream=out)
    get_logger().warning("store failed", uri=f"postgresql://tuner:{PASSWORD}@db/optuna",
                         error=f"could not reach http://u:{PASSWORD}@h/")
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["uri"] == "postgresql://tuner:***@db/optuna" and PASSWORD not in out.getvalue()


def test_tune_refuses_a_storage_password_on_the_command_line(tmp_path, capsys):
    from agent.cli import main as cli_main

    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(micro_config(tmp_path / "ds", tmp_path / "run").model_dump(mode="json")))
    rc = cli_main(["tune", "--config", str(config_file), "--trials", "1", "--steps", "1",
                   "--storage", f"postgresql://tuner:{PASSWORD}@db.example/optuna"])
    captured = capsys.readouterr()
    assert rc == 2
    (line,) = [x for x in captured.err.splitlines() if x.strip()]
    assert "SMART_TUNER_TUNER_STORAGE" in line and "postgresql://tuner:***@db.example/optuna" in line
    assert PASSWORD not in captured.out + captured.err
    assert not (tmp_path / "run" / "study").exists()  # nothing ran


@pytest.mark.slow
def test_tune_takes_the_storage_from_dotenv_and_masks_it(espeak_dataset, tmp_path, monkeypatch, capsys):
    import optuna

    import agent.tuner.offline as offline
    from agent.cli import main as cli_main

    run = tmp_path / "run"
    storage = f"postgresql://tuner:{PASSWORD}@db.example/tuning"
    # No PostgreSQL here: the URL Optuna is given is noted, and a SQLite file stands in for the database.
    given: list = []
    real_open_storage = offline.open_storage
    stand_in = f"sqlite:///{tmp_path / 'study.db'}"

    def open_storage(url, default_file, cfg=None):
        given.append(url)
        return real_open_storage(stand_in if url == storage else url, default_file, cfg)

    monkeypatch.setattr(offline, "open_storage", open_storage)
    env_file = tmp_path / "dot.env"
    env_file.write_text(f"SMART_TUNER_TUNER_STORAGE={storage}\n")
    monkeypatch.setenv("SMART_TUNER_ENV_FILE", str(env_file))
    monkeypatch.delenv("SMART_TUNER_TUNER_STORAGE", raising=False)
    cfg = micro_config(espeak_dataset, run, tuner={"report_every": 2, "seed": 1, "sampler": "random"},
                       tracking__tracking_uri=f"http://mluser:{PASSWORD}@mlflow.example:5000/")
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))

    assert cli_main(["tune", "--config", str(config_file), "--trials", "1", "--steps", "2"]) == 0
    assert given == [storage]  # the real URL, from .env, is what Optuna got
    captured = capsys.readouterr()
    assert "in postgresql://tuner:***@db.example/tuning" in captured.out
    assert PASSWORD not in captured.out + captured.err
    study = optuna.load_study(study_name="run", storage=stand_in)
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.COMPLETE]
    for written in (run / "study" / "best-config.yaml", run / "study" / "trials" / "trial-0000" / "spec.json"):
        assert PASSWORD not in written.read_text(), written
    assert "mluser:***@mlflow.example" in (run / "study" / "best-config.yaml").read_text()


@pytest.mark.slow
def test_unreachable_tracking_server_costs_seconds_and_one_line(espeak_dataset, tmp_path):
    """Nothing listens on 127.0.0.1:9: training starts at once, with one line saying tracking is off."""
    run = tmp_path / "run"
    cfg = micro_config(espeak_dataset, run, train__max_steps=2, eval__every_steps=100, tracking__enabled=True,
                       tracking__tracking_uri=f"http://mluser:{PASSWORD}@127.0.0.1:9/")
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "train", "--config", str(config_file)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=120)  # MLflow's own retries would take about 4 minutes
    except subprocess.TimeoutExpired:
        proc.kill()
    reader.join(timeout=10)
    text = "\n".join(line for _, line in lines)
    assert proc.returncode == 0, text
    start = next(t for t, line in lines if line.startswith("training "))  # the trainer is ready ...
    first = next(t for t, line in lines if line.startswith("step "))  # ... and its first step is done
    print(f"from the start of training to step 1: {first - start:.1f} s")
    assert first - start < 30, text
    notices = [line for _, line in lines if "MLflow" in line]
    assert len(notices) == 1, text
    assert "tracking is off" in notices[0] and "127.0.0.1:9" in notices[0] and "connection refused" in notices[0]
    assert "mluser:***@" in notices[0] and PASSWORD not in text
