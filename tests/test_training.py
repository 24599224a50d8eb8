"""Real training steps on real espeak-ng audio: learning, exact resume, checkpoints, NaN safety."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import CheckpointError, load_checkpoint
from trainer.control import InMemoryPort
from trainer.loop import Trainer

from conftest import micro_config


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_loss_falls_on_real_audio(espeak_dataset, tmp_path):
    port = InMemoryPort()
    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=40, eval__every_steps=40,
                       checkpoint__every_steps=40)
    Trainer(cfg, port=port).train()
    losses = [s.loss for s in port.steps]
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert port.evals and port.evals[-1].val_loss < port.evals[-1].val_loss * 10  # evaluated, finite
    assert math.isfinite(port.evals[-1].val_loss)
    assert 0.0 <= port.evals[-1].diagonality <= 1.0
    assert Path(port.evals[-1].alignment_image).is_file()
    speech = port.evals[-1].speech  # the free-running pass: 2 validation clips and a probe
    assert speech is not None and speech.synthesized == 3 and speech.utterances == 2
    assert port.evals[-1].speech_score == speech.score and 0.0 <= speech.score <= 1.0
    assert speech.stopped + speech.premature + speech.runaway == 3
    assert Path(port.evals[-1].speech_image).is_file() and Path(port.evals[-1].speech_details).is_file()
    assert [Path(p).suffix for p in port.evals[-1].speech_audio] == [".wav"]


def test_resume_continues_exactly(espeak_dataset, tmp_path):
    """2N steps straight == N steps, stop, resume, N steps (same weights, optimizer, position)."""
    straight = Trainer(micro_config(espeak_dataset, tmp_path / "a", train__max_steps=8, checkpoint__every_steps=4))
    straight.train()

    first = Trainer(micro_config(espeak_dataset, tmp_path / "b", train__max_steps=4, checkpoint__every_steps=4))
    first.train()
    resumed = Trainer(micro_config(espeak_dataset, tmp_path / "b", train__max_steps=8, checkpoint__every_steps=4),
                      resume=True)
    assert resumed.step == 4
    resumed.train()

    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert (straight.epoch, straight.batch_in_epoch) == (resumed.epoch, resumed.batch_in_epoch)
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    torch.testing.assert_close(sa[0]["exp_avg"], sb[0]["exp_avg"], rtol=1e-5, atol=1e-7)


def test_corrupt_newest_checkpoint_falls_back_to_previous(espeak_dataset, tmp_path, capsys):
    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=6, checkpoint__every_steps=3)
    Trainer(cfg).train()
    newest = tmp_path / "run" / "checkpoints" / "checkpoint_00000006.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a torn write

    with pytest.raises(CheckpointError, match="checkpoint_00000006.pt.*truncated or corrupt"):
        load_checkpoint(newest)
    resumed = Trainer(cfg, resume=True)
    assert resumed.step == 3
    assert "checkpoint_00000006.pt" in capsys.readouterr().out


def test_checkpoint_keeps_nvidia_keys_and_prunes(espeak_dataset, tmp_path):
    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=6, checkpoint__every_steps=1,
                       checkpoint__keep_last=2)
    Trainer(cfg).train()
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.glob("checkpoint_*.pt")) == ["checkpoint_00000005.pt",
                                                                        "checkpoint_00000006.pt"]
    assert (folder / "best.pt").is_file()
    assert not list(folder.glob(".*tmp"))
    ckpt = load_checkpoint(folder / "checkpoint_00000006.pt")
    assert ckpt["iteration"] == 6 and isinstance(ckpt["learning_rate"], float)
    assert {"state_dict", "optimizer"} <= ckpt.keys() and "rng" in ckpt["smart_tuner"]


def test_non_finite_batch_skips_the_update(espeak_dataset, tmp_path):
    trainer = Trainer(micro_config(espeak_dataset, tmp_path / "run"))
    trainer.train_step(trainer.next_batch())
    before = _weights(trainer)
    batch = trainer.next_batch()
    batch.mel[0, :, :3] = float("nan")
    record = trainer.train_step(batch)
    assert not record.finite and record.skipped_steps == 1
    after = _weights(trainer)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.train_step(trainer.next_batch()).finite


def _as_nvidia(src: Path, dst: Path) -> None:
    ckpt = load_checkpoint(src)
    torch.save({k: ckpt[k] for k in ("iteration", "state_dict", "optimizer", "learning_rate")}, dst)


def test_nvidia_checkpoint_resumes_and_warm_starts(espeak_dataset, tmp_path):
    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=3)
    trained = Trainer(cfg)
    trained.train()
    nvidia = tmp_path / "nvidia.pt"
    _as_nvidia(tmp_path / "run" / "checkpoints" / "checkpoint_00000003.pt", nvidia)

    resumed = Trainer(micro_config(espeak_dataset, tmp_path / "r2"), resume=nvidia)
    assert resumed.step == 3 and resumed.current_lr == pytest.approx(trained.current_lr)
    assert all(torch.equal(a, b) for a, b in zip(_weights(trained).values(), _weights(resumed).values()))

    warm = Trainer(micro_config(espeak_dataset, tmp_path / "w"), warm_start=nvidia,
                   ignore_layers=["embedding.weight"])
    assert warm.step == 0
    assert not torch.equal(warm.model.embedding.weight, trained.model.embedding.weight)
    assert torch.equal(warm.model.decoder.gate_layer.linear_layer.weight,
                       trained.model.decoder.gate_layer.linear_layer.weight)

    bigger = micro_config(espeak_dataset, tmp_path / "x", model__decoder_rnn_dim=96)
    with pytest.raises(CheckpointError, match=r"nvidia.pt.*decoder.decoder_rnn.* --ignore-layers"):
        Trainer(bigger, warm_start=nvidia)


def test_fresh_run_refuses_a_run_dir_with_checkpoints(espeak_dataset, tmp_path):
    from trainer.errors import UserError

    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=3)
    Trainer(cfg).train()
    with pytest.raises(UserError, match="already holds checkpoints.*step 3.*--resume"):
        Trainer(cfg)
    with pytest.raises(UserError, match="exclude each other"):
        Trainer(cfg, resume=True, warm_start=tmp_path / "run" / "checkpoints" / "checkpoint_00000003.pt")


def test_resume_applies_config_values_changed_since_the_save(espeak_dataset, tmp_path, capsys):
    Trainer(micro_config(espeak_dataset, tmp_path / "run", train__max_steps=3)).train()
    changed = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=6, optim__learning_rate=5e-4,
                           loss__gate_pos_weight=9.0)
    resumed = Trainer(changed, resume=True)
    assert resumed.current_lr == pytest.approx(5e-4) and resumed.loss_weights.gate_pos_weight == 9.0
    assert "optim.learning_rate=0.0005" in capsys.readouterr().out
    same = Trainer(micro_config(espeak_dataset, tmp_path / "run", train__max_steps=6), resume=True)
    assert same.current_lr == pytest.approx(2e-3)


def test_our_checkpoints_load_with_weights_only(espeak_dataset, tmp_path):
    """Tools on PyTorch >= 2.6 (NVIDIA's included) load with weights_only=True by default."""
    Trainer(micro_config(espeak_dataset, tmp_path / "run", train__max_steps=3)).train()
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "checkpoint_00000003.pt", weights_only=True)
    assert ckpt["iteration"] == 3
    mode = (tmp_path / "run" / "checkpoints" / "checkpoint_00000003.pt").stat().st_mode & 0o777
    assert mode & 0o044  # readable by others as a normal file, not mkstemp's 0600
