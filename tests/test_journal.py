"""The run journal and the journal-backed control port: schema, compare-and-set
decisions, idempotent commands, batching, crash safety and cost."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from agent.journal import SCHEMA_VERSION, Journal, JournalError, JournalVersionError
from agent.port import JournalPort
from trainer.control import (
    CheckpointRecord,
    CommandResult,
    EvalRecord,
    Pause,
    Rollback,
    SetLearningRate,
    StepTelemetry,
)

from journal_helpers import integrity_check, meta, pending_commands, schema_version


def step_record(step: int, **overrides) -> StepTelemetry:
    values = dict(step=step, epoch=step // 100, wall_time=1000.0 + step, lr=1e-3, loss=2.0 - step * 1e-4,
                  mel_loss=1.0, mel_postnet_loss=0.9, gate_loss=0.1, guided_attention_loss=0.0, grad_norm=1.5,
                  grad_clip=1.0, guided_attention_weight=0.0, gate_pos_weight=5.0, step_seconds=0.1,
                  skipped_steps=0, finite=True)
    values.update(overrides)
    return StepTelemetry(**values)


def eval_record(step: int, **overrides) -> EvalRecord:
    values = dict(step=step, wall_time=2000.0 + step, val_loss=1.0, val_mel_loss=0.5, val_mel_postnet_loss=0.4,
                  val_gate_loss=0.1, val_guided_attention_loss=0.0, diagonality=0.3, focus=0.4,
                  aligned_fraction=0.1, gate_accuracy=0.9)
    values.update(overrides)
    return EvalRecord(**values)


def ack(command, ok=True, step=1, detail="done", duplicate=False) -> CommandResult:
    return CommandResult(command_id=command.id, kind=command.kind, ok=ok, detail=detail, step=step,
                         duplicate=duplicate)


REPO = Path(__file__).resolve().parents[1]


def child(*args: str) -> subprocess.Popen:
    """A Python child process that imports this checkout's packages wherever it runs."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE, text=True, env=env)


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "run" / "journal.sqlite"


# -- schema --------------------------------------------------------------------------------
def test_schema_is_created_in_wal_mode_and_reopens(path):
    with Journal(path) as j:
        assert schema_version(j) == SCHEMA_VERSION
        j.set_state("phase", {"name": "aligning", "evals_aligned": 2})
        created = meta(j)["created_at"]
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meta", "telemetry", "evals", "phases", "proposals", "commands", "checkpoints", "outbox", "audit",
            "state"} <= tables
    con.close()
    with Journal(path, create=False) as j:
        assert schema_version(j) == SCHEMA_VERSION and meta(j)["created_at"] == created
        assert j.get_state("phase") == {"name": "aligning", "evals_aligned": 2}
        assert j.get_state("missing", 7) == 7
        assert [a.action for a in j.audit_log()] == ["schema"]  # created once, not re-migrated


def test_a_newer_schema_is_refused_and_a_missing_journal_is_not_created(path, tmp_path):
    Journal(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(JournalVersionError, match="version 99.*upgrade smart-tuner"):
        Journal(path)
    with pytest.raises(JournalError, match="no run journal"):
        Journal(tmp_path / "nope.sqlite", create=False)
    assert not (tmp_path / "nope.sqlite").exists()


def test_an_older_schema_is_migrated_in_place(path, monkeypatch):
    import agent.journal.schema as journal_schema

    with Journal(path) as j:
        j.set_state("kept", 1)
    now = journal_schema.SCHEMA_VERSION
    monkeypatch.setattr(journal_schema, "SCHEMA_VERSION", now + 1)
    monkeypatch.setitem(journal_schema.MIGRATIONS, now + 1, ["ALTER TABLE proposals ADD COLUMN risk_score REAL"])
    with Journal(path) as j:
        assert schema_version(j) == now + 1 and j.get_state("kept") == 1
        assert j.audit_log()[-1].detail == f"schema version {now} -> {now + 1}"
    con = sqlite3.connect(path)
    assert "risk_score" in [r[1] for r in con.execute("PRAGMA table_info(proposals)")]
    con.close()


def test_two_processes_creating_one_journal_at_once(path):
    script = "import sys; from agent.journal import Journal; Journal(sys.argv[1]).close(); print('ok')"
    procs = [child(script, str(path)) for _ in range(3)]
    assert [p.communicate(timeout=60)[0].strip() for p in procs] == ["ok"] * 3
    with Journal(path) as j:
        assert schema_version(j) == SCHEMA_VERSION and integrity_check(j) == "ok"


# -- proposals and decisions ---------------------------------------------------------------
def test_decisions_are_compare_and_set_between_two_journals_in_threads(path):
    a, b = Journal(path), Journal(path)
    ids = [a.add_proposal(policy="spike", kind="rollback", actions=[Rollback(skip_batches=2)], reason="spike",
                          mode="ask").id for _ in range(30)]
    wins: dict[str, list[int]] = {"cli": [], "bot": []}
    barrier = threading.Barrier(2)

    def decider(j: Journal, name: str, verdict: str) -> None:
        barrier.wait()
        for pid in ids:
            if j.decide(pid, verdict, name):
                wins[name].append(pid)

    threads = [threading.Thread(target=decider, args=(a, "cli", "approved")),
               threading.Thread(target=decider, args=(b, "bot", "rejected"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins["cli"] + wins["bot"]) == ids and not set(wins["cli"]) & set(wins["bot"])
    for pid in ids:
        p = a.get_proposal(pid)
        won_by_cli = pid in wins["cli"]
        assert (p.status, p.decided_by) == (("approved", "cli") if won_by_cli else ("rejected", "bot"))
        assert len(a.commands(proposal_id=pid)) == (1 if won_by_cli else 0)  # commands only with an approval
    a.close()
    b.close()


RACE_SCRIPT = textwrap.dedent("""
    import sys, time
    from agent.journal import Journal
    path, name, verdict, start = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    j = Journal(path)
    ids = [p.id for p in j.pending_proposals()]
    while time.time() < start:
        pass
    print(" ".join(str(pid) for pid in ids if j.decide(pid, verdict, name)), flush=True)
""")


def test_decisions_race_between_two_processes_exactly_one_wins(path):
    with Journal(path) as j:
        ids = [j.add_proposal(policy="lr", kind="set_lr", actions=[SetLearningRate(factor=0.5)], reason="r").id
               for _ in range(40)]
    start = time.time() + 2.0
    procs = [child(RACE_SCRIPT, str(path), name, verdict, repr(start))
             for name, verdict in (("cli", "approved"), ("telegram", "rejected"))]
    won = [[int(x) for x in p.communicate(timeout=60)[0].split()] for p in procs]
    assert sorted(won[0] + won[1]) == ids
    with Journal(path) as j:
        for pid in ids:
            p = j.get_proposal(pid)
            assert p.decided_by == ("cli" if pid in won[0] else "telegram")
            assert len(j.commands(proposal_id=pid)) == (1 if pid in won[0] else 0)
        assert sum(a.action in ("approved", "rejected") for a in j.audit_log(None)) == len(ids)


def test_proposal_lifecycle_applied_failed_outcome_and_expiry(path):
    j = Journal(path)
    lr = SetLearningRate(factor=0.5)
    auto = j.add_proposal(policy="grad", kind="set_lr", actions=[lr], reason="grad norm x10",
                          evidence={"grad_norm": [1.0, 12.0, math.inf]}, aim="grad_norm", mode="auto", step=40,
                          approve_by="auto")
    assert auto.status == "approved" and auto.decided_by == "auto"
    assert auto.evidence["grad_norm"][2] == math.inf
    assert [c.id for c in pending_commands(j)] == [lr.id]  # born approved, command queued with it
    assert not j.record_outcome(auto.id, "improved")  # not applied yet
    assert j.acknowledge(ack(lr, step=41))
    p = j.get_proposal(auto.id)
    assert (p.status, p.applied_step) == ("applied", 41)
    assert j.record_outcome(auto.id, "improved", "grad norm back to 1.2")
    assert not j.record_outcome(auto.id, "not_improved")  # set once
    assert j.get_proposal(auto.id).outcome == "improved"

    back, halve = Rollback(step=20), SetLearningRate(factor=0.7)
    two = j.add_proposal(policy="spike", kind="rollback", actions=[back, halve], reason="spike", mode="ask",
                         expires_at=100.0)
    assert j.decide(two.id, "approved", "cli")
    assert not j.decide(two.id, "rejected", "bot")
    j.acknowledge(ack(back, ok=False, detail="no checkpoint at step 20"))
    p = j.get_proposal(two.id)
    assert p.status == "failed" and "no checkpoint" in p.outcome_detail

    tune = j.add_proposal(policy="plateau", kind="tune", actions=[{"kind": "start_tuning", "trials": 8}],
                          reason="plateau", mode="ask", expires_at=100.0)
    late = j.add_proposal(policy="plateau", kind="tune", actions=[{"kind": "start_tuning"}], reason="plateau",
                          expires_at=500.0)
    assert [p.id for p in j.due_proposals(now=200.0)] == [tune.id]
    assert j.decide(tune.id, "approved", "timeout", now=200.0)
    assert j.commands(proposal_id=tune.id) == []  # not a trainer command: the supervisor applies it
    assert j.finish_proposal(tune.id, "applied", step=50, detail="study started")
    assert not j.finish_proposal(tune.id, "failed")
    assert [p.id for p in j.pending_proposals()] == [late.id]
    assert [p.id for p in j.proposals(["applied", "failed"])] == [tune.id, two.id, auto.id]
    with pytest.raises(ValueError):
        j.decide(late.id, "applied", "cli")
    with pytest.raises(Exception):
        j.add_proposal(policy="x", kind="set_lr", actions=[{"kind": "set_lr", "factor": -1}], reason="bad")
    j.close()


# -- commands --------------------------------------------------------------------------------
def test_commands_are_idempotent_on_id(path):
    j = Journal(path)
    pause = Pause()
    assert j.enqueue_command(pause, "cli")
    assert not j.enqueue_command(pause.model_dump(), "telegram")  # same id: ignored
    assert not j.enqueue_command(pause.model_dump_json(), "cli")
    rows = j.commands()
    assert len(rows) == 1 and rows[0].source == "cli" and rows[0].command() == pause
    assert j.mark_delivered([pause.id]) == 1
    assert j.acknowledge(ack(pause, step=7, detail="paused"))
    assert not j.acknowledge(ack(pause, step=9, detail="already applied", duplicate=True))
    row = j.get_command(pause.id)
    assert (row.status, row.step, row.detail, row.duplicate, row.deliveries) == ("acknowledged", 7, "paused",
                                                                               False, 1)
    assert row.result() == ack(pause, step=7, detail="paused")
    assert j.mark_delivered([pause.id]) == 0  # acknowledged stays acknowledged
    assert pending_commands(j) == [] and j.unacknowledged_commands() == []
    # An acknowledgement for a command the journal never saw is kept, not lost.
    stray = SetLearningRate(value=1e-4)
    assert j.acknowledge(ack(stray))
    assert j.get_command(stray.id).payload is None and j.get_command(stray.id).ok
    j.close()


# -- the port ------------------------------------------------------------------------------
def test_port_round_trip(path):
    supervisor = Journal(path)
    port = JournalPort(path, flush_every_steps=64, flush_seconds=60)
    for step in range(1, 1001):
        port.emit_step(step_record(step))
        if step == 500:
            assert port.poll() == []
            lr = SetLearningRate(factor=0.5)
            supervisor.enqueue_command(lr, "supervisor")
            assert port.poll() == [lr]
            assert port.buffered == 0  # steps before a delivery are written first
            assert port.poll() == []  # delivered once
            assert supervisor.get_command(lr.id).status == "delivered"
            port.acknowledge(ack(lr, step=500))
    assert port.buffered == (1000 - 500) % 64
    port.emit_eval(eval_record(1000))
    assert port.buffered == 0
    assert [r.step for r in supervisor.latest_steps(3)] == [998, 999, 1000]
    port.emit_step(step_record(1001))
    port.emit_checkpoint(CheckpointRecord(step=1001, path="/ck/1001.pt", wall_time=3000.0, reason="periodic",
                                          val_loss=1.0, diagonality=0.3))
    port.emit_step(step_record(1002))
    port.close()
    port.close()  # idempotent
    assert [r.record.step for r in supervisor.telemetry_after(0)] == list(range(1, 1003))
    assert supervisor.latest_evals(5) == [eval_record(1000)]
    assert supervisor.get_command(lr.id).result().step == 500
    assert [(c.step, c.health) for c in supervisor.checkpoints()] == [(1001, "good")]
    summary = supervisor.status_summary()
    assert summary.latest_step.step == 1002 and summary.latest_eval.step == 1000
    assert summary.steps_per_second == pytest.approx(1.0)
    assert summary.latest_checkpoint.path == "/ck/1001.pt" and summary.open_commands == 0
    supervisor.close()


def test_port_flushes_on_time_and_on_poll_while_paused(path):
    port = JournalPort(path, flush_every_steps=1000, flush_seconds=0.05)
    reader = Journal(path)
    port.emit_step(step_record(1))
    port.emit_step(step_record(2))
    assert reader.latest_steps(10) == []
    time.sleep(0.06)
    port.poll()  # a paused trainer only polls
    assert [r.step for r in reader.latest_steps(10)] == [1, 2]
    port.emit_step(step_record(3))
    time.sleep(0.06)
    port.emit_step(step_record(4))
    assert [r.step for r in reader.latest_steps(10)] == [1, 2, 3, 4]
    port.close()
    reader.close()


def test_a_new_port_redelivers_what_a_dead_trainer_never_acknowledged(path):
    supervisor = Journal(path)
    stop, pause = Rollback(step=3), Pause()
    supervisor.enqueue_command(stop, "supervisor")
    first = JournalPort(path)
    assert first.poll() == [stop]
    first.journal.close()  # the trainer dies before acknowledging (no close, no flush)
    supervisor.enqueue_command(pause, "cli")
    second = JournalPort(path)
    assert second.poll() == [stop, pause]
    assert second.poll() == []
    second.acknowledge(ack(stop))
    second.acknowledge(ack(pause))
    second.close()
    third = JournalPort(path)
    assert third.poll() == []
    third.close()
    assert supervisor.get_command(stop.id).deliveries == 2
    supervisor.close()


def test_an_unreadable_command_is_answered_by_the_port(path):
    supervisor = Journal(path)
    con = sqlite3.connect(path)
    con.execute("INSERT INTO commands (id, created_at, kind, payload, source, status) "
                "VALUES ('bad1', 0, 'set_lr', '{\"kind\": \"set_lr\", \"factor\": -2}', 'cli', 'pending')")
    con.commit()
    con.close()
    port = JournalPort(path)
    port.emit_step(step_record(5))
    assert port.poll() == []
    row = supervisor.get_command("bad1")
    assert row.status == "acknowledged" and not row.ok and "unreadable" in row.detail and row.step == 5
    assert port.poll() == []
    port.close()
    supervisor.close()


def test_non_finite_values_round_trip(path):
    with JournalPort(path, flush_every_steps=1) as port:
        port.emit_step(step_record(1, loss=math.nan, grad_norm=math.inf, mel_loss=-math.inf, finite=False))
        port.emit_eval(eval_record(1, val_loss=math.nan))
        port.emit_checkpoint(CheckpointRecord(step=1, path="/ck/1.pt", wall_time=1.0, reason="periodic",
                                              val_loss=math.nan, finite=True))
        port.emit_checkpoint(CheckpointRecord(step=2, path="/ck/2.pt", wall_time=2.0, reason="periodic",
                                              val_loss=0.5, finite=False))
        port.emit_checkpoint(CheckpointRecord(step=3, path="/ck/3.pt", wall_time=3.0, reason="best", val_loss=0.4))
    with Journal(path) as j:
        (s,) = j.latest_steps(1)
        assert math.isnan(s.loss) and s.grad_norm == math.inf and s.mel_loss == -math.inf and not s.finite
        assert math.isnan(j.latest_evals(1)[0].val_loss)
        assert [c.health for c in j.checkpoints()] == ["good", "bad", "bad"]


# -- phases, state, outbox, audit -----------------------------------------------------------
def test_phases_state_outbox_and_audit(path):
    j = Journal(path)
    assert j.current_phase() is None
    first = j.record_phase("warmup", step=0, reason="start")
    assert (first.from_phase, first.to_phase) == (None, "warmup")
    assert j.record_phase("aligning", step=100, reason="warm-up over", expected_from="warmup",
                          state={"aligned_evals": 0}) is not None
    assert j.record_phase("stable", expected_from="warmup") is None  # lost the compare-and-set
    assert j.current_phase() == "aligning" and j.get_state("aligned_evals") == 0
    assert [(p.from_phase, p.to_phase) for p in j.phase_history()] == [(None, "warmup"), ("warmup", "aligning")]
    j.set_states({"aligned_evals": 3, "failures": {"spike": 1}})
    assert j.get_state("failures") == {"spike": 1}
    j.add_proposal(policy="p", kind="pause", actions=[Pause()], reason="r")
    summary = j.status_summary()
    assert summary.phase == "aligning" and len(summary.pending_proposals) == 1 and summary.latest_step is None

    m1 = j.outbox_put("proposal", "approve #1?", {"id": 1}, dedupe_key="proposal-1")
    assert j.outbox_put("proposal", "approve #1?", {"id": 1}, dedupe_key="proposal-1") is None
    m2 = j.outbox_put("digest", "all well")
    assert [m.id for m in j.outbox_pending()] == [m1, m2]
    j.outbox_mark_failed(m1, "telegram: timeout")
    j.outbox_mark_failed(m1, "telegram: timeout")
    assert [m.id for m in j.outbox_pending(max_attempts=2)] == [m2]
    assert [m.id for m in j.outbox_pending()] == [m1, m2]
    j.audit("cli", "pause", "by alice")
    assert j.audit_log(1)[0].detail == "by alice"
    j.close()


# -- crash safety ---------------------------------------------------------------------------
CRASH_SCRIPT = textwrap.dedent("""
    import sys
    from agent.journal import Journal
    from agent.port import JournalPort
    from trainer.control import Rollback, StepTelemetry
    path, step, decide = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "decide"
    port = JournalPort(path, flush_every_steps=7, flush_seconds=3600)
    j = Journal(path)
    while True:
        step += 1
        port.emit_step(StepTelemetry(step=step, epoch=0, wall_time=float(step), lr=1e-3, loss=1.0, mel_loss=1.0,
            mel_postnet_loss=1.0, gate_loss=0.1, guided_attention_loss=0.0, grad_norm=1.0, grad_clip=1.0,
            guided_attention_weight=0.0, gate_pos_weight=5.0, step_seconds=0.01, skipped_steps=0, finite=True))
        if port.buffered == 0:
            print("flushed", step, flush=True)
        if decide and step % 3 == 0:
            p = j.add_proposal(policy="crash", kind="rollback", actions=[Rollback(skip_batches=step)], reason="r")
            if j.decide(p.id, "approved", "child"):
                print("decided", p.id, flush=True)
""")


def test_a_writer_killed_mid_batch_leaves_an_intact_journal(path):
    decided: set[int] = set()
    last_flushed = 0
    # Rounds with decisions (fsynced; often killed inside one) and telemetry-only rounds
    # (the child spends most of its time inside a batch's transaction).
    for round_, (mode, lines_before_kill) in enumerate([("decide", 30), ("steps", 300), ("decide", 100),
                                                         ("steps", 1000), ("decide", 200)]):
        with Journal(path) as j:
            start = j.latest_steps(1)[0].step if round_ else 0
        writer = child(CRASH_SCRIPT, str(path), str(start), mode)
        lines = []
        for _ in range(lines_before_kill):
            lines.append(writer.stdout.readline())
        os.kill(writer.pid, signal.SIGKILL)
        lines += writer.stdout.read().splitlines()  # whatever it printed was committed first
        writer.wait(timeout=30)
        assert writer.returncode == -signal.SIGKILL
        for line in lines:
            what, _, value = line.strip().partition(" ")
            if what == "decided":
                decided.add(int(value))
            elif what == "flushed":
                last_flushed = max(last_flushed, int(value))

        with Journal(path) as j:
            assert integrity_check(j) == "ok"
            rows = j.telemetry_after(0)
            steps = [r.record.step for r in rows]
            # Contiguous from 1, whole batches only (every batch is 7 rows): nothing torn.
            assert steps == list(range(1, len(steps) + 1))
            assert len(steps) % 7 == 0 and len(steps) >= last_flushed
            con = sqlite3.connect(path)
            assert all(r[0] == r[1] for r in con.execute(
                "SELECT step, CAST(json_extract(record, '$.step') AS INTEGER) FROM telemetry"))
            con.close()
            approved = {p.id: p for p in j.proposals("approved")}
            assert decided <= set(approved), "a committed decision was lost"
            for pid in decided:
                # The approval and its command were one transaction.
                (command,) = j.commands(proposal_id=pid)
                assert command.command() == approved[pid].commands()[0]
    assert len(decided) > 20 and last_flushed > 100


# -- cost -------------------------------------------------------------------------------------
def test_emit_step_and_poll_cost_microseconds(path):
    port = JournalPort(path)  # defaults: a batch every 50 steps or 1 s
    supervisor = Journal(path)
    for i in range(20):  # a journal with history: acknowledged commands and many steps
        c = SetLearningRate(factor=0.9)
        supervisor.enqueue_command(c, "supervisor")
        supervisor.acknowledge(ack(c))
    records = [step_record(i) for i in range(1, 2001)]
    t0 = time.perf_counter()
    for r in records:
        port.emit_step(r)
    emit = (time.perf_counter() - t0) / len(records)
    t0 = time.perf_counter()
    for _ in range(2000):
        port.poll()
    poll = (time.perf_counter() - t0) / 2000
    port.close()
    print(f"\nemit_step {emit * 1e6:.1f} us/call (batches of 50 included), poll {poll * 1e6:.1f} us/call")
    assert len(supervisor.telemetry_after(0)) == 2000
    supervisor.close()
    # Targets: tens of microseconds here, against a ~1.5 s tiny-cpu step. Generous bounds for a loaded machine.
    assert emit < 500e-6 and poll < 500e-6


def test_the_daemon_can_take_wal_checkpoints_off_the_trainer(path):
    port = JournalPort(path, flush_every_steps=100, autocheckpoint=False)
    daemon = Journal(path)
    for step in range(1, 20001):
        port.emit_step(step_record(step))
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 5_000_000  # the trainer never copied its WAL back
    result = daemon.checkpoint_wal()
    assert result.wal_frames > 0 and result.checkpointed_frames == result.wal_frames and not result.busy
    port.close()
    assert len(daemon.latest_steps(20000)) == 20000
    daemon.close()


def test_a_version_1_journal_gains_the_trials_table(path):
    """Journals written before tuning existed (schema 1) open and migrate to the trials table."""
    import agent.journal.schema as journal_schema

    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    for statement in journal_schema.MIGRATIONS[1]:
        con.execute(statement)
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.commit()
    con.close()
    with Journal(path) as j:
        assert schema_version(j) == journal_schema.SCHEMA_VERSION
        t = j.add_trial(round=3, study="s", number=0, params={"learning_rate": 1e-3}, baseline=True, base_step=100)
        assert j.finish_trial(t.id, "pruned", detail="pruned after 50 steps", steps=50, objective=1.5)
        assert not j.finish_trial(t.id, "failed")
        [row] = j.trials(round=3)
        assert row.status == "pruned" and row.baseline and row.params == {"learning_rate": 1e-3} and row.steps == 50


def test_last_pause_or_resume_by_others_ignores_the_asking_source(tmp_path):
    import time

    from trainer.control import Pause, Resume

    with Journal(tmp_path / "j.sqlite") as j:
        t0 = time.time() - 1
        j.enqueue_command(Pause(), source="tuner")
        assert j.last_pause_or_resume_by_others(t0, "tuner") is None
        j.enqueue_command(Pause(), source="cli")
        assert j.last_pause_or_resume_by_others(t0, "tuner") == "pause"
        j.enqueue_command(Resume(), source="telegram")
        assert j.last_pause_or_resume_by_others(t0, "tuner") == "resume"
        assert j.last_pause_or_resume_by_others(time.time() + 1, "tuner") is None
