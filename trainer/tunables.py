"""The hyperparameters that may change while a run trains: one table.

Each entry says everything about one value: its name (the ``apply_hparams`` key and the
tuner's parameter name), its config key, how to read and write it on a live
:class:`~trainer.loop.Trainer`, which step-telemetry field reports it, and the range the
tuner searches by default. Live commands, resume, checkpoints' dropouts and the tuner
all read this table, so adding a tunable is one entry here (plus its field in the
config, which gives it its bounds). Checkpoints save the state these setters write
(schedule, optimizer, loss weights, clip, and every ``model.*`` tunable as the
dropouts); a tunable kept anywhere else needs a place in ``Trainer.checkpoint_payload``.

The bounds are the config field's own (``Field(gt=0)`` and so on): a live change
accepts exactly what a config file may set.

Torch-free, like ``trainer.control``: the supervisor and the tuner import it cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import annotated_types

from trainer.config import RunConfig

if TYPE_CHECKING:
    from trainer.loop import Trainer


class OutOfBounds(ValueError):
    """A value the config field would refuse."""


@dataclass(frozen=True)
class Bounds:
    low: float | None = None
    low_open: bool = False  # low itself is refused (``gt``)
    high: float | None = None
    high_open: bool = False  # high itself is refused (``lt``)

    def __contains__(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "any number"


@dataclass(frozen=True)
class SearchDefault:
    """The tuner's range for a tunable when ``tuner.space`` does not set one."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Tunable:
    name: str
    config_key: str  # dotted: "optim.learning_rate"
    label: str  # in acknowledgements: "learning rate 0.001 -> 0.0005"
    get: Callable[["Trainer"], float]
    set: Callable[["Trainer", float], None]
    search: SearchDefault | None  # None: the tuner leaves it alone unless tuner.space names a range
    telemetry: str | None = None  # the StepTelemetry field that reports the live value, if any

    @property
    def section(self) -> str:
        return self.config_key.split(".")[0]

    @property
    def key(self) -> str:
        return self.config_key.split(".")[1]

    @property
    def bounds(self) -> Bounds:
        return _bounds_of(self.config_key)

    def config_value(self, config: RunConfig) -> float:
        return float(getattr(getattr(config, self.section), self.key))

    def check(self, value: float) -> float:
        value = float(value)
        if value not in self.bounds:
            raise OutOfBounds(f"{self.name} must be {self.bounds}, not {value}")
        return value


def _bounds_of(config_key: str) -> Bounds:
    section, key = config_key.split(".")
    section_model = RunConfig.model_fields[section].annotation
    field = section_model.model_fields[key]  # type: ignore[union-attr]
    b: dict[str, Any] = {}
    for m in field.metadata:
        if isinstance(m, annotated_types.Gt):
            b.update(low=float(m.gt), low_open=True)  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Ge):
            b.update(low=float(m.ge), low_open=False)  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Lt):
            b.update(high=float(m.lt), high_open=True)  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Le):
            b.update(high=float(m.le), high_open=False)  # type: ignore[arg-type]
    return Bounds(**b)


# -- how each value lives in a running trainer ---------------------------------------------

def _set_weight_decay(t: "Trainer", value: float) -> None:
    for group in t.optimizer.param_groups:
        group["weight_decay"] = value


def _loss_weight(attr: str) -> tuple[Callable[["Trainer"], float], Callable[["Trainer", float], None]]:
    return (lambda t: float(getattr(t.loss_weights, attr))), (lambda t, v: setattr(t.loss_weights, attr, v))


# The decoder reads its dropouts on every step; GraphedDecoder reads these same
# attributes to notice a change and recapture.
def _decoder_dropout(attr: str) -> tuple[Callable[["Trainer"], float], Callable[["Trainer", float], None]]:
    return (lambda t: float(getattr(t.model.decoder, attr))), (lambda t, v: setattr(t.model.decoder, attr, v))


def _set_prenet_dropout(t: "Trainer", value: float) -> None:
    t.model.decoder.prenet.dropout = value


_TABLE = (
    # The schedule's base rate: warm-up and decay continue from it.
    Tunable("learning_rate", "optim.learning_rate", "learning rate", lambda t: t.current_lr,
            lambda t, v: t.set_lr(v), SearchDefault(1e-4, 3e-3, log=True), telemetry="lr"),
    Tunable("guided_attention_weight", "loss.guided_attention_weight", "guided attention weight",
            *_loss_weight("guided_attention_weight"), SearchDefault(0.0, 4.0), telemetry="guided_attention_weight"),
    Tunable("guided_attention_sigma", "loss.guided_attention_sigma", "guided attention sigma",
            *_loss_weight("guided_attention_sigma"), SearchDefault(0.1, 0.4)),
    Tunable("gate_pos_weight", "loss.gate_pos_weight", "gate positive weight", *_loss_weight("gate_pos_weight"),
            SearchDefault(1.0, 32.0, log=True), telemetry="gate_pos_weight"),
    Tunable("grad_clip_thresh", "optim.grad_clip_thresh", "gradient clip", lambda t: t.grad_clip,
            lambda t, v: setattr(t, "grad_clip", v), SearchDefault(0.2, 5.0, log=True), telemetry="grad_clip"),
    Tunable("weight_decay", "optim.weight_decay", "weight decay",
            lambda t: float(t.optimizer.param_groups[0]["weight_decay"]), _set_weight_decay,
            SearchDefault(1e-8, 1e-4, log=True)),
    Tunable("p_attention_dropout", "model.p_attention_dropout", "attention dropout",
            *_decoder_dropout("p_attention_dropout"), SearchDefault(0.0, 0.3)),
    Tunable("p_decoder_dropout", "model.p_decoder_dropout", "decoder dropout",
            *_decoder_dropout("p_decoder_dropout"), SearchDefault(0.0, 0.3)),
    # Not searched by default: Tacotron2 keeps prenet dropout on at inference, and its
    # 0.5 is part of what makes the decoder listen to the encoder.
    Tunable("prenet_dropout", "model.prenet_dropout", "prenet dropout",
            lambda t: float(t.model.decoder.prenet.dropout), _set_prenet_dropout, None),
)

TUNABLES: dict[str, Tunable] = {t.name: t for t in _TABLE}
# The model's tunables are its dropouts: checkpoints carry them as ``smart_tuner.dropouts``.
DROPOUTS: tuple[str, ...] = tuple(t.name for t in _TABLE if t.section == "model")


def live_values(trainer: "Trainer") -> dict[str, float]:
    """Every tunable as the running trainer has it now."""
    return {name: t.get(trainer) for name, t in TUNABLES.items()}


def config_values(config: RunConfig) -> dict[str, float]:
    """Every tunable as a run config sets it."""
    return {name: t.config_value(config) for name, t in TUNABLES.items()}


def apply(trainer: "Trainer", values: Mapping[str, float]) -> list[str]:
    """Set tunables on a running trainer, all or nothing: every name and value is checked
    before anything changes. Returns one ``label old -> new`` line per value."""
    unknown = sorted(set(values) - set(TUNABLES))
    if unknown:
        raise OutOfBounds(f"unknown hyperparameters {unknown}; known: {list(TUNABLES)}")
    checked = {name: TUNABLES[name].check(value) for name, value in values.items()}
    done = []
    for name, value in checked.items():
        t = TUNABLES[name]
        old = t.get(trainer)
        t.set(trainer, value)
        done.append(f"{t.label} {old:.3g} -> {value:.3g}")
    return done


def changed_since(saved: Mapping[str, Any], config: RunConfig) -> dict[str, float]:
    """The tunables whose config value differs from a saved config dump (a checkpoint's
    ``smart_tuner.config``). A key the saved config lacks counts as unchanged."""
    out = {}
    for name, t in TUNABLES.items():
        new = t.config_value(config)
        old = saved.get(t.section, {}).get(t.key, new)
        if new != old:
            out[name] = new
    return out
