"""The tunables registry and the command table: every command type has a handler, every
tunable reads and writes a real trainer, lives in the config, and obeys the config's bounds."""

from __future__ import annotations

import math
from typing import Literal, get_args

import pydantic
import pytest

from trainer.commands import NoHandler, apply_command, handler_for
from trainer.config import RunConfig
from trainer.control import COMMAND_KINDS, HYPERPARAMETERS, ApplyHyperparameters, Command, StepTelemetry, _Command
from trainer.loop import Trainer
from trainer.tunables import DROPOUTS, TUNABLES, OutOfBounds, apply, live_values

from conftest import micro_config


@pytest.fixture
def trainer(espeak_dataset, tmp_path) -> Trainer:
    return Trainer(micro_config(espeak_dataset, tmp_path / "run"))


def test_every_command_type_has_a_handler():
    classes = get_args(get_args(Command)[0])
    assert [c.model_fields["kind"].default for c in classes] == list(COMMAND_KINDS)
    for kind in COMMAND_KINDS:
        assert callable(handler_for(kind))


class _Unhandled(_Command):
    kind: Literal["not_handled"] = "not_handled"


def test_a_command_without_a_handler_is_a_clear_failure(trainer):
    with pytest.raises(NoHandler, match="no handler for command kind 'not_handled'"):
        handler_for("not_handled")
    result = apply_command(trainer, _Unhandled())
    assert not result.ok and "no handler for command kind 'not_handled'" in result.detail


def _inside(t) -> float:
    """A value within the tunable's bounds that differs from its defaults."""
    b = t.bounds
    if b.high is not None:
        return (b.low + b.high) * 0.37
    return (b.low or 0.0) + 0.0123


def test_every_tunable_round_trips_on_a_live_trainer(trainer):
    before = live_values(trainer)
    assert set(before) == set(TUNABLES) == set(HYPERPARAMETERS)
    for name, t in TUNABLES.items():
        value = _inside(t)
        assert value != pytest.approx(before[name])
        t.set(trainer, value)
        assert t.get(trainer) == pytest.approx(value), name
    # The dropouts are the decoder's own attributes (a captured CUDA graph watches them).
    d = trainer.model.decoder
    assert trainer.dropouts == {"p_attention_dropout": d.p_attention_dropout,
                                "p_decoder_dropout": d.p_decoder_dropout, "prenet_dropout": d.prenet.dropout}
    assert set(trainer.dropouts) == set(DROPOUTS)
    assert trainer.optimizer.param_groups[0]["weight_decay"] == pytest.approx(_inside(TUNABLES["weight_decay"]))


def test_a_bad_value_changes_nothing(trainer):
    before = live_values(trainer)
    with pytest.raises(OutOfBounds, match=r"p_decoder_dropout must be in \[0, 1\), not 1.5"):
        apply(trainer, {"learning_rate": 1e-4, "p_decoder_dropout": 1.5})
    with pytest.raises(OutOfBounds, match="gate_pos_weight must be > 0"):
        apply(trainer, {"guided_attention_weight": 3.0, "gate_pos_weight": 0.0})
    assert live_values(trainer) == before
    result = apply_command(trainer, ApplyHyperparameters(values={"learning_rate": 1e-4, "weight_decay": -1.0}))
    assert not result.ok and result.detail == "weight_decay must be >= 0, not -1.0"
    assert live_values(trainer) == before


def test_every_tunable_is_a_config_key_with_the_same_bounds():
    defaults = RunConfig()
    for name, t in TUNABLES.items():
        assert t.config_value(defaults) == getattr(getattr(defaults, t.section), t.key)
        b = t.bounds
        edges = [x for x in (b.low, b.high) if x is not None] + [-1.0, 0.0, 0.5, 1.0, 2.0, math.nan]
        for value in edges:
            try:
                RunConfig.model_validate({t.section: {t.key: value}})
                config_accepts = True
            except pydantic.ValidationError:
                config_accepts = False
            assert (value in b) == config_accepts, (name, value)


def test_telemetry_fields_and_search_defaults_fit():
    for name, t in TUNABLES.items():
        if t.telemetry is not None:
            assert t.telemetry in StepTelemetry.model_fields, name
        if t.search is not None:
            assert t.search.low < t.search.high
            assert t.search.low in t.bounds and t.search.high in t.bounds, name


def test_resume_sets_a_changed_dropout_as_a_command_would(espeak_dataset, tmp_path, capsys):
    Trainer(micro_config(espeak_dataset, tmp_path / "run", train__max_steps=3)).train()
    changed = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=6, model__p_decoder_dropout=0.25,
                           loss__guided_attention_sigma=0.3)
    resumed = Trainer(changed, resume=True)
    assert resumed.model.decoder.p_decoder_dropout == 0.25
    assert resumed.loss_weights.guided_attention_sigma == 0.3
    out = capsys.readouterr().out
    assert "now using loss.guided_attention_sigma=0.3, model.p_decoder_dropout=0.25" in out
