"""The free-running evaluation inside a real training run, and the decisions it drives."""

from __future__ import annotations

import pytest
import torch

from policies import Window, propose
from trainer.control import EvalRecord, SpeechSummary
from trainer.loop import Trainer, checkpoint_metric

from conftest import micro_config


def _gate_fires_at_once(trainer: Trainer) -> None:
    layer = trainer.model.decoder.gate_layer.linear_layer
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(30.0)


@pytest.mark.parametrize("frames_per_step", [None, 1])
def test_a_gate_that_fires_at_step_one_is_seen_and_answered(espeak_dataset, tmp_path, frames_per_step):
    """The demo's old failure: the gate fired at the first decoder step, the sample was
    0.02 s long, and a stop rate that counted any stop as good read 100 %. Now every
    utterance is premature, the score is 0 and the gate rule *lowers* the positive weight.
    With one frame per decoder step that is a single frame: the probe's audio (Griffin-Lim)
    must not crash the evaluation on it."""
    extra = {"model__n_frames_per_step": frames_per_step} if frames_per_step else {}
    trainer = Trainer(micro_config(espeak_dataset, tmp_path / "run", **extra))
    step = trainer.train_step(trainer.next_batch())
    _gate_fires_at_once(trainer)
    records = []
    for k in range(3):
        trainer.step = 10 * (k + 1)
        records.append(trainer.evaluate())
    s = records[-1].speech
    assert s.synthesized == 3 and s.premature == 3 and s.stopped == 0 and s.gate_fired == 3
    assert records[-1].speech_score == 0.0 and s.spoken == 0 and s.duration_ratio < 0.2
    window = Window(steps=(step.model_copy(update={"step": 30}),), evals=tuple(records))
    gate = [p for p in propose("aligning", window) if p.policy == "gate"]
    assert gate and gate[0].actions == ({"kind": "set_gate_pos_weight", "value": 2.5},)  # 5 -> 2.5, not up
    assert gate[0].evidence["trouble"] == "stops_early"


def test_the_free_running_pass_is_repeatable_and_its_files_are_written(espeak_dataset, tmp_path):
    trainer = Trainer(micro_config(espeak_dataset, tmp_path / "run"))
    trainer.train_step(trainer.next_batch())
    trainer.step = 1
    a = trainer.evaluate()
    b = trainer.evaluate()
    assert a.speech.model_dump(exclude={"seconds"}) == b.speech.model_dump(exclude={"seconds"})
    assert a.mcd_dtw == b.mcd_dtw and a.mcd_dtw is not None
    details = (tmp_path / "run" / "speech" / "step_00000001.json").read_text()
    assert '"stop"' in details and '"mcd_dtw"' in details


def test_best_checkpoint_follows_speech_not_the_teacher_forced_loss():
    def record(val_loss: float, score: float, read: int, mcd: float) -> EvalRecord:
        s = SpeechSummary(synthesized=10, utterances=8, spoken=round(score * 8), score=score, mcd_dtw=mcd,
                          stopped=10, premature=0, runaway=0, gate_missed_end=0, read=read, gate_fired=10,
                          duration_ratio=1.0, seconds=1.0)
        return EvalRecord(step=1, wall_time=0.0, val_loss=val_loss, val_mel_loss=val_loss,
                          val_mel_postnet_loss=val_loss, val_gate_loss=0.1, val_guided_attention_loss=0.0,
                          diagonality=0.5, focus=0.5, aligned_fraction=0.5, gate_accuracy=0.9, speech=s,
                          speech_score=score, mcd_dtw=mcd)

    babbler = record(val_loss=1.50, score=0.0, read=0, mcd=5.1)  # lower teacher-forced loss, says nothing
    reader = record(val_loss=2.04, score=0.0, read=9, mcd=5.6)  # higher loss, its attention reads the text
    speaker = record(val_loss=2.20, score=0.5, read=9, mcd=2.8)
    assert checkpoint_metric(babbler, "val_loss") < checkpoint_metric(reader, "val_loss")
    assert checkpoint_metric(speaker, "speech") < checkpoint_metric(reader, "speech") < checkpoint_metric(babbler,
                                                                                                          "speech")


def test_without_free_running_evaluation_best_falls_back_to_the_validation_loss(espeak_dataset, tmp_path):
    import pytest

    from trainer.config import ConfigError

    cfg = micro_config(espeak_dataset, tmp_path / "run", eval__speech={"enabled": False})
    assert cfg.checkpoint.best_metric == "val_loss"
    trainer = Trainer(cfg)
    trainer.step = 1
    record = trainer.evaluate()
    assert record.speech is None and record.speech_score is None
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    with pytest.raises(ConfigError, match="needs the free-running evaluation"):
        micro_config(espeak_dataset, tmp_path / "x", eval__speech={"enabled": False}, checkpoint__best_metric="speech")
