"""Custom rules and metrics: a real package installed with pip (tests/fixtures/example_rule_pkg),
found by its entry points, its settings validated, its metric measured by a real trainer and
its rule's proposal applied through a real journal by the supervisor; and the same rule named
by import path in the config."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import SupervisorConfig
from agent.journal import Journal
from agent.port import JournalPort
from agent.supervisor import Supervisor
from policies import Memory, Phase, PolicyConfig, Window, propose
from trainer.config import ConfigError, EvalConfig, RunConfig, config_from_checkpoint, parse_config
from trainer.control import EvalRecord
from trainer.loop import Trainer

from conftest import micro_config
from journal_helpers import pending_commands

PACKAGE = Path(__file__).parent / "fixtures" / "example_rule_pkg"


@pytest.fixture(scope="session")
def example_install(tmp_path_factory) -> Path:
    """The example package pip-installed (offline, no dependencies) into a folder of its own."""
    work = tmp_path_factory.mktemp("example_pkg")
    source = work / "src"
    shutil.copytree(PACKAGE, source)  # pip builds in the source tree: keep the repository clean
    target = work / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--no-index", "--quiet", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert list(target.glob("smart_tuner_example_rule-*.dist-info/entry_points.txt"))
    return target


@pytest.fixture
def installed(example_install, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(example_install))
    return example_install


def evaluation(n: int, **extra: float) -> EvalRecord:
    return EvalRecord(step=n, wall_time=time.time(), val_loss=1.0, val_mel_loss=0.5, val_mel_postnet_loss=0.5,
                      val_gate_loss=0.1, val_guided_attention_loss=0.0, diagonality=0.3, focus=0.3,
                      aligned_fraction=0.0, gate_accuracy=0.9, extra=extra)


def test_without_the_package_its_section_is_an_unknown_key():
    with pytest.raises(ValidationError) as caught:
        PolicyConfig.model_validate({"too_quiet": {"min_level": -5.0}})
    assert [e["loc"] for e in caught.value.errors()] == [("too_quiet",)]
    with pytest.raises(KeyError):
        PolicyConfig().policy("too_quiet")


def test_installed_rule_settings_are_validated_like_the_built_in_ones(installed):
    cfg = SupervisorConfig.model_validate({"policies": {"too_quiet": {"min_level": -5.0}}})
    assert cfg.policies.policy("too_quiet").min_level == -5.0
    assert cfg.policies.policy("too_quiet").lr_factor == 0.8  # its own default
    assert set(cfg.policies.loaded_custom_rules()) == {"too_quiet"}
    # A dump reads back the same (the journal and the tuner copy configs this way).
    again = PolicyConfig.model_validate(cfg.policies.model_dump())
    assert again.policy("too_quiet") == cfg.policies.policy("too_quiet")

    for section, key, words in (({"lr_factor": 2}, "lr_factor", "less than 1"),
                                ({"min_levl": 1}, "min_levl", "Extra inputs are not permitted")):
        with pytest.raises(ValidationError) as caught:
            SupervisorConfig.model_validate({"policies": {"too_quiet": section}})
        (error,) = caught.value.errors()  # one error, naming the key
        assert error["loc"] == ("policies", "too_quiet", key) and words in error["msg"]


def test_installed_metric_settings_are_validated(installed):
    assert EvalConfig().metrics["mel_level"].postnet is True  # installed: on, with its defaults
    assert EvalConfig.model_validate({"metrics": {"mel_level": {"enabled": False}}}).active_metrics() == []
    with pytest.raises(ConfigError, match=r"<test>:4: eval\.metrics\.mel_level\.postnet: Input should be a valid "
                                          r"boolean.*\n?$"):
        parse_config("eval:\n  metrics:\n    mel_level:\n      postnet: maybe\n", "<test>")
    with pytest.raises(ValidationError) as caught:
        EvalConfig.model_validate({"metrics": {"mel_levle": {}}})
    (error,) = caught.value.errors()
    assert error["loc"] == ("metrics", "mel_levle") and "known: mel_level" in error["msg"]


def test_a_broken_installed_rule_is_one_error_naming_it(tmp_path, monkeypatch):
    dist = tmp_path / "broken_rules-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-rules\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[smart_tuner.rules]\nbroken = no_such_module_here:rule\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValidationError) as caught:
        SupervisorConfig.model_validate({"policies": {}})
    (error,) = caught.value.errors()
    assert error["loc"] == ("policies", "custom_rules") and "'broken'" in error["msg"]
    assert "No module named 'no_such_module_here'" in error["msg"]


def test_a_checkpoint_loads_without_the_metrics_it_was_measured_with():
    saved = {"eval": {"every_steps": 7, "custom_metrics": ["gone_pkg:metric"], "metrics": {"gone": {"x": 1}}}}
    with pytest.raises(ValidationError):
        RunConfig.model_validate(saved)
    assert config_from_checkpoint(saved).eval.every_steps == 7


def test_a_rule_named_by_import_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PACKAGE))  # importable, but not installed: no entry points
    assert "too_quiet" not in PolicyConfig().loaded_custom_rules()
    cfg = PolicyConfig.model_validate({"custom_rules": ["example_rule:rule"], "too_quiet": {"min_level": -1.0}})
    window = Window(evals=(evaluation(100, mel_level=-3.0),))
    (got,) = propose(Phase.STABLE, window, Memory(), cfg)
    assert got.policy == "too_quiet" and got.actions == ({"kind": "set_lr", "factor": 0.8},)
    assert "-3" in got.reason and got.evidence["min_level"] == -1.0
    assert propose(Phase.TUNING, window, Memory(), cfg) == []  # not one of its phases
    off = PolicyConfig.model_validate({"custom_rules": ["example_rule:rule"], "too_quiet": {"enabled": False}})
    assert propose(Phase.STABLE, window, Memory(), off) == []

    for path, words in (("example_rule:nothing", "has no 'nothing'"), ("example_rule", "package.module:object"),
                        ("example_rule:metric", "not a CustomRule")):
        with pytest.raises(ValidationError) as caught:
            PolicyConfig.model_validate({"custom_rules": [path]})
        (error,) = caught.value.errors()
        assert error["loc"] == ("custom_rules",) and words in error["msg"]


def test_the_metric_reaches_the_journal_and_the_supervisor_applies_the_rule(installed, espeak_dataset, tmp_path):
    """A real trainer measures the installed metric, its evaluations reach the journal with
    it, the supervisor runs the installed rule on them and issues its command, and the
    trainer applies it."""
    journal_path = tmp_path / "journal.sqlite"
    run_cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=3, eval__every_steps=3,
                           checkpoint__every_steps=3)
    assert [m.name for m, _ in run_cfg.eval.active_metrics()] == ["mel_level"]
    Trainer(run_cfg, port=JournalPort(journal_path)).train()

    with Journal(journal_path) as journal:
        (measured,) = journal.latest_evals(5)
        level = measured.extra["mel_level"]
        assert math.isfinite(level)
        # Above any level the untrained model reaches, so the rule fires.
        sup_cfg = SupervisorConfig.model_validate({"policies": {"too_quiet": {"min_level": level + 1.0,
                                                                               "lr_factor": 0.5}}})
        sup = Supervisor(journal, sup_cfg, warmup_steps=0)
        sup.tick()
        (row,) = [p for p in journal.proposals() if p.policy == "too_quiet"]
        assert row.kind == "set_lr" and row.mode == "auto" and row.status == "approved"
        (command,) = [c for c in pending_commands(journal) if c.kind == "set_lr"]
        assert command.command().factor == 0.5
        lr_before = journal.latest_steps(1)[0].lr

    resumed = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=5, eval__every_steps=3,
                           checkpoint__every_steps=3)
    trainer = Trainer(resumed, port=JournalPort(journal_path), resume=True)
    trainer.train()
    with Journal(journal_path) as journal:
        assert journal.get_proposal(row.id).status == "applied"
        assert journal.latest_steps(1)[0].lr == pytest.approx(lr_before * 0.5, rel=0.05)
