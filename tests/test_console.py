"""The daemon's console: human lines and a progress bar on a terminal, JSON lines elsewhere."""

from __future__ import annotations

import fcntl
import io
import json
import os
import select
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from agent import logs
from agent.console import HumanConsole

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def human_log():
    """structlog configured for a HumanConsole writing to a StringIO."""
    out = io.StringIO()
    console = HumanConsole(out)
    logs.set_console_notifications(True)
    logs.configure_logging("test-run", console=console)
    yield logs.get_logger(), out
    logs.set_console_notifications(True)
    logs.configure_logging("test-run", json=True, stream=io.StringIO())


def test_human_lines_have_no_timestamps_and_notifications_are_not_repeated(human_log):
    log, out = human_log
    log.info("trainer started", detail="pid 12; no telemetry yet", child_pid=12)  # a notification repeats it
    log.info("phase", phase="aligning", source="warmup", dest="aligning", reason="warm-up over at step 50", step=50)
    log.info("notification", kind="child_started", text="trainer started: pid 12; no telemetry yet", outbox_id=1)
    log.warning("notification", kind="child_crashed", text="trainer crashed: exit 1\n" + "\n".join(
        f"log line {i}" for i in range(20)), outbox_id=2)
    log.info("daemon ready", seconds=0.08, since_process_start=1.8, phase="warmup", child_pid=12, run_dir="/r")
    log.info("data audit", hints=[])
    log.warning("restarting trainer", in_seconds=2.0, failures_without_progress=1)
    import logging

    # A library's warning comes through (not "mlflow": once imported, MLflow logs through
    # its own handler and does not propagate, so which test ran first would matter).
    logging.getLogger("some.library").warning("something it says")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[supervisor] trainer started: pid 12; no telemetry yet"
    assert lines[1] == "[supervisor] trainer crashed: exit 1"
    assert "lines left out" in lines[2] and lines[-4].strip() == "log line 19"  # cut: the log is on screen
    assert "[supervisor] ready in 0.08 s: phase warmup, trainer pid 12" in lines
    assert "[supervisor] warning: restarting trainer (in_seconds 2, failures_without_progress 1)" in lines
    assert lines[-1] == "[some.library] warning: something it says"
    text = out.getvalue()
    assert "run_id" not in text and "test-run" not in text and "data audit" not in text and "-> aligning" not in text


def test_without_console_notifications_the_events_themselves_are_shown(human_log):
    log, out = human_log
    logs.set_console_notifications(False)  # Telegram takes the notifications
    log.info("phase", phase="aligning", source="warmup", dest="aligning", reason="warm-up over at step 50", step=50)
    log.error("trainer gave_up", detail="3 consecutive failures without progress")
    assert out.getvalue().splitlines() == [
        "[supervisor] step 50: phase warmup -> aligning (warm-up over at step 50)",
        "[supervisor] error: trainer gave_up: 3 consecutive failures without progress",
    ]


def test_the_progress_bar_follows_the_journal_and_lines_go_above_it(tmp_path):
    db = tmp_path / "journal.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE telemetry (seq INTEGER PRIMARY KEY, step INTEGER, record TEXT)")
    con.execute("INSERT INTO telemetry (step, record) VALUES (5, '{}')")
    con.commit()
    out = io.StringIO()
    console = HumanConsole(out, journal=db, max_steps=20)
    console.poll()
    console.stream.write("step 5 | loss 1.0\npartial")
    con.execute("INSERT INTO telemetry (step, record) VALUES (10, '{}')")
    con.commit()
    console.close()
    text = out.getvalue()
    assert "step 5 | loss 1.0\n" in text and "partial\n" in text
    assert "10/20" in text and "ETA" in text


# -- the real thing, under a pseudo-terminal -------------------------------------------------------


def _run_in_pty(args: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run ``args`` with stdin, stdout and stderr on a pseudo-terminal (100 x 30); all it wrote."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, close_fds=True,
                            start_new_session=True)
    os.close(slave)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer is gone
                    break
                if not chunk:
                    break
                data += chunk
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
    return code, data.decode(errors="replace").replace("\r\n", "\n")


def _notification_texts(journal: Path) -> list[str]:
    con = sqlite3.connect(journal)
    try:
        return [row[0] for row in con.execute("SELECT text FROM outbox ORDER BY id")]
    finally:
        con.close()


@pytest.mark.slow
def test_demo_on_a_terminal_is_one_human_stream_and_json_when_asked(tmp_path):
    out = tmp_path / "demo"
    args = [sys.executable, "-m", "agent.cli", "demo", "--out", str(out), "--n", "10", "--steps", "6"]
    code, text = _run_in_pty(args)
    assert code == 0, text
    assert "run_id" not in text and not any(line.lstrip().startswith("{") for line in text.splitlines()), text
    assert "Creating initial MLflow database tables" not in text and "INFO mlflow" not in text, text
    assert "[supervisor] ready in" in text, text
    notes = _notification_texts(out / "journal.sqlite")
    assert any(n.startswith("trainer started") for n in notes) and any(n.startswith("trainer finished") for n in notes)
    for note in notes:
        assert text.count(note.split("\n", 1)[0]) == 1, (note, text)
    assert "ETA" in text and "/6 [" in text, text  # the progress bar (tqdm) at the bottom
    assert "stopped at step 6" in text  # the trainer's own lines are echoed as they are

    # --log-format json on a terminal: today's JSON lines (journald's format)
    code, text = _run_in_pty(args[:-1] + ["8", "--log-format", "json"])
    assert code == 0, text
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    ready = [e for e in events if e.get("event") == "daemon ready"]
    assert ready and ready[0]["run_id"] == "demo" and "timestamp" in ready[0], text
    assert any(e.get("event") == "notification" for e in events), text
    assert "[supervisor]" not in text and "%|" not in text, text


def test_log_format_option_and_the_automatic_choice(monkeypatch):
    from agent import cli

    parser = cli.build_parser()
    assert parser.parse_args(["run", "--config", "tiny-cpu"]).log_format == "auto"
    assert parser.parse_args(["run", "--config", "tiny-cpu", "--log-format", "json"]).log_format == "json"
    assert parser.parse_args(["demo", "--log-format", "human"]).log_format == "human"
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--config", "tiny-cpu", "--log-format", "xml"])
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # not a terminal: JSON lines, as journald gets
    assert not cli._human_console("auto") and cli._human_console("human") and not cli._human_console("json")
