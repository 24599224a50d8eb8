"""The daemon with real trainer children: crash, hang, SIGTERM, kill -9 of the daemon, start-up time.

The supervisor here is a stand-in (the daemon takes a ``supervisor_factory``); the
training is real (micro Tacotron2 on the espeak fixture), and so are the processes
and the signals. Faults come from ``SMART_TUNER_FAULTS`` (agent.faults).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from agent.daemon import child_pid_path, daemon_lock_path, digest_text, run_daemon
from agent.faults import Fault, FaultInjector, parse_faults
from agent.journal import Journal
from agent.paths import child_config_path, journal_path, trainer_log_path
from trainer.errors import UserError

from conftest import kill_daemon_and_child, micro_config

ROOT = Path(__file__).resolve().parent.parent

STAND_IN = '''
class StandInSupervisor:
    """tick / note_child_event / phase, recording what the daemon tells it."""

    def __init__(self, journal, cfg, *, warmup_steps):
        self.journal, self.cfg, self.warmup_steps = journal, cfg, warmup_steps
        self.phase = journal.current_phase() or "warmup"
        self.events = []
        self.ticks = 0

    def tick(self):
        self.ticks += 1

    def note_child_event(self, kind, detail=""):
        # As the real one: the journal records the event (audit, actor "daemon").
        self.journal.audit("daemon", kind, detail)
        self.events.append((kind, detail))
'''
namespace: dict = {}
exec(STAND_IN, namespace)
StandInSupervisor = namespace["StandInSupervisor"]


class RecordingLog:
    """A logger stand-in that keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    def _rec(self, level):
        return lambda event, **kw: self.events.append((level, event, kw))

    def __getattr__(self, level):
        return self._rec(level)

    def names(self) -> list[str]:
        return [e for _, e, _ in self.events]


def _factory(holder: list):
    def make(journal, cfg, *, warmup_steps):
        sup = StandInSupervisor(journal, cfg, warmup_steps=warmup_steps)
        holder.append(sup)
        return sup
    return make


def _config(dataset: Path, run_dir: Path, *, max_steps: int = 6, process: dict | None = None, **overrides):
    supervisor = {"process": {"backoff_seconds": 0.1, "max_restarts": 3, "stop_grace_seconds": 60,
                              **(process or {})},
                  "tick_seconds": 0.5, "digest_minutes": 0}
    return micro_config(dataset, run_dir, train__max_steps=max_steps, supervisor=supervisor, **overrides)


def _daemon_audit(run_dir: Path) -> list[str]:
    with Journal(journal_path(run_dir)) as j:
        return [a.action for a in j.audit_log(limit=None) if a.actor == "daemon"]


def _max_step(run_dir: Path) -> int | None:
    with Journal(journal_path(run_dir)) as j:
        latest = j.status_summary().latest_step
    return latest.step if latest else None


def _checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("checkpoint_*.pt"))


# -- real training, real children ------------------------------------------------------------------
@pytest.mark.slow
def test_crashed_child_is_restarted_and_resumes(espeak_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("SMART_TUNER_FAULTS", json.dumps([{"step": 4, "kind": "sigkill_self"}]))
    run = tmp_path / "run"
    sups: list = []
    log = RecordingLog()
    t0 = time.monotonic()
    rc = run_daemon(_config(espeak_dataset, run), log=log, supervisor_factory=_factory(sups), echo_child=False)
    elapsed = time.monotonic() - t0
    text = trainer_log_path(run).read_text()
    assert rc == 0, text
    assert [k for k, _ in sups[0].events] == ["started", "crashed", "restarted", "finished"]
    assert "SIGKILL" in sups[0].events[1][1] and "fault injected: sigkill_self" in sups[0].events[1][1]
    assert _daemon_audit(run) == ["started", "crashed", "restarted", "finished"]
    assert text.count("fault injected: sigkill_self") == 1  # the restarted child does not fire it again
    assert "resumed from" in text and "at step 3" in text
    assert _max_step(run) == 6 and _checkpoint_steps(run)[-1] == 6
    assert sups[0].ticks >= 1
    assert not child_pid_path(run).exists()
    assert "daemon ready" in log.names()
    print(f"crash + restart + resume: {elapsed:.1f} s")


@pytest.mark.slow
def test_hung_child_is_killed_and_restarted(espeak_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("SMART_TUNER_FAULTS", json.dumps([{"step": 4, "kind": "hang"}]))
    run = tmp_path / "run"
    sups: list = []
    t0 = time.monotonic()
    # No evaluation in these 6 steps: on a loaded machine the free-running one at step 3 can
    # outlast the 4 s hang limit itself, and the kill would come before the injected hang.
    rc = run_daemon(_config(espeak_dataset, run, process={"hang_seconds": 4}, eval__every_steps=100),
                    log=RecordingLog(), supervisor_factory=_factory(sups), echo_child=False)
    elapsed = time.monotonic() - t0
    assert rc == 0, trainer_log_path(run).read_text()
    kinds = [k for k, _ in sups[0].events]
    assert kinds == ["started", "hung", "restarted", "finished"], sups[0].events
    assert "no telemetry for" in sups[0].events[1][1]
    assert _max_step(run) == 6
    assert "resumed from" in trainer_log_path(run).read_text()
    print(f"hang + kill + restart: {elapsed:.1f} s")


def _daemon_script(tmp_path: Path, config_path: Path) -> Path:
    (tmp_path / "standin.py").write_text(STAND_IN)
    script = tmp_path / "daemon_main.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from agent.logs import configure_logging, get_logger
        configure_logging("test-run", json=True)
        from agent.daemon import run_daemon
        from trainer.config import load_config
        from standin import StandInSupervisor
        sys.exit(run_daemon(load_config({str(config_path)!r}), log=get_logger(),
                            supervisor_factory=StandInSupervisor, echo_child=True))
    """))
    return script


class _Lines:
    """Reads a process's stdout in a thread, timestamping each line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, predicate, timeout: float) -> tuple[float, str] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in list(self.lines):
                if predicate(line):
                    return t, line
            time.sleep(0.05)
        return None

    def join(self):
        self._thread.join(timeout=10)
        return [line for _, line in self.lines]


def _json_events(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def _wait_for_step(run_dir: Path, step: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal_path(run_dir).exists():
            latest = _max_step(run_dir)
            if latest is not None and latest >= step:
                return latest
        time.sleep(0.2)
    raise AssertionError(f"no telemetry for step {step} within {timeout} s")


@pytest.mark.slow
def test_sigterm_to_daemon_checkpoints_child_and_exits_0(espeak_dataset, tmp_path):
    run = tmp_path / "run"
    cfg = _config(espeak_dataset, run, max_steps=10_000, process={"hang_seconds": 60})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    script = _daemon_script(tmp_path, config_path)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=ROOT)
    reader = _Lines(proc)
    try:
        ready = reader.wait_for(lambda line: '"daemon ready"' in line, timeout=30)
        assert ready is not None, "\n".join(line for _, line in reader.lines)
        wall_ready = ready[0] - t0
        event = json.loads(ready[1])
        print(f"ready: {event['seconds']:.3f} s in run_daemon, {event['since_process_start']:.3f} s since the "
              f"process started, {wall_ready:.3f} s from Popen to the log line")
        assert event["run_id"] == "test-run" and event["phase"] == "warmup"
        assert event["since_process_start"] < 2.0 and wall_ready < 2.0
        # The child's output is echoed to the daemon's stdout.
        assert reader.wait_for(lambda line: line.startswith("step       2"), timeout=60) is not None
        _wait_for_step(run, 2, timeout=30)
        pid = json.loads(child_pid_path(run).read_text())["pid"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = reader.join()
    text = trainer_log_path(run).read_text()
    assert "stopped at step" in text and "SIGTERM" in text, text
    stopped_at = int(text.split("stopped at step ")[1].split(":")[0])
    assert _checkpoint_steps(run)[-1] == stopped_at >= 2
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    events = _json_events(lines)
    assert [e["event"] for e in events if e["event"].startswith("trainer ")] == ["trainer started",
                                                                                  "trainer stopped"]
    assert all(e["run_id"] == "test-run" for e in events)
    assert _daemon_audit(run) == ["started", "stopped"]
    assert not child_pid_path(run).exists()


@pytest.mark.slow
def test_daemon_killed_with_sigkill_restarts_stops_orphan_and_resumes(espeak_dataset, tmp_path):
    run = tmp_path / "run"
    cfg = _config(espeak_dataset, run, max_steps=16, eval__every_steps=8, checkpoint__every_steps=8)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    script = _daemon_script(tmp_path, config_path)
    first = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             cwd=ROOT)
    try:
        _wait_for_step(run, 2, timeout=60)
    finally:
        first.kill()  # kill -9 of the daemon; its child trains on
        first.wait()
    orphan = json.loads(child_pid_path(run).read_text())["pid"]
    assert Path(f"/proc/{orphan}").exists()

    sups: list = []
    log = RecordingLog()
    t0 = time.monotonic()
    rc = run_daemon(cfg, log=log, supervisor_factory=_factory(sups), echo_child=False)
    elapsed = time.monotonic() - t0
    text = trainer_log_path(run).read_text()
    assert rc == 0, text
    assert "orphaned trainer stopped" in log.names()
    assert not Path(f"/proc/{orphan}").exists() or "Z" in Path(f"/proc/{orphan}/stat").read_text().split(")")[1][:3]
    audit = _daemon_audit(run)
    assert audit[:1] == ["started"] and audit[1:] == ["orphan_stopped", "started", "finished"], audit
    # The orphan wrote a final checkpoint on SIGTERM; the new child resumed from it.
    stops = [line for line in text.splitlines() if line.startswith("stopped at step ")]
    assert stops[0].endswith(": SIGTERM") and stops[-1].endswith(": max_steps"), stops
    orphan_stop = int(stops[0].split()[3].rstrip(":"))
    resumed = [line for line in text.splitlines() if line.startswith("resumed from")]
    assert len(resumed) == 1 and resumed[0].endswith(f"at step {orphan_stop}"), resumed
    assert _max_step(run) == 16
    print(f"restarted daemon (orphan stop + resume + finish): {elapsed:.1f} s; orphan stopped at step {orphan_stop}")


# -- start-up cost ---------------------------------------------------------------------------------
def test_daemon_imports_no_heavy_modules():
    code = ("import sys, time; t = time.perf_counter(); import agent.daemon, agent.logs, agent.faults; "
            "import apscheduler.schedulers.background; "
            "print(time.perf_counter() - t); "
            "print([m for m in ('torch', 'mlflow', 'optuna', 'aiogram', 'librosa') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    seconds, heavy = done.stdout.splitlines()
    assert heavy == "[]"
    print(f"import agent.daemon: {float(seconds):.3f} s")


# -- restart policy and safety, with a stand-in child (no torch) -------------------------------------
def _quick_config(tmp_path: Path, **process):
    return micro_config(tmp_path / "ds", tmp_path / "run", supervisor={
        "process": {"backoff_seconds": 0.05, "backoff_max_seconds": 0.2, "stop_grace_seconds": 5, **process},
        "tick_seconds": 0.2, "digest_minutes": 0.005})


def test_gives_up_after_max_restarts_without_progress(tmp_path):
    sups: list = []
    log = RecordingLog()
    rc = run_daemon(_quick_config(tmp_path, max_restarts=2), log=log, supervisor_factory=_factory(sups),
                    echo_child=False, child_command=[sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    assert rc == 1
    kinds = [k for k, _ in sups[0].events]
    assert kinds == ["started", "crashed", "restarted", "crashed", "restarted", "crashed", "gave_up"]
    assert "exit code 3" in sups[0].events[1][1] and "boom" in sups[0].events[1][1]
    delays = [f["in_seconds"] for _, e, f in log.events if e == "restarting trainer"]
    assert delays == [0.05, 0.1]


def test_user_error_in_child_is_not_retried(tmp_path):
    sups: list = []
    rc = run_daemon(_quick_config(tmp_path), log=RecordingLog(), supervisor_factory=_factory(sups), echo_child=False,
                    child_command=[sys.executable, "-c",
                                   "import sys; print('error: no such file', file=sys.stderr); sys.exit(2)"])
    assert rc == 2
    assert [k for k, _ in sups[0].events] == ["started", "crashed", "gave_up"]
    assert "error: no such file" in sups[0].events[-1][1]


def test_child_echo_digest_and_ticks(tmp_path):
    import io

    out = io.StringIO()
    sups: list = []
    log = RecordingLog()
    rc = run_daemon(_quick_config(tmp_path), log=log, supervisor_factory=_factory(sups), echo_stream=out,
                    child_command=[sys.executable, "-c",
                                   "import time\nfor i in range(3):\n print('line', i, flush=True); time.sleep(0.4)"])
    assert rc == 0
    assert "line 0\nline 1\nline 2\n" in out.getvalue()
    assert sups[0].ticks >= 2
    with Journal(journal_path(tmp_path / "run")) as j:
        digests = [m for m in j.outbox_messages() if m.kind == "digest"]
        assert not j.outbox_pending()  # no token: the console notifier delivered them all
    assert digests and "phase:" in digests[0].text and "no training steps yet" in digests[0].text
    notified = [kw["outbox_id"] for level, event, kw in log.events if event == "notification"]
    assert sorted(notified) == sorted(set(notified)) and {m.id for m in digests} <= set(notified)
    written = yaml.safe_load(child_config_path(tmp_path / "run").read_text())
    assert written["supervisor"]["process"]["backoff_seconds"] == 0.05
    assert written["run_dir"] == str(tmp_path / "run")


def test_second_daemon_on_the_same_run_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(daemon_lock_path(run), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4242\n")
    try:
        with pytest.raises(UserError, match="already supervised by a running daemon \\(pid 4242\\)"):
            run_daemon(_quick_config(tmp_path), log=RecordingLog(), supervisor_factory=_factory([]),
                       child_command=[sys.executable, "-c", "pass"])
    finally:
        os.close(fd)


def test_invalid_supervisor_section_is_a_user_error(tmp_path):
    cfg = micro_config(tmp_path / "ds", tmp_path / "run", supervisor={"process": {"hang_secs": 5}})
    with pytest.raises(UserError, match="supervisor.process.hang_secs"):
        run_daemon(cfg, log=RecordingLog(), supervisor_factory=_factory([]))


def test_orphan_is_recognised_by_cmdline_and_stopped(tmp_path):
    cfg = _quick_config(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    config_arg = str(child_config_path(run).resolve())
    # Looks like this run's agent.child in /proc/PID/cmdline; ignores SIGTERM so SIGKILL is needed.
    orphan = subprocess.Popen([sys.executable, "-c", "import signal, time\nsignal.signal(signal.SIGTERM, "
                               "signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)",
                               "-m", "agent.child", "--config", config_arg], stdout=subprocess.PIPE, text=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "agent.child"])
    try:
        assert orphan.stdout.readline() == "up\n"
        child_pid_path(run).write_text(json.dumps({"pid": orphan.pid, "config": config_arg}))
        log = RecordingLog()
        cfg.supervisor["process"]["stop_grace_seconds"] = 1
        rc = run_daemon(cfg, log=log, supervisor_factory=_factory([]), echo_child=False,
                        child_command=[sys.executable, "-c", "pass"])
        assert rc == 0
        assert orphan.wait(timeout=5) == -signal.SIGKILL
        stopped = [f for _, e, f in log.events if e == "orphaned trainer stopped"]
        assert stopped and stopped[0]["signal"] == "SIGKILL"
        # A pid file naming a process that is not this run's trainer is ignored (and removed).
        child_pid_path(run).write_text(json.dumps({"pid": bystander.pid}))
        assert run_daemon(cfg, log=RecordingLog(), supervisor_factory=_factory([]), echo_child=False,
                          child_command=[sys.executable, "-c", "pass"]) == 0
        assert bystander.poll() is None
    finally:
        for p in (orphan, bystander):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_sigterm_during_backoff_exits_0(tmp_path):
    sups: list = []
    cfg = _quick_config(tmp_path, backoff_seconds=30, backoff_max_seconds=30)
    timer = threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    t0 = time.monotonic()
    try:
        rc = run_daemon(cfg, log=RecordingLog(), supervisor_factory=_factory(sups), echo_child=False,
                        child_command=[sys.executable, "-c", "import sys; sys.exit(1)"])
    finally:
        timer.cancel()
    assert rc == 0 and time.monotonic() - t0 < 10
    assert [k for k, _ in sups[0].events] == ["started", "crashed", "stopped"]


def test_digest_text_from_an_empty_journal(tmp_path):
    with Journal(tmp_path / "j.sqlite") as j:
        text = digest_text(j.status_summary(), "run-x")
    assert text.splitlines()[:3] == ["Smart Tuner digest: run-x", "phase: not yet known", "no training steps yet"]


# -- fault specs -------------------------------------------------------------------------------------
def test_fault_spec_parsing_and_journal_memory(tmp_path):
    assert parse_faults('[{"step": 9, "kind": "hang"}, {"step": 3, "kind": "nan_batch"}]') == [
        Fault(3, "nan_batch"), Fault(9, "hang")]
    for bad, msg in [("[{", "not valid JSON"), ('{"step": 1}', "JSON list"),
                     ('[{"step": 0, "kind": "hang"}]', "integer >= 1"),
                     ('[{"step": 1, "kind": "boom"}]', "unknown kind")]:
        with pytest.raises(UserError, match=msg):
            parse_faults(bad)
    with Journal(tmp_path / "j.sqlite") as j:
        j.audit("faults", "lr_x100", "step 5: fired at step 5 in pid 1")
        injector = FaultInjector([Fault(5, "lr_x100"), Fault(7, "lr_x100")], j)
    assert injector.pending == [Fault(7, "lr_x100")]


def _silent_child(tmp_path: Path, announce_stop: bool, sleep: float = 2.5) -> list[str]:
    script = tmp_path / "silent_child.py"
    script.write_text(textwrap.dedent(f"""
        import os, time
        from agent.journal import Journal
        if {announce_stop!r}:
            with Journal({str(journal_path(tmp_path / "run"))!r}) as j:
                j.set_state("child_status", {{"pid": os.getpid(), "status": "stopping", "reason": "max_steps"}})
        time.sleep({sleep!r})
    """))
    return [sys.executable, str(script)]


def test_silent_child_is_killed_as_hung_unless_its_loop_has_ended(tmp_path):
    sups: list = []
    cfg = _quick_config(tmp_path, hang_seconds=0.6, max_restarts=0)
    rc = run_daemon(cfg, log=RecordingLog(), supervisor_factory=_factory(sups), echo_child=False,
                    startup_grace_seconds=0, child_command=_silent_child(tmp_path, announce_stop=False))
    assert rc == 1
    assert [k for k, _ in sups[0].events] == ["started", "hung", "gave_up"]
    assert "no telemetry for" in sups[0].events[1][1]

    # The announcing child needs time to import and write its status on a loaded machine:
    # a longer hang limit, and silence well past it after the announcement.
    sups.clear()
    cfg = _quick_config(tmp_path, hang_seconds=3.0, max_restarts=0)
    rc = run_daemon(cfg, log=RecordingLog(), supervisor_factory=_factory(sups), echo_child=False,
                    startup_grace_seconds=0, child_command=_silent_child(tmp_path, announce_stop=True, sleep=6.0))
    assert rc == 0
    assert [k for k, _ in sups[0].events] == ["started", "finished"]


def test_paused_run_is_not_a_hang(tmp_path):
    sups: list = []
    run = tmp_path / "run"
    with Journal(journal_path(run)) as j:  # the trainer applied a pause (from anyone)
        from trainer.control import CommandResult, Pause

        pause = Pause()
        j.enqueue_command(pause, source="cli")
        j.acknowledge(CommandResult(command_id=pause.id, kind="pause", ok=True, detail="paused", step=3))
        assert j.is_paused()
    rc = run_daemon(_quick_config(tmp_path, hang_seconds=0.6, max_restarts=0), log=RecordingLog(),
                    supervisor_factory=_factory(sups), echo_child=False, startup_grace_seconds=0,
                    child_command=[sys.executable, "-c", "import time; time.sleep(2.5)"])
    assert rc == 0 and [k for k, _ in sups[0].events] == ["started", "finished"]


@pytest.mark.slow
def test_nan_batch_and_lr_faults_act_on_a_real_trainer(espeak_dataset, tmp_path):
    from trainer.callbacks import BaseCallback
    from trainer.loop import Trainer

    class Record(BaseCallback):
        def __init__(self):
            self.steps = {}

        def on_step(self, trainer, record):
            self.steps[record.step] = record

    rec = Record()
    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=4, eval__every_steps=100,
                       checkpoint__every_steps=100)
    injector = FaultInjector(parse_faults('[{"step": 2, "kind": "nan_batch"}, {"step": 3, "kind": "lr_x100"}]'),
                             print_fn=lambda *a, **k: None)
    Trainer(cfg, callbacks=[injector, rec]).train()
    assert [rec.steps[s].finite for s in (1, 2, 3, 4)] == [True, True, False, True]
    assert rec.steps[4].skipped_steps == 1
    assert rec.steps[4].lr == pytest.approx(rec.steps[3].lr * 100)
    assert injector.pending == [] and injector.fired == {("nan_batch", 2), ("lr_x100", 3)}


def test_policy_window_spans_the_evaluations_the_overfit_rule_compares():
    from agent.config import SupervisorConfig
    from agent.daemon import window_for_evaluations

    cfg = SupervisorConfig()
    assert cfg.window_steps == 2000
    # NVIDIA's interval: 4 evaluations of 1000 steps back, plus the 100-step median.
    assert window_for_evaluations(cfg, 1000).window_steps == 4100
    assert window_for_evaluations(cfg, 50).window_steps == 2000  # already wide enough


# -- a pause outlives restarts; only a real end of the run is "finished" ------------------------------
_kill_daemon_and_child = kill_daemon_and_child


def _journal_paused(run_dir: Path) -> bool:
    with Journal(journal_path(run_dir), readonly=True) as j:
        return j.is_paused()


@pytest.mark.slow
def test_pause_survives_a_daemon_restart_until_resumed(espeak_dataset, tmp_path, capsys):
    from agent.cli import main as cli_main

    from conftest import wait_until

    run = tmp_path / "run"
    cfg = _config(espeak_dataset, run, max_steps=10_000, eval__every_steps=10_000,
                  checkpoint__every_steps=10_000, process={"hang_seconds": 60})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    script = _daemon_script(tmp_path, config_path)

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=ROOT)

    daemon = start()
    try:
        _wait_for_step(run, 2, timeout=120)
        assert cli_main(["pause", "--run-dir", str(run)]) == 0
        wait_until(lambda: _journal_paused(run), 60, "the trainer to apply the pause")
        daemon.send_signal(signal.SIGTERM)  # the daemon stops (final checkpoint) and starts again
        assert daemon.wait(timeout=60) == 0
        stopped = _max_step(run)
        daemon = start()
        # The new trainer has resumed from the final checkpoint: it must stay paused.
        wait_until(lambda: trainer_log_path(run).read_text().count("resumed from") == 1, 120,
                   "the new trainer to resume")
        time.sleep(4)  # telemetry reaches the journal within about 1 s
        assert _max_step(run) == stopped, trainer_log_path(run).read_text()[-2000:]
        assert "starting paused" in trainer_log_path(run).read_text()
        capsys.readouterr()
        assert cli_main(["status", "--run-dir", str(run), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["paused"] is True
        assert cli_main(["resume", "--run-dir", str(run)]) == 0
        wait_until(lambda: (_max_step(run) or 0) > stopped, 60, "training to go on after resume")
        assert cli_main(["stop", "--run-dir", str(run)]) == 0
        assert daemon.wait(timeout=60) == 0
        daemon = None
    finally:
        _kill_daemon_and_child(daemon, run)
    assert not _journal_paused(run)


@pytest.mark.slow
def test_trainer_stopped_by_a_sigterm_from_elsewhere_is_restarted(espeak_dataset, tmp_path):
    run = tmp_path / "run"
    cfg = _config(espeak_dataset, run, max_steps=60, eval__every_steps=10_000, checkpoint__every_steps=10_000)
    killed: list[int] = []

    def sigterm_the_first_trainer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                stepping = any(line.startswith("step ") for line in trainer_log_path(run).read_text().splitlines())
                pid = json.loads(child_pid_path(run).read_text())["pid"]
            except (OSError, ValueError, KeyError):
                stepping = False
            if stepping:
                os.kill(pid, signal.SIGTERM)  # not through the daemon
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=sigterm_the_first_trainer, daemon=True)
    killer.start()
    sups: list = []
    rc = run_daemon(cfg, log=RecordingLog(), supervisor_factory=_factory(sups), echo_child=False)
    killer.join(timeout=5)
    text = trainer_log_path(run).read_text()
    assert killed, text
    stops = [line for line in text.splitlines() if line.startswith("stopped at step ")]
    assert stops[0].endswith(": SIGTERM") and stops[-1].endswith(": max_steps"), stops
    assert int(stops[0].split()[3].rstrip(":")) < 60  # it was stopped before the end
    assert rc == 0
    kinds = [k for k, _ in sups[0].events]
    assert kinds == ["started", "crashed", "restarted", "finished"], sups[0].events
    assert "stop by SIGTERM from outside the daemon" in sups[0].events[1][1]
    assert "(max_steps)" in sups[0].events[-1][1]
    assert _max_step(run) == 60


def test_child_that_exits_0_after_an_outside_stop_is_restarted_and_a_finished_one_is_not(tmp_path):
    """The stop reason the child reports decides: max_steps ends the run, SIGTERM does not."""
    script = tmp_path / "reporting_child.py"
    script.write_text(textwrap.dedent(f"""
        import os, pathlib
        from agent.journal import Journal
        first = pathlib.Path({str(tmp_path / "first-child-ran")!r})
        reason = "max_steps" if first.exists() else "SIGTERM"
        first.touch()
        with Journal({str(journal_path(tmp_path / "run"))!r}) as j:
            j.set_state("child_status", {{"pid": os.getpid(), "status": "stopping", "reason": reason}})
    """))
    sups: list = []
    rc = run_daemon(_quick_config(tmp_path), log=RecordingLog(), supervisor_factory=_factory(sups),
                    echo_child=False, child_command=[sys.executable, str(script)])
    assert rc == 0
    assert [k for k, _ in sups[0].events] == ["started", "crashed", "restarted", "finished"], sups[0].events


def test_new_journal_starts_a_new_history_beside_checkpoints_only_when_asked(tmp_path):
    cfg = _quick_config(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint_00000198.pt").write_bytes(b"weights")
    child = [sys.executable, "-c", "pass"]
    with pytest.raises(UserError, match=r"is missing, but .* holds checkpoints \(newest: step 198\)"):
        run_daemon(cfg, log=RecordingLog(), supervisor_factory=_factory([]), echo_child=False, child_command=child)
    assert not journal_path(run).exists()
    assert run_daemon(cfg, log=RecordingLog(), supervisor_factory=_factory([]), echo_child=False,
                      child_command=child, new_journal=True) == 0
    assert _daemon_audit(run)[:2] == ["new_journal", "started"]
    # From then on the journal holds the run's history: no flag needed.
    assert run_daemon(cfg, log=RecordingLog(), supervisor_factory=_factory([]), echo_child=False,
                      child_command=child) == 0
