"""Optuna studies on a real PostgreSQL server: several `smart-tuner tune` workers on one
study at once, and the trial of a SIGKILLed worker failed by Optuna's heartbeat and run
again by another worker.

The server is PostgreSQL itself, started by the test (the `pgserver` package ships its
binaries); the workers are real `smart-tuner tune` processes that train real trials.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import micro_config, wait_until

pgserver = pytest.importorskip("pgserver", reason="pip install pgserver (part of the test extra)")
pytest.importorskip("psycopg", reason="pip install psycopg[binary] (part of the test extra)")

PASSWORD = "tuner-" + "pw"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A PostgreSQL server, a role with a password and a database for the studies."""
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    server.psql(f"CREATE ROLE tuner LOGIN PASSWORD '{PASSWORD}';")
    server.psql("CREATE DATABASE tuning OWNER tuner;")
    socket_dir = server.get_uri().split("host=", 1)[1]
    yield f"postgresql://tuner:{PASSWORD}@/tuning?host={socket_dir}"
    server.cleanup()


def _config(tmp_path: Path, dataset: Path, name: str, **tuner) -> Path:
    cfg = micro_config(dataset, tmp_path / name,
                       tuner={"report_every": 2, "seed": 1, "sampler": "random", **tuner})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _worker(config: Path, storage: str, trials: int, steps: int, study: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "SMART_TUNER_TUNER_STORAGE": storage}
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "tune", "--config", str(config), "--trials", str(trials),
         "--steps", str(steps), "--study-name", study],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _trials_run(log: Path) -> set[int]:
    """Trial numbers this worker started (its 'trial N: <values>' lines)."""
    out = set()
    for line in log.read_text().splitlines():
        if line.startswith("trial ") and ":" in line:
            head = line.split(":", 1)[0].split()
            if len(head) == 2 and head[1].isdigit() and not any(
                    w in line for w in ("complete,", "pruned,", "failed,")):
                out.add(int(head[1]))
    return out


def test_two_workers_share_one_study_and_never_run_a_trial_twice(postgres, espeak_dataset, tmp_path):
    import optuna
    from optuna.trial import TrialState

    config = _config(tmp_path, espeak_dataset, "shared")
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [_worker(config, postgres, 2, 4, "shared", log) for log in logs]
    for w in workers:
        assert w.wait(timeout=600) == 0, "\n".join(log.read_text() for log in logs)

    study = optuna.load_study(study_name="shared", storage=postgres)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    ran = [_trials_run(log) for log in logs]
    assert ran[0] and ran[1], "both workers ran trials"
    assert not ran[0] & ran[1], f"a trial ran in both workers: {ran}"
    assert ran[0] | ran[1] == {t.number for t in trials}
    # The current config ran once, though both workers started the study together.
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    assert study.best_value == min(t.value for t in completed)
    # The password reached Optuna only: not the workers' output, not the files they wrote.
    for log in logs:
        assert PASSWORD not in log.read_text()
    for path in (tmp_path / "shared").rglob("*"):
        if path.is_file() and path.suffix in {".yaml", ".json", ".log", ".txt"}:
            assert PASSWORD not in path.read_text(errors="replace"), path


def test_a_killed_workers_trial_is_failed_by_the_heartbeat_and_run_again(postgres, espeak_dataset, tmp_path):
    import optuna
    from optuna.trial import TrialState

    config = _config(tmp_path, espeak_dataset, "killed", heartbeat_seconds=1, heartbeat_grace_seconds=3,
                     max_retries=1)
    doomed = _worker(config, postgres, 1, 400, "killed", tmp_path / "doomed.log")

    def running():
        try:
            study = optuna.load_study(study_name="killed", storage=postgres)
        except KeyError:
            return None
        return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]

    wait_until(running, 120, "the first worker's trial to run")
    # The trial process starts once its values are all drawn and its spec is written (a
    # child process alone says little: the worker starts short-lived helpers too).
    spec = tmp_path / "killed" / "study" / "trials" / "trial-0000" / "spec.json"
    wait_until(spec.exists, 120, "the trial's spec (written just before its process starts)")
    time.sleep(2)  # the trial process is under way
    victim = running()[0]
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its trial, at once
    doomed.wait(timeout=30)
    time.sleep(4)  # past the grace period: the trial's heartbeat has stopped

    survivor = _worker(config, postgres, 1, 4, "killed", tmp_path / "survivor.log")
    assert survivor.wait(timeout=600) == 0, (tmp_path / "survivor.log").read_text()

    study = optuna.load_study(study_name="killed", storage=postgres)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert by_number[victim.number].state == TrialState.FAIL
    retries = [t for t in by_number.values() if t.system_attrs.get("failed_trial") == victim.number
               or t.user_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, by_number
    retry = retries[0]
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry.params == victim.params  # the same values, run again
    assert retry.number in _trials_run(tmp_path / "survivor.log")
