"""MLflow logging off the training path.

MLflow on SQLite manages ~50 synchronous writes per second here, far fewer than a
run produces, so the callback only enqueues. A background thread drains the queue
with ``log_batch`` (up to 1000 metrics per call) about once a second and uploads
alignment images as artifacts. A failing tracking store produces a warning, never a
dead training run.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.callbacks import BaseCallback
from trainer.config import TrackingConfig
from trainer.control import EvalRecord, StepTelemetry

if TYPE_CHECKING:
    from trainer.loop import Trainer

_STEP_FIELDS = ("loss", "mel_loss", "mel_postnet_loss", "gate_loss", "guided_attention_loss", "grad_norm", "lr",
                "step_seconds", "skipped_steps", "guided_attention_weight", "gate_pos_weight", "grad_clip")
_EVAL_FIELDS = ("val_loss", "val_mel_loss", "val_mel_postnet_loss", "val_gate_loss", "val_guided_attention_loss",
                "diagonality", "focus", "aligned_fraction", "gate_accuracy")
# Free-running evaluation (EvalRecord.speech), logged as speech_<field>.
_SPEECH_FIELDS = ("score", "mcd_dtw", "spoken", "utterances", "stopped", "premature", "runaway", "gate_missed_end",
                  "read", "synthesized", "gate_fired", "duration_ratio", "seconds")


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{(Path(run_dir) / 'mlflow.db').resolve()}"


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = str(value)[:500]


class MlflowLogger(BaseCallback):
    def __init__(self, cfg: TrackingConfig, run_dir: Path, flush_seconds: float = 1.0) -> None:
        self.cfg = cfg
        self.uri = cfg.tracking_uri or default_tracking_uri(run_dir)
        self.flush_seconds = flush_seconds
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._client = None
        self.run_id: str | None = None
        self._warned = False

    # -- training thread: enqueue only ------------------------------------------
    def on_train_start(self, trainer: "Trainer") -> None:
        try:
            self._start(trainer)
        except Exception as exc:  # an unusable store must not stop training
            print(f"warning: MLflow at {self.uri} is unusable ({type(exc).__name__}: {str(exc)[:200]}); "
                  "training continues without MLflow logging", flush=True)
            self._client = None

    def _start(self, trainer: "Trainer") -> None:
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.uri)
        self.run_id = trainer.extras.get("mlflow_run_id")
        if self.run_id is None:
            exp = self._client.get_experiment_by_name(self.cfg.experiment_name)
            # With the default per-run store, artifacts live in the run folder too
            # (MLflow's default would be ./mlruns of whatever the current directory is).
            location = None if self.cfg.tracking_uri else (Path(trainer.run_dir) / "mlartifacts").resolve().as_uri()
            exp_id = exp.experiment_id if exp else self._client.create_experiment(self.cfg.experiment_name,
                                                                                 artifact_location=location)
            run = self._client.create_run(exp_id, run_name=self.cfg.run_name or Path(trainer.run_dir).name)
            self.run_id = run.info.run_id
            trainer.extras["mlflow_run_id"] = self.run_id
            params: dict[str, str] = {}
            _flatten("", trainer.config.model_dump(mode="json"), params)
            self._queue.put(("params", params))
        else:
            self._client.update_run(self.run_id, status="RUNNING")
        self._thread = threading.Thread(target=self._drain, name="mlflow-logger", daemon=True)
        self._thread.start()

    def on_step(self, trainer: "Trainer", record: StepTelemetry) -> None:
        if self._client is None:
            return
        ts = int(record.wall_time * 1000)
        self._queue.put(("metrics", [(k, float(getattr(record, k)), ts, record.step) for k in _STEP_FIELDS]))

    def on_eval(self, trainer: "Trainer", record: EvalRecord) -> None:
        if self._client is None:
            return
        ts = int(record.wall_time * 1000)
        metrics = [(k, float(getattr(record, k)), ts, record.step) for k in _EVAL_FIELDS]
        if record.speech is not None:
            metrics += [(f"speech_{k}", float(v), ts, record.step) for k in _SPEECH_FIELDS
                        if (v := getattr(record.speech, k)) is not None]
        self._queue.put(("metrics", metrics))
        if record.alignment_image:
            self._queue.put(("artifact", (record.alignment_image, "alignments")))
        # The inference alignment, the probes' audio and the per-utterance verdicts.
        for path in (record.speech_image, *record.speech_audio, record.speech_details):
            if path:
                self._queue.put(("artifact", (path, "speech")))

    def on_train_end(self, trainer: "Trainer", reason: str) -> None:
        if self._client is None:
            return
        self._queue.put(("end", "FINISHED" if reason in ("max_steps", "max_minutes") else "KILLED"))
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=60)

    # -- background thread ---------------------------------------------------------
    def _drain(self) -> None:
        from mlflow.entities import Metric, Param

        pending: list = []
        last_flush = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=self.flush_seconds)
            except queue.Empty:
                item = ...
            if item is not None and item is not ...:
                kind, payload = item
                if kind == "metrics":
                    pending.extend(Metric(k, v, ts, step) for k, v, ts, step in payload)
                elif kind == "params":
                    items = [Param(k, v) for k, v in payload.items()]
                    for i in range(0, len(items), 100):
                        self._safe(self._client.log_batch, self.run_id, params=items[i:i + 100])
                elif kind == "artifact":
                    path, folder = payload
                    self._safe(self._client.log_artifact, self.run_id, path, folder)
                elif kind == "end":
                    self._flush(pending)
                    self._safe(self._client.set_terminated, self.run_id, payload)
            if item is None or len(pending) >= 900 or time.monotonic() - last_flush >= self.flush_seconds:
                self._flush(pending)
                last_flush = time.monotonic()
            if item is None:
                return

    def _flush(self, pending: list) -> None:
        while pending:
            chunk, pending[:] = pending[:1000], pending[1000:]
            self._safe(self._client.log_batch, self.run_id, metrics=chunk)

    def _safe(self, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # tracking must never stop training
            if not self._warned:
                print(f"warning: MLflow logging to {self.uri} failed ({type(exc).__name__}: {exc}); "
                      "training continues", flush=True)
                self._warned = True
