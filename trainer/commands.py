"""Applying control-port commands to a running :class:`~trainer.loop.Trainer`.

These are the trainer's *algorithms* in Composer's sense: the only code besides the
loop itself that changes how training proceeds. Each handler returns a one-line
result that is sent back as the command's acknowledgement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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


def _set_lr(t: "Trainer", c: SetLearningRate) -> str:
    old = t.current_lr
    new = c.value if c.value is not None else old * c.factor
    t.set_lr(new)
    return f"learning rate {old:.3g} -> {new:.3g}"


def _set_guided(t: "Trainer", c: SetGuidedAttention) -> str:
    w = t.loss_weights
    old = (w.guided_attention_weight, w.guided_attention_sigma)
    w.guided_attention_weight = c.weight
    if c.sigma is not None:
        w.guided_attention_sigma = c.sigma
    return f"guided attention weight/sigma {old[0]:.3g}/{old[1]:.3g} -> {w.guided_attention_weight:.3g}/" \
           f"{w.guided_attention_sigma:.3g}"


def _set_gate(t: "Trainer", c: SetGatePosWeight) -> str:
    old, t.loss_weights.gate_pos_weight = t.loss_weights.gate_pos_weight, c.value
    return f"gate positive weight {old:.3g} -> {c.value:.3g}"


def _set_clip(t: "Trainer", c: SetGradClip) -> str:
    old, t.grad_clip = t.grad_clip, c.value
    return f"gradient clip {old:.3g} -> {c.value:.3g}"


def _save(t: "Trainer", c: SaveCheckpoint) -> str:
    return f"saved {t.save_checkpoint('command')}"


def _rollback(t: "Trainer", c: Rollback) -> str:
    try:
        return t.rollback(c.step, c.skip_batches)
    except CheckpointError as exc:
        raise CommandFailed(str(exc)) from None


def _apply(t: "Trainer", c: ApplyHyperparameters) -> str:
    v = c.values
    dropouts = {k: v[k] for k in ("p_attention_dropout", "p_decoder_dropout", "prenet_dropout") if k in v}
    for key, value in dropouts.items():  # checked before anything changes: all or nothing
        if not 0.0 <= value < 1.0:
            raise CommandFailed(f"{key} must be in [0, 1), not {value}")
    done = []
    if "learning_rate" in v:
        done.append(_set_lr(t, SetLearningRate(value=v["learning_rate"])))
    if "guided_attention_weight" in v or "guided_attention_sigma" in v:
        done.append(_set_guided(t, SetGuidedAttention(
            weight=v.get("guided_attention_weight", t.loss_weights.guided_attention_weight),
            sigma=v.get("guided_attention_sigma"))))
    if "gate_pos_weight" in v:
        done.append(_set_gate(t, SetGatePosWeight(value=v["gate_pos_weight"])))
    if "grad_clip_thresh" in v:
        done.append(_set_clip(t, SetGradClip(value=v["grad_clip_thresh"])))
    if "weight_decay" in v:
        for group in t.optimizer.param_groups:
            group["weight_decay"] = v["weight_decay"]
        done.append(f"weight decay -> {v['weight_decay']:.3g}")
    if dropouts:
        t.set_dropouts(dropouts)
        done.append("dropouts -> " + ", ".join(f"{k}={x:.3g}" for k, x in dropouts.items()))
    return "; ".join(done)


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


_HANDLERS = {
    "set_lr": _set_lr, "set_guided_attention": _set_guided, "set_gate_pos_weight": _set_gate,
    "set_grad_clip": _set_clip, "save_checkpoint": _save, "rollback": _rollback, "apply_hparams": _apply,
    "continue_from": _continue,
    "pause": _pause, "resume": _resume, "stop": _stop,
}


def apply_command(trainer: "Trainer", command: Command) -> CommandResult:
    """Apply once; a command id seen before is acknowledged as a duplicate, not re-applied."""
    if command.id in trainer.applied_commands:
        return CommandResult(command_id=command.id, kind=command.kind, ok=True, duplicate=True,
                             detail="already applied", step=trainer.step)
    try:
        detail = _HANDLERS[command.kind](trainer, command)
        ok = True
    except CommandFailed as exc:
        detail, ok = str(exc), False
    except (OSError, RuntimeError, ValueError) as exc:
        # A command that breaks (disk full while saving, say) is reported, not fatal.
        detail, ok = f"{type(exc).__name__}: {exc}", False
    trainer.applied_commands[command.id] = trainer.step
    return CommandResult(command_id=command.id, kind=command.kind, ok=ok, detail=detail, step=trainer.step)
