"""Trials as MLflow child runs.

Each trial is a run tagged ``mlflow.parentRunId`` (MLflow's UI nests it under its
parent): in-run trials under the main run's MLflow run (its id comes from the base
checkpoint), offline-study trials under a run for the study itself. Params: the
trial's values; metrics: the objective and its parts at every report (step = steps
trained in the trial); tags: round, trial number, baseline, outcome. MLflow is imported
only when a tracker is used, and a failing store costs a warning, never a trial.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from trainer.config import TrackingConfig


class TrialTracker:
    def __init__(self, cfg: TrackingConfig, run_dir: str | Path, tags: dict[str, str] | None = None,
                 log: Any = print) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.tags = dict(tags or {})
        self.log = log
        self._client: Any = None
        self._experiment_id: str | None = None
        self._broken = not cfg.enabled

    def _ready(self) -> bool:
        if self._broken:
            return False
        if self._client is None:
            try:
                from trainer.redact import mask_text
                from trainer.tracking import probe_server, resolve_tracking_uri, tracking_off_notice

                uri = resolve_tracking_uri(self.cfg, self.run_dir)  # the real one, for MLflow only
                why = probe_server(uri)
                if why is not None:  # a server that is down: one line now, not minutes of retries
                    self.log(tracking_off_notice(mask_text(uri), why).replace("training continues",
                                                                              "tuning continues"))
                    self._broken = True
                    return False
                from mlflow.tracking import MlflowClient

                from trainer.envfile import load_mlflow_credentials

                load_mlflow_credentials()
                self._client = MlflowClient(tracking_uri=uri)
                exp = self._client.get_experiment_by_name(self.cfg.experiment_name)
                location = None if self.cfg.tracking_uri else (self.run_dir / "mlartifacts").resolve().as_uri()
                self._experiment_id = (exp.experiment_id if exp else
                                       self._client.create_experiment(self.cfg.experiment_name,
                                                                      artifact_location=location))
            except Exception as exc:  # noqa: BLE001 - tracking never stops tuning
                self._warn(exc)
                return False
        return True

    def _warn(self, exc: Exception) -> None:
        if not self._broken:
            from trainer.redact import mask_text

            self.log(f"warning: MLflow logging of trials failed "
                     f"({type(exc).__name__}: {mask_text(str(exc))[:200]}); tuning continues without it")
        self._broken = True

    def parent_run(self, name: str, key: str) -> str | None:
        """A parent run for a study (found again by its tag when the study resumes)."""
        if not self._ready():
            return None
        try:
            found = self._client.search_runs([self._experiment_id], f"tags.`smart_tuner.study` = '{key}'",
                                             max_results=1)
            if found:
                return found[0].info.run_id
            run = self._client.create_run(self._experiment_id, run_name=name, tags={"smart_tuner.study": key})
            return run.info.run_id
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)
            return None

    def start(self, name: str, params: dict[str, float], parent_run_id: str | None,
              tags: dict[str, str] | None = None) -> str | None:
        if not self._ready():
            return None
        try:
            all_tags = {**self.tags, **(tags or {})}
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = self._client.create_run(self._experiment_id, run_name=name, tags=all_tags)
            from mlflow.entities import Param

            self._client.log_batch(run.info.run_id, params=[Param(k, repr(float(v))) for k, v in params.items()])
            return run.info.run_id
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)
            return None

    def report(self, run_id: str | None, progress: int, values: dict[str, float]) -> None:
        if run_id is None or not self._ready():
            return
        try:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            self._client.log_batch(run_id, metrics=[Metric(k, float(v), ts, progress) for k, v in values.items()])
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    def finish(self, run_id: str | None, state: str, detail: str = "") -> None:
        if run_id is None or not self._ready():
            return
        try:
            self._client.set_tag(run_id, "smart_tuner.state", state)
            if detail:
                self._client.set_tag(run_id, "smart_tuner.detail", detail.splitlines()[0][:500])
            self._client.set_terminated(run_id, {"complete": "FINISHED", "pruned": "KILLED"}.get(state, "FAILED"))
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)
