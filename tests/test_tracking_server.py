"""MLflow in tracking-server mode: a real `mlflow server` process over a real PostgreSQL
database, two trainings in two processes logging to it over HTTP, artifacts included."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from conftest import micro_config, wait_until

pgserver = pytest.importorskip("pgserver", reason="pip install pgserver (part of the test extra)")
pytest.importorskip("psycopg", reason="pip install psycopg[binary] (part of the test extra)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    db = pgserver.get_server(folder / "pg", cleanup_mode="stop")
    db.psql("CREATE DATABASE mlflow;")
    backend = db.get_uri().replace("/postgres?", "/mlflow?")
    port = _free_port()
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}"

    def healthy():
        assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    wait_until(healthy, 120, "mlflow server to answer", every=0.5)
    yield url, folder / "artifacts"
    server.terminate()
    server.wait(timeout=30)
    db.cleanup()


def test_two_runs_log_to_one_tracking_server(tracking_server, espeak_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    url, artifacts = tracking_server
    runs = []
    for name in ("voice-a", "voice-b"):
        cfg = micro_config(espeak_dataset, tmp_path / name, train__max_steps=4, eval__every_steps=2,
                           tracking__enabled=True, tracking__tracking_uri=url, tracking__experiment_name="shared")
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        runs.append(subprocess.Popen([sys.executable, "-m", "agent.cli", "train", "--config", str(path)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}))
    outputs = []
    for proc in runs:
        out, _ = proc.communicate(timeout=600)
        outputs.append(out)
        assert proc.returncode == 0, out[-3000:]
    for out in outputs:
        assert "MLflow tracking is off" not in out and "unusable" not in out, out[-2000:]

    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name("shared")
    found = client.search_runs([exp.experiment_id])
    assert len(found) == 2 and {r.info.status for r in found} == {"FINISHED"}
    for run in found:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
        # Artifacts go through the server into its artifact store, not into the run folder.
        assert "alignments/step_00000002.png" in {a.path for a in client.list_artifacts(run.info.run_id,
                                                                                        "alignments")}
    assert list(artifacts.rglob("step_00000002.png"))
    assert not (tmp_path / "voice-a" / "mlflow.db").exists()


def test_a_tracking_server_that_is_down_costs_seconds_and_is_said_once(espeak_dataset, tmp_path, capsys):
    from trainer.cli_train import run_training

    dead = f"http://127.0.0.1:{_free_port()}"
    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=2, tracking__enabled=True,
                       tracking__tracking_uri=dead)
    started = time.monotonic()
    run_training(cfg)
    assert time.monotonic() - started < 60  # MLflow's own retries would take minutes
    said = capsys.readouterr()
    assert (said.out + said.err).count("MLflow tracking is off") == 1
    assert "stopped at step 2" in said.out  # and the run went on
