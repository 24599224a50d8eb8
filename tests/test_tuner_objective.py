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

RECORD = {"val_mel_loss": 0.40, "val_mel_postnet_loss": 0.30, "diagonality": 0.80, "gate_accuracy": 0.90,
          "probe_stop_rate": 0.50}


def test_objective_from_known_inputs():
    s = score(RECORD, ObjectiveConfig())  # w1 = 1, w2 = 0.5, w3 = 0.5, postnet mel
    assert s.mel == 0.30
    assert s.diagonality_term == pytest.approx(0.20)
    assert s.gate_term == pytest.approx(0.05)
    assert s.stop_term == pytest.approx(0.25)
    assert s.total == pytest.approx(0.30 + 0.20 + 0.05 + 0.25)

    custom = ObjectiveConfig(mel_metric="val_mel_loss", diagonality_weight=2.0, gate_weight=0.0, stop_weight=1.0)
    assert score(RECORD, custom).total == pytest.approx(0.40 + 2 * 0.2 + 0 + 1 * 0.5)


def test_a_perfect_model_scores_its_mel_loss_and_worse_alignment_scores_worse():
    perfect = dict(RECORD, diagonality=1.0, gate_accuracy=1.0, probe_stop_rate=1.0)
    assert score(perfect, ObjectiveConfig()).total == pytest.approx(0.30)
    lost = dict(perfect, diagonality=0.3)
    assert score(lost, ObjectiveConfig()).total > score(perfect, ObjectiveConfig()).total


def test_multi_objective_reports_mel_and_alignment_separately():
    cfg = ObjectiveConfig(multi_objective=True)
    assert score(RECORD, cfg).values(cfg) == pytest.approx((0.30, 0.50))
    assert score(RECORD, ObjectiveConfig()).values(ObjectiveConfig()) == pytest.approx(0.80)
    t = TunerConfig(objective=cfg)
    assert t.sampler_kind == "nsga2" and t.pruner_kind == "none"  # Optuna prunes single-objective studies only


def test_a_non_finite_loss_is_not_a_finite_objective():
    assert not score(dict(RECORD, val_mel_postnet_loss=float("nan")), ObjectiveConfig()).finite
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
