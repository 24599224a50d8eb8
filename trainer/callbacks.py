"""Callbacks observe training; they never change it.

What may change training (the loss weights, the learning rate, a rollback) arrives
through the control port as a command and is applied by ``trainer.commands``. A
callback that raises is a bug in the callback, so errors propagate.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

from trainer.control import CheckpointRecord, EvalRecord, SpeechSummary, StepTelemetry

if TYPE_CHECKING:
    from trainer.loop import Trainer


class Callback(Protocol):
    """What the trainer calls: at the start, after every step, evaluation and checkpoint,
    and at the end (``reason``: max_steps, max_minutes, a stop command, ...). A callback
    sees the ``Trainer`` but must not change it."""

    def on_train_start(self, trainer: "Trainer") -> None: ...
    def on_step(self, trainer: "Trainer", record: StepTelemetry) -> None: ...
    def on_eval(self, trainer: "Trainer", record: EvalRecord) -> None: ...
    def on_checkpoint(self, trainer: "Trainer", record: CheckpointRecord) -> None: ...
    def on_train_end(self, trainer: "Trainer", reason: str) -> None: ...


class BaseCallback:
    """A callback that does nothing: subclass it and override the calls you need."""

    def on_train_start(self, trainer: "Trainer") -> None:
        pass

    def on_step(self, trainer: "Trainer", record: StepTelemetry) -> None:
        pass

    def on_eval(self, trainer: "Trainer", record: EvalRecord) -> None:
        pass

    def on_checkpoint(self, trainer: "Trainer", record: CheckpointRecord) -> None:
        pass

    def on_train_end(self, trainer: "Trainer", reason: str) -> None:
        pass


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def describe_speech(s: SpeechSummary) -> str:
    """One line: what the free-running evaluation heard."""
    score = f"{s.spoken}/{s.utterances} spoken" if s.score is not None else "no recordings to judge against"
    mcd = f", MCD-DTW {s.mcd_dtw:.2f} dB" if s.mcd_dtw is not None else ""
    return (f"{score}{mcd} | stop: {s.stopped} in range, {s.premature} early, {s.runaway} runaway | "
            f"attention read {s.read}/{s.synthesized} | length x{s.duration_ratio:.2f} | {s.seconds:.1f} s")


class ConsoleProgress(BaseCallback):
    """One line every ``every`` steps: step, loss and parts, steps/s, lr, ETA."""

    def __init__(self, every: int, print_fn=print) -> None:
        self.every = every
        self.print = print_fn
        self._t0 = time.perf_counter()
        self._s0 = 0

    def on_train_start(self, trainer: "Trainer") -> None:
        self._t0, self._s0 = time.perf_counter(), trainer.step
        self.print(f"training {trainer.describe()}", flush=True)

    def on_step(self, trainer: "Trainer", r: StepTelemetry) -> None:
        if r.step % self.every:
            return
        elapsed = time.perf_counter() - self._t0
        rate = (r.step - self._s0) / elapsed if elapsed > 0 else 0.0
        eta = trainer.eta_seconds(rate)
        skipped = f" | skipped {r.skipped_steps}" if r.skipped_steps else ""
        self.print(
            f"step {r.step:>7} | loss {r.loss:.4f} (mel {r.mel_loss:.3f} post {r.mel_postnet_loss:.3f} "
            f"gate {r.gate_loss:.3f} ga {r.guided_attention_loss:.3f}) | grad {r.grad_norm:.2f} | "
            f"lr {r.lr:.2e} | {rate:.2f} steps/s | ETA {_fmt_duration(eta)}{skipped}",
            flush=True,
        )

    def on_eval(self, trainer: "Trainer", r: EvalRecord) -> None:
        self.print(
            f"eval  {r.step:>7} | val {r.val_loss:.4f} (mel {r.val_mel_postnet_loss:.3f} gate {r.val_gate_loss:.3f})"
            f" | diagonality {r.diagonality:.3f} focus {r.focus:.3f} aligned {r.aligned_fraction:.2f}"
            f" | gate acc {r.gate_accuracy:.3f}" + "".join(f" | {k} {v:.4g}" for k, v in r.extra.items()),
            flush=True,
        )
        if r.speech is not None:
            self.print(f"speech {r.step:>7} | {describe_speech(r.speech)}", flush=True)

    def on_checkpoint(self, trainer: "Trainer", r: CheckpointRecord) -> None:
        self.print(f"saved {r.path} ({r.reason})", flush=True)

    def on_train_end(self, trainer: "Trainer", reason: str) -> None:
        self.print(f"stopped at step {trainer.step}: {reason}", flush=True)
