"""In-run tuning end to end: real daemon, supervisor, trainer child and trial processes
on real espeak audio (micro model, a few steps each)."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from agent.cli import main as cli_main
from agent.daemon import run_daemon
from agent.journal import Journal
from agent.paths import journal_path
from trainer.checkpoint import load_checkpoint

from conftest import micro_config

# The rule-based policies are off so that nothing but the winner sets the knobs the test reads.
FAST = {"tick_seconds": 0.3, "digest_minutes": 0, "probation": {"steps": 3, "evals": 1},
        "process": {"backoff_seconds": 0.5, "hang_seconds": 120},
        "policies": {name: {"enabled": False} for name in ("gate", "alignment_stall", "attention_decay")}}
TUNER = {"report_every": 2, "round": {"trials": 3, "steps": 4}, "seed": 3,
         # A narrow space keeps every sampled trial healthy in 4 steps.
         "space": {"learning_rate": {"low": 5e-4, "high": 1e-3, "log": True},
                   "guided_attention_weight": {"low": 1.0, "high": 2.0},
                   "gate_pos_weight": {"low": 2.0, "high": 4.0}, "grad_clip_thresh": {"low": 0.5, "high": 0.9},
                   "weight_decay": {"low": 1e-7, "high": 1e-6, "log": True},
                   "p_attention_dropout": {"low": 0.2, "high": 0.3}}}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _PruneTrial:
    """A pruner that prunes exactly one trial number at its first report (Optuna's
    median pruner decides on noisy numbers; the test needs a known outcome)."""

    def __init__(self, number: int) -> None:
        self.number = number

    def prune(self, study, trial) -> bool:
        return trial.number == self.number


@pytest.mark.slow
def test_a_tuning_round_forks_prunes_survives_a_killed_trial_and_the_run_continues_from_the_winner(
        espeak_dataset, tmp_path, monkeypatch, capsys):
    from optuna.pruners import BasePruner

    import agent.tuner.study as study_module

    # Trial 0 (the current settings) is pruned, trial 2 killed: trial 1, with sampled
    # values, is the one that completes and wins, so "the run continues with the
    # winner's settings" differs from "continues as it was".
    monkeypatch.setattr(study_module, "make_pruner",
                        lambda cfg, steps: type("P", (BasePruner,), {"prune": _PruneTrial(0).prune})())

    run = tmp_path / "run"
    cfg = micro_config(espeak_dataset, run, train__max_steps=16, checkpoint__every_steps=1000,
                       eval__every_steps=4, supervisor=FAST, tuner=TUNER)
    with Journal(journal_path(run)):
        pass
    assert cli_main(["tune-now", "--run-dir", str(run)]) == 0  # before the daemon: it waits in the journal

    seen: dict[str, object] = {}
    done = threading.Event()

    def watch() -> None:
        """Hash the base checkpoint while trials run; SIGKILL trial 2 as soon as it has a pid."""
        while not done.is_set():
            try:
                with Journal(journal_path(run)) as j:
                    st = j.get_state("tuning_round") or {}
                    if st.get("base_path") and "base_sha" not in seen:
                        seen["base_sha"] = _sha(Path(st["base_path"]))
                        seen["base_path"] = st["base_path"]
                        seen["main_files"] = sorted(p.name for p in (run / "checkpoints").iterdir())
                    victim = next((t for t in j.trials() if t.number == 2 and t.pid), None)
                if victim is not None and "killed" not in seen:
                    os.kill(victim.pid, signal.SIGKILL)
                    seen["killed"] = victim.pid
            except Exception:  # noqa: BLE001 - the journal may not exist yet
                pass
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert run_daemon(cfg, echo_child=False) == 0
    finally:
        done.set()
        watcher.join(5)

    with Journal(journal_path(run)) as j:
        trials = {t.number: t for t in j.trials()}
        phases = [p.to_phase for p in j.phase_history()]
        apply = next(p for p in j.proposals() if p.kind == "apply_winner")
        tune = next(p for p in j.proposals() if p.kind == "tune")
        after = [s for s in j.latest_steps(200) if s.step > trials[1].base_step + 4]
        final_step = j.latest_steps(1)[0].step

    # Three trials, one row each: the current settings (pruned), one complete, one killed.
    assert sorted(trials) == [0, 1, 2]
    assert trials[0].baseline and trials[0].status == "pruned" and trials[0].steps == 2  # stopped early
    assert trials[0].checkpoint is None and not list(Path(trials[0].folder, "checkpoints").glob("checkpoint_*"))
    assert trials[1].status == "complete" and trials[1].winner and trials[1].checkpoint and trials[1].steps == 4
    assert trials[2].status == "failed" and "SIGKILL" in trials[2].detail and seen.get("killed") == trials[2].pid
    assert tune.status == "applied" and "(1 complete, 1 pruned, 1 failed)" in apply.reason
    assert "tuning" in phases and phases[-1] in ("stable", "aligning")

    # Forking left the main run's base checkpoint byte-identical; trials wrote only in their folders.
    assert _sha(Path(seen["base_path"])) == seen["base_sha"]
    assert all(Path(t.folder).parent.parent == run / "tuning" for t in trials.values())
    main_now = {p.name for p in (run / "checkpoints").iterdir()}
    assert set(seen["main_files"]) <= main_now

    # The winner was applied (auto) and the run went on to the end with its settings.
    assert apply.status == "applied" and apply.mode == "auto" and apply.evidence["trial"] == 1
    assert final_step == 16
    w = trials[1].params
    assert after and all(s.lr == pytest.approx(w["learning_rate"]) for s in after)
    assert all(s.guided_attention_weight == pytest.approx(w["guided_attention_weight"]) for s in after)
    assert all(s.gate_pos_weight == pytest.approx(w["gate_pos_weight"]) for s in after)
    assert all(s.grad_clip == pytest.approx(w["grad_clip_thresh"]) for s in after)
    final = load_checkpoint(run / "checkpoints" / "checkpoint_00000016.pt")
    assert final["smart_tuner"]["dropouts"]["p_attention_dropout"] == pytest.approx(w["p_attention_dropout"])
    assert final["optimizer"]["param_groups"][0]["weight_decay"] == pytest.approx(w["weight_decay"])
    assert final["smart_tuner"]["extras"] == {}  # the trial's own state did not leak into the main run
    # No trained step thrown away: the adopted checkpoint is the winner's step.
    adopted = load_checkpoint(trials[1].checkpoint)
    assert adopted["iteration"] == trials[1].base_step + 4

    assert cli_main(["trials", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "trial 1 WINNER: complete" in out and "trial 0 baseline: pruned" in out and "trial 2: failed" in out
