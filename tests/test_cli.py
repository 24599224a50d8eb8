"""The command line as a user meets it: clear one-line errors, synth output, MLflow, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from trainer.cli import main
from trainer.config import ConfigError, load_config
from trainer.loop import Trainer

from conftest import micro_config

ROOT = Path(__file__).resolve().parent.parent


def _write_config(path: Path, cfg) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_bad_config_names_file_line_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_frames_per_step: 2\n  attention_dim: lots\noptim:\n  learnig_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    message = str(info.value)
    assert f"{bad}:3: model.attention_dim" in message and "valid integer" in message
    assert f"{bad}:5: optim.learnig_rate: Extra inputs are not permitted" in message

    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config") and "Traceback" not in err


def test_missing_config_lists_the_shipped_ones(capsys):
    assert main(["train", "--config", "no-such-config"]) == 2
    err = capsys.readouterr().err
    assert "no-such-config: no such config file" in err and "tiny-cpu" in err and "default" in err


def test_shipped_configs_load():
    default = load_config("default")
    assert default.model.n_frames_per_step == 1 and default.data.batch_size == 64
    tiny = load_config("tiny-cpu")
    assert tiny.model.n_frames_per_step == 3 and tiny.model.encoder_embedding_dim == 128


def test_bad_filelist_line_is_named(espeak_dataset, tmp_path, capsys):
    train = tmp_path / "train.txt"
    lines = (espeak_dataset / "train.txt").read_text().splitlines()
    lines.insert(2, "wavs/missing-separator.wav")
    # Paths are resolved against the filelist's folder: point them back at the dataset.
    train.write_text("\n".join(f"{espeak_dataset}/{line}" for line in lines) + "\n")
    cfg = micro_config(espeak_dataset, tmp_path / "run", data__training_files=str(train))
    config_file = _write_config(tmp_path / "c.yaml", cfg)
    assert main(["train", "--config", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert f"{train}:3: expected 'path|text'" in err and "Traceback" not in err


def test_missing_audio_names_the_line(espeak_dataset, tmp_path, capsys):
    train = tmp_path / "train.txt"
    train.write_text(f"{espeak_dataset}/wavs/nope.wav|Some words.\n")
    cfg = micro_config(espeak_dataset, tmp_path / "run", data__training_files=str(train))
    assert main(["train", "--config", str(_write_config(tmp_path / "c.yaml", cfg))]) == 2
    err = capsys.readouterr().err
    assert f"{train}:1: audio file" in err and "nope.wav not found" in err and "data check" in err


def test_synth_writes_a_playable_wav_and_alignment_plot(espeak_dataset, tmp_path, capsys):
    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=2)
    Trainer(cfg).train()
    out = tmp_path / "hello.wav"
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint_00000002.pt"
    code = main(["synth", "--checkpoint", str(ckpt), "--text", "Hello world.", "--out", str(out),
                 "--max-decoder-steps", "25", "--griffin-lim-iters", "8"])
    assert code == 0
    printed = capsys.readouterr().out
    audio, rate = sf.read(out)
    info = sf.info(out)
    assert rate == 22050 and info.subtype == "PCM_16" and info.channels == 1
    assert 0 < len(audio) <= 25 * 2 * 256 + 256 and abs(audio).max() <= 1.0
    assert out.with_suffix(".png").stat().st_size > 1000
    # An untrained model cannot say it in 25 steps: the user is told, not left guessing.
    assert "warning: " in printed and ("cut off" in printed or "never fired" in printed or "too early" in printed)


def _sabotaged(espeak_dataset, tmp_path, gate_bias: float) -> Path:
    """A trained-for-2-steps checkpoint whose stop gate fires at once (+) or never (-)."""
    import torch

    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=2)
    Trainer(cfg).train()
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint_00000002.pt"
    data = torch.load(ckpt, weights_only=True)
    data["state_dict"]["decoder.gate_layer.linear_layer.bias"].fill_(gate_bias)
    data["state_dict"]["decoder.gate_layer.linear_layer.weight"].zero_()
    out = tmp_path / f"gate_{gate_bias:+g}.pt"
    torch.save(data, out)
    return out


def test_synth_says_when_the_gate_fires_at_once_or_the_text_is_cut_off(espeak_dataset, tmp_path, capsys):
    at_once = _sabotaged(espeak_dataset, tmp_path / "a", 30.0)
    assert main(["synth", "--checkpoint", str(at_once), "--text", "Printing, in the only sense with which we are "
                 "at present concerned.", "--out", str(tmp_path / "a.wav"), "--griffin-lim-iters", "4"]) == 0
    out = capsys.readouterr().out
    assert "the stop gate fired after 0.0" in out and "far too early" in out and "warning: " in out
    never = _sabotaged(espeak_dataset, tmp_path / "b", -30.0)
    long_text = "This sentence is far too long to be said in three decoder steps by any model at all. " * 3
    assert main(["synth", "--checkpoint", str(never), "--text", long_text, "--out", str(tmp_path / "b.wav"),
                 "--max-decoder-steps", "3", "--griffin-lim-iters", "4"]) == 0
    out = capsys.readouterr().out
    assert "warning: part 1 of 3 ('This sentence is far too'...): the text was cut off after about" in out
    assert "split it into shorter sentences" in out


def test_synth_splits_a_long_text_at_sentence_ends_and_says_where_a_part_was_cut(espeak_dataset, tmp_path, capsys):
    import soundfile

    never = _sabotaged(espeak_dataset, tmp_path / "b", -30.0)  # every part runs to the step limit
    text = "The first sentence is here. A second one follows it. And then a third. " * 2
    out = tmp_path / "long.wav"
    assert main(["synth", "--checkpoint", str(never), "--text", text, "--out", str(out), "--max-decoder-steps", "12",
                 "--griffin-lim-iters", "2"]) == 0
    said = capsys.readouterr().out
    parts = int(said.split("spoken in ")[1].split(" parts")[0])
    assert parts >= 3 and said.count("warning: part ") == parts  # each part named, with its first words
    assert "part 1 of" in said and "'The first sentence is here.'" in said
    # Each part ran to its 12-step limit (r = 2): the audio is all of them, pauses between.
    frames = soundfile.info(str(out)).frames
    assert frames > parts * 12 * 2 * 256
    assert main(["synth", "--checkpoint", str(never), "--text", text, "--out", str(out), "--max-decoder-steps", "12",
                 "--griffin-lim-iters", "2", "--no-split"]) == 0
    said = capsys.readouterr().out
    assert "parts" not in said and "warning: the text was cut off after about" in said
    assert soundfile.info(str(out)).frames < frames / 2


def test_split_text_keeps_sentences_whole_and_groups_short_ones():
    from trainer.inference import split_text

    assert split_text("One. Two. Three.", 100) == ["One. Two. Three."]
    assert split_text("One two. Three four. Five six.", 10) == ["One two.", "Three four.", "Five six."]
    assert split_text("Aa. Bb. Cc. Dd.", 8) == ["Aa. Bb.", "Cc. Dd."]
    # A sentence too long alone is cut at its commas; a clause too long stays whole.
    assert split_text("First clause here, second clause here.", 20) == ["First clause here,", "second clause here."]
    assert split_text("Averyveryverylongword and more.", 5) == ["Averyveryverylongword and more."]
    assert split_text("Hello.   ...   World!", 7) == ["Hello.", "World!"]  # a part with no words is dropped


def test_synth_and_eval_refuse_bad_input_in_one_line(espeak_dataset, tmp_path, capsys):
    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=2)
    Trainer(cfg).train()
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint_00000002.pt"
    for text, why in (("", "the text is empty"), ("   ", "the text is empty"), ("!!! ... ?", "has no words to say")):
        assert main(["synth", "--checkpoint", str(ckpt), "--text", text, "--out", str(tmp_path / "x.wav")]) == 2
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.wav").exists()
    other = micro_config(espeak_dataset, tmp_path / "run", model__attention_rnn_dim=48)
    other_file = _write_config(tmp_path / "other.yaml", other)
    for command in (["synth", "--text", "Hi.", "--out", str(tmp_path / "y.wav")], ["eval"]):
        assert main([*command, "--checkpoint", str(ckpt), "--config", str(other_file)]) == 2
        err = capsys.readouterr().err
        assert "weights do not fit the model of its config" in err and "Traceback" not in err


def test_eval_judges_a_checkpoint(espeak_dataset, tmp_path, capsys):
    import json

    at_once = _sabotaged(espeak_dataset, tmp_path, 30.0)
    assert main(["eval", "--checkpoint", str(at_once), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    s = report["summary"]
    assert (s["synthesized"], s["utterances"], s["premature"], s["spoken"], s["score"]) == (3, 2, 3, 0, 0.0)
    assert s["gate_fired"] == 3  # the old "stop rate" would have called this 100 % healthy
    assert [u["stop"] for u in report["utterances"]] == ["premature"] * 3
    assert main(["eval", "--checkpoint", str(at_once), "--out", str(tmp_path / "ev"),
                 "--set", "eval.speech.audio_probes=1"]) == 0
    out = capsys.readouterr().out
    assert "not spoken:" in out and "premature" in out and "speech: 0/2 spoken" in out
    assert (tmp_path / "ev" / "step_00000000.json").is_file() and list((tmp_path / "ev").glob("*.wav"))


def test_synth_on_a_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["synth", "--checkpoint", str(bad), "--text", "hi", "--out", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: checkpoint is truncated or corrupt" in err and "Traceback" not in err


def test_mlflow_gets_metrics_params_and_alignment_images(espeak_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    from trainer.cli_train import run_training

    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=4, eval__every_steps=2,
                       tracking__enabled=True)
    run_training(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smart-tuner")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "diagonality")] == [2, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "speech_score")] == [2, 4]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "speech_synthesized")] == [3.0, 3.0]
    assert run.data.params["model.n_frames_per_step"] == "2"
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "alignments")]
    assert "alignments/step_00000002.png" in artifacts
    speech = {a.path for a in client.list_artifacts(run.info.run_id, "speech")}
    # The inference alignment, the first probe's audio and the per-utterance verdicts.
    assert {"speech/step_00000002_probe1.png", "speech/step_00000002_probe1.wav",
            "speech/step_00000002.json"} <= speech


def test_sigterm_checkpoints_and_exits_zero(espeak_dataset, tmp_path):
    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=100000, checkpoint__every_steps=100000,
                       eval__every_steps=100000)
    config_file = _write_config(tmp_path / "c.yaml", cfg)
    proc = subprocess.Popen([sys.executable, "-m", "trainer.cli", "train", "--config", str(config_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    deadline = time.time() + 120
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step") and "step       3" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopped at step" in rest and "SIGTERM" in rest
    saved = list((tmp_path / "run" / "checkpoints").glob("checkpoint_*.pt"))
    assert len(saved) == 1 and int(saved[0].stem.split("_")[1]) >= 3


def test_demo_builds_data_trains_supervised_and_speaks(tmp_path):
    """README's first command, shrunk: dataset, supervised training, sample, resumable."""
    out = tmp_path / "demo"
    args = [sys.executable, "-m", "agent.cli", "demo", "--out", str(out), "--n", "10", "--steps", "2"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "data" / "train.txt").is_file() and (out / "sample.wav").is_file()
    assert (out / "sample.png").is_file() and (out / "mlflow.db").is_file()
    assert (out / "journal.sqlite").is_file() and "daemon ready" in done.stdout + done.stderr
    assert (out / "data" / "probes.txt").is_file()  # espeak-ng's recordings of the probe sentences
    # Two steps cannot speak, and the demo says so plainly instead of "(stopped)".
    assert "not speaking yet: 0 of 1 validation sentences spoken" in done.stdout
    assert "run the demo again to continue" in done.stdout and "MCD-DTW" in done.stdout
    again = subprocess.run(args[:-1] + ["4"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "resumed from" in again.stdout and "at step 2" in again.stdout
