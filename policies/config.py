"""Thresholds of every policy, one sub-model per policy.

The defaults are for Tacotron2 as this trainer reports it: per-step losses averaged
over real frames, grad norms measured *before* clipping (NVIDIA clips at 1.0), and
an evaluation every ``eval.every_steps`` (1000 by default, 100 in ``tiny-cpu``), so
"N evaluations" is the natural unit of patience for anything measured at evaluation.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SerializeAsAny, model_validator

from policies.custom import CustomRule, load_custom_rules
from policies.settings import RuleSettings, Section as _Section
from trainer.plugins import config_error, validate_section


class AlignedConfig(_Section):
    """When attention counts as learnt; same meaning as the trainer's ``eval.aligned_*``
    (there per utterance, here on the evaluation means)."""

    diagonality: float = Field(0.9, gt=0, le=1)
    focus: float = Field(0.5, gt=0, le=1)
    # Consecutive evaluations that must pass: one good evaluation can be luck.
    evals: int = Field(2, ge=1)
    # With free-running evaluation: the share of synthesized utterances whose inference
    # attention must read the text to its end (trainer/speech/attention.py). Teacher
    # forcing alone showed diagonality 0.98 while inference skipped six tokens a step.
    min_read: float = Field(0.5, ge=0, le=1)


class RollbackConfig(_Section):
    # Extra batches to skip after a rollback. The trainer does not rewind the data
    # (trainer.control.Rollback), so the batches between the checkpoint and now are
    # never replayed anyway; this skips a few more fresh ones because the sampler
    # draws batches of similar length in buckets (data.bucket_batches = 8) and the
    # neighbours of a bad batch are the likeliest next troublemakers.
    skip_batches: int = Field(8, ge=0)


class DivergingConfig(_Section):
    # Validation loss "runs away" when the newest one exceeds this multiple of the
    # best in the window (a phase signal; the overfitting rule handles slow drift).
    val_loss_ratio: float = Field(1.5, gt=1)


class NonFiniteConfig(RuleSettings):
    # Non-finite steps (in the window, since the rule last fired) that trigger it.
    # 1 = roll back at once. The trainer already skips non-finite updates, so a
    # user who sees isolated bad batches may raise this to tolerate them.
    min_bad_steps: int = Field(1, ge=1)
    # From the second firing in an episode on, the rollback also cuts the LR.
    repeat_lr_factor: float = Field(0.5, gt=0, lt=1)
    # Without a checkpoint to roll back to: pause once this many steps in the window
    # were non-finite (or the weights themselves are); fewer only asks a human.
    pause_after_steps: int = Field(3, ge=1)


class LossSpikeConfig(RuleSettings):
    # Baseline: median of the last ``baseline_steps`` finite steps before the spike.
    # The median ignores the odd long-utterance batch; 50 steps is a few minutes on GPU.
    baseline_steps: int = Field(50, ge=5)
    # Below this many baseline steps (start of a run) the rule stays quiet.
    min_baseline_steps: int = Field(20, ge=3)
    # A step spikes when its loss (without the guided-attention term, whose weight the
    # supervisor itself changes) exceeds ``ratio`` x baseline.
    ratio: float = Field(3.0, gt=1)
    # Consecutive spiking steps, ending now, needed to act: single bad batches are noise.
    patience: int = Field(3, ge=1)
    lr_factor: float = Field(0.7, gt=0, lt=1)
    # On repeat (the policy already fired in this episode, see Memory) cut harder.
    repeat_lr_factor: float = Field(0.5, gt=0, lt=1)


class GradRunawayConfig(RuleSettings):
    # Median grad norm of the newest ``recent_steps`` vs the ``baseline_steps`` before.
    recent_steps: int = Field(20, ge=3)
    baseline_steps: int = Field(200, ge=10)
    min_baseline_steps: int = Field(50, ge=5)
    # Running away: recent median > ratio x baseline median *and* above the current
    # clip threshold (a growing norm that clipping never touches is harmless).
    ratio: float = Field(5.0, gt=1)
    # First answer: tighten the clip by this factor, not below ``min_clip``.
    clip_factor: float = Field(0.5, gt=0, lt=1)
    min_clip: float = Field(0.1, gt=0)
    # Next answer (or when the clip is already at ``min_clip``): cut the LR.
    lr_factor: float = Field(0.5, gt=0, lt=1)
    # Steps after firing before the rule may fire again (the change needs time to show).
    cooldown_steps: int = Field(100, ge=1)


class AlignmentStallConfig(RuleSettings):
    # Stalled: the best diagonality of the newest ``evals`` evaluations beats the one
    # before them by less than ``min_gain``. Tacotron2 sits at ~0.2-0.4 for a while,
    # then snaps to > 0.8 within a few evaluations; three flat ones mean it is stuck.
    evals: int = Field(3, ge=1)
    min_gain: float = Field(0.02, ge=0)
    # Escalation, one step per firing: raise the guided-attention weight (x factor, or
    # to ``initial_guided_attention_weight`` when it is 0), then cut the LR, then ask.
    # The penalty is per decoder step (trainer/loss.py), at most 1; measured on tiny-cpu,
    # weight 1-2 moved diagonality 0.30 -> 0.42 in 800 steps, weight 5 aligned in 150
    # (docs/benchmarks.md). It is decayed to zero once aligned, so strong is cheap.
    initial_guided_attention_weight: float = Field(5.0, gt=0)
    # Do not wait for a stall to turn guided attention on: when the run enters aligning
    # with it off and the attention not aligned, turn it on at the first evaluation.
    # Measured on tiny-cpu: without it attention did not align in 1,974 steps; with
    # weight 5 it aligned within 150 (docs/benchmarks.md). Waiting ``evals`` flat
    # evaluations first only costs time: it is decayed to zero once aligned anyway.
    guide_from_start: bool = True
    guided_attention_factor: float = Field(2.0, gt=1)
    max_guided_attention_weight: float = Field(20.0, gt=0)
    lr_factor: float = Field(0.5, gt=0, lt=1)


class AttentionDecayConfig(RuleSettings):
    # Once aligned, guided attention has done its job and biases the model toward a
    # strictly linear alignment; decay it by ``factor`` per evaluation while the
    # diagonality holds within ``hold_tolerance`` of its best, to 0 below ``zero_below``.
    factor: float = Field(0.5, gt=0, lt=1)
    hold_tolerance: float = Field(0.03, ge=0)
    zero_below: float = Field(0.05, ge=0)
    # With free-running figures, decay only once this share of the utterances is spoken
    # (0: as soon as aligned). Measured on the demo (tiny-cpu, 1,000 steps): decayed from
    # step 400 on, or held at 5 until speaking, both spoke 3 of 10 at step 950; holding
    # made steps 6% slower (the guided-attention term), so the default does not wait.
    min_speech_score: float = Field(0.0, ge=0, le=1)
    # After a collapse restored guided attention, wait this many holding evaluations.
    after_collapse_evals: int = Field(2, ge=1)


class AttentionCollapseConfig(RuleSettings):
    # Collapse: diagonality more than ``drop`` below the best seen while stable.
    drop: float = Field(0.15, gt=0, lt=1)
    # First collapsed evaluation: restore the guided-attention weight (if lower).
    restore_guided_attention_weight: float = Field(1.0, gt=0)
    # Still collapsed after this many evaluations: roll back to a checkpoint whose
    # diagonality was within ``drop`` of the best.
    persist_evals: int = Field(2, ge=1)


class GateConfig(RuleSettings):
    # Free-running evaluation tells the gate's two failures apart (policies.signals.
    # find_gate_trouble): it misses the end of the text ("never stops": raise its
    # positive weight) or fires early ("stops early": lower it). Either must hold for
    # ``min_share`` of the synthesized utterances at ``evals`` evaluations in a row.
    min_share: float = Field(0.5, gt=0, le=1)
    # Without free-running figures: the teacher-forced balanced accuracy (a never-firing
    # gate scores 0.5) below this at ``evals`` evaluations counts as "never stops".
    max_accuracy: float = Field(0.8, gt=0, le=1)
    evals: int = Field(3, ge=1)
    factor: float = Field(2.0, gt=1)
    # One positive frame per utterance against hundreds of negatives: weights of
    # 5-20 are common; beyond the cap the gate needs a human, not more weight.
    max_pos_weight: float = Field(32.0, gt=0)
    # Lowering stops here (1 = the positive frame weighs as much as any other).
    min_pos_weight: float = Field(1.0, gt=0)


class OverfitConfig(RuleSettings):
    # Validation loss rose at each of the newest ``rising_evals`` evaluations, by
    # ``min_rise`` (relative) in all, while the training loss fell.
    rising_evals: int = Field(3, ge=1)
    min_rise: float = Field(0.01, ge=0)
    # With free-running evaluation the rule watches MCD-DTW instead (and a speech score
    # that did not rise); it varies more between evaluations, hence a larger rise.
    min_mcd_rise: float = Field(0.03, ge=0)
    # Training loss at an evaluation: median of the last ``train_loss_steps`` step
    # records up to it (without the guided-attention term, as for spikes); fewer than
    # ``min_train_records`` there and the rule stays quiet.
    train_loss_steps: int = Field(100, ge=1)
    min_train_records: int = Field(10, ge=1)
    # First answer: cut the LR; on repeat: propose an early stop.
    lr_factor: float = Field(0.5, gt=0, lt=1)


class PlateauConfig(RuleSettings):
    # Plateau: the best MCD-DTW (with free-running evaluation, and the speech score did
    # not rise either; else the validation loss) of the newest ``evals`` evaluations improves
    # on the best before them by less than ``min_improvement`` (relative).
    evals: int = Field(5, ge=1)
    min_improvement: float = Field(0.01, ge=0)


class PolicyConfig(_Section):
    """All policy thresholds. Field names of the policies equal the policy names."""

    # Steps in the warmup phase. At least the trainer's optim.warmup_steps (the agent
    # should pass the larger of the two); alignment is not judged before this.
    warmup_steps: int = Field(500, ge=0)
    aligned: AlignedConfig = Field(default_factory=AlignedConfig)
    rollback: RollbackConfig = Field(default_factory=RollbackConfig)
    diverging: DivergingConfig = Field(default_factory=DivergingConfig)
    non_finite: NonFiniteConfig = Field(default_factory=NonFiniteConfig)
    loss_spike: LossSpikeConfig = Field(default_factory=LossSpikeConfig)
    grad_runaway: GradRunawayConfig = Field(default_factory=GradRunawayConfig)
    alignment_stall: AlignmentStallConfig = Field(default_factory=AlignmentStallConfig)
    attention_decay: AttentionDecayConfig = Field(default_factory=AttentionDecayConfig)
    attention_collapse: AttentionCollapseConfig = Field(default_factory=AttentionCollapseConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    overfit: OverfitConfig = Field(default_factory=OverfitConfig)
    plateau: PlateauConfig = Field(default_factory=PlateauConfig)
    # Custom rules (policies.custom.CustomRule) to run besides the installed ones (entry
    # point group smart_tuner.rules), by import path: "package.module:object".
    custom_rules: list[str] = Field(default_factory=list)
    # The custom rules' settings, by rule name, each validated by its rule's own model.
    # In YAML a custom rule's section sits beside the built-in ones (policies.<name>).
    custom_settings: dict[str, SerializeAsAny[RuleSettings]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _custom_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        paths = data.get("custom_rules") or []
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            return data  # the field's own validation reports it
        try:
            rules = load_custom_rules(paths, reserved=tuple(cls.model_fields))
        except (ValueError, TypeError, ImportError) as exc:
            raise config_error(cls.__name__, "custom_rule", str(exc), ("custom_rules",), paths) from None
        data = dict(data)
        # A section at the top level (as a user writes it) or, when a dump is read back, under custom_settings.
        dumped = data.get("custom_settings") or {}
        data["custom_settings"] = {name: validate_section(rule.settings, data.pop(name, dumped.get(name)), name)
                                   for name, rule in rules.items()}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "PolicyConfig":
        s = self.loss_spike
        if s.min_baseline_steps > s.baseline_steps:
            raise ValueError("loss_spike.min_baseline_steps must not exceed loss_spike.baseline_steps")
        g = self.grad_runaway
        if g.min_baseline_steps > g.baseline_steps:
            raise ValueError("grad_runaway.min_baseline_steps must not exceed grad_runaway.baseline_steps")
        a = self.alignment_stall
        if a.initial_guided_attention_weight > a.max_guided_attention_weight:
            raise ValueError("alignment_stall.initial_guided_attention_weight must not exceed its maximum")
        return self

    def policy(self, name: str) -> RuleSettings:
        """The settings of the rule ``name``, built-in or custom."""
        section = self.custom_settings[name] if name in self.custom_settings else getattr(self, name, None)
        if not isinstance(section, RuleSettings):
            raise KeyError(f"no policy named {name!r}")
        return section

    def loaded_custom_rules(self) -> dict[str, CustomRule]:
        """The custom rules, installed and named in ``custom_rules``, by name."""
        return load_custom_rules(self.custom_rules, reserved=tuple(type(self).model_fields))
