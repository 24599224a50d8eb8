"""One trial: ``python -m agent.tuner.trial_child --spec TRIAL_DIR/spec.json``.

The tuner starts this process for every trial. It trains the trial's config in the
trial's own folder (its ``run_dir``), either from scratch (an offline study) or forked
from a base checkpoint (in-run tuning: ``Trainer(resume=base)`` then the trial's values
applied with the trainer's own ``apply_hparams`` command). It reads the base checkpoint
and never writes outside its folder.

It talks to the tuner over its stdin/stdout, one JSON object per line; everything
else it prints goes to stderr (the trial log):

    -> {"type": "start", "step": N, "live": {...}, "extras": {...}}   after the fork
    -> {"type": "eval", "progress": P, "record": {...}}               every evaluation;
    <- "continue" | "prune"                                           it waits for this answer
    -> {"type": "done", "step": M, "progress": P, "checkpoint": PATH}   budget trained
    -> {"type": "pruned", "step": M, "progress": P}                   told to prune

A closed stdin (the tuner died) stops the trial. PR_SET_PDEATHSIG makes the kernel
kill it when the tuner's thread that started it goes away (Linux).
Exit status: 0 done, 3 pruned, 2 a user error (config, data, checkpoint), 1 a crash.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field

EXIT_DONE, EXIT_CRASH, EXIT_USER_ERROR, EXIT_PRUNED = 0, 1, 2, 3


class TrialSpec(BaseModel):
    """Everything a trial process needs (written to ``TRIAL_DIR/spec.json`` by the runner)."""

    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any]  # the trial's RunConfig (run_dir = the trial folder, max_steps = start + steps)
    base_checkpoint: str | None = None  # fork from here (None: from scratch)
    overrides: dict[str, float] = Field(default_factory=dict)  # applied after the fork (apply_hparams keys)
    steps: int = Field(gt=0)


class Pruned(Exception):
    """The tuner answered "prune"."""


class ParentGone(Exception):
    """The tuner closed the pipe."""


class TrialPort:
    """A control port over the pipe: evaluations go to the tuner, which answers each."""

    def __init__(self, out: IO[str], inp: IO[str]) -> None:
        self.out, self.inp = out, inp
        self.start_step = 0
        self.last_eval_step: int | None = None

    def send(self, message: dict[str, Any]) -> None:
        from agent.journal import dumps  # NaN-preserving JSON

        self.out.write(dumps(message) + "\n")
        self.out.flush()

    def emit_step(self, record: Any) -> None:
        pass

    def emit_eval(self, record: Any) -> None:
        self.last_eval_step = record.step
        self.send({"type": "eval", "progress": record.step - self.start_step, "record": record.model_dump()})
        answer = self.inp.readline()
        if not answer:
            raise ParentGone("the tuner closed the pipe")
        if answer.strip() == "prune":
            raise Pruned()

    def emit_checkpoint(self, record: Any) -> None:
        pass

    def poll(self) -> list:
        return []

    def acknowledge(self, result: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run(spec: TrialSpec, port: TrialPort) -> int:
    from trainer.callbacks import ConsoleProgress
    from trainer.commands import apply_command
    from trainer.config import RunConfig
    from trainer.control import ApplyHyperparameters
    from trainer.loop import Trainer
    from trainer.tunables import live_values

    config = RunConfig.model_validate(spec.config)
    trainer = Trainer(config, port=port, callbacks=[ConsoleProgress(config.train.log_every)],
                      resume=spec.base_checkpoint or False)
    if spec.base_checkpoint and spec.overrides:
        result = apply_command(trainer, ApplyHyperparameters(values=spec.overrides))
        if not result.ok:
            raise SystemExit(f"error: cannot apply the trial's values: {result.detail}")
        print(f"trial values: {result.detail}", file=sys.stderr, flush=True)
    port.start_step = trainer.step
    # The trial's budget counts from the fork, whatever the base step.
    trainer.config.train.max_steps = trainer.step + spec.steps
    port.send({"type": "start", "step": trainer.step, "live": live_values(trainer), "extras": trainer.extras})
    try:
        trainer.train()
        if port.last_eval_step != trainer.step:
            trainer.evaluate()  # the last report is always at the end of the budget
    except Pruned:
        port.send({"type": "pruned", "step": trainer.step, "progress": trainer.step - port.start_step})
        return EXIT_PRUNED
    checkpoint = trainer.checkpoints.path_for(trainer.step)
    port.send({"type": "done", "step": trainer.step, "progress": trainer.step - port.start_step,
               "checkpoint": str(checkpoint.resolve())})
    return EXIT_DONE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.tuner.trial_child", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="the trial's spec.json")
    args = parser.parse_args(argv)
    _die_with_parent()
    # Messages go to the real stdout; anything printed (progress, warnings) to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from trainer.errors import UserError

    try:
        with open(args.spec, encoding="utf-8") as fh:
            spec = TrialSpec.model_validate(json.load(fh))
        return run(spec, TrialPort(out, sys.stdin))
    except ParentGone:
        print("the tuner is gone; stopping the trial", file=sys.stderr, flush=True)
        return EXIT_CRASH
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
