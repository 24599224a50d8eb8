"""``smart-tuner tune``: an offline study from scratch on real espeak audio (micro model)."""

from __future__ import annotations

import pytest
import yaml

from agent.cli import main as cli_main
from trainer.config import load_config

from conftest import micro_config


@pytest.mark.slow
def test_offline_study_resumes_with_continued_numbering_and_writes_a_ready_config(espeak_dataset, tmp_path, capsys):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    run = tmp_path / "run"
    # (MLflow off: its first use costs ~30 s on one core; the trial runs' tags are checked by hand, docs/tuning.md)
    cfg = micro_config(espeak_dataset, run,
                       tuner={"report_every": 2, "seed": 1, "sampler": "random"})
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    args = ["tune", "--config", str(config_file), "--trials", "1", "--steps", "2"]

    assert cli_main(args) == 0
    assert cli_main(args) == 0  # the same command again resumes the study
    out = capsys.readouterr().out
    assert "0 earlier trial(s)" in out and "1 earlier trial(s)" in out

    storage = JournalStorage(JournalFileBackend(str(run / "study" / "optuna.journal")))
    study = optuna.load_study(study_name="run", storage=storage)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1]
    assert trials[0].user_attrs.get("baseline") and not trials[1].user_attrs.get("baseline")
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(sorted(t.intermediate_values) == [2] for t in trials)  # reported to the pruner
    assert (run / "study" / "trials" / "trial-0000" / "trial.log").is_file()

    # The best settings as a full config that `smart-tuner train --config` loads.
    best = run / "study" / "best-config.yaml"
    loaded = load_config(best)
    assert loaded.run_dir == run / "best" and loaded.train.max_steps == cfg.train.max_steps
    if study.best_trial.number == 1:
        assert loaded.optim.learning_rate == pytest.approx(study.best_trial.params["learning_rate"])
    else:
        assert loaded.optim.learning_rate == cfg.optim.learning_rate  # the baseline: the config as it is
    assert f"smart-tuner train --config {best}" in out and "optuna-dashboard" in out



def test_a_trial_that_breaks_in_the_tuner_is_one_structured_log_line(capsys):
    """A trial lost to an error in the tuner itself (Optuna, a hook, building its spec)
    is logged as one event with the exception's type and message, not a traceback
    printed inside the daemon; the other trials go on."""
    import optuna
    from structlog.testing import capture_logs

    from agent.tuner.config import TunerConfig
    from agent.tuner.study import run_trials

    def build(number, params, baseline):
        raise ValueError(f"no folder for trial {number}")

    study = optuna.create_study()
    with capture_logs() as logs:
        assert run_trials(study, 2, TunerConfig(), build) == []
    lost = [e for e in logs if e["event"] == "trial lost"]
    assert [(e["log_level"], e["error"], e["message"]) for e in lost] == [
        ("error", "ValueError", "no folder for trial 0"), ("error", "ValueError", "no folder for trial 1")]
    assert "Traceback" not in capsys.readouterr().err
