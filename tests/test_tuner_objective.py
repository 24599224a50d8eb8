"""The composite TTS objective from known inputs, and the tuner's config and search space."""

from __future__ import annotations

import math
import sys

import pytest

from agent.tuner.config import ObjectiveConfig, TunerConfig, tuner_config
from agent.tuner.objective import score
from agent.tuner.space import CONFIG_KEYS, apply_to_config, clamp, config_values
from trainer.config import RunConfig, parse_config
from trainer.control import HYPERPARAMETERS
from trainer.errors import UserError

RECORD = {"val_mel_loss": 0.40, "val_mel_postnet_loss": 0.30, "diagonality": 0.80, "gate_accuracy": 0.90}
SPEECH = {"synthesized": 10, "utterances": 8, "spoken": 2, "score": 0.25, "mcd_dtw": 2.5, "stopped": 6,
          "premature": 2, "runaway": 2, "gate_missed_end": 1, "read": 5, "gate_fired": 8, "duration_ratio": 1.0,
          "seconds": 1.0}


def test_objective_from_known_free_running_figures():
    s = score(dict(RECORD, speech=SPEECH), ObjectiveConfig())  # w_speech 5, w_read 2, w_stop 1
    assert s.free_running and s.sound == 2.5
    assert s.terms == pytest.approx({"speech_term": 5 * 0.75, "read_term": 2 * 0.5, "stop_term": 1 * 0.4})
    assert s.total == pytest.approx(2.5 + 3.75 + 1.0 + 0.4)
    assert s.as_dict()["mcd_dtw"] == 2.5 and s.as_dict()["objective"] == pytest.approx(s.total)


def test_speaking_more_beats_a_lower_teacher_forced_loss():
    """Two trials: one babbles with a low mel loss, one speaks half its utterances with a
    higher one. The teacher-forced objective preferred the babbler; this one does not."""
    babbler = dict(RECORD, val_mel_postnet_loss=0.2, speech=dict(SPEECH, spoken=0, score=0.0, read=0, mcd_dtw=2.9))
    speaker = dict(RECORD, val_mel_postnet_loss=0.5, speech=dict(SPEECH, spoken=4, score=0.5, read=8, mcd_dtw=2.6))
    assert score(speaker, ObjectiveConfig()).total < score(babbler, ObjectiveConfig()).total


def test_without_free_running_figures_the_teacher_forced_stand_in():
    s = score(RECORD, ObjectiveConfig())  # w1 = 1, w2 = 0.5, postnet mel
    assert not s.free_running and s.sound == 0.30
    assert s.terms == pytest.approx({"diagonality_term": 0.20, "gate_term": 0.05})
    custom = ObjectiveConfig(mel_metric="val_mel_loss", diagonality_weight=2.0, gate_weight=0.0)
    assert score(RECORD, custom).total == pytest.approx(0.40 + 2 * 0.2)
    perfect = dict(RECORD, diagonality=1.0, gate_accuracy=1.0)
    assert score(perfect, ObjectiveConfig()).total == pytest.approx(0.30)


def test_multi_objective_reports_sound_and_penalty_separately():
    cfg = ObjectiveConfig(multi_objective=True)
    record = dict(RECORD, speech=SPEECH)
    assert score(record, cfg).values(cfg) == pytest.approx((2.5, 3.75 + 1.0 + 0.4))
    assert score(record, ObjectiveConfig()).values(ObjectiveConfig()) == pytest.approx(2.5 + 5.15)
    t = TunerConfig(objective=cfg)
    assert t.sampler_kind == "nsga2" and t.pruner_kind == "none"  # Optuna prunes single-objective studies only


def test_a_non_finite_loss_is_not_a_finite_objective():
    assert not score(dict(RECORD, val_mel_postnet_loss=float("nan")), ObjectiveConfig()).finite
    assert not score(dict(RECORD, speech=dict(SPEECH, mcd_dtw=float("nan"))), ObjectiveConfig()).finite
    assert not math.isfinite(score(dict(RECORD, val_mel_postnet_loss=float("inf")), ObjectiveConfig()).total)


def test_tuner_section_errors_name_the_key():
    with pytest.raises(UserError, match=r"tuner\.space\.learning_rate.*low"):
        tuner_config({"space": {"learning_rate": {"low": 0.0, "high": 1e-3, "log": True}}})
    with pytest.raises(UserError, match=r"tuner\.objective\.diagonality_wieght"):
        tuner_config({"objective": {"diagonality_wieght": 1.0}})
    assert tuner_config({"space": {"weight_decay": None}}).space.ranges().keys() == {
        "learning_rate", "guided_attention_weight", "guided_attention_sigma", "gate_pos_weight", "grad_clip_thresh",
        "p_attention_dropout", "p_decoder_dropout"}


def test_every_searchable_value_is_a_trainer_hyperparameter_and_a_config_key():
    assert set(type(TunerConfig().space).model_fields) == set(CONFIG_KEYS) == set(HYPERPARAMETERS)
    config = RunConfig()
    values = config_values(config)
    raw = apply_to_config(config.model_dump(mode="json"), {k: v * 0.5 for k, v in values.items()})
    back = config_values(RunConfig.model_validate(raw))
    assert back == pytest.approx({k: v * 0.5 for k, v in values.items()})


def test_clamp_pulls_current_values_into_the_ranges():
    space = TunerConfig().space
    out = clamp({"learning_rate": 1.0, "gate_pos_weight": 5.0, "prenet_dropout": 0.5}, space)
    assert out == {"learning_rate": 3e-3, "gate_pos_weight": 5.0}  # prenet dropout is not searched by default


def test_a_run_config_carries_a_tuner_section():
    config = parse_config("tuner:\n  report_every: 50\n  round: {trials: 4, steps: 200}\n", "<t>")
    assert tuner_config(config.tuner).round.trials == 4


def test_light_commands_do_not_import_optuna_torch_or_mlflow():
    import subprocess

    code = ("import sys, agent.cli, agent.supervisor, agent.daemon, agent.tuner.inrun, agent.tuner.cli; "
            "agent.cli.build_parser(); print([m for m in ('torch', 'optuna', 'mlflow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
