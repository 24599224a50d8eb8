"""MLflow logging off the training path.

MLflow on SQLite manages ~50 synchronous writes per second here, far fewer than a
run produces, so the callback only enqueues. A background thread drains the queue
with ``log_batch`` (up to 1000 metrics per call) about once a second and uploads
alignment images as artifacts. A failing tracking store produces a warning, never a
dead training run.

A tracking server that cannot be reached is found out before MLflow is used: one
short request (:func:`probe_server`), so that a server that is down costs a few
seconds and one line, not MLflow's minutes of retries. A password in the tracking
URI is masked in everything written or printed (``trainer.redact``).
"""

from __future__ import annotations

import queue
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.callbacks import BaseCallback
from trainer.config import TrackingConfig
from trainer.control import EvalRecord, StepTelemetry
from trainer.redact import mask_text, mask_urls, reveal

if TYPE_CHECKING:
    from trainer.loop import Trainer

_STEP_FIELDS = ("loss", "mel_loss", "mel_postnet_loss", "gate_loss", "guided_attention_loss", "grad_norm", "lr",
                "step_seconds", "skipped_steps", "guided_attention_weight", "gate_pos_weight", "grad_clip")
_EVAL_FIELDS = ("val_loss", "val_mel_loss", "val_mel_postnet_loss", "val_gate_loss", "val_guided_attention_loss",
                "diagonality", "focus", "aligned_fraction", "gate_accuracy")
# Free-running evaluation (EvalRecord.speech), logged as speech_<field>.
_SPEECH_FIELDS = ("score", "mcd_dtw", "spoken", "utterances", "stopped", "premature", "runaway", "gate_missed_end",
                  "read", "synthesized", "gate_fired", "duration_ratio", "seconds")


# The real tracking URI when the config holds it masked (the daemon sets it for its
# trainer child, whose run-config.yaml has the password masked).
TRACKING_URI_ENV = "SMART_TUNER_TRACKING_URI"
PROBE_SECONDS = 5.0


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{(Path(run_dir) / 'mlflow.db').resolve()}"


def resolve_tracking_uri(cfg: TrackingConfig, run_dir: Path) -> str:
    """The URI to give MLflow: the config's (its password revealed), or the run's SQLite store."""
    if not cfg.tracking_uri:
        return default_tracking_uri(run_dir)
    return reveal(cfg.tracking_uri, TRACKING_URI_ENV)


def probe_server(uri: str, timeout: float = PROBE_SECONDS) -> str | None:
    """Why an ``http(s)`` tracking server cannot be used, or None when it answers (or the
    URI is not a server's). One request, no retries; an HTTP answer below 500 counts as
    alive (authentication is MLflow's business), 5xx as down (MLflow would retry it for
    minutes)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return None
    import requests

    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    bare = urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))  # no credentials, no query
    try:
        answer = requests.head(bare, timeout=timeout, allow_redirects=False)
    except requests.exceptions.SSLError:
        return None  # it answers; certificates are MLflow's settings (MLFLOW_TRACKING_SERVER_CERT_PATH)
    except requests.exceptions.Timeout:
        return f"no answer within {timeout:g} s"
    except requests.exceptions.RequestException as exc:
        errno = re.search(r"\[Errno -?\d+\] ([^)\"']+)", str(exc))  # e.g. "Connection refused"
        why = errno[1].strip() if errno else type(exc).__name__
        return mask_text(why[:1].lower() + why[1:])[:160]
    if answer.status_code >= 500:
        return f"it answers HTTP {answer.status_code}"
    return None


def tracking_off_notice(shown_uri: str, why: str) -> str:
    return f"warning: MLflow tracking is off: the server at {shown_uri} cannot be reached ({why}); " \
           "training continues without MLflow logging"


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = str(value)[:500]


class MlflowLogger(BaseCallback):
    def __init__(self, cfg: TrackingConfig, run_dir: Path, flush_seconds: float = 1.0) -> None:
        self.cfg = cfg
        self.uri = resolve_tracking_uri(cfg, run_dir)  # the real one, for MLflow only
        self.shown_uri = mask_text(self.uri)  # what is printed
        self.flush_seconds = flush_seconds
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._client: Any = None  # an MlflowClient while a run is open
        self.run_id: str | None = None
        self._warned = False

    # -- training thread: enqueue only ------------------------------------------
    def on_train_start(self, trainer: "Trainer") -> None:
        try:
            why = probe_server(self.uri)
            if why is not None:
                print(tracking_off_notice(self.shown_uri, why), flush=True)
                self._client = None
                return
            self._start(trainer)
        except Exception as exc:  # an unusable store must not stop training
            print(f"warning: MLflow at {self.shown_uri} is unusable "
                  f"({type(exc).__name__}: {mask_text(str(exc))[:200]}); "
                  "training continues without MLflow logging", flush=True)
            self._client = None

    def _start(self, trainer: "Trainer") -> None:
        from mlflow.tracking import MlflowClient

        from trainer.envfile import load_mlflow_credentials

        load_mlflow_credentials()  # MLflow reads them from the environment; .env may hold them
        self._client = MlflowClient(tracking_uri=self.uri)
        self.run_id = trainer.extras.get("mlflow_run_id")
        if self.run_id is None:
            # With the default per-run store, artifacts live in the run folder too
            # (MLflow's default would be ./mlruns of whatever the current directory is).
            location = None if self.cfg.tracking_uri else (Path(trainer.run_dir) / "mlartifacts").resolve().as_uri()
            exp_id = self._experiment_id(location)
            run = self._client.create_run(exp_id, run_name=self.cfg.run_name or Path(trainer.run_dir).name)
            self.run_id = run.info.run_id
            trainer.extras["mlflow_run_id"] = self.run_id
            params: dict[str, str] = {}
            _flatten("", mask_urls(trainer.config.model_dump(mode="json")), params)  # no URL passwords
            self._queue.put(("params", params))
        else:
            self._client.update_run(self.run_id, status="RUNNING")
        self._thread = threading.Thread(target=self._drain, name="mlflow-logger", daemon=True)
        self._thread.start()

    def _experiment_id(self, location: str | None) -> str:
        """The experiment's id, created if missing. Runs that start together on one
        tracking server race to create it: the loser finds the winner's."""
        from mlflow.exceptions import MlflowException

        assert self._client is not None
        exp = self._client.get_experiment_by_name(self.cfg.experiment_name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self._client.create_experiment(self.cfg.experiment_name, artifact_location=location)
        except MlflowException as exc:
            exp = self._client.get_experiment_by_name(self.cfg.experiment_name)
            if exp is None:
                raise exc from None
            return exp.experiment_id

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
        metrics += [(name, value, ts, record.step) for name, value in record.extra.items()]
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
                print(f"warning: MLflow logging to {self.shown_uri} failed "
                      f"({type(exc).__name__}: {mask_text(str(exc))[:300]}); training continues", flush=True)
                self._warned = True
