"""The control port: every command applied at a step boundary, acknowledged, at most once."""

from __future__ import annotations

import threading
import time

import pytest

from trainer.callbacks import BaseCallback
from trainer.control import (
    ApplyHyperparameters,
    InMemoryPort,
    Pause,
    Resume,
    Rollback,
    SaveCheckpoint,
    SetGatePosWeight,
    SetGradClip,
    SetGuidedAttention,
    SetLearningRate,
    Stop,
    parse_command,
)
from trainer.loop import Trainer

from conftest import micro_config


class SendAt(BaseCallback):
    """Queue commands on the port when a given step has finished."""

    def __init__(self, port: InMemoryPort, plan: dict[int, list]) -> None:
        self.port, self.plan = port, plan

    def on_step(self, trainer, record) -> None:
        for command in self.plan.get(record.step, []):
            self.port.send(command)


def _run(dataset, tmp_path, plan, **overrides):
    port = InMemoryPort()
    cfg = micro_config(dataset, tmp_path / "run", **overrides)
    trainer = Trainer(cfg, port=port, callbacks=[SendAt(port, plan)])
    reason = trainer.train()
    return trainer, port, reason


def test_setting_commands_change_the_next_steps(espeak_dataset, tmp_path):
    lr = SetLearningRate(value=5e-4)
    halve = SetLearningRate(factor=0.5)
    guided = SetGuidedAttention(weight=2.5, sigma=0.3)
    gate = SetGatePosWeight(value=9.0)
    clip = SetGradClip(value=0.25)
    trainer, port, _ = _run(espeak_dataset, tmp_path, {1: [lr], 2: [halve, guided, gate, clip]},
                            train__max_steps=4)
    by_step = {s.step: s for s in port.steps}
    assert by_step[2].lr == pytest.approx(5e-4)
    assert by_step[3].lr == pytest.approx(2.5e-4)
    assert by_step[3].guided_attention_weight == 2.5 and by_step[3].guided_attention_loss > 0
    assert by_step[2].guided_attention_loss == 0
    assert by_step[3].gate_pos_weight == 9.0 and by_step[3].grad_clip == 0.25
    assert trainer.loss_weights.guided_attention_sigma == 0.3
    acks = {a.command_id: a for a in port.acks}
    for c in (lr, halve, guided, gate, clip):
        assert acks[c.id].ok and acks[c.id].step in (1, 2), acks[c.id]
    assert "0.0005 -> 0.00025" in acks[halve.id].detail


def test_a_command_id_is_applied_at_most_once(espeak_dataset, tmp_path):
    halve = SetLearningRate(factor=0.5)
    again = parse_command(halve.model_dump_json())  # redelivered, e.g. after a port restart
    trainer, port, _ = _run(espeak_dataset, tmp_path, {1: [halve], 2: [again]}, train__max_steps=3)
    assert trainer.current_lr == pytest.approx(1e-3)
    acks = [a for a in port.acks if a.command_id == halve.id]
    assert [a.duplicate for a in acks] == [False, True]


def test_save_checkpoint_and_rollback_skip_batches(espeak_dataset, tmp_path):
    save = SaveCheckpoint()
    back = Rollback(step=2, skip_batches=1)
    trainer, port, _ = _run(espeak_dataset, tmp_path, {2: [save], 4: [back]}, train__max_steps=6,
                            checkpoint__every_steps=4, eval__every_steps=100)
    assert port.ack_for(save.id).ok and "checkpoint_00000002.pt" in port.ack_for(save.id).detail
    first = port.ack_for(back.id)
    assert first.ok and "step 2" in first.detail and "skipped 1" in first.detail
    # The callback sends the same command again when step 4 comes round a second time:
    # it is acknowledged as a duplicate and not applied, so training goes on.
    assert [a.duplicate for a in port.acks if a.command_id == back.id] == [False, True]
    # The abandoned branch's checkpoints are set aside, so --resume cannot pick them.
    folder = tmp_path / "run" / "checkpoints"
    assert (folder / "abandoned" / "checkpoint_00000004.pt").is_file()
    steps = [s.step for s in port.steps]
    # 1..4, then back to 2 and on: 3..6
    assert steps == [1, 2, 3, 4, 3, 4, 5, 6]
    # The data position moved forward, not back: 4 + 1 skipped + 4 trained = 9 batches taken.
    per_epoch = len(trainer.sampler.epoch_batches(0))
    assert trainer.epoch * per_epoch + trainer.batch_in_epoch == 9


def test_rollback_without_checkpoint_fails_cleanly(espeak_dataset, tmp_path):
    back = Rollback()
    _, port, reason = _run(espeak_dataset, tmp_path, {1: [back]}, train__max_steps=2,
                           checkpoint__every_steps=100)
    ack = next(a for a in port.acks if a.command_id == back.id)
    assert not ack.ok and "no good checkpoint" in ack.detail and reason == "max_steps"


def test_apply_hyperparameters(espeak_dataset, tmp_path):
    apply = ApplyHyperparameters(values={"learning_rate": 3e-4, "guided_attention_weight": 1.5,
                                         "gate_pos_weight": 2.0, "grad_clip_thresh": 0.5, "weight_decay": 1e-5})
    trainer, port, _ = _run(espeak_dataset, tmp_path, {1: [apply]}, train__max_steps=2)
    s2 = port.steps[-1]
    assert (s2.lr, s2.guided_attention_weight, s2.gate_pos_weight, s2.grad_clip) == pytest.approx(
        (3e-4, 1.5, 2.0, 0.5))
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 1e-5
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        ApplyHyperparameters(values={"learnig_rate": 1.0})


def test_pause_resume_and_stop(espeak_dataset, tmp_path):
    port = InMemoryPort()
    pause = Pause()
    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=50)
    trainer = Trainer(cfg, port=port, callbacks=[SendAt(port, {1: [pause]})])
    thread = threading.Thread(target=trainer.train)
    thread.start()
    deadline = time.time() + 30
    while port.ack_for(pause.id) is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # paused: no step may happen meanwhile
    assert trainer.paused and [s.step for s in port.steps] == [1]
    resume, stop = port.send(Resume()), None
    while len(port.steps) < 3 and time.time() < deadline:
        time.sleep(0.05)
    stop = port.send(Stop())
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert trainer.stop_reason == "command" and trainer.step < 50
    assert port.ack_for(resume.id).detail == "resumed" and port.ack_for(stop.id).ok
    # Stop writes a final checkpoint.
    assert (tmp_path / "run" / "checkpoints" / f"checkpoint_{trainer.step:08d}.pt").is_file()


def test_commands_round_trip_as_json():
    for c in (SetLearningRate(factor=0.5), Rollback(step=3, skip_batches=2), Pause(),
              ApplyHyperparameters(values={"learning_rate": 1e-4})):
        assert parse_command(c.model_dump_json()) == c
    with pytest.raises(ValueError):
        SetLearningRate()
