"""Checkpoints load tensors and plain values only: a crafted .pt cannot run code.

Each crafted file's pickle creates a marker file when unpickled the unsafe way; every
loading path (load_checkpoint, resume, warm start, a run's checkpoints/ folder, the
``synth`` and ``eval`` commands) must refuse it in one line, the marker never created.
"""

from __future__ import annotations

import random
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoint import RESAVE_DOC, CheckpointError, CheckpointManager, load_checkpoint, plain
from trainer.cli import main

from conftest import micro_config

ROOT = Path(__file__).resolve().parent.parent


class _Payload:
    """Unpickled without weights_only, this creates the marker file (any code could run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _crafted(path: Path, marker: Path, legacy: bool = False) -> Path:
    torch.save({"iteration": 9, "state_dict": {"w": torch.zeros(2)}, "optimizer": {}, "learning_rate": 1e-3,
                "hparams": _Payload(marker)}, path, _use_new_zipfile_serialization=not legacy)
    return path


def _assert_refused_in_one_line(text: str, path: Path, marker: Path) -> None:
    assert not marker.exists(), "the checkpoint's pickle ran code"
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    assert f"{path}: not loaded" in text and "pickled Python objects (io.open)" in text, text
    assert "if you trust this file, save its weights alone" in text and RESAVE_DOC in text  # the way out


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_crafted_checkpoint_is_refused_without_running_its_payload(tmp_path, legacy):
    marker = tmp_path / "pwned"
    evil = _crafted(tmp_path / "evil.pt", marker, legacy)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(evil)
    _assert_refused_in_one_line(str(caught.value), evil, marker)


def test_resave_command_the_message_points_at_gives_a_loadable_file(tmp_path):
    """The command the refusal points at (docs, for a file the user trusts) works."""
    marker = tmp_path / "marker"
    evil = _crafted(tmp_path / "old nvidia.pt", marker)  # a space: the command must be given quoted paths
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(evil)
    _assert_refused_in_one_line(str(caught.value), evil, marker)  # it names RESAVE_DOC
    doc, anchor = RESAVE_DOC.split("#")
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert "\n### Checkpoints that hold Python objects\n" in text and anchor == "checkpoints-that-hold-python-objects"
    command = next(line for line in text[text.index("### Checkpoints that hold Python objects"):].splitlines()
                   if line.startswith("python -c "))
    command = command.replace("old.pt old-weights.pt", f"{shlex.quote(str(evil))} weights.pt")
    done = subprocess.run(command.replace("python", sys.executable, 1), shell=True, capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    marker.unlink()  # the user's own unpickle ran it, on a file they trust
    ckpt = load_checkpoint(tmp_path / "weights.pt")
    assert ckpt["iteration"] == 9 and torch.equal(ckpt["state_dict"]["w"], torch.zeros(2))
    assert not marker.exists()


def test_crafted_checkpoint_in_the_run_folder_is_skipped(tmp_path, capsys):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=5, keep_best=False)
    good = manager.save({"iteration": 3, "state_dict": {"w": torch.ones(2)}}, 3)
    marker = tmp_path / "pwned"
    _crafted(manager.path_for(9), marker)
    path, ckpt = manager.load_latest_good()
    assert path == good and ckpt["iteration"] == 3
    assert not marker.exists()
    assert "checkpoint_00000009.pt: not loaded" in capsys.readouterr().out


def test_synth_and_eval_refuse_a_crafted_checkpoint_in_one_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = _crafted(tmp_path / "evil.pt", marker)
    for command in (["synth", "--text", "Hi.", "--out", str(tmp_path / "x.wav")], ["eval"]):
        assert main([*command, "--checkpoint", str(evil)]) == 2
        _assert_refused_in_one_line(capsys.readouterr().err, evil, marker)
    assert not (tmp_path / "x.wav").exists()


def test_synth_command_on_a_crafted_checkpoint_exits_2_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    evil = _crafted(tmp_path / "evil.pt", marker)
    done = subprocess.run([sys.executable, "-m", "agent.cli", "synth", "--checkpoint", str(evil), "--text", "Hi.",
                           "--out", str(tmp_path / "x.wav")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    _assert_refused_in_one_line(done.stderr, evil, marker)


def test_resume_and_warm_start_refuse_a_crafted_checkpoint(espeak_dataset, tmp_path):
    from trainer.loop import Trainer

    marker = tmp_path / "pwned"
    evil = _crafted(tmp_path / "evil.pt", marker)
    for kwargs in ({"resume": evil}, {"warm_start": evil}):
        with pytest.raises(CheckpointError) as caught:
            Trainer(micro_config(espeak_dataset, tmp_path / "run"), **kwargs)
        _assert_refused_in_one_line(str(caught.value), evil, marker)
    # Dropped into the run's checkpoints/ folder: --resume skips it, starts afresh.
    run = tmp_path / "run2"
    (run / "checkpoints").mkdir(parents=True)
    _crafted(run / "checkpoints" / "checkpoint_00000009.pt", marker)
    assert Trainer(micro_config(espeak_dataset, run), resume=True).step == 0
    assert not marker.exists()


def test_train_warm_start_command_refuses_a_crafted_checkpoint(espeak_dataset, tmp_path, capsys):
    import yaml

    marker = tmp_path / "pwned"
    evil = _crafted(tmp_path / "evil.pt", marker)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(micro_config(espeak_dataset, tmp_path / "run").model_dump(mode="json")))
    for flag in ("--warm-start", "--resume"):
        assert main(["train", "--config", str(config), flag, str(evil), "--no-mlflow"]) == 2
        _assert_refused_in_one_line(capsys.readouterr().err, evil, marker)


def test_checkpoints_of_early_versions_with_numpy_rng_state_still_load(tmp_path):
    """Before weights_only-loadable checkpoints, the RNG state was numpy's tuple (a uint32
    array) and Python's; numeric numpy arrays and scalars are allow-listed, nothing else."""
    from trainer.loop import set_rng_state

    np.random.seed(5)
    random.seed(5)
    old = {"iteration": 3, "state_dict": {"w": torch.ones(2)},
           "smart_tuner": {"rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                                   "torch": torch.get_rng_state()},
                           "metrics": {"val_loss": np.float64(1.5), "focus": np.float32(0.5)}}}
    torch.save(old, tmp_path / "old.pt")
    expected = np.random.rand(3), random.random()
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert ckpt["smart_tuner"]["metrics"] == {"val_loss": 1.5, "focus": 0.5}
    np.random.seed(0)
    random.seed(0)
    set_rng_state(ckpt["smart_tuner"]["rng"])
    assert np.array_equal(np.random.rand(3), expected[0]) and random.random() == expected[1]
    # An object array needs more than numbers: refused.
    torch.save({"state_dict": {}, "x": np.array([1, "a"], dtype=object)}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match="not loaded.*ObjectDType"):
        load_checkpoint(tmp_path / "obj.pt")


def test_saved_payload_is_made_plain(tmp_path):
    """What callbacks and metrics put in a checkpoint is saved as plain values."""
    import enum

    class Color(enum.Enum):
        RED = "red"

    manager = CheckpointManager(tmp_path, keep_last=2, keep_best=False)
    payload = {"iteration": np.int64(4), "state_dict": {"w": torch.ones(1)}, "learning_rate": np.float32(0.5),
               "smart_tuner": {"metrics": {"val_loss": np.float64(2.0)}, "keys": np.arange(3, dtype=np.float32),
                               "extras": {"where": tmp_path, "color": Color.RED, "tags": {"b", "a"}, "when": object}}}
    path = manager.save(payload, 4)
    ckpt = torch.load(path, weights_only=True)  # no allow-listing at all
    ours = ckpt["smart_tuner"]
    assert type(ckpt["iteration"]) is int and type(ckpt["learning_rate"]) is float
    assert ours["metrics"] == {"val_loss": 2.0} and type(ours["metrics"]["val_loss"]) is float
    assert torch.equal(ours["keys"], torch.tensor([0.0, 1.0, 2.0]))
    assert ours["extras"]["where"] == str(tmp_path) and ours["extras"]["color"] == "red"
    assert ours["extras"]["tags"] == ["a", "b"] and ours["extras"]["when"] == str(object)
    assert plain((np.int32(1), {np.str_("k"): [np.bool_(True)]})) == (1, {"k": [True]})
