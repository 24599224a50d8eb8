"""The trainer's control port: telemetry out, commands in.

This module is the trainer's public contract with anything that supervises it
(``policies`` and ``agent`` import these types). It is deliberately free of torch so
that importing it is cheap.

The loop calls the port at step boundaries only:

* ``emit_step`` after every optimizer step (ports batch these; it must be cheap),
* ``emit_eval`` after every evaluation, ``emit_checkpoint`` after every save,
* ``poll`` for queued commands, applying each and answering with ``acknowledge``.

Commands carry an id; the trainer applies an id at most once and acknowledges a
repeat as a duplicate, so a port may safely deliver a command twice.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from typing import Annotated, Any, Literal, Protocol, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from trainer.tunables import TUNABLES


class _Record(BaseModel):
    # NaN and infinities are real telemetry values: keep them through JSON.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class StepTelemetry(_Record):
    """One optimizer step, as the trainer reports it after the step (losses are the
    step's, averaged over real frames; ``grad_norm`` is measured before clipping)."""

    step: int
    epoch: int
    wall_time: float
    lr: float
    loss: float
    mel_loss: float
    mel_postnet_loss: float
    gate_loss: float
    guided_attention_loss: float
    grad_norm: float
    grad_clip: float
    guided_attention_weight: float
    gate_pos_weight: float
    step_seconds: float
    skipped_steps: int  # cumulative count of updates skipped for non-finite loss/gradients
    finite: bool  # was this step's loss and gradient finite (False: update skipped)
    # fp16 only: GradScaler found inf gradients while probing its scale and skipped
    # the update itself; routine, so ``finite`` stays True and nothing is counted.
    loss_scale_overflow: bool = False


class SpeechSummary(_Record):
    """What free-running inference said at one evaluation (trainer/speech).

    ``utterances`` counts those with a recording to compare with (validation clips and
    probes that have one): the speech score is ``spoken / utterances``. Stop verdicts,
    attention and ``gate_fired`` count every synthesized utterance (``synthesized``).
    """

    synthesized: int
    utterances: int
    spoken: int
    score: float | None  # spoken / utterances; None without any recording to compare with
    mcd_dtw: float | None  # mean MCD-DTW (dB) over the utterances with a recording
    stopped: int  # the gate fired within [premature_ratio, runaway_ratio] x the true length
    premature: int  # fired before premature_ratio x the true length
    runaway: int  # fired after runaway_ratio x the true length, or never
    gate_missed_end: int  # runaways whose inference attention had read the text through to its end
    read: int  # inference attention read the text cleanly to its end
    gate_fired: int  # raw count: the gate fired at all, however early (not a quality signal)
    duration_ratio: float  # median generated / true length
    seconds: float  # wall time of the free-running pass


class EvalRecord(_Record):
    """One evaluation on the validation set: teacher-forced losses and attention
    figures, the free-running speech figures when ``eval.speech`` is on, and the
    custom metrics in ``extra``."""

    step: int
    wall_time: float
    val_loss: float
    val_mel_loss: float
    val_mel_postnet_loss: float
    val_gate_loss: float
    val_guided_attention_loss: float
    diagonality: float
    focus: float
    aligned_fraction: float
    gate_accuracy: float
    alignment_image: str | None = None
    # Free-running evaluation (None when eval.speech is off). speech_score and mcd_dtw
    # repeat speech.score and speech.mcd_dtw so that rules and queries reach them directly.
    speech_score: float | None = None
    mcd_dtw: float | None = None
    speech: SpeechSummary | None = None
    speech_image: str | None = None  # inference alignment of the first probe
    speech_audio: list[str] = Field(default_factory=list)  # Griffin-Lim audio of the first probes
    speech_details: str | None = None  # per-utterance verdicts (JSON)
    # Custom metrics (trainer/custom_metrics.py) by name: what the built-in fields are
    # for the built-in metrics. Custom rules read them from the window's evaluations.
    extra: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        # Journals written before free-running evaluation carry a probe stop rate: it
        # counted an utterance that stopped at its first frame as good, so it is dropped.
        if isinstance(data, dict) and "probe_stop_rate" in data:
            data = {k: v for k, v in data.items() if k != "probe_stop_rate"}
        return data


class CheckpointRecord(_Record):
    """One saved checkpoint, with the metrics of the evaluation before it."""

    step: int
    path: str
    wall_time: float
    reason: str  # periodic | command | best | final | rollback-anchor
    val_loss: float | None = None
    diagonality: float | None = None
    finite: bool = True  # were the weights finite when saved


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


class _Command(_Record):
    id: str = Field(default_factory=_new_id)
    issued_at: float = Field(default_factory=time.time)


class SetLearningRate(_Command):
    """Set the learning rate to ``value``, or multiply it by ``factor`` (exactly one);
    the schedule goes on from there with its shape."""

    kind: Literal["set_lr"] = "set_lr"
    value: float | None = Field(None, gt=0)
    factor: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> "SetLearningRate":
        if (self.value is None) == (self.factor is None):
            raise ValueError("give exactly one of value or factor")
        return self


class SetGuidedAttention(_Command):
    """Set the guided-attention loss weight (0 turns it off) and optionally its sigma."""

    kind: Literal["set_guided_attention"] = "set_guided_attention"
    weight: float = Field(ge=0)
    sigma: float | None = Field(None, gt=0)


class SetGatePosWeight(_Command):
    """Set the weight of the gate's positive (stop) frames in the gate loss."""

    kind: Literal["set_gate_pos_weight"] = "set_gate_pos_weight"
    value: float = Field(gt=0)


class SetGradClip(_Command):
    """Set the gradient-norm clipping threshold."""

    kind: Literal["set_grad_clip"] = "set_grad_clip"
    value: float = Field(gt=0)


class SaveCheckpoint(_Command):
    """Save a checkpoint now."""

    kind: Literal["save_checkpoint"] = "save_checkpoint"


class Rollback(_Command):
    """Restore weights, optimizer and loss weights from a checkpoint and skip batches.

    ``step`` picks the checkpoint saved at that step; None means the newest good one.
    The data position is *not* rewound: training continues with fresh batches after
    skipping ``skip_batches`` more, so the offending batches are not replayed.
    """

    kind: Literal["rollback"] = "rollback"
    step: int | None = None
    skip_batches: int = Field(0, ge=0)


# The names apply_hparams accepts: every tunable of trainer/tunables.py.
HYPERPARAMETERS: tuple[str, ...] = tuple(TUNABLES)


class ApplyHyperparameters(_Command):
    """Set several hyperparameters at once (names from ``HYPERPARAMETERS``)."""

    kind: Literal["apply_hparams"] = "apply_hparams"
    values: dict[str, float]

    @model_validator(mode="after")
    def _known(self) -> "ApplyHyperparameters":
        unknown = set(self.values) - set(HYPERPARAMETERS)
        if unknown:
            raise ValueError(f"unknown hyperparameters {sorted(unknown)}; known: {list(HYPERPARAMETERS)}")
        return self


class ContinueFrom(_Command):
    """Carry on from another branch's checkpoint (a tuning trial's winner): weights,
    optimizer, step, schedule, loss weights, clip, dropouts, data position and RNG come
    from ``path``; the run keeps its applied command ids and callback state, and saves
    the result as its own checkpoint at once."""

    kind: Literal["continue_from"] = "continue_from"
    path: str


class Pause(_Command):
    """Stop stepping (commands are still polled) until a ``Resume``."""

    kind: Literal["pause"] = "pause"


class Resume(_Command):
    """Carry on after a ``Pause``."""

    kind: Literal["resume"] = "resume"


class Stop(_Command):
    """End the run after the current step, with a final checkpoint."""

    kind: Literal["stop"] = "stop"


Command = Annotated[
    Union[SetLearningRate, SetGuidedAttention, SetGatePosWeight, SetGradClip, SaveCheckpoint, Rollback,
          ApplyHyperparameters, ContinueFrom, Pause, Resume, Stop],
    Field(discriminator="kind"),
]
command_adapter: TypeAdapter[Command] = TypeAdapter(Command)
COMMAND_KINDS: tuple[str, ...] = tuple(c.model_fields["kind"].default for c in get_args(get_args(Command)[0]))


def parse_command(data: dict | str) -> Command:
    """Build a command from a dict or JSON (as stored in a journal)."""
    if isinstance(data, str):
        return command_adapter.validate_json(data)
    return command_adapter.validate_python(data)


class CommandResult(_Record):
    """The trainer's answer to one command: applied (``ok``) or why not, at which step;
    ``duplicate`` when the id had been applied before."""

    command_id: str
    kind: str
    ok: bool
    detail: str
    step: int
    duplicate: bool = False


class ControlPort(Protocol):
    """The trainer's connection to a supervisor. The trainer calls it at step
    boundaries only: ``emit_*`` with telemetry, ``poll`` for commands, ``acknowledge``
    with each command's result, ``close`` at the end."""

    def emit_step(self, record: StepTelemetry) -> None: ...
    def emit_eval(self, record: EvalRecord) -> None: ...
    def emit_checkpoint(self, record: CheckpointRecord) -> None: ...
    def poll(self) -> list[Command]: ...
    def acknowledge(self, result: CommandResult) -> None: ...
    def close(self) -> None: ...


class NullPort:
    """The port of an unsupervised run: telemetry goes nowhere, no commands come."""

    def emit_step(self, record: StepTelemetry) -> None:
        pass

    def emit_eval(self, record: EvalRecord) -> None:
        pass

    def emit_checkpoint(self, record: CheckpointRecord) -> None:
        pass

    def poll(self) -> list[Command]:
        return []

    def acknowledge(self, result: CommandResult) -> None:
        pass

    def close(self) -> None:
        pass


class InMemoryPort:
    """A thread-safe port kept in memory: for tests, notebooks and in-process drivers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Command] = deque()
        self.steps: list[StepTelemetry] = []
        self.evals: list[EvalRecord] = []
        self.checkpoints: list[CheckpointRecord] = []
        self.acks: list[CommandResult] = []
        self.closed = False

    def send(self, command: Command) -> Command:
        with self._lock:
            self._queue.append(command)
        return command

    def emit_step(self, record: StepTelemetry) -> None:
        with self._lock:
            self.steps.append(record)

    def emit_eval(self, record: EvalRecord) -> None:
        with self._lock:
            self.evals.append(record)

    def emit_checkpoint(self, record: CheckpointRecord) -> None:
        with self._lock:
            self.checkpoints.append(record)

    def poll(self) -> list[Command]:
        with self._lock:
            out = list(self._queue)
            self._queue.clear()
        return out

    def acknowledge(self, result: CommandResult) -> None:
        with self._lock:
            self.acks.append(result)

    def ack_for(self, command_id: str) -> CommandResult | None:
        with self._lock:
            return next((a for a in self.acks if a.command_id == command_id), None)

    def close(self) -> None:
        self.closed = True
