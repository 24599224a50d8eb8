"""Applying control-port commands to a running :class:`~trainer.loop.Trainer`.

These are the trainer's *algorithms* in Composer's sense: the only code besides the
loop itself that changes how training proceeds. Each handler returns a one-line
result that is sent back as the command's acknowledgement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from trainer import tunables
from trainer.checkpoint import CheckpointError
from trainer.control import (
    ApplyHyperparameters,
    Command,
    CommandResult,
    ContinueFrom,
    Pause,
    Resume,
    Rollback,
    SaveCheckpoint,
    SetGatePosWeight,
    SetGradClip,
    SetGuidedAttention,
    SetLearningRate,
    Stop,
)

if TYPE_CHECKING:
    from trainer.loop import Trainer


class CommandFailed(Exception):
    pass


class NoHandler(CommandFailed):
    """A command type this trainer cannot apply (declared in trainer/control.py, no
    handler here): acknowledged as failed instead of ending the run."""


def _set(t: "Trainer", values: dict[str, float]) -> str:
    try:
        return "; ".join(tunables.apply(t, values))
    except tunables.OutOfBounds as exc:
        raise CommandFailed(str(exc)) from None


def _set_lr(t: "Trainer", c: SetLearningRate) -> str:
    new = c.value if c.value is not None else t.current_lr * c.factor
    return _set(t, {"learning_rate": new})


def _set_guided(t: "Trainer", c: SetGuidedAttention) -> str:
    values = {"guided_attention_weight": c.weight}
    if c.sigma is not None:
        values["guided_attention_sigma"] = c.sigma
    return _set(t, values)


def _set_gate(t: "Trainer", c: SetGatePosWeight) -> str:
    return _set(t, {"gate_pos_weight": c.value})


def _set_clip(t: "Trainer", c: SetGradClip) -> str:
    return _set(t, {"grad_clip_thresh": c.value})


def _save(t: "Trainer", c: SaveCheckpoint) -> str:
    return f"saved {t.save_checkpoint('command')}"


def _rollback(t: "Trainer", c: Rollback) -> str:
    try:
        return t.rollback(c.step, c.skip_batches)
    except CheckpointError as exc:
        raise CommandFailed(str(exc)) from None


def _apply(t: "Trainer", c: ApplyHyperparameters) -> str:
    return _set(t, c.values)


def _continue(t: "Trainer", c: ContinueFrom) -> str:
    try:
        return t.continue_from(c.path)
    except CheckpointError as exc:
        raise CommandFailed(str(exc)) from None


def _pause(t: "Trainer", c: Pause) -> str:
    t.paused = True
    return "paused"


def _resume(t: "Trainer", c: Resume) -> str:
    was, t.paused = t.paused, False
    return "resumed" if was else "was not paused"


def _stop(t: "Trainer", c: Stop) -> str:
    t.request_stop("command")
    return "stopping after a final checkpoint"


_HANDLERS: dict[str, Callable[["Trainer", Any], str]] = {
    "set_lr": _set_lr, "set_guided_attention": _set_guided, "set_gate_pos_weight": _set_gate,
    "set_grad_clip": _set_clip, "save_checkpoint": _save, "rollback": _rollback, "apply_hparams": _apply,
    "continue_from": _continue,
    "pause": _pause, "resume": _resume, "stop": _stop,
}


def handler_for(kind: str) -> Callable[["Trainer", Any], str]:
    try:
        return _HANDLERS[kind]
    except KeyError:
        raise NoHandler(f"this trainer has no handler for command kind {kind!r}; it knows "
                        f"{', '.join(sorted(_HANDLERS))}") from None


def apply_command(trainer: "Trainer", command: Command) -> CommandResult:
    """Apply once; a command id seen before is acknowledged as a duplicate, not re-applied."""
    if command.id in trainer.applied_commands:
        return CommandResult(command_id=command.id, kind=command.kind, ok=True, duplicate=True,
                             detail="already applied", step=trainer.step)
    try:
        detail = handler_for(command.kind)(trainer, command)
        ok = True
    except CommandFailed as exc:
        detail, ok = str(exc), False
    except (OSError, RuntimeError, ValueError) as exc:
        # A command that breaks (disk full while saving, say) is reported, not fatal.
        detail, ok = f"{type(exc).__name__}: {exc}", False
    trainer.applied_commands[command.id] = trainer.step
    return CommandResult(command_id=command.id, kind=command.kind, ok=ok, detail=detail, step=trainer.step)
