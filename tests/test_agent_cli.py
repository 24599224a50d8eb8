"""``smart-tuner`` status / approve / reject / pause / resume / stop / history / run on a real journal."""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from agent.cli import main
from agent.journal import Journal
from agent.paths import child_config_path, journal_path
from agent.views import status_data
from trainer.control import (
    CheckpointRecord,
    CommandResult,
    EvalRecord,
    Rollback,
    SetGatePosWeight,
    SetLearningRate,
    SpeechSummary,
    StepTelemetry,
)
from trainer.runlock import daemon_lock_path

ROOT = Path(__file__).resolve().parent.parent
USER = pwd.getpwuid(os.getuid()).pw_name  # the audit's name for us (not LOGNAME)


def step(n: int, wall_time: float, **kw) -> StepTelemetry:
    values = dict(step=n, epoch=n // 10, wall_time=wall_time, lr=1e-3, loss=1.0, mel_loss=0.5, mel_postnet_loss=0.4,
                  gate_loss=0.1, guided_attention_loss=0.0, grad_norm=2.0, grad_clip=1.0,
                  guided_attention_weight=1.0, gate_pos_weight=5.0, step_seconds=0.5, skipped_steps=0, finite=True)
    values.update(kw)
    return StepTelemetry(**values)


def evaluation(n: int, wall_time: float, **kw) -> EvalRecord:
    values = dict(step=n, wall_time=wall_time, val_loss=1.5, val_mel_loss=0.7, val_mel_postnet_loss=0.6,
                  val_gate_loss=0.2, val_guided_attention_loss=0.0, diagonality=0.5, focus=0.5, aligned_fraction=0.5,
                  gate_accuracy=0.5)
    values.update(kw)
    return EvalRecord(**values)


@pytest.fixture
def run(tmp_path) -> Path:
    """A run folder whose journal holds 20 steps at 2 steps/s, an evaluation, phases, a checkpoint
    and two waiting proposals; its resolved config says max_steps 120."""
    run_dir = tmp_path / "run"
    t0 = time.time() - 60
    with Journal(journal_path(run_dir)) as j:
        j.record_phase("warmup", step=0, reason="start", now=t0)
        j.add_steps([step(i, t0 + i * 0.5) for i in range(1, 20)])
        j.add_steps([step(20, t0 + 10.0, loss=1.8125, mel_loss=0.9375, mel_postnet_loss=0.8125, gate_loss=0.0625,
                          guided_attention_loss=0.03125, lr=0.00025)])
        j.add_eval(evaluation(20, t0 + 10.5, val_loss=2.0625, diagonality=0.4375, focus=0.3125,
                              gate_accuracy=0.8125, speech_score=0.25, mcd_dtw=2.4375,
                              speech=SpeechSummary(synthesized=10, utterances=8, spoken=2, score=0.25, mcd_dtw=2.4375,
                                                   stopped=6, premature=1, runaway=3, gate_missed_end=1, read=7,
                                                   gate_fired=8, duration_ratio=1.125, seconds=1.5)))
        j.add_checkpoint(CheckpointRecord(step=20, path=str(run_dir / "checkpoints" / "checkpoint_20.pt"),
                                          wall_time=t0 + 11, reason="periodic", val_loss=2.0625, diagonality=0.4375))
        j.record_phase("aligning", step=20, reason="warm-up over", now=t0 + 12)
        j.add_proposal(policy="alignment_stall", kind="set_guided_attention", reason="diagonality flat for 3 evals",
                       actions=[SetLearningRate(factor=0.5), Rollback(step=20, skip_batches=4)],
                       evidence={"diagonality": [0.43, 0.44, 0.4375]}, mode="ask", step=20,
                       expires_at=t0 + 60 + 1790, now=t0 + 13)
        j.add_proposal(policy="gate_not_learning", kind="set_gate_pos_weight", reason="gate accuracy low",
                       actions=[SetGatePosWeight(value=10.0)], mode="ask", step=20, now=t0 + 14)
    child_config_path(run_dir).write_text(yaml.safe_dump({"run_dir": str(run_dir), "train": {"max_steps": 120}}))
    return run_dir


@pytest.fixture
def daemon_alive(run) -> int:
    """The run's daemon lock held as a live daemon holds it (here by this process, whose pid it names)."""
    fd = os.open(daemon_lock_path(run), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield os.getpid()
    finally:
        os.close(fd)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_status_shows_the_journal(run, daemon_alive, capsys):
    assert main(["status", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"daemon    running (pid {daemon_alive}, since " in out
    assert "aligning since" in out
    assert "step      20 / 120" in out
    for number in ("1.8125", "0.9375", "0.8125", "0.0625", "0.0312",  # train loss and its parts
                   "2.0625",  # val loss
                   "diagonality 0.438", "focus 0.312", "accuracy 0.812", "lr 0.00025",
                   "2 of 8 spoken (25%), MCD-DTW 2.44 dB", "6 in range, 1 early, 3 runaway", "read 7 of 10",
                   "2.00 steps/s", "ETA 50s"):  # (120 - 20) steps at 2 steps/s
        assert number in out, (number, out)
    assert "step 20 (periodic, good)" in out and "checkpoint_20.pt" in out
    assert "2 proposal(s)" in out
    assert "#1 alignment_stall/set_guided_attention: diagonality flat for 3 evals  [expires in 29m" in out
    assert "#2 gate_not_learning/set_gate_pos_weight: gate accuracy low  [no expiry]" in out
    assert "commands  0 open" in out


def test_status_json_parses_and_matches(run, daemon_alive, capsys):
    assert main(["status", "--run-dir", str(run), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["phase"] == "aligning" and data["step"] == 20 and data["max_steps"] == 120
    assert data["train"]["loss"] == 1.8125 and data["eval"]["diagonality"] == 0.4375
    assert data["eval"]["gate_accuracy"] == 0.8125
    assert data["steps_per_second"] == pytest.approx(2.0) and data["eta_seconds"] == pytest.approx(50.0)
    assert [p["id"] for p in data["pending_proposals"]] == [1, 2]
    assert data["pending_proposals"][0]["actions"] == ["set_lr factor=0.5", "rollback step=20 skip_batches=4"]
    assert data["checkpoint"]["health"] == "good" and data["paused"] is False
    assert data["daemon"]["running"] is True and data["daemon"]["pid"] == daemon_alive and data["live"] is True
    assert data["eta_by"] == "max_steps" and data["max_minutes"] is None


def test_status_by_config_takes_its_run_dir_and_max_steps(run, daemon_alive, tmp_path, capsys):
    child_config_path(run).unlink()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(run), "train": {"max_steps": 220}}))
    assert main(["status", "--config", str(config), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["run_dir"] == str(run) and data["max_steps"] == 220 and data["eta_seconds"] == pytest.approx(100)
    # --set moves the run folder as it did for `run`
    assert main(["status", "--config", str(config), "--set", f"run_dir={tmp_path / 'elsewhere'}"]) == 2
    assert "no supervised run in" in capsys.readouterr().err


def test_status_of_an_empty_journal(tmp_path, capsys):
    Journal(journal_path(tmp_path)).close()
    assert main(["status", "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no telemetry yet" in out and "no evaluation yet" in out
    assert "daemon    not running (no daemon has run here" in out
    assert "speed     -  (nothing trains now: no ETA)" in out and "ETA -" not in out


# -- is the daemon alive? (status's "daemon" line; Telegram /status shows the same views) ------------
STAND_IN_DAEMON = '''
import sys
sys.path.insert(0, {root!r})
from agent.daemon import run_daemon
from trainer.config import load_config


class StandInSupervisor:
    def __init__(self, journal, cfg, *, warmup_steps):
        self.journal, self.phase = journal, journal.current_phase() or "warmup"

    def tick(self):
        pass

    def note_child_event(self, kind, detail=""):
        self.journal.audit("daemon", kind, detail)


sys.exit(run_daemon(load_config({config!r}), supervisor_factory=StandInSupervisor, echo_child=False,
                    child_command=[sys.executable, "-c", "import time; time.sleep(120)"]))
'''


def _kill_daemon_and_child(proc: subprocess.Popen, run_dir: Path) -> None:
    """A SIGKILLed daemon leaves its trainer running: kill both."""
    from agent.daemon import child_pid_path

    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    try:
        pid = json.loads(child_pid_path(run_dir).read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, KeyError):
        pass


def test_status_says_a_real_daemon_runs_and_then_that_it_was_killed(run, tmp_path, capsys):
    from trainer.runlock import lock_holder

    from conftest import micro_config

    cfg = micro_config(tmp_path / "ds", run, train__max_steps=120, supervisor={
        "process": {"stop_grace_seconds": 5}, "tick_seconds": 5, "digest_minutes": 0})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    script = tmp_path / "daemon.py"
    script.write_text(STAND_IN_DAEMON.format(root=str(ROOT), config=str(config)))
    daemon = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        from conftest import wait_until

        wait_until(lambda: lock_holder(daemon_lock_path(run)) == str(daemon.pid), 60, "the daemon's lock")
        wait_until(lambda: "started" in [a.action for a in Journal(journal_path(run), readonly=True).audit_log()],
                   60, "the daemon to start its trainer")
        assert main(["status", "--run-dir", str(run)]) == 0
        out = capsys.readouterr().out
        assert f"daemon    running (pid {daemon.pid}, since " in out, out
        assert "2.00 steps/s  ETA 50s" in out, out  # (120 - 20) steps at 2 steps/s
        _kill_daemon_and_child(daemon, run)  # kill -9: nothing recorded
        assert main(["status", "--run-dir", str(run)]) == 0
        out = capsys.readouterr().out
        assert "daemon    not running — last seen " in out and "ago (killed: no clean stop recorded)\n" in out, out
        assert "speed     last 2.00 steps/s  (nothing trains now: no ETA)" in out and "ETA 50s" not in out, out
        assert main(["status", "--run-dir", str(run), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["daemon"]["running"] is False and data["daemon"]["state"] == "killed"
        assert data["live"] is False and data["eta_seconds"] is None and data["steps_per_second"] == pytest.approx(2)
    finally:
        _kill_daemon_and_child(daemon, run)


@pytest.mark.parametrize("events, expected", [
    ([("started", "pid 1; no telemetry yet"), ("finished", "trainer exited 0 at step 120 (max_steps)")],
     "finished at max_steps"),
    ([("started", "pid 1; no telemetry yet"), ("finished", "trainer exited 0 at step 80 (max_minutes)")],
     "finished at max_minutes"),
    ([("started", "pid 1"), ("crashed", "exit code 3 at step 20; last lines of trainer.log:\nboom"),
      ("restarted", "pid 2"), ("crashed", "exit code 3 at step 20; last lines of trainer.log:\nboom"),
      ("gave_up", "2 consecutive failures without progress (process.max_restarts is 1)")],
     "gave up: 2 consecutive failures without progress (process.max_restarts is 1); "
     "last failure: exit code 3 at step 20"),
    ([("started", "pid 1"), ("stopped", "daemon stopped by SIGTERM; trainer exit code 0 at step 20")],
     "daemon stopped by SIGTERM; trainer exit code 0 at step 20"),
])
def test_status_of_a_run_whose_daemon_ended_says_how(run, capsys, events, expected):
    with Journal(journal_path(run), create=False) as j:
        for kind, detail in events:
            j.audit("daemon", kind, detail)
        j.audit(f"cli:{USER}", "pause", "command x")  # others' audit rows do not count
    assert main(["status", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "daemon    not running — stopped " in out and f"ago ({expected})\n" in out, out
    assert "last 2.00 steps/s  (nothing trains now: no ETA)" in out and "ETA 50s" not in out, out


def test_eta_is_the_sooner_of_max_steps_and_max_minutes(run, daemon_alive):
    child_config_path(run).write_text(yaml.safe_dump({"run_dir": str(run),
                                                      "train": {"max_steps": 120, "max_minutes": 1}}))
    with Journal(journal_path(run), create=False) as j:
        j.audit("daemon", "started", "pid 1; no telemetry yet")
        j.audit("daemon", "crashed", "exit code 1 at step 20")
        j.audit("daemon", "restarted", "pid 2; resuming after step 20")  # each trainer counts from its start
        started = j.latest_audit("daemon", ("restarted",))[0].wall_time
        d = status_data(j, run, 120, now=started + 30)  # max_minutes from RUN/run-config.yaml
        assert d["max_minutes"] == 1 and d["trainer_started_at"] == started
        assert (d["eta_by"], d["eta_seconds"]) == ("max_minutes", pytest.approx(30))  # 60 s - 30 s < 50 s of steps
        d = status_data(j, run, 120, now=started + 30, max_minutes=10)
        assert (d["eta_by"], d["eta_seconds"]) == ("max_steps", pytest.approx(50))
        d = status_data(j, run, 120, now=started + 90)
        assert (d["eta_by"], d["eta_seconds"]) == ("max_minutes", 0)  # past its budget: it stops at its next step
    assert main(["status", "--run-dir", str(run), "--json"]) == 0  # the CLI reads the budget too


def test_approve_applies_once_and_enqueues_exactly_its_commands(run, capsys):
    with Journal(journal_path(run), create=False) as j:
        action_ids = [c.id for c in j.get_proposal(1).commands()]
    assert main(["approve", "1", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "approved proposal #1" in out and "queued 2 command(s)" in out and "set_lr factor=0.5" in out

    assert main(["approve", "1", "--run-dir", str(run)]) == 1
    assert f"proposal 1 was already approved by cli:{USER}" in one_line(capsys.readouterr().err)
    assert main(["reject", "1", "--run-dir", str(run)]) == 1
    assert f"already approved by cli:{USER}" in capsys.readouterr().err

    with Journal(journal_path(run), create=False) as j:
        p = j.get_proposal(1)
        assert (p.status, p.decided_by) == ("approved", f"cli:{USER}")
        commands = j.commands(proposal_id=1)[::-1]
        assert [c.id for c in commands] == action_ids
        assert [c.kind for c in commands] == ["set_lr", "rollback"]
        assert {c.source for c in commands} == {f"cli:{USER}"}
        assert len(j.commands()) == 2  # nothing else was queued
        # the trainer applies them; a later approve says so
        for c in commands:
            j.acknowledge(CommandResult(command_id=c.id, kind=c.kind, ok=True, detail="done", step=21))
    assert main(["approve", "1", "--run-dir", str(run)]) == 1
    assert "already approved (since applied)" in capsys.readouterr().err


def test_reject(run, capsys):
    assert main(["reject", "2", "--run-dir", str(run)]) == 0
    assert "rejected proposal #2" in capsys.readouterr().out
    with Journal(journal_path(run), create=False) as j:
        p = j.get_proposal(2)
        assert (p.status, p.decided_by) == ("rejected", f"cli:{USER}")
        assert j.commands() == []
        assert [x.id for x in j.pending_proposals()] == [1]
    assert main(["approve", "2", "--run-dir", str(run)]) == 1
    assert f"proposal 2 was already rejected by cli:{USER}" in capsys.readouterr().err


def test_unknown_proposal_is_a_one_line_error(run, capsys):
    assert main(["approve", "99", "--run-dir", str(run)]) == 2
    assert "no proposal 99 in" in one_line(capsys.readouterr().err)
    assert main(["reject", "99", "--run-dir", str(run)]) == 2


def test_a_huge_proposal_id_is_a_one_line_error(run, capsys):
    huge = "99999999999999999999999"  # beyond SQLite's 64-bit integers
    for verb in ("approve", "reject"):
        assert main([verb, huge, "--run-dir", str(run)]) == 2
        assert f"error: no proposal {huge} in" in one_line(capsys.readouterr().err)
    with Journal(journal_path(run), create=False) as j:
        assert [p.id for p in j.pending_proposals()] == [1, 2]


def test_the_audit_names_the_real_user_not_logname(run):
    assert USER != "mallory"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOGNAME": "mallory", "USER": "mallory", "LNAME": "mallory",
           "USERNAME": "mallory"}
    for argv in (["pause"], ["approve", "1"]):
        done = subprocess.run([sys.executable, "-m", "agent.cli", *argv, "--run-dir", str(run)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    with Journal(journal_path(run), create=False) as j:
        actors = {a.actor for a in j.audit_log() if a.action in ("pause", "approved")}
        assert actors == {f"cli:{USER}"}, actors
        assert j.get_proposal(1).decided_by == f"cli:{USER}"


@pytest.mark.parametrize("kind", ["pause", "resume", "stop"])
def test_control_commands_are_queued_with_audit(run, kind, capsys):
    with Journal(journal_path(run), create=False) as j:
        j.set_state("paused", kind == "resume")
    assert main([kind, "--run-dir", str(run)]) == 0
    assert f"queued {kind}" in capsys.readouterr().out
    with Journal(journal_path(run), create=False) as j:
        (command,) = j.commands()
        assert (command.kind, command.source, command.status, command.proposal_id) == (kind, "cli", "pending", None)
        assert command.command().kind == kind
        audit = [(a.actor, a.action, a.detail) for a in j.audit_log()]
        assert (f"cli:{USER}", kind, f"command {command.id}") in audit
        assert ("cli", "command", f"{kind} {command.id}") in audit
        assert j.get_state("paused") is {"pause": True, "resume": False, "stop": False}[kind]


def test_missing_journal_is_one_line_and_creates_nothing(tmp_path, capsys):
    where = tmp_path / "nothing-here"
    for argv in (["status"], ["approve", "1"], ["pause"], ["history"], ["pending"]):
        assert main([*argv, "--run-dir", str(where)]) == 2
        line = one_line(capsys.readouterr().err)
        assert line == (f"error: no supervised run in {where} (no journal.sqlite); "
                        f"start one with smart-tuner run --config C")
    assert not where.exists()


def test_which_run_names_both_options(capsys):
    assert main(["status"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--run-dir DIR" in line and "--config C" in line


def test_history_in_time_order(run, capsys):
    with Journal(journal_path(run), create=False) as j:
        j.decide(1, "approved", by="telegram:alice")
        for c in j.commands(proposal_id=1)[::-1]:
            j.acknowledge(CommandResult(command_id=c.id, kind=c.kind, ok=True, detail=f"{c.kind} ok", step=21))
        j.record_outcome(1, "improved", "diagonality 0.44 -> 0.61")
        j.decide(2, "expired", by="expiry")
    assert main(["pause", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["history", "--run-dir", str(run)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    kinds = [line.split()[2] for line in lines]
    assert kinds == ["phase", "speech", "phase", "proposal", "proposal", "command", "command", "command"], lines
    assert "(start) -> warmup at step 0: start" in lines[0]
    assert "at step 20: 2 of 8 spoken (25%), MCD-DTW 2.44 dB" in lines[1]  # the evaluation's free-running figures
    del lines[1]
    assert "warmup -> aligning at step 20: warm-up over" in lines[1]
    assert ("#1 alignment_stall/set_guided_attention (ask) at step 20: diagonality flat for 3 evals "
            "[set_lr factor=0.5; rollback step=20 skip_batches=4] -> approved by telegram:alice") in lines[2]
    assert "applied at step 21, outcome improved (diagonality 0.44 -> 0.61)" in lines[2]
    assert "-> expired by expiry" in lines[3]
    assert "set_lr factor=0.5" in lines[4] and "for #1 -> ok at step 21" in lines[4] and "set_lr ok" in lines[4]
    assert "pause" in lines[6] and "from cli -> pending" in lines[6]

    assert main(["history", "--run-dir", str(run), "--limit", "2", "--json"]) == 0
    events = json.loads(capsys.readouterr().out)
    assert [e["type"] for e in events] == ["command", "command"] and events[-1]["kind"] == "pause"
    assert main(["history", "--run-dir", str(run), "--limit", "0"]) == 2


def test_pending_lists_evidence(run, capsys):
    assert main(["pending", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "#1 alignment_stall/set_guided_attention (ask) at step 20" in out
    assert '"diagonality": [0.43, 0.44, 0.4375]' in out and "rollback step=20 skip_batches=4" in out
    assert main(["pending", "--run-dir", str(run), "--json"]) == 0
    assert [p["id"] for p in json.loads(capsys.readouterr().out)] == [1, 2]


def test_run_loads_config_with_overrides_and_returns_the_daemons_code(tmp_path, monkeypatch):
    seen = {}

    def run_daemon(config, *, log):
        seen["config"], seen["log"] = config, log
        return 3

    monkeypatch.setitem(sys.modules, "agent.daemon", types.SimpleNamespace(run_daemon=run_daemon))
    import agent.logs

    monkeypatch.setattr(agent.logs, "configure_logging", lambda run_id: seen.setdefault("run_id", run_id))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "r"), "train": {"max_steps": 50}}))
    argv = ["run", "--config", str(config), "--set", "train.max_steps=7", "--set", "optim.learning_rate=3e-4"]
    assert main(argv) == 3
    assert seen["config"].train.max_steps == 7 and seen["config"].optim.learning_rate == 3e-4
    assert hasattr(seen["log"], "info") and seen["run_id"] == "r"


def test_run_with_a_bad_config_is_one_line(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such config file" in one_line(capsys.readouterr().err)


def _py(code: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *code.split("\0")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, **kw)


def test_cli_imports_no_torch_or_mlflow(run):
    code = (
        "import sys\n"
        "import agent.cli\n"
        "agent.cli.build_parser()\n"
        f"assert agent.cli.main(['status', '--run-dir', {str(run)!r}]) == 0\n"
        f"assert agent.cli.main(['history', '--run-dir', {str(run)!r}]) == 0\n"
        "heavy = sorted(m for m in ('torch', 'mlflow', 'optuna', 'aiogram', 'librosa', 'matplotlib') "
        "if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    result = _py("-c\0" + code)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_module_help_lists_trainer_and_agent_commands():
    result = _py("-m\0agent.cli\0--help")
    assert result.returncode == 0, result.stderr
    for command in ("run", "status", "pending", "approve", "reject", "pause", "resume", "stop", "history",
                    "data", "train", "synth", "demo"):
        assert f"\n    {command} " in result.stdout, (command, result.stdout)


# -- the journal: read-only commands change nothing; run refuses to start a new history silently ------
READ_ONLY_COMMANDS = (["status"], ["history"], ["pending"], ["trials"])


def _beside(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "-"))


def test_read_only_commands_leave_an_empty_journal_alone(tmp_path, capsys):
    path = journal_path(tmp_path)
    path.touch()  # e.g. truncated by a full disk or a bad copy
    for argv in READ_ONLY_COMMANDS:
        assert main([*argv, "--run-dir", str(tmp_path)]) == 2, argv
        line = one_line(capsys.readouterr().err)
        assert line.startswith(f"error: {path} is empty: it holds no run journal") and "--new-journal" in line
        assert path.stat().st_size == 0 and _beside(path) == [], argv


def test_read_only_commands_work_for_a_user_who_may_only_read(run, tmp_path):
    """A journal and folder the user cannot write (as root: run as nobody, for root ignores
    file modes): status, history, pending and trials read it and change nothing."""
    import shutil
    import tempfile

    public = Path(tempfile.mkdtemp(prefix="smart-tuner-ro-")) / "run"  # not under pytest's 0700 folder
    try:
        public.mkdir()
        shutil.copy2(journal_path(run), journal_path(public))
        shutil.copy2(child_config_path(run), child_config_path(public))
        before = journal_path(public).read_bytes(), journal_path(public).stat().st_mtime_ns
        journal_path(public).chmod(0o444)
        public.chmod(0o555)
        public.parent.chmod(0o755)
        code = "\n".join([
            "import os, sys",
            "import sqlite3, yaml, agent.cli, agent.journal, agent.paths, agent.views, agent.tuner.cli, trainer.config",
            "agent.cli.build_parser()  # (imports what the parser needs, e.g. for --version)",
            "if os.geteuid() == 0:  # after the imports: nobody may not read the Python installation",
            "    os.setgroups([]); os.setgid(65534); os.setuid(65534)",
            f"rcs = [agent.cli.main([*argv, '--run-dir', {str(public)!r}]) for argv in {READ_ONLY_COMMANDS!r}]",
            "print('RCS', rcs)",
        ])
        done = _py("-c\0" + code)
        assert done.returncode == 0 and "RCS [0, 0, 0, 0]" in done.stdout, (done.stdout, done.stderr)
        assert "aligning since" in done.stdout and "step      20 / 120" in done.stdout
        assert "alignment_stall/set_guided_attention" in done.stdout
        assert (journal_path(public).read_bytes(), journal_path(public).stat().st_mtime_ns) == before
        assert _beside(journal_path(public)) == []
    finally:
        public.chmod(0o755)
        shutil.rmtree(public.parent, ignore_errors=True)


def _run_config(tmp_path: Path, run_dir: Path) -> Path:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(run_dir), "tracking": {"enabled": False}}))
    return config


@pytest.fixture
def quiet_daemon_logging(monkeypatch):
    import agent.logs

    monkeypatch.setattr(agent.logs, "configure_logging", lambda *a, **kw: None)


def test_a_corrupt_journal_is_one_line_with_the_way_out_for_status_and_run(tmp_path, capsys, quiet_daemon_logging):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = journal_path(run_dir)
    path.write_bytes(os.urandom(8192))
    garbage = path.read_bytes()
    assert main(["status", "--run-dir", str(run_dir)]) == 2
    status_line = one_line(capsys.readouterr().err)
    assert status_line.startswith(f"error: {path}: cannot open the run journal (file is not a database); "
                                  "restore it from a backup"), status_line
    assert main(["run", "--config", str(_run_config(tmp_path, run_dir))]) == 2
    assert one_line(capsys.readouterr().err) == status_line
    assert path.read_bytes() == garbage and _beside(path) == []


def test_run_refuses_a_missing_or_empty_journal_beside_checkpoints(tmp_path, capsys, monkeypatch,
                                                                   quiet_daemon_logging):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint_00000198.pt").write_bytes(b"weights")
    config = _run_config(tmp_path, run_dir)
    path = journal_path(run_dir)
    assert main(["run", "--config", str(config)]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{path} is missing, but {run_dir / 'checkpoints'} holds checkpoints (newest: step 198)" in line
    assert "restore the journal from a backup" in line and "--new-journal" in line
    assert not path.exists()
    path.touch()
    assert main(["run", "--config", str(config)]) == 2
    assert f"{path} is empty (it holds no journal), but" in one_line(capsys.readouterr().err)
    assert path.stat().st_size == 0 and _beside(path) == []

    # --new-journal is how to start a new history on purpose (the daemon itself: tests/test_daemon.py).
    seen = {}
    monkeypatch.setitem(sys.modules, "agent.daemon", types.SimpleNamespace(
        run_daemon=lambda config, *, log, **kw: seen.update(kw) or 0))
    assert main(["run", "--config", str(config), "--new-journal"]) == 0
    assert seen == {"new_journal": True}
