"""Fault injection for tests and benchmarks: a trainer callback driven by an environment variable.

``SMART_TUNER_FAULTS`` holds a JSON list of faults, each fired at the first step
>= ``step`` that a trainer process reaches::

    SMART_TUNER_FAULTS='[{"step": 30, "kind": "nan_batch"}, {"step": 50, "kind": "lr_x100"},
                         {"step": 70, "kind": "sigkill_self"}, {"step": 90, "kind": "hang"}]'

kinds:

* ``nan_batch``: the next batch's mel spectrogram is all NaN (the loss becomes NaN);
* ``lr_x100``: the learning rate is multiplied by 100 (``Trainer.set_lr``);
* ``sigkill_self``: the trainer sends itself SIGKILL (no final checkpoint, unflushed
  telemetry lost: a crash);
* ``hang``: the trainer sleeps forever (a hang; only SIGKILL ends it).

Each fault fires at most once per run: once per process, and, when the callback is
given the run's journal, not again in a later process if the journal's audit log
records that it fired (actor ``faults``, action the kind, detail ``step N: ...``). The
record is written (durably) *before* the fault acts, so a restarted trainer that
replays the same steps after a crash does not crash again.

The child (``python -m agent.child``) installs this callback when the variable is
set; a vanilla run can build one with :func:`faults_from_env` and ``journal=None``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from trainer.callbacks import BaseCallback
from trainer.errors import UserError

if TYPE_CHECKING:
    from agent.journal import Journal
    from trainer.control import StepTelemetry
    from trainer.loop import Trainer

ENV_VAR = "SMART_TUNER_FAULTS"
KINDS = ("nan_batch", "lr_x100", "sigkill_self", "hang")
ACTOR = "faults"


@dataclass(frozen=True, slots=True)
class Fault:
    step: int
    kind: str

    @property
    def key(self) -> tuple[str, int]:
        return self.kind, self.step


def parse_faults(text: str, source: str = ENV_VAR) -> list[Fault]:
    """Faults from JSON text; a UserError names what is wrong."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{source}: not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(raw, list):
        raise UserError(f"{source}: expected a JSON list of {{\"step\": N, \"kind\": K}} objects")
    faults = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"step", "kind"}:
            raise UserError(f"{source}[{i}]: expected {{\"step\": N, \"kind\": K}}, got {item!r}")
        step, kind = item["step"], item["kind"]
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise UserError(f"{source}[{i}]: step must be an integer >= 1, got {step!r}")
        if kind not in KINDS:
            raise UserError(f"{source}[{i}]: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        faults.append(Fault(step, kind))
    return sorted(faults, key=lambda f: f.step)


def fired_in_journal(journal: "Journal") -> set[tuple[str, int]]:
    """(kind, step) of the faults the journal's audit log records as fired."""
    fired = set()
    for entry in journal.audit_log(limit=None):
        if entry.actor != ACTOR or not entry.detail.startswith("step "):
            continue
        try:
            fired.add((entry.action, int(entry.detail[5:].split(":", 1)[0])))
        except ValueError:
            continue
    return fired


class FaultInjector(BaseCallback):
    """The callback that fires the faults (see the module docstring)."""

    def __init__(self, faults: Sequence[Fault], journal: "Journal | None" = None, print_fn=print) -> None:
        self.journal = journal
        self.print = print_fn
        self.fired: set[tuple[str, int]] = fired_in_journal(journal) if journal is not None else set()
        self.pending = [f for f in faults if f.key not in self.fired]
        self._nan_next = False

    def on_train_start(self, trainer: "Trainer") -> None:
        if not any(f.kind == "nan_batch" for f in self.pending):
            return
        original = trainer.next_batch

        def next_batch():
            batch = original()
            if self._nan_next:
                self._nan_next = False
                batch.mel = batch.mel.new_full(batch.mel.shape, float("nan"))
            return batch

        trainer.next_batch = next_batch  # instance attribute: the loop calls self.next_batch()

    def on_step(self, trainer: "Trainer", record: "StepTelemetry") -> None:
        if not self.pending or record.step < self.pending[0].step:
            return
        due = [f for f in self.pending if f.step <= record.step]
        self.pending = [f for f in self.pending if f.step > record.step]
        for fault in due:
            self._fire(trainer, fault, record.step)

    def _fire(self, trainer: "Trainer", fault: Fault, at_step: int) -> None:
        self.fired.add(fault.key)
        detail = f"step {fault.step}: fired at step {at_step} in pid {os.getpid()}"
        if self.journal is not None:
            self.journal.audit(ACTOR, fault.kind, detail)  # durable before the fault acts
        self.print(f"fault injected: {fault.kind} ({detail})", flush=True)
        if fault.kind == "nan_batch":
            self._nan_next = True
        elif fault.kind == "lr_x100":
            trainer.set_lr(trainer.current_lr * 100)
        elif fault.kind == "sigkill_self":
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault.kind == "hang":
            while True:  # signal handlers run, but the sleep resumes: only SIGKILL ends this
                time.sleep(3600)


def faults_from_env(journal: "Journal | None" = None, environ: dict[str, Any] | None = None) -> FaultInjector | None:
    """A FaultInjector for ``SMART_TUNER_FAULTS``, or None when it is unset or empty."""
    text = (environ if environ is not None else os.environ).get(ENV_VAR, "").strip()
    if not text:
        return None
    return FaultInjector(parse_faults(text), journal)
