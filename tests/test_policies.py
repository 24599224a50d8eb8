"""Policies from synthetic number sequences: each rule fires when it should, with the
right actions and evidence, stays quiet on healthy (and noisy-but-healthy) runs,
respects the phase table and escalates on repeat through Memory."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import policies
from policies import Memory, Phase, PolicyConfig, Proposal, Window, propose
from policies.rules import RULES
from policies.table import URGENCY
from trainer.control import CheckpointRecord, EvalRecord, SpeechSummary, StepTelemetry

NAN = float("nan")
CFG = PolicyConfig()


# -- builders -------------------------------------------------------------------------
def step(n: int, loss: float = 1.0, grad_norm: float = 0.5, finite: bool = True, *, lr: float = 1e-3,
         clip: float = 1.0, ga: float = 0.0, ga_loss: float = 0.0, gate_pw: float = 5.0) -> StepTelemetry:
    return StepTelemetry(
        step=n, epoch=0, wall_time=1000.0 + n, lr=lr, loss=loss + ga * ga_loss, mel_loss=loss * 0.45,
        mel_postnet_loss=loss * 0.45, gate_loss=loss * 0.1, guided_attention_loss=ga_loss, grad_norm=grad_norm,
        grad_clip=clip, guided_attention_weight=ga, gate_pos_weight=gate_pw, step_seconds=0.1, skipped_steps=0,
        finite=finite)


def steps(losses, start: int = 1, grads=None, **kw) -> list[StepTelemetry]:
    grads = list(grads) if grads is not None else [0.5] * len(losses)
    return [step(start + i, loss=loss, grad_norm=gn, finite=math.isfinite(loss) and math.isfinite(gn), **kw)
            for i, (loss, gn) in enumerate(zip(losses, grads))]


def sp(synthesized: int = 10, *, utterances: int = 8, spoken: int = 0, mcd: float = 4.0, stopped: int | None = None,
       premature: int = 0, runaway: int = 0, missed_end: int = 0, read: int | None = None) -> SpeechSummary:
    """A free-running summary; by default every utterance stops in range and is read, none is spoken."""
    stopped = synthesized - premature - runaway if stopped is None else stopped
    return SpeechSummary(synthesized=synthesized, utterances=utterances, spoken=spoken, score=spoken / utterances,
                         mcd_dtw=mcd, stopped=stopped, premature=premature, runaway=runaway,
                         gate_missed_end=missed_end, read=synthesized if read is None else read,
                         gate_fired=synthesized - runaway, duration_ratio=1.0, seconds=1.0)


def ev(n: int, diagonality: float = 0.95, *, focus: float = 0.7, val_loss: float = 0.5, gate_accuracy: float = 0.95,
       speech: SpeechSummary | None = None) -> EvalRecord:
    return EvalRecord(step=n, wall_time=1000.0 + n, val_loss=val_loss, val_mel_loss=val_loss * 0.45,
                      val_mel_postnet_loss=val_loss * 0.45, val_gate_loss=val_loss * 0.1, val_guided_attention_loss=0.0,
                      diagonality=diagonality, focus=focus, aligned_fraction=1.0, gate_accuracy=gate_accuracy,
                      speech=speech, speech_score=speech.score if speech else None,
                      mcd_dtw=speech.mcd_dtw if speech else None)


def evals(diags=None, *, vals=None, every: int = 1000, start: int = 1000, **kw) -> list[EvalRecord]:
    n = len(diags if diags is not None else vals)
    diags = diags if diags is not None else [0.95] * n
    vals = vals if vals is not None else [0.5] * n
    return [ev(start + i * every, d, val_loss=v, **kw) for i, (d, v) in enumerate(zip(diags, vals))]


def ckpt(n: int, finite: bool = True, val_loss: float | None = 0.5, diagonality: float | None = 0.95):
    return CheckpointRecord(step=n, path=f"checkpoint_{n:08d}.pt", wall_time=1000.0 + n, reason="periodic",
                            val_loss=val_loss, diagonality=diagonality, finite=finite)


def noisy(n: int, level: float = 1.0, sigma: float = 0.15, seed: int = 0, outlier_every: int = 0,
          outlier: float = 5.0) -> list[float]:
    rng = random.Random(seed)
    out = [level * math.exp(rng.gauss(0, sigma)) for _ in range(n)]
    if outlier_every:
        for i in range(outlier_every, n, outlier_every):
            out[i] *= outlier
    return out


def only(proposals: list[Proposal], policy: str) -> list[Proposal]:
    return [p for p in proposals if p.policy == policy]


def run_rule(name: str, phase, window: Window, memory: Memory = Memory(), cfg: PolicyConfig = CFG):
    return RULES[name](Phase(phase), window, memory, cfg)


# -- types ----------------------------------------------------------------------------
def test_proposal_rejects_actions_the_trainer_would_not_parse():
    base = dict(policy="x", kind="set_lr", reason="r", aim="loss", step=1)
    Proposal(**base, actions=({"kind": "set_lr", "factor": 0.5},))
    with pytest.raises(ValidationError):
        Proposal(**base, actions=({"kind": "set_lr"},))  # neither value nor factor
    with pytest.raises(ValidationError):
        Proposal(**base, actions=({"kind": "launch_missiles"},))
    with pytest.raises(ValidationError):
        Proposal(**base, actions=({"kind": "pause", "id": "abc"},))
    with pytest.raises(ValidationError):
        Proposal(**{**base, "kind": "nonsense"})
    with pytest.raises(ValidationError):
        Proposal(**{**base, "aim": "happiness"})


def test_proposal_commands_and_json_round_trip():
    p = Proposal(policy="loss_spike", kind="rollback", reason="r", aim="loss", step=7, evidence={"a": 1, "b": 0.5},
                 actions=({"kind": "rollback", "step": 5, "skip_batches": 8}, {"kind": "set_lr", "factor": 0.7}))
    cmds = p.commands()
    assert [c.kind for c in cmds] == ["rollback", "set_lr"] and cmds[0].step == 5 and cmds[1].factor == 0.7
    assert Proposal.model_validate_json(p.model_dump_json()) == p
    assert isinstance(p.evidence["a"], int)
    with pytest.raises(ValidationError):
        p.kind = "set_lr"  # frozen


def test_window_keeps_the_current_lineage_after_a_rollback():
    # Steps 1..15, rollback to 10, steps 11..13 again: the abandoned 11..15 go.
    w = Window(steps=steps([1.0] * 15) + steps([2.0] * 3, start=11),
               evals=[ev(5), ev(10), ev(15), ev(12)],
               checkpoints=[ckpt(10, diagonality=0.1), ckpt(15), ckpt(10, diagonality=0.9)])
    assert [s.step for s in w.steps] == list(range(1, 14))
    assert [s.loss for s in w.steps[-3:]] == [2.0, 2.0, 2.0]
    assert [e.step for e in w.evals] == [5, 10, 12]
    assert [(c.step, c.diagonality) for c in w.checkpoints] == [(10, 0.9), (15, 0.95)]
    assert w.step == 13 and w.lr == 1e-3 and w.grad_clip == 1.0 and w.gate_pos_weight == 5.0


def test_window_drops_evaluations_and_checkpoints_of_an_abandoned_branch():
    # Steps 1..30 with an evaluation and a checkpoint at 20 and 30; then a rollback to
    # 20: steps 21..25 again. The evaluation and checkpoint of step 30 belong to the
    # abandoned branch even before the new branch reaches step 30.
    old = steps([1.0] * 30)
    new = [s.model_copy(update={"wall_time": s.wall_time + 100}) for s in steps([1.0] * 5, start=21)]
    w = Window(steps=old + new, evals=[ev(20), ev(30, 0.5)], checkpoints=[ckpt(20), ckpt(30)])
    assert [e.step for e in w.evals] == [20] and [c.step for c in w.checkpoints] == [20]
    later = ev(30, 0.9).model_copy(update={"wall_time": 10_000.0})
    w = Window(steps=old + new, evals=[ev(20), ev(30, 0.5), later])
    assert [(e.step, e.diagonality) for e in w.evals] == [(20, 0.95), (30, 0.9)]


def test_empty_window_knows_no_knobs():
    w = Window()
    assert w.step is None and w.lr is None and w.guided_attention_weight is None
    assert propose("stable", w) == []


def test_memory_is_immutable_and_json_friendly():
    m = Memory()
    p = Proposal(policy="loss_spike", kind="set_lr", reason="r", aim="loss", step=120,
                 actions=({"kind": "set_lr", "factor": 0.7},))
    m1 = m.record(p)
    assert m.count("loss_spike") == 0 and m1.count("loss_spike") == 1 and m1.last("loss_spike") == 120
    m2 = m1.record(p.model_copy(update={"step": 150}))
    assert m2.count("loss_spike") == 2 and m2.last("loss_spike") == 150
    assert m2.cleared("loss_spike").count("loss_spike") == 0 and m2.cleared("loss_spike").last("loss_spike") == 150
    assert m2.rolled_back(100).last("loss_spike") == 100 and m2.rolled_back(200).last("loss_spike") == 150
    m3 = m2.with_stable_diagonality(0.9).with_stable_diagonality(0.85).with_stable_diagonality(NAN)
    assert m3.best_stable_diagonality == 0.9
    assert Memory.model_validate_json(m3.model_dump_json()) == m3
    with pytest.raises(ValidationError):
        m3.best_stable_diagonality = 1.0


def test_config_forbids_unknown_keys_and_checks_consistency():
    with pytest.raises(ValidationError):
        PolicyConfig.model_validate({"loss_spike": {"ratoi": 2}})
    with pytest.raises(ValidationError):
        PolicyConfig.model_validate({"loss_spike": {"min_baseline_steps": 80, "baseline_steps": 50}})
    with pytest.raises(ValidationError):
        PolicyConfig.model_validate({"gate": {"factor": 0.5}})
    cfg = PolicyConfig.model_validate({"plateau": {"enabled": False}, "warmup_steps": 50})
    assert cfg.policy("plateau").enabled is False and cfg.warmup_steps == 50
    with pytest.raises(KeyError):
        cfg.policy("aligned")
    assert set(RULES) == set(URGENCY) and all(isinstance(cfg.policy(n).enabled, bool) for n in RULES)


def test_importing_policies_does_not_import_torch():
    code = ("import sys, policies, policies.rules, policies.signals\n"
            "bad = [m for m in ('torch', 'agent', 'numpy', 'mlflow', 'optuna') if m in sys.modules]\n"
            "assert not bad, bad\n")
    # From the repository root: an editable install made before policies/ existed does not map it.
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


# -- non-finite -----------------------------------------------------------------------
def _nan_window(nan_at=(1500,), ckpts=(), n: int = 600, first: int = 1001, **kw):
    losses = noisy(n, seed=1)
    for s in nan_at:
        losses[s - first] = NAN
    return Window(steps=steps(losses, start=first), checkpoints=list(ckpts), **kw)


def test_non_finite_rolls_back_to_the_newest_finite_checkpoint_before_it():
    w = _nan_window(ckpts=[ckpt(1000), ckpt(1200), ckpt(1400, val_loss=NAN), ckpt(1500), ckpt(1550)])
    [p] = run_rule("non_finite", "stable", w)
    assert p.kind == "rollback" and p.severity == "critical" and p.aim == "loss"
    assert p.actions == ({"kind": "rollback", "step": 1200, "skip_batches": CFG.rollback.skip_batches},)
    assert p.evidence["first_bad_step"] == 1500 and p.evidence["checkpoint_step"] == 1200
    assert p.evidence["discarded_steps"] == 1600 - 1200 and p.step == 1500
    assert "1500" in p.reason and "1200" in p.reason


def test_non_finite_skips_checkpoints_with_non_finite_weights():
    # The non-finite checkpoint at 1300 dates the trouble: roll back to before it.
    w = _nan_window(ckpts=[ckpt(1000), ckpt(1100), ckpt(1300, finite=False)])
    [p] = run_rule("non_finite", "aligning", w)
    assert p.actions[0]["step"] == 1100 and p.evidence["first_bad_step"] == 1300 and p.evidence["weights_bad"] == 1


def test_non_finite_quiet_on_a_healthy_run():
    assert run_rule("non_finite", "stable", _nan_window(nan_at=(), ckpts=[ckpt(1000)])) == []


def test_non_finite_repeat_also_cuts_the_lr():
    w = _nan_window(ckpts=[ckpt(1000)])
    [p] = run_rule("non_finite", "stable", w, Memory(fired={"non_finite": 1}, last_step={"non_finite": 1100}))
    assert p.actions == ({"kind": "rollback", "step": 1000, "skip_batches": 8},
                         {"kind": "set_lr", "factor": CFG.non_finite.repeat_lr_factor})


def test_non_finite_does_not_fire_twice_on_the_same_evidence():
    w = _nan_window(ckpts=[ckpt(1000)])
    [p] = run_rule("non_finite", "stable", w)
    m = Memory().record(p)
    assert run_rule("non_finite", "stable", w, m) == []
    w2 = _nan_window(nan_at=(1500, 1560), ckpts=[ckpt(1000)])
    [p2] = run_rule("non_finite", "stable", w2, m)
    assert p2.evidence["first_bad_step"] == 1560


def test_non_finite_without_a_good_checkpoint_never_rolls_back():
    # A single skipped update: the weights are fine, a human is told, the run goes on.
    [p] = run_rule("non_finite", "warmup", _nan_window(ckpts=[ckpt(1550), ckpt(1000, val_loss=NAN)]))
    assert p.kind == "ask_human" and p.actions == ()
    # Persistent: pause.
    [p] = run_rule("non_finite", "warmup", _nan_window(nan_at=(1500, 1501, 1502)))
    assert p.kind == "pause" and p.actions == ({"kind": "pause"},)
    # The weights themselves are non-finite (NaN validation loss): pause.
    w = Window(steps=steps(noisy(50)), evals=[ev(50, val_loss=NAN)])
    [p] = run_rule("non_finite", "warmup", w)
    assert p.kind == "pause" and p.evidence["weights_bad"] == 1
    for p in (run_rule("non_finite", "warmup", _nan_window()) + run_rule("non_finite", "warmup", w)):
        assert all(a["kind"] != "rollback" for a in p.actions)


def test_non_finite_tolerance_is_configurable():
    cfg = PolicyConfig.model_validate({"non_finite": {"min_bad_steps": 3}})
    assert run_rule("non_finite", "stable", _nan_window(ckpts=[ckpt(1000)]), cfg=cfg) == []
    [p] = run_rule("non_finite", "stable", _nan_window(nan_at=(1500, 1520, 1540), ckpts=[ckpt(1000)]), cfg=cfg)
    assert p.kind == "rollback"


# -- loss spike -----------------------------------------------------------------------
def _spike_window(n_spike: int = 3, level: float = 4.0, ckpts=(ckpt(1000), ckpt(1080)), n: int = 100,
                  start: int = 1001, memoryless_noise: int = 2, **kw):
    losses = noisy(n, seed=memoryless_noise) + [level] * n_spike
    return Window(steps=steps(losses, start=start, **kw), checkpoints=list(ckpts))


def test_loss_spike_rolls_back_before_the_spike_and_cuts_the_lr():
    w = _spike_window(ckpts=[ckpt(1000), ckpt(1080), ckpt(1100), ckpt(1101), ckpt(1102)])
    [p] = run_rule("loss_spike", "stable", w)
    # First spiking step is 1101: its loss came from the weights of step 1100.
    assert p.evidence["first_spike_step"] == 1101 and p.evidence["spike_steps"] == 3
    assert p.actions == ({"kind": "rollback", "step": 1100, "skip_batches": CFG.rollback.skip_batches},
                         {"kind": "set_lr", "factor": 0.7})
    assert p.kind == "rollback" and p.aim == "loss" and p.step == 1103
    assert p.evidence["ratio"] > 3 and 0.9 < p.evidence["baseline_loss"] < 1.1
    assert "1101" in p.reason and "1100" in p.reason


def test_loss_spike_finds_where_a_long_spike_began():
    w = _spike_window(n_spike=12, ckpts=[ckpt(1000), ckpt(1050), ckpt(1105)])
    [p] = run_rule("loss_spike", "stable", w)
    assert p.evidence["first_spike_step"] == 1101 and p.evidence["spike_steps"] == 12
    assert p.actions[0]["step"] == 1050


def test_loss_spike_needs_patience():
    assert run_rule("loss_spike", "stable", _spike_window(n_spike=2)) == []
    # A spike that is over is not acted on.
    losses = noisy(100) + [4.0] * 5 + noisy(5, seed=9)
    assert run_rule("loss_spike", "stable", Window(steps=steps(losses), checkpoints=[ckpt(50)])) == []


@pytest.mark.parametrize("seed", range(5))
def test_loss_spike_quiet_on_noisy_healthy_runs(seed):
    # Log-normal noise, a 5x outlier batch every 37 steps, a falling curve.
    losses = [noise * (3.0 * math.exp(-i / 300) + 0.5) for i, noise in
              enumerate(noisy(1000, sigma=0.25, seed=seed, outlier_every=37))]
    w = Window(steps=steps(losses), checkpoints=[ckpt(500)])
    assert run_rule("loss_spike", "warmup", w) == []
    assert not policies.is_diverging(w, CFG)


def test_loss_spike_ignores_a_guided_attention_weight_change():
    before = steps(noisy(100), ga=0.0, ga_loss=0.0)
    after = steps(noisy(10, seed=5), start=101, ga=4.0, ga_loss=0.6)  # total loss x ~3.4
    w = Window(steps=before + after, checkpoints=[ckpt(50)])
    assert w.steps[-1].loss > 3 * 1.0
    assert run_rule("loss_spike", "aligning", w) == []


def test_loss_spike_escalates_on_repeat():
    w = _spike_window()
    [p] = run_rule("loss_spike", "stable", w, Memory(fired={"loss_spike": 1}, last_step={"loss_spike": 900}))
    assert p.actions[1] == {"kind": "set_lr", "factor": CFG.loss_spike.repeat_lr_factor} == \
        {"kind": "set_lr", "factor": 0.5}
    assert p.evidence["repeat"] == 1


def test_loss_spike_fires_once_per_spike():
    w = _spike_window(n_spike=3)
    [p] = run_rule("loss_spike", "stable", w)
    longer = _spike_window(n_spike=6)
    assert run_rule("loss_spike", "stable", longer, Memory().record(p)) == []


def test_loss_spike_without_a_checkpoint_before_it_only_cuts_the_lr():
    w = _spike_window(ckpts=[ckpt(1101), ckpt(1000, finite=False)])
    [p] = run_rule("loss_spike", "stable", w)
    assert p.kind == "set_lr" and p.actions == ({"kind": "set_lr", "factor": 0.7},)
    assert "no finite checkpoint" in p.reason


def test_loss_spike_ignores_non_finite_steps():
    losses = noisy(100) + [NAN, 1.0, NAN]
    assert run_rule("loss_spike", "stable", Window(steps=steps(losses), checkpoints=[ckpt(50)])) == []


# -- gradient norm running away -------------------------------------------------------
def _grad_window(recent: float = 5.0, base: float = 0.5, clip: float = 1.0, n_recent: int = 20, n_base: int = 200):
    grads = noisy(n_base, level=base, seed=3) + noisy(n_recent, level=recent, seed=4)
    return Window(steps=steps([1.0] * len(grads), grads=grads, clip=clip))


def test_grad_runaway_tightens_the_clip_then_cuts_the_lr():
    w = _grad_window()
    [p] = run_rule("grad_runaway", "aligning", w)
    assert p.kind == "set_grad_clip" and p.actions == ({"kind": "set_grad_clip", "value": 0.5},)
    assert p.aim == "grad_norm" and p.evidence["grad_norm_median"] > 4 and p.evidence["grad_clip"] == 1.0
    [p2] = run_rule("grad_runaway", "aligning", w, Memory(fired={"grad_runaway": 1}))
    assert p2.kind == "set_lr" and p2.actions == ({"kind": "set_lr", "factor": 0.5},)


def test_grad_runaway_at_the_minimum_clip_cuts_the_lr():
    [p] = run_rule("grad_runaway", "stable", _grad_window(recent=1.0, base=0.05, clip=0.1))
    assert p.kind == "set_lr"


def test_grad_runaway_quiet_when_healthy_or_under_the_clip():
    grads = noisy(400, level=0.5, sigma=0.4, seed=5, outlier_every=15, outlier=20.0)
    assert run_rule("grad_runaway", "stable", Window(steps=steps([1.0] * 400, grads=grads))) == []
    assert run_rule("grad_runaway", "stable", _grad_window(recent=0.08, base=0.01)) == []  # all under clip 1.0


def test_grad_runaway_cooldown():
    w = _grad_window()
    assert run_rule("grad_runaway", "stable", w,
                    Memory(fired={"grad_runaway": 1}, last_step={"grad_runaway": 200})) == []
    assert run_rule("grad_runaway", "stable", w, Memory(fired={"grad_runaway": 1}, last_step={"grad_runaway": 100}))


# -- alignment stalled ----------------------------------------------------------------
STALLED = [0.30, 0.31, 0.30, 0.315]


def _aligning(diags=STALLED, ga: float = 0.0, hints=()):
    return Window(steps=steps(noisy(50), start=len(diags) * 1000 - 49, ga=ga),
                  evals=evals(diags, focus=0.3), data_hints=hints)


# The stall ladder as it is when guided attention is not turned on at the start.
WAIT = PolicyConfig.model_validate({"alignment_stall": {"guide_from_start": False}})


def test_guided_attention_goes_on_at_the_first_aligning_evaluation():
    w = Window(steps=steps(noisy(50), start=1000 - 49), evals=evals([0.30], focus=0.3))
    [p] = run_rule("alignment_stall", "aligning", w)
    assert p.actions == ({"kind": "set_guided_attention", "weight": 5.0},) and p.evidence["stage"] == "start"
    assert "not aligned after warm-up" in p.reason
    assert run_rule("alignment_stall", "aligning", w, cfg=WAIT) == []  # one evaluation: no stall to see yet
    assert run_rule("alignment_stall", "aligning", w, Memory(fired={"alignment_stall": 1})) == []  # once per episode
    on = Window(steps=steps(noisy(50), start=1000 - 49, ga=2.0), evals=w.evals)
    assert run_rule("alignment_stall", "aligning", on) == []  # already on: the stall ladder decides
    aligned = Window(steps=w.steps, evals=evals([0.95, 0.96], focus=0.7))
    assert run_rule("alignment_stall", "aligning", aligned) == []


def test_aligned_needs_inference_attention_that_reads():
    """Teacher forcing can show a clean diagonal while free-running inference skips words."""
    reads = [ev(1000, 0.97, speech=sp(read=8)), ev(2000, 0.98, speech=sp(read=9))]
    skips = [ev(1000, 0.97, speech=sp(read=2)), ev(2000, 0.98, speech=sp(read=3))]
    assert policies.is_aligned(reads, CFG) and not policies.is_aligned(skips, CFG)
    assert policies.is_aligned(evals([0.97, 0.98]), CFG)  # no free-running figures: teacher-forced only


def test_more_text_read_free_running_is_progress_not_a_stall():
    flat = [0.97, 0.975, 0.97, 0.972]  # teacher-forced: flat and on the diagonal, focus flat too
    reading = [ev(1000 * (i + 1), d, focus=0.5, speech=sp(read=r)) for i, (d, r) in enumerate(zip(flat, (1, 2, 4, 6)))]
    stuck = [ev(1000 * (i + 1), d, focus=0.5, speech=sp(read=1)) for i, d in enumerate(flat)]
    st = steps(noisy(50), start=4000 - 49, ga=5.0)
    assert run_rule("alignment_stall", "aligning", Window(steps=st, evals=reading)) == []
    [p] = run_rule("alignment_stall", "aligning", Window(steps=st, evals=stuck))
    assert p.kind == "set_guided_attention"


def test_stall_raises_guided_attention_first():
    [p] = run_rule("alignment_stall", "aligning", _aligning(), cfg=WAIT)
    assert p.kind == "set_guided_attention" and p.actions == ({"kind": "set_guided_attention", "weight": 5.0},)
    assert p.aim == "diagonality" and p.evidence["gain"] == pytest.approx(0.015)
    assert p.evidence["diagonality_before"] == 0.30 and p.evidence["diagonality_best"] == 0.315
    [p] = run_rule("alignment_stall", "aligning", _aligning(ga=2.0))
    assert p.actions == ({"kind": "set_guided_attention", "weight": 4.0},)
    assert "0.300" in p.reason and "0.315" in p.reason


def test_stall_then_cuts_the_lr_then_asks_a_human_naming_the_data_suspects():
    [p] = run_rule("alignment_stall", "aligning", _aligning(ga=1.0), Memory(fired={"alignment_stall": 1}))
    assert p.kind == "set_lr" and p.actions == ({"kind": "set_lr", "factor": 0.5},)
    hint = "12% of clips have > 0.5 s leading silence"
    [p] = run_rule("alignment_stall", "aligning", _aligning(ga=1.0, hints=(hint, "3 clips longer than 14 s")),
                   Memory(fired={"alignment_stall": 2}))
    assert p.kind == "ask_human" and p.actions == () and hint in p.reason and "14 s" in p.reason
    [p] = run_rule("alignment_stall", "aligning", _aligning(ga=1.0), Memory(fired={"alignment_stall": 5}))
    assert p.kind == "ask_human" and "silence" in p.reason


def test_stall_at_the_guided_attention_cap_goes_to_the_lr():
    [p] = run_rule("alignment_stall", "aligning", _aligning(ga=20.0))
    assert p.kind == "set_lr"


def test_stall_judges_diagonality_while_off_the_diagonal_even_if_focus_rises():
    # Unaligned attention sharpening a little (focus 0.03 -> 0.15) is not alignment.
    e = [ev(1000 * (i + 1), d, focus=f) for i, (d, f) in enumerate(zip([0.356, 0.363, 0.342, 0.305],
                                                                        [0.025, 0.030, 0.050, 0.145]))]
    [p] = run_rule("alignment_stall", "aligning", Window(steps=steps(noisy(50), start=3951), evals=e))
    assert p.kind == "set_guided_attention"


def test_stall_quiet_while_focus_sharpens_on_a_flat_diagonal():
    # Diagonality saturated near 0.97 while focus climbs: aligning, not stalled.
    e = [ev(1000 * (i + 1), d, focus=f) for i, (d, f) in enumerate(zip([0.965, 0.97, 0.975, 0.979],
                                                                        [0.30, 0.33, 0.37, 0.41]))]
    w = Window(steps=steps(noisy(50), start=3951, ga=5.0), evals=e)
    assert run_rule("alignment_stall", "aligning", w) == []
    flat = [ev(1000 * (i + 1), d, focus=0.30) for i, d in enumerate([0.965, 0.97, 0.975, 0.979])]
    [p] = run_rule("alignment_stall", "aligning", Window(steps=steps(noisy(50), start=3951, ga=5.0), evals=flat))
    assert p.kind == "set_guided_attention" and "focus from 0.300 to at best 0.300" in p.reason


def test_stall_quiet_while_improving_noisy_or_not():
    assert run_rule("alignment_stall", "aligning", _aligning([0.3, 0.33, 0.36, 0.40]), cfg=WAIT) == []
    assert run_rule("alignment_stall", "aligning", _aligning([0.3, 0.28, 0.36, 0.33]), cfg=WAIT) == []  # gained 0.06
    assert run_rule("alignment_stall", "aligning", _aligning([0.3, 0.3, 0.3]), cfg=WAIT) == []  # too few evaluations


def test_stall_waits_for_fresh_evaluations_after_acting():
    w = _aligning()
    assert run_rule("alignment_stall", "aligning", w, Memory(last_step={"alignment_stall": 2000}), WAIT) == []
    w2 = Window(steps=w.steps, evals=evals(STALLED + [0.31, 0.30, 0.32], focus=0.3))
    [p] = run_rule("alignment_stall", "aligning", w2, Memory(fired={"alignment_stall": 1},
                                                             last_step={"alignment_stall": 4000}))
    assert p.kind == "set_lr"


def test_stall_only_while_aligning():
    w = _aligning()
    for phase in Phase:
        got = only(propose(phase, w), "alignment_stall")
        assert bool(got) == (phase is Phase.ALIGNING), phase


# -- alignment reached: guided attention decays ---------------------------------------
def _stable(diags, ga: float = 1.0, focus: float = 0.7, ckpts=()):
    return Window(steps=steps(noisy(50), start=len(diags) * 1000 - 49, ga=ga, ga_loss=0.05),
                  evals=evals(diags, focus=focus), checkpoints=list(ckpts))


def test_decay_halves_guided_attention_while_diagonality_holds():
    [p] = run_rule("attention_decay", "stable", _stable([0.91, 0.93, 0.94], ga=1.0))
    assert p.kind == "set_guided_attention" and p.actions == ({"kind": "set_guided_attention", "weight": 0.5},)
    assert p.severity == "low" and p.step == 3000
    [p] = run_rule("attention_decay", "recovering", _stable([0.91, 0.93, 0.94], ga=0.08))
    assert p.actions == ({"kind": "set_guided_attention", "weight": 0.0},)  # 0.04 < 0.05 -> 0


def test_decay_holds_when_diagonality_slips_or_nothing_to_decay():
    assert run_rule("attention_decay", "stable", _stable([0.95, 0.96, 0.92])) == []  # 0.04 below best
    assert run_rule("attention_decay", "stable", _stable([0.93, 0.94]),
                    Memory(best_stable_diagonality=0.98)) == []
    assert run_rule("attention_decay", "stable", _stable([0.93, 0.94], focus=0.4)) == []  # not focused
    assert run_rule("attention_decay", "stable", _stable([0.93, 0.94], ga=0.0)) == []
    # One decay per evaluation.
    assert run_rule("attention_decay", "stable", _stable([0.93, 0.94]),
                    Memory(last_step={"attention_decay": 2000})) == []


def test_decay_waits_after_a_collapse():
    w = _stable([0.95, 0.70, 0.93, 0.94, 0.95])
    m = Memory(last_step={"attention_collapse": 4000}, best_stable_diagonality=0.95)
    assert run_rule("attention_decay", "stable", w, m) == []  # one holding evaluation after it
    w = _stable([0.95, 0.70, 0.93, 0.94, 0.95, 0.95])
    [p] = run_rule("attention_decay", "stable", w, Memory(last_step={"attention_collapse": 4000},
                                                         best_stable_diagonality=0.95))
    assert p.actions[0]["weight"] == 0.5


def test_decay_can_wait_until_the_model_speaks():
    speaking = [ev(1000, 0.97, speech=sp(spoken=5)), ev(2000, 0.97, speech=sp(spoken=6))]
    silent = [ev(1000, 0.97, speech=sp(spoken=1)), ev(2000, 0.97, speech=sp(spoken=2))]
    st = steps(noisy(20), start=2000 - 19, ga=5.0)
    wait = PolicyConfig.model_validate({"attention_decay": {"min_speech_score": 0.5}})
    [p] = run_rule("attention_decay", "stable", Window(steps=st, evals=speaking), cfg=wait)
    assert p.actions == ({"kind": "set_guided_attention", "weight": 2.5},)
    assert "6 of 8 utterances are spoken" in p.reason
    assert run_rule("attention_decay", "stable", Window(steps=st, evals=silent), cfg=wait) == []
    assert run_rule("attention_decay", "stable", Window(steps=st, evals=silent))  # default: as soon as aligned


def test_decay_not_while_aligning():
    assert only(propose("aligning", _stable([0.91, 0.93, 0.94])), "attention_decay") == []


# -- attention collapse ---------------------------------------------------------------
def test_collapse_restores_guided_attention_at_once():
    m = Memory(best_stable_diagonality=0.95)
    [p] = run_rule("attention_collapse", "stable", _stable([0.95, 0.94, 0.75], ga=0.0), m)
    assert p.kind == "set_guided_attention" and p.actions == ({"kind": "set_guided_attention", "weight": 1.0},)
    assert p.evidence["drop"] == pytest.approx(0.20) and p.evidence["first_collapsed_step"] == 3000
    assert p.severity == "high"
    # Guided attention already at least the restore weight: nothing to do yet.
    assert run_rule("attention_collapse", "stable", _stable([0.95, 0.94, 0.75], ga=2.0), m) == []


def test_collapse_that_persists_rolls_back_to_a_checkpoint_with_good_attention():
    # Collapsed since the evaluation of step 3000; the restore was proposed then.
    w = _stable([0.95, 0.94, 0.60, 0.75], ga=0.0,
                ckpts=[ckpt(1000, diagonality=0.95), ckpt(2000, diagonality=0.5), ckpt(2500, diagonality=0.93),
                       ckpt(3000, diagonality=0.60), ckpt(4000, diagonality=0.75)])
    m = Memory(best_stable_diagonality=0.95, fired={"attention_collapse": 1}, last_step={"attention_collapse": 3000})
    [p] = run_rule("attention_collapse", "stable", w, m)
    assert p.kind == "rollback"
    # 3000 and 4000 are inside the collapse, 2000 had poor attention: 2500 it is.
    assert p.actions == ({"kind": "rollback", "step": 2500, "skip_batches": 8},
                         {"kind": "set_guided_attention", "weight": 1.0})
    assert p.evidence["collapsed_evals"] == 2 and p.evidence["checkpoint_step"] == 2500
    # Once proposed, not again for the same collapse.
    assert run_rule("attention_collapse", "stable", w, m.record(p)) == []


def test_collapse_rollback_also_after_falling_back_to_aligning():
    w = _stable([0.95, 0.94, 0.60, 0.70], ckpts=[ckpt(2000, diagonality=0.94)])
    [p] = run_rule("attention_collapse", "aligning", w, Memory(best_stable_diagonality=0.95))
    assert p.kind == "rollback" and p.actions[0]["step"] == 2000
    # A run that was never stable has nothing to collapse from.
    assert run_rule("attention_collapse", "aligning", w, Memory()) == []


def test_collapse_without_a_good_checkpoint_asks_a_human():
    w = _stable([0.95, 0.94, 0.60, 0.70], ckpts=[ckpt(2000, diagonality=0.5), ckpt(1000, finite=False)])
    [p] = run_rule("attention_collapse", "stable", w, Memory(best_stable_diagonality=0.95))
    assert p.kind == "ask_human" and p.actions == ()


def test_collapse_quiet_on_small_wobbles():
    w = _stable([0.95, 0.90, 0.93, 0.86, 0.92])
    assert run_rule("attention_collapse", "stable", w, Memory(best_stable_diagonality=0.96)) == []
    assert not policies.is_collapsed(w.evals, 0.96, CFG)
    assert policies.is_collapsed(evals([0.95, 0.7]), 0.95, CFG)


# -- gate -----------------------------------------------------------------------------
def _gate(acc=(0.6, 0.62, 0.65), speech=(None, None, None), pw: float = 5.0):
    es = [ev(1000 * (i + 1), 0.5, gate_accuracy=a, speech=s) for i, (a, s) in enumerate(zip(acc, speech))]
    return Window(steps=steps(noisy(20), start=len(es) * 1000 - 19, gate_pw=pw), evals=es)


def test_gate_without_free_running_figures_raises_the_positive_weight_on_low_accuracy():
    [p] = run_rule("gate", "aligning", _gate())
    assert p.kind == "set_gate_pos_weight" and p.actions == ({"kind": "set_gate_pos_weight", "value": 10.0},)
    assert p.aim == "gate_accuracy" and p.evidence["gate_accuracy"] == 0.65
    [p] = run_rule("gate", "stable", _gate(pw=20.0))
    assert p.actions == ({"kind": "set_gate_pos_weight", "value": 32.0},)  # capped
    [p] = run_rule("gate", "stable", _gate(pw=32.0))
    assert p.kind == "ask_human" and p.actions == ()


def test_gate_that_never_stops_gets_a_higher_positive_weight():
    never = [sp(runaway=7, missed_end=6)] * 3
    [p] = run_rule("gate", "stable", _gate(acc=(0.9, 0.9, 0.9), speech=never))
    assert p.actions == ({"kind": "set_gate_pos_weight", "value": 10.0},)
    assert p.evidence["trouble"] == "never_stops" and p.aim == "stop_in_range"
    assert "missed the end" in p.reason and "raising" in p.reason


def test_gate_that_stops_early_gets_a_lower_positive_weight():
    """The demo's failure: the gate fired at the first decoder step. Today's teacher-forced
    accuracy and a stop rate that counts any stop as good would raise the weight (worse)."""
    early = [sp(premature=9)] * 3
    [p] = run_rule("gate", "aligning", _gate(acc=(0.5, 0.5, 0.5), speech=early))
    assert p.actions == ({"kind": "set_gate_pos_weight", "value": 2.5},)
    assert p.evidence["trouble"] == "stops_early" and "lowering" in p.reason
    [p] = run_rule("gate", "aligning", _gate(speech=early, pw=1.5))
    assert p.actions == ({"kind": "set_gate_pos_weight", "value": 1.0},)  # not below the floor
    [p] = run_rule("gate", "aligning", _gate(speech=early, pw=1.0))
    assert p.kind == "ask_human" and "floor" in p.reason


def test_gate_quiet_when_the_attention_never_reached_the_end():
    """A runaway whose attention never got to the end of the text is the alignment's
    trouble: more gate weight would only cut it short."""
    lost = [sp(runaway=9, missed_end=0, read=0)] * 3
    assert run_rule("gate", "aligning", _gate(speech=lost)) == []


def test_gate_quiet_when_learning_or_too_early():
    fine = [sp(), sp(), sp()]
    assert run_rule("gate", "stable", _gate(speech=fine)) == []  # low accuracy, but it stops in range free-running
    mixed = [sp(premature=9), sp(runaway=7, missed_end=7), sp(premature=9)]
    assert run_rule("gate", "stable", _gate(speech=mixed)) == []  # no single trouble three times running
    assert run_rule("gate", "stable", _gate(acc=(0.6, 0.85, 0.6))) == []
    assert run_rule("gate", "stable", _gate(acc=(0.6, 0.6))) == []
    assert run_rule("gate", "stable", _gate(), Memory(last_step={"gate": 1000})) == []  # wait for 3 new ones
    assert only(propose("warmup", _gate()), "gate") == [] and only(propose("aligning", _gate()), "gate")


# -- overfitting ----------------------------------------------------------------------
def _overfit(vals=(0.50, 0.51, 0.52, 0.53), train_from: float = 0.8, train_to: float = 0.6):
    n = len(vals)
    # Step records across the whole span, falling from train_from to train_to.
    span = range(1, n * 1000 + 1, 10)
    ls = [train_from + (train_to - train_from) * (s / (n * 1000)) for s in span]
    st = [step(s, loss=loss) for s, loss in zip(span, ls)]
    return Window(steps=st, evals=evals(vals=list(vals)),
                  checkpoints=[ckpt(1000, val_loss=0.5), ckpt(2000, val_loss=0.51)])


def test_overfit_cuts_the_lr_then_proposes_an_early_stop():
    [p] = run_rule("overfit", "stable", _overfit())
    assert p.kind == "set_lr" and p.actions == ({"kind": "set_lr", "factor": 0.5},) and p.aim == "val_loss"
    assert p.evidence["metric"] == "val_loss" and p.evidence["from"] == 0.5 and p.evidence["to"] == 0.53
    assert p.evidence["train_loss"] < p.evidence["train_loss_from"]
    [p] = run_rule("overfit", "stable", _overfit(), Memory(fired={"overfit": 1}))
    assert p.kind == "early_stop" and p.actions == ({"kind": "stop"},) and "best.pt" in p.reason


def _speech_overfit(mcds=(2.0, 2.1, 2.2, 2.3), scores=(4, 4, 4, 3), vals=(0.50, 0.49, 0.48, 0.47)):
    w = _overfit(vals=vals)
    es = [ev(e.step, val_loss=e.val_loss, speech=sp(mcd=m, spoken=k)) for e, m, k in zip(w.evals, mcds, scores)]
    return Window(steps=w.steps, evals=es)


def test_overfit_with_free_running_figures_watches_mcd_not_the_validation_loss():
    """The teacher-forced validation loss keeps falling while what the model says gets
    worse: the rule follows the speech."""
    [p] = run_rule("overfit", "stable", _speech_overfit())
    assert p.evidence["metric"] == "mcd_dtw" and p.aim == "mcd_dtw" and "MCD-DTW" in p.reason
    assert p.evidence["from"] == 2.0 and p.evidence["to"] == 2.3
    # A falling MCD-DTW with a rising validation loss is not overfitting any more.
    assert run_rule("overfit", "stable", _speech_overfit(mcds=(2.3, 2.2, 2.1, 2.0), vals=(0.5, 0.51, 0.52, 0.53))) == []
    # More utterances spoken: the model is getting better at speaking, whatever MCD-DTW does.
    assert run_rule("overfit", "stable", _speech_overfit(scores=(3, 3, 4, 5))) == []
    assert run_rule("overfit", "stable", _speech_overfit(mcds=(2.0, 2.01, 2.02, 2.03))) == []  # < 3 %


def test_overfit_quiet_unless_val_rises_steadily_while_train_falls():
    assert run_rule("overfit", "stable", _overfit(train_from=0.6, train_to=0.8)) == []  # both rise: diverging
    assert run_rule("overfit", "stable", _overfit(vals=(0.50, 0.52, 0.51, 0.53))) == []  # noisy
    assert run_rule("overfit", "stable", _overfit(vals=(0.500, 0.501, 0.502, 0.503))) == []  # < 1 %
    assert run_rule("overfit", "stable", _overfit(vals=(0.50, 0.49, 0.48, 0.47))) == []
    w = _overfit()
    assert run_rule("overfit", "stable", Window(evals=w.evals)) == []  # no training loss to compare
    assert only(propose("aligning", w), "overfit") == []


# -- plateau --------------------------------------------------------------------------
PLATEAU = [1.0, 0.9, 0.8, 0.799, 0.798, 0.7985, 0.797, 0.7975]


def test_plateau_proposes_tuning():
    w = Window(steps=steps(noisy(20), start=len(PLATEAU) * 1000 - 19), evals=evals(vals=PLATEAU))
    [p] = run_rule("plateau", "stable", w)
    assert p.kind == "tune" and p.actions == () and p.severity == "low"
    assert p.evidence["improvement"] == pytest.approx((0.8 - 0.797) / 0.8)
    assert policies.is_plateau(w.evals, CFG)
    assert run_rule("plateau", "stable", w, Memory(last_step={"plateau": 5000})) == []
    assert only(propose("aligning", w), "plateau") == []


def _speech_plateau(mcds, scores, vals=None):
    vals = vals or [1.0 - 0.05 * i for i in range(len(mcds))]  # teacher-forced loss still falling
    es = [ev(1000 * (i + 1), val_loss=v, speech=sp(mcd=m, spoken=k))
          for i, (m, k, v) in enumerate(zip(mcds, scores, vals))]
    return Window(steps=steps(noisy(20), start=len(es) * 1000 - 19), evals=es)


def test_plateau_with_free_running_figures_follows_speech():
    flat = _speech_plateau([3.0, 2.5, 2.2, 2.21, 2.2, 2.205, 2.199, 2.2], [0, 1, 2, 2, 2, 2, 2, 2])
    [p] = run_rule("plateau", "stable", flat)  # although the validation loss still falls 5 % an evaluation
    assert p.evidence["metric"] == "mcd_dtw" and p.aim == "mcd_dtw" and "spoken" in p.reason
    # One more utterance spoken in the window is progress, however flat MCD-DTW is.
    speaking = _speech_plateau([3.0, 2.5, 2.2, 2.21, 2.2, 2.205, 2.199, 2.2], [0, 1, 2, 2, 2, 3, 2, 2])
    assert run_rule("plateau", "stable", speaking) == []
    improving = _speech_plateau([3.0, 2.8, 2.6, 2.5, 2.4, 2.3, 2.2, 2.1], [0] * 8)
    assert run_rule("plateau", "stable", improving) == []


def test_plateau_ignores_the_mcd_of_runaways():
    """Runaways babble past their text and DTW picks whichever frames fit: their MCD-DTW
    (4.5 dB here) must not become the 'earlier best' a healthy run is measured against
    (tiny-cpu's first real sentences scored 5.9 dB, then improved)."""
    runaway = [ev(1000 * (i + 1), speech=sp(mcd=4.5, runaway=10, missed_end=0)) for i in range(3)]
    healthy = [ev(1000 * (i + 4), speech=sp(mcd=m)) for i, m in enumerate([5.9, 5.8, 5.4, 5.3, 5.0])]
    w = Window(steps=steps(noisy(20), start=8000 - 19), evals=runaway + healthy)
    assert run_rule("plateau", "stable", w) == []
    assert not policies.is_plateau(runaway + healthy[:2], CFG)


def test_plateau_quiet_while_improving_or_overfitting():
    improving = [1.0, 0.9, 0.8, 0.78, 0.77, 0.76, 0.75, 0.74]
    assert run_rule("plateau", "stable", Window(evals=evals(vals=improving))) == []
    assert run_rule("plateau", "stable", Window(evals=evals(vals=PLATEAU[:5]))) == []  # too few
    rising = _overfit(vals=(0.5, 0.49, 0.5, 0.49, 0.5, 0.51, 0.52, 0.53))
    assert run_rule("overfit", "stable", rising) and run_rule("plateau", "stable", rising) == []
