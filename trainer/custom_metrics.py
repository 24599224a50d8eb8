"""Evaluation metrics from outside this package: the extension point for metrics.

A custom metric is a :class:`CustomMetric` object, installed as an entry point in the
group ``smart_tuner.metrics`` or named in ``eval.custom_metrics`` by its import path
(see docs/api.md). At every evaluation the evaluator calls it on each validation batch
and reports the utterance-weighted mean in ``EvalRecord.extra[name]``, which travels
with the built-in figures: the journal, the policies' window, MLflow and the console.

Free of torch at import: the config validates metrics without loading the model code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict

from trainer.plugins import METRICS_GROUP, collect

if TYPE_CHECKING:
    from trainer.data.dataset import Batch
    from trainer.model.tacotron2 import TacotronOutput


class MetricSettings(BaseModel):
    """Settings of one custom metric: its section ``eval.metrics.<name>``.

    Subclass it with the metric's own fields; unknown keys are errors.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # Lets a user switch an installed metric off (it costs evaluation time).
    enabled: bool = True


# (validation batch on the device, the model's teacher-forced output, settings) -> the
# batch's mean value. The model is in eval mode under torch.no_grad and autocast.
Measure = Callable[["Batch", "TacotronOutput", Any], float]


@dataclass(frozen=True)
class CustomMetric:
    """An evaluation metric of your own.

    ``measure`` returns a batch's mean; the evaluation's value is the mean over the
    batches weighted by their utterance counts (so a per-utterance mean comes out
    exact). ``name`` is its key in ``EvalRecord.extra`` and its settings section
    ``eval.metrics.<name>``, validated by ``settings`` (a :class:`MetricSettings`).
    """

    name: str
    measure: Measure
    settings: type[MetricSettings] = MetricSettings

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"metric name {self.name!r} must be an identifier (it names a YAML section)")
        if not (isinstance(self.settings, type) and issubclass(self.settings, MetricSettings)):
            raise TypeError(f"metric {self.name!r}: settings must subclass trainer.custom_metrics.MetricSettings, "
                            f"got {self.settings!r}")


def load_custom_metrics(import_paths: Sequence[str]) -> dict[str, CustomMetric]:
    """The installed custom metrics plus those at ``import_paths``, by name."""
    # Not the name of a built-in figure: MLflow logs both under their names.
    from trainer.control import EvalRecord  # here: trainer.config imports this module, control imports config

    return collect(METRICS_GROUP, import_paths, CustomMetric, "metric", reserved=tuple(EvalRecord.model_fields))
