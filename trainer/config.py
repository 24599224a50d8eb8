"""Typed configuration for the trainer.

Every part of the trainer takes the narrow slice it needs (``AudioConfig`` for the
mel front end, ``ModelConfig`` for the network, ...), never the whole ``RunConfig``.
Defaults equal NVIDIA/tacotron2's ``create_hparams()`` so that ``configs/default.yaml``
is their LJSpeech recipe and their checkpoints load at default settings.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from trainer.custom_metrics import CustomMetric, MetricSettings, load_custom_metrics
from trainer.errors import UserError
from trainer.plugins import config_error, validate_section


class _Section(BaseModel):
    # A misspelt key is a user error, not something to ignore silently.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AudioConfig(_Section):
    """Mel front end; the defaults are NVIDIA's TacotronSTFT defaults."""

    sampling_rate: int = Field(22050, gt=0)
    filter_length: int = Field(1024, gt=0)
    hop_length: int = Field(256, gt=0)
    win_length: int = Field(1024, gt=0)
    n_mel_channels: int = Field(80, gt=0)
    mel_fmin: float = Field(0.0, ge=0)
    mel_fmax: float = Field(8000.0, gt=0)
    max_wav_value: float = Field(32768.0, gt=0)
    log_clamp: float = Field(1e-5, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "AudioConfig":
        if self.win_length > self.filter_length:
            raise ValueError("win_length must not exceed filter_length")
        if self.mel_fmax > self.sampling_rate / 2:
            raise ValueError("mel_fmax must not exceed sampling_rate / 2")
        return self

    def cache_key(self) -> str:
        """Stable fingerprint: a mel cache is valid only for identical settings."""
        import hashlib
        import json

        return hashlib.sha1(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:12]


class TextConfig(_Section):
    """Which alphabet and which cleaners turn text into symbol ids."""

    language: Literal["en", "ru"] = "en"
    # Default: the language's own cleaners (english_cleaners / russian_cleaners).
    cleaners: list[str] = Field(default_factory=lambda: ["english_cleaners"])
    # "espeak": English text is read as ARPAbet phones, phonemized by espeak-ng (its
    # en-us rules, trainer/text/phonemes.py), in NVIDIA's brace notation: the symbol set
    # and its 148 rows stay the same. Text already in braces is taken as it is.
    phonemes: Literal["none", "espeak"] = "none"

    @model_validator(mode="after")
    def _language_cleaners(self) -> "TextConfig":
        if "cleaners" not in self.model_fields_set and self.language == "ru":
            self.__dict__["cleaners"] = ["russian_cleaners"]
        if self.phonemes != "none" and self.language != "en":
            raise ValueError("text.phonemes: espeak writes ARPAbet, an English phone set; use it with "
                             "text.language: en (or set text.phonemes: none)")
        return self


class DataConfig(_Section):
    training_files: Path = Path("filelists/ljs_audio_text_train_filelist.txt")
    validation_files: Path = Path("filelists/ljs_audio_text_val_filelist.txt")
    # Where cached mels live; default: ``.mel_cache`` beside the training filelist.
    cache_dir: Path | None = None
    batch_size: int = Field(64, gt=0)
    # Batches are drawn from buckets of this many batches of similar length.
    bucket_batches: int = Field(8, ge=1)
    num_workers: int = Field(0, ge=0)
    max_audio_seconds: float = Field(15.0, gt=0)
    # Audit thresholds (``smart-tuner data check``).
    silence_top_db: float = Field(40.0, gt=0)
    max_edge_silence_seconds: float = Field(0.5, ge=0)


class ModelConfig(_Section):
    """Tacotron2 sizes; names follow NVIDIA's hparams."""

    symbols_embedding_dim: int = Field(512, gt=0)
    encoder_kernel_size: int = Field(5, gt=0)
    encoder_n_convolutions: int = Field(3, gt=0)
    encoder_embedding_dim: int = Field(512, gt=0)
    n_frames_per_step: int = Field(1, ge=1, le=8)
    decoder_rnn_dim: int = Field(1024, gt=0)
    prenet_dim: int = Field(256, gt=0)
    prenet_dropout: float = Field(0.5, ge=0, lt=1)
    max_decoder_steps: int = Field(1000, gt=0)
    gate_threshold: float = Field(0.5, gt=0, lt=1)
    p_attention_dropout: float = Field(0.1, ge=0, lt=1)
    p_decoder_dropout: float = Field(0.1, ge=0, lt=1)
    # Dropout after each encoder and postnet convolution (NVIDIA: 0.5, fixed in their code).
    encoder_dropout: float = Field(0.5, ge=0, lt=1)
    postnet_dropout: float = Field(0.5, ge=0, lt=1)
    attention_rnn_dim: int = Field(1024, gt=0)
    attention_dim: int = Field(128, gt=0)
    attention_location_n_filters: int = Field(32, gt=0)
    attention_location_kernel_size: int = Field(31, gt=0)
    postnet_embedding_dim: int = Field(512, gt=0)
    postnet_kernel_size: int = Field(5, gt=0)
    postnet_n_convolutions: int = Field(5, ge=2)

    @model_validator(mode="after")
    def _odd_kernels(self) -> "ModelConfig":
        for name in ("encoder_kernel_size", "attention_location_kernel_size", "postnet_kernel_size"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} must be odd so that 'same' padding keeps the length")
        return self


class LossConfig(_Section):
    # Positive weight of the stop-token BCE: one positive frame per utterance
    # against hundreds of negatives collapses the gate unless it is weighted.
    gate_pos_weight: float = Field(1.0, gt=0)
    # Guided-attention loss (Tachibana et al. 2017); 0 turns it off.
    guided_attention_weight: float = Field(0.0, ge=0)
    guided_attention_sigma: float = Field(0.2, gt=0)
    # The spectrogram loss: "mse" (NVIDIA's) or "l1" (Tacotron 1's; less pull toward the
    # average frame while the model is unsure).
    mel_loss: Literal["mse", "l1"] = "mse"


class OptimConfig(_Section):
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    adam_eps: float = Field(1e-8, gt=0)  # torch's default, as NVIDIA's train.py uses
    grad_clip_thresh: float = Field(1.0, gt=0)
    warmup_steps: int = Field(0, ge=0)
    # Exponential decay after ``decay_start``: lr * decay_rate ** ((step - start) / decay_steps).
    decay_start: int | None = Field(None, ge=0)
    decay_rate: float = Field(0.5, gt=0, le=1)
    decay_steps: int = Field(50_000, gt=0)
    min_learning_rate: float = Field(1e-5, ge=0)


class TrainConfig(_Section):
    seed: int = 1234
    max_steps: int = Field(500_000, gt=0)
    # Stop after this many minutes of wall time (None: no limit); checkpoints first.
    max_minutes: float | None = Field(None, gt=0)
    log_every: int = Field(10, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["off", "bf16", "fp16"] = "off"

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML reads a bare `off` as False.
        return "off" if value is False else value
    cudnn_benchmark: bool = False
    torch_threads: int | None = Field(None, gt=0)
    # CUDA only: replay the teacher-forced decoder loop from CUDA graphs (trainer/model/graphed.py),
    # one per padded batch shape: decoder steps rounded up to cuda_graph_frame_bucket, text
    # tokens up to cuda_graph_text_bucket. Each new shape costs a capture (a few eager steps)
    # and keeps its gradients and outputs in GPU memory; past cuda_graph_max_shapes the
    # eager loop runs. Ignored on CPU.
    cuda_graphs: bool = True
    cuda_graph_frame_bucket: int = Field(64, gt=0)
    cuda_graph_text_bucket: int = Field(32, gt=0)
    cuda_graph_max_shapes: int = Field(24, gt=0)
    # Data-parallel training (trainer/distributed.py): this many processes per machine under
    # torchrun (one per GPU; gloo on CPU), each taking data.batch_size / processes of every
    # batch. Several machines: nnodes (torchrun's --nnodes, e.g. "2"), the same
    # rdzv_endpoint (host:port) on all, node_rank optional. CUDA graphs stay off with DDP.
    nproc_per_node: int = Field(1, ge=1)
    nnodes: str = "1"
    node_rank: int | None = Field(None, ge=0)
    rdzv_endpoint: str | None = None
    # How long a process waits for the others at a collective (rank 0 evaluating, a lost rank).
    dist_timeout_seconds: float = Field(1800.0, gt=0)


class SpeechEvalConfig(_Section):
    """Free-running evaluation: utterances synthesized as a user would (the model fed its
    own output, stopped by its own gate) and judged on what comes out (trainer/speech)."""

    enabled: bool = True
    # Validation clips synthesized per evaluation, evenly spaced over their lengths;
    # the probe sentences are synthesized too.
    max_utterances: int = Field(8, ge=0)
    # Recordings of the probe sentences: an LJSpeech-format filelist (wav|text). A probe
    # whose text is found there is judged against its recording like a validation clip;
    # the others are judged on their stop and attention only.
    probe_references: Path | None = None
    # Stop verdict against the true length (for a probe without a recording: the
    # length its text would have at the validation set's frames per token).
    premature_ratio: float = Field(0.5, gt=0, lt=1)
    runaway_ratio: float = Field(2.0, gt=1)
    # "Spoken" needs MCD-DTW to the recording below this many dB. Calibrated on espeak-ng
    # en-us (bench/mcd_calibration.py): the same sentence at another rate is at most
    # 1.3 dB away, a different sentence at least 4.7 dB; 3.0 is halfway.
    max_mcd_dtw: float = Field(3.0, gt=0)
    # ... and its MCD-DTW to its own recording must be below this fraction of its mean
    # MCD-DTW to the other recordings of the set: an averaged, babbling output is about
    # as close to every recording as to its own (ratio near 1).
    max_mcd_contrast: float = Field(0.75, gt=0)
    # Attention health of the inference alignment (trainer/speech/attention.py).
    end_tokens: int = Field(3, ge=1)
    min_coverage: float = Field(0.8, ge=0, le=1)
    min_monotonic: float = Field(0.9, ge=0, le=1)
    max_skip_tokens: int = Field(4, ge=1)
    max_repeat_tokens: int = Field(2, ge=0)
    max_hold_seconds: float = Field(1.0, gt=0)
    # Probes rendered to audio (Griffin-Lim) at each evaluation, for MLflow and Telegram.
    audio_probes: int = Field(1, ge=0)
    griffin_lim_iters: int = Field(30, ge=1)


class EvalConfig(_Section):
    every_steps: int = Field(1000, gt=0)
    # Validation batches per evaluation (None: the whole validation set).
    max_batches: int | None = Field(None, gt=0)
    # Sentences synthesized free-running at every evaluation (with eval.speech).
    probe_sentences: list[str] = Field(
        default_factory=lambda: [
            "The quick brown fox jumps over the lazy dog.",
            "Printing, in the only sense with which we are at present concerned.",
        ]
    )
    # The most decoder steps of a free-running evaluation (it stops earlier, at
    # eval.speech.runaway_ratio x the longest true length).
    probe_max_decoder_steps: int = Field(1000, gt=0)
    # Diagonality: attention mass within +-band of the normalised diagonal.
    diagonal_band: float = Field(0.2, gt=0, le=1)
    # An utterance counts as aligned when focus and diagonality both pass.
    aligned_focus: float = Field(0.5, gt=0, le=1)
    aligned_diagonality: float = Field(0.9, gt=0, le=1)
    speech: SpeechEvalConfig = Field(default_factory=SpeechEvalConfig)
    # Custom metrics (trainer.custom_metrics.CustomMetric) to compute besides the installed
    # ones (entry point group smart_tuner.metrics), by import path: "package.module:object".
    custom_metrics: list[str] = Field(default_factory=list)
    # The custom metrics' settings by metric name, each validated by its metric's model.
    metrics: dict[str, SerializeAsAny[MetricSettings]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _metric_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        paths = data.get("custom_metrics") or []
        sections = data.get("metrics") or {}
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths) or not isinstance(sections, dict):
            return data  # the fields' own validation reports it
        try:
            found = load_custom_metrics(paths)
        except (ValueError, TypeError, ImportError) as exc:
            raise config_error(cls.__name__, "custom_metric", str(exc), ("custom_metrics",), paths) from None
        unknown = sorted(set(sections) - set(found))
        if unknown:
            known = ", ".join(sorted(found)) or "none installed or named in eval.custom_metrics"
            raise config_error(cls.__name__, "custom_metric", f"no custom metric named {unknown[0]!r} (known: {known})",
                               ("metrics", unknown[0]), sections[unknown[0]])
        validated = {name: validate_section(m.settings, sections.get(name), "metrics", name)
                     for name, m in found.items()}
        return {**data, "metrics": validated}

    def active_metrics(self) -> list[tuple[CustomMetric, MetricSettings]]:
        """The custom metrics switched on, each with its settings."""
        found = load_custom_metrics(self.custom_metrics)
        return [(m, self.metrics[name]) for name, m in found.items()
                if name in self.metrics and self.metrics[name].enabled]


class CheckpointConfig(_Section):
    every_steps: int = Field(1000, gt=0)
    keep_last: int = Field(3, ge=1)
    keep_best: bool = True
    # Which evaluation makes best.pt. "speech" (default): the most utterances spoken
    # free-running, then the most read to the end by the inference attention, then the
    # lowest MCD-DTW (trainer/speech/verdict.py: speech_rank). The others are one
    # evaluation field each; teacher-forced ones can prefer a model that cannot speak.
    best_metric: Literal["speech", "val_loss", "val_mel_postnet_loss", "val_mel_loss", "val_gate_loss",
                         "diagonality", "aligned_fraction", "gate_accuracy", "speech_score", "mcd_dtw"] = "speech"

    @property
    def lower_is_better(self) -> bool:
        return self.best_metric.startswith("val_") or self.best_metric in ("speech", "mcd_dtw")


class TrackingConfig(_Section):
    enabled: bool = True
    # None: a SQLite store inside the run folder.
    tracking_uri: str | None = None
    experiment_name: str = "smart-tuner"
    run_name: str | None = None


class RunConfig(_Section):
    """A whole training run. Built from YAML by :func:`load_config`."""

    run_dir: Path = Path("runs/default")
    audio: AudioConfig = Field(default_factory=AudioConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # The supervisor's section (agent.config.SupervisorConfig). The trainer does not
    # read it; it is validated by the agent, which owns its schema.
    supervisor: dict[str, Any] = Field(default_factory=dict)
    # The tuner's section (agent.tuner.config.TunerConfig): objective weights, search
    # space, pruner, trial budget. Carried untouched like ``supervisor``.
    tuner: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _best_without_speech(self) -> "RunConfig":
        uses_speech = self.checkpoint.best_metric in ("speech", "speech_score", "mcd_dtw")
        s = self.eval.speech
        if uses_speech and s.enabled and s.max_utterances == 0 and s.probe_references is None:
            raise ValueError(f"checkpoint.best_metric {self.checkpoint.best_metric!r} compares free-running speech "
                             "with recordings, and there are none: raise eval.speech.max_utterances above 0, give "
                             "eval.speech.probe_references, or pick a teacher-forced metric such as val_loss")
        if uses_speech and not self.eval.speech.enabled:
            if "best_metric" in self.checkpoint.model_fields_set:
                raise ValueError(f"checkpoint.best_metric {self.checkpoint.best_metric!r} needs the free-running "
                                 "evaluation: set eval.speech.enabled: true, or pick a teacher-forced metric "
                                 "such as val_loss")
            # Free-running evaluation switched off and best_metric left at its default.
            self.checkpoint.__dict__["best_metric"] = "val_loss"
        return self


class ConfigError(UserError):
    """A config file that cannot be used; the message names file, line and field."""


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(name_or_path: str | Path) -> Path:
    """Accept a path, or the bare name of a shipped config (``tiny-cpu``)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    for candidate in (CONFIG_DIR / f"{name_or_path}.yaml", CONFIG_DIR / str(name_or_path)):
        if candidate.exists():
            return candidate
    shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))) or "none"
    raise ConfigError(f"{name_or_path}: no such config file (shipped configs: {shipped})")


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its deepest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(key)), None)
            if match is None:
                # The key is missing or misspelt: point at the key itself if present.
                key_node = next((k for k, _ in node.value if k.value == str(key)), None)
                return key_node.start_mark.line + 1 if key_node is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        line = node.start_mark.line + 1
    return line


def parse_config(text: str, source: str = "<config>", overrides: dict[str, Any] | None = None) -> RunConfig:
    """A config from YAML text; errors name ``source``, the line and the key (``ConfigError``)."""
    try:
        raw = yaml.safe_load(text) or {}
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (audio:, model:, ...), got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        target = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc) or "(top level)"
            line = _line_of(node, loc)
            where = f"{source}:{line}" if line else source
            got = f" (got {err['input']!r})" if err["type"] != "missing" and not isinstance(err["input"], dict) else ""
            lines.append(f"{where}: {field}: {err['msg']}{got}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def config_from_checkpoint(saved: dict[str, Any]) -> RunConfig:
    """The config a checkpoint was saved with, without its custom metrics: they do not
    change the model, and loading a checkpoint must not need the packages that measured it."""
    evaluation = {k: v for k, v in (saved.get("eval") or {}).items() if k not in ("custom_metrics", "metrics")}
    return RunConfig.model_validate({**saved, "eval": evaluation})


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set section.key=value`` pairs as the ``overrides`` of :func:`load_config`
    (each value read as YAML: ``3e-4`` a number, ``[a, b]`` a list)."""
    from trainer.redact import has_secret, mask_text

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set {pair!r}: expected section.key=value, e.g. --set optim.learning_rate=3e-4")
        out[key.strip()] = yaml.safe_load(value)
        if has_secret(value):  # used as given, but said once: argv is not a place for passwords
            print(f"warning: --set {mask_text(pair)}: a password on the command line can be read by every user of "
                  "this machine (ps); for MLflow use MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD "
                  "(environment or .env)", file=sys.stderr, flush=True)
    return out


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config; ``overrides`` maps dotted keys (``optim.learning_rate``) to values."""
    resolved = resolve_config_path(path)
    try:
        text = resolved.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{resolved}: cannot read config ({exc.strerror})") from None
    return parse_config(text, str(resolved), overrides)
