"""``policies.propose``: the phase table, urgency order, one proposal per knob, and a
sweep over many scenarios checking that every proposal is well formed."""

from __future__ import annotations

import itertools
import math

import pytest

import policies
from policies import AIMS, KINDS, Memory, Phase, PolicyConfig, Proposal, Window, propose
from policies.signals import find_spike, is_stalled
from policies.table import ACTIVE, URGENCY, active, markdown
from trainer.control import parse_command

from test_policies import (
    NAN,
    PLATEAU,
    STALLED,
    _aligning,
    _gate,
    _grad_window,
    _nan_window,
    _overfit,
    _spike_window,
    _stable,
    ckpt,
    ev,
    evals,
    noisy,
    steps,
)

CFG = PolicyConfig()


def _trouble_everywhere() -> Window:
    """A window in which every policy has something to say."""
    n = 300
    grads = noisy(n - 20, level=0.5, seed=3) + noisy(20, level=5.0, seed=4)
    losses = noisy(n - 3, seed=2) + [4.0, 4.0, 4.0]
    losses[n - 10] = NAN
    st = steps(losses, start=7701, grads=grads, ga=1.0, gate_pw=5.0)
    diags = [0.30, 0.31, 0.30, 0.315, 0.95, 0.96, 0.96, 0.70]
    vals = PLATEAU
    es = [ev(1000 * (i + 1), d, val_loss=v, gate_accuracy=0.6, focus=0.3 if d < 0.9 else 0.7)
          for i, (d, v) in enumerate(zip(diags, vals))]
    return Window(steps=st, evals=es, checkpoints=[ckpt(4000), ckpt(5000, diagonality=0.96), ckpt(7600)],
                  data_hints=("long clips",))


def test_phase_table():
    guards = {"non_finite", "loss_spike", "grad_runaway"}
    assert ACTIVE[Phase.WARMUP] == guards == ACTIVE[Phase.DIVERGING]
    assert ACTIVE[Phase.TUNING] == {"non_finite"}
    assert ACTIVE[Phase.ALIGNING] == guards | {"alignment_stall", "gate", "attention_collapse"}
    assert ACTIVE[Phase.STABLE] == guards | {"attention_collapse", "attention_decay", "gate", "overfit", "plateau"}
    assert ACTIVE[Phase.RECOVERING] == guards | {"attention_decay"}
    assert set(ACTIVE) == set(Phase) and all(set(v) <= set(URGENCY) for v in ACTIVE.values())
    assert active("stable")[0] == "non_finite" and active(Phase.STABLE)[-1] == "plateau"
    assert "| non_finite | x | x | x | x | x | x |" in markdown()


@pytest.mark.parametrize("phase", list(Phase))
def test_propose_runs_only_the_phase_policies(phase):
    w = _trouble_everywhere()
    for memory in (Memory(), Memory(best_stable_diagonality=0.96)):
        got = propose(phase, w, memory)
        assert got, phase
        assert {p.policy for p in got} <= ACTIVE[phase]
        assert got[0].policy == "non_finite"


def test_propose_orders_by_urgency_and_keeps_one_proposal_per_knob():
    w = _trouble_everywhere()
    m = Memory(best_stable_diagonality=0.96)
    raw = [p for name in active("stable") for p in policies.RULES[name](Phase.STABLE, w, m, CFG)]
    assert {p.policy for p in raw} >= {"non_finite", "loss_spike", "grad_runaway", "gate", "plateau"}
    got = propose("stable", w, m)
    # The non-finite rollback goes first; every other commanding proposal waits for the
    # next round (a rollback restores the knobs they would turn); pure asks remain.
    assert got[0].policy == "non_finite" and got[0].kind == "rollback"
    assert all(p.actions == () for p in got[1:])
    assert [p.policy for p in got[1:]] == ["plateau"]
    # Without the NaN: the spike's rollback leads.
    w2 = Window(steps=[s for s in w.steps if s.finite], evals=w.evals, checkpoints=w.checkpoints)
    got = propose("stable", w2, m)
    assert got[0].policy == "loss_spike" and got[0].kind == "rollback"


def test_propose_keeps_compatible_proposals_and_drops_same_knob_ones():
    def p(policy, severity, *actions):
        return Proposal(policy=policy, kind="set_lr", reason="r", aim="loss", step=1, severity=severity,
                        actions=actions)

    lr = {"kind": "set_lr", "factor": 0.5}
    clip = {"kind": "set_grad_clip", "value": 0.5}
    ga = {"kind": "set_guided_attention", "weight": 1.0}
    got = policies._resolve([p("plateau", "low"), p("alignment_stall", "medium", ga), p("grad_runaway", "high", clip),
                             p("overfit", "medium", lr), p("gate", "medium", lr), p("attention_decay", "low", ga)])
    # Same severity: the table's urgency decides (gate before overfit); decay waits for stall's knob.
    assert [x.policy for x in got] == ["grad_runaway", "alignment_stall", "gate", "plateau"]


def test_propose_skips_disabled_policies_and_accepts_strings():
    w = _nan_window(ckpts=[ckpt(1000)])
    assert propose("stable", w)[0].policy == "non_finite"
    cfg = PolicyConfig.model_validate({"non_finite": {"enabled": False}})
    assert all(p.policy != "non_finite" for p in propose("stable", w, Memory(), cfg))
    with pytest.raises(ValueError):
        propose("sleeping", w)


def _scenarios():
    ws = [
        _trouble_everywhere(),
        _nan_window(ckpts=[ckpt(1000)]), _nan_window(), _nan_window(nan_at=(1500, 1501, 1502)),
        _spike_window(), _spike_window(ckpts=[]), _spike_window(n_spike=12),
        _grad_window(), _grad_window(recent=1.0, base=0.05, clip=0.1),
        _aligning(), _aligning(ga=2.0, hints=("12% of clips have > 0.5 s leading silence",)), _aligning(ga=8.0),
        _stable([0.91, 0.93, 0.94]), _stable([0.91, 0.93, 0.94], ga=0.08),
        _stable([0.95, 0.94, 0.75], ga=0.0), _stable([0.95, 0.94, 0.60, 0.75], ckpts=[ckpt(2000, diagonality=0.94)]),
        _stable([0.95, 0.94, 0.60, 0.75]),
        _gate(), _gate(pw=20.0), _gate(pw=32.0),
        _overfit(), Window(steps=steps(noisy(20), start=len(PLATEAU) * 1000 - 19), evals=evals(vals=PLATEAU)),
    ]
    memories = [Memory(), Memory(best_stable_diagonality=0.95)] + [
        Memory(fired={name: k for name in URGENCY}, best_stable_diagonality=0.95) for k in (1, 2, 3)]
    for w, phase, m in itertools.product(ws, Phase, memories):
        yield phase, w, m


def test_every_proposal_is_well_formed_and_its_actions_parse():
    seen_kinds, seen_policies, n = set(), set(), 0
    for phase, w, m in _scenarios():
        for name in policies.table.active(phase):
            for p in policies.RULES[name](phase, w, m, CFG):
                n += 1
                seen_kinds.add(p.kind)
                seen_policies.add(p.policy)
                assert p.kind in KINDS and p.aim in AIMS and p.policy == name
                for action in p.actions:
                    cmd = parse_command(action)
                    assert cmd.kind == action["kind"]
                    parse_command(cmd.model_dump_json())  # survives the journal
                if p.kind not in ("ask_human", "tune"):
                    assert p.actions, p
                if any(a["kind"] == "rollback" for a in p.actions):
                    assert p.actions[0]["kind"] == "rollback"  # knobs set after the restore
                    good = {c.step for c in w.checkpoints if policies.checkpoints.is_good(c)}
                    assert p.actions[0]["step"] in good and p.actions[0]["step"] < p.step
                assert p.reason.endswith(".") and any(ch.isdigit() for ch in p.reason)
                assert p.evidence and all(isinstance(v, (int, float, str)) for v in p.evidence.values())
                assert Proposal.model_validate_json(p.model_dump_json()) == p
    assert seen_policies == set(URGENCY)
    assert seen_kinds == set(KINDS)
    assert n > 100


def test_no_rollback_without_a_good_checkpoint_anywhere():
    """A rule that would roll back answers otherwise when no checkpoint is good: the
    non-finite guard pauses or asks, the spike guard only cuts the LR, a collapse asks."""
    bad = [ckpt(10, finite=False), ckpt(20, val_loss=NAN)]
    alternatives = {"non_finite": {"pause", "ask_human"}, "loss_spike": {"set_lr"}, "attention_collapse": {"ask_human"}}
    answered: set[str] = set()
    for phase, w, m in _scenarios():
        without = Window(steps=w.steps, evals=w.evals, checkpoints=bad, data_hints=w.data_hints)
        got = propose(phase, without, m)
        for p in got:
            assert all(a["kind"] != "rollback" for a in p.actions), p
        for name in active(phase):
            if not any(p.kind == "rollback" for p in policies.RULES[name](phase, w, m, CFG)):
                continue
            instead = policies.RULES[name](phase, without, m, CFG)
            assert [p.kind for p in instead] and {p.kind for p in instead} <= alternatives[name], (name, instead)
            assert got, (phase, name)  # and propose() passes something on
            answered.add(name)
    assert answered == set(alternatives)


@pytest.mark.parametrize("seed", range(4))
def test_a_healthy_noisy_run_gets_no_proposals(seed):
    """A run that aligns and improves, with noise and outlier batches, in every phase."""
    n = 3000
    losses = [noise * (2.0 * math.exp(-i / 800) + 0.4) for i, noise in
              enumerate(noisy(n, sigma=0.2, seed=seed, outlier_every=53, outlier=4.0))]
    grads = noisy(n, level=0.6, sigma=0.4, seed=seed + 10, outlier_every=41, outlier=15.0)
    st = steps(losses, grads=grads, ga=0.0)
    es = [ev(300 * k, d, val_loss=v, focus=0.7) for k, (d, v) in
          enumerate(zip([0.3, 0.5, 0.8, 0.92, 0.94, 0.95, 0.95, 0.96, 0.955, 0.96],
                        [1.2, 1.0, 0.85, 0.75, 0.68, 0.63, 0.60, 0.58, 0.565, 0.555]), start=1)]
    w = Window(steps=st, evals=es, checkpoints=[ckpt(300 * k) for k in range(1, 11)])
    for phase in (Phase.WARMUP, Phase.STABLE, Phase.DIVERGING, Phase.RECOVERING, Phase.TUNING):
        assert propose(phase, w, Memory(best_stable_diagonality=0.96)) == [], phase
    assert not policies.is_diverging(w, CFG) and policies.is_healthy(w, CFG)
    assert policies.is_aligned(w.evals, CFG) and not policies.is_plateau(w.evals, CFG)


# -- phase signals --------------------------------------------------------------------
def test_warmup_done():
    cfg = PolicyConfig(warmup_steps=50)
    assert not policies.warmup_done(49, cfg) and policies.warmup_done(50, cfg)


def test_is_aligned_needs_k_consecutive_evaluations():
    assert not policies.is_aligned(evals([0.5, 0.95]), CFG)
    assert policies.is_aligned(evals([0.5, 0.92, 0.95]), CFG)
    assert not policies.is_aligned(evals([0.92, 0.95], focus=0.4), CFG)
    assert not policies.is_aligned(evals([0.95, 0.89]), CFG)
    assert not policies.is_aligned([], CFG)


def test_is_diverging_and_is_healthy():
    assert policies.is_diverging(_nan_window(), CFG)
    assert policies.is_diverging(_spike_window(), CFG)
    assert policies.is_diverging(_grad_window(), CFG)
    w = Window(steps=steps(noisy(30)), evals=evals(vals=[0.5, 0.45, 0.8]))  # validation loss ran away
    assert policies.is_diverging(w, CFG) and not policies.is_healthy(w, CFG)
    w = Window(steps=steps(noisy(30)), evals=evals(vals=[0.5, 0.45, 0.6]))
    assert not policies.is_diverging(w, CFG) and policies.is_healthy(w, CFG)
    assert not policies.is_healthy(Window(), CFG)
    # After the rollback the trainer's step goes back; the bad records drop out.
    healed = Window(steps=list(_nan_window().steps) + steps(noisy(20, seed=7), start=1401))
    assert not policies.is_diverging(healed, CFG) and healed.step == 1420


def test_is_stalled_and_is_plateau():
    assert is_stalled(evals(STALLED), CFG)
    assert not is_stalled(evals([0.3, 0.35, 0.4, 0.45]), CFG)
    assert not is_stalled(evals([0.95, 0.95, 0.95, 0.95]), CFG)  # flat but aligned
    assert policies.is_plateau(evals(vals=PLATEAU), CFG)
    assert not policies.is_plateau(evals(vals=PLATEAU[:4]), CFG)


def test_memory_rolled_back_lets_policies_see_the_new_branch():
    # A spike at 1101 was answered by a rollback to 1000; the new branch spikes at 1051.
    first = _spike_window()
    [p] = policies.RULES["loss_spike"](Phase.STABLE, first, Memory(), CFG)
    m = Memory().record(p)
    branch = Window(steps=list(first.steps) + steps(noisy(50, seed=11) + [5.0] * 3, start=1001),
                    checkpoints=[ckpt(1000), ckpt(1040)])
    assert find_spike(branch.steps, CFG.loss_spike).first_step == 1051
    assert policies.RULES["loss_spike"](Phase.STABLE, branch, m, CFG) == []  # stale memory hides it
    [p2] = policies.RULES["loss_spike"](Phase.STABLE, branch, m.rolled_back(1000), CFG)
    assert p2.actions[0]["step"] == 1040 and p2.actions[1]["factor"] == 0.5
