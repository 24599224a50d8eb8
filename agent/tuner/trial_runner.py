"""Runs one trial process and relays its evaluations to whoever judges them.

``run_trial`` writes the spec into the trial's folder, starts
``python -m agent.tuner.trial_child`` there (its output in ``TRIAL_DIR/trial.log``),
and for every evaluation the child reports calls ``on_report(progress, record)``; a
True answer prunes the trial (the child stops at once, no final checkpoint). A child
that exits non-zero, dies from a signal, breaks the protocol or outlives the timeout
is a failed trial; nothing it did can reach the main run, which only ever reads a
*completed* trial's final checkpoint.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from agent.childenv import TRACKING_URI_ENV, child_env
from agent.procs import describe_exit
from agent.tuner.trial_child import EXIT_DONE, EXIT_PRUNED, EXIT_USER_ERROR, TrialSpec

TRIAL_MODULE = "agent.tuner.trial_child"
LOG_TAIL_LINES = 15

Status = Literal["complete", "pruned", "failed"]


@dataclass
class TrialOutcome:
    status: Status
    detail: str = ""
    progress: int = 0  # steps trained in the trial
    step: int | None = None  # the trial's last step (base step + progress)
    record: dict[str, Any] | None = None  # its last evaluation
    checkpoint: str | None = None  # its final checkpoint (complete trials only)
    start: dict[str, Any] = field(default_factory=dict)  # the child's start message (live values, extras)


def _tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def trial_env(threads: int | None, device: str | None) -> dict[str, str]:
    """An allow-listed environment (``agent.childenv``): a trial logs nothing to MLflow
    itself, so it gets no MLflow credentials either."""
    env = child_env()
    env.pop("SMART_TUNER_FAULTS", None)  # faults belong to the main trainer
    env.pop(TRACKING_URI_ENV, None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    return env


def run_trial(spec: TrialSpec, folder: Path, *, on_report: Callable[[int, dict[str, Any]], bool],
              on_start: Callable[[int, dict[str, Any]], None] | None = None, device: str | None = None,
              timeout: float = 6 * 3600.0, python: str = sys.executable) -> TrialOutcome:
    """Run the trial to its end; ``on_start(pid, start_message)`` once it has forked."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "spec.json"
    spec_path.write_text(spec.model_dump_json(indent=1), encoding="utf-8")
    log_path = folder / "trial.log"
    threads = (spec.config.get("train") or {}).get("torch_threads")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([python, "-m", TRIAL_MODULE, "--spec", str(spec_path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, env=trial_env(threads, device),
                                text=True, bufsize=1)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, name=f"trial-{proc.pid}-reader", daemon=True).start()
    if on_start is not None:
        on_start(proc.pid, {})
    outcome = TrialOutcome(status="failed")
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                proc.kill()
                proc.wait()
                outcome.detail = f"timed out after {timeout:g} s; killed"
                return outcome
            if line is None:
                break
            try:
                msg = json.loads(line)
                kind = msg["type"]
            except (ValueError, KeyError, TypeError):
                continue  # not ours (a library printing to stdout); the child redirects, so rare
            if kind == "start":
                outcome.start = msg
                outcome.step = msg.get("step")
                if on_start is not None:
                    on_start(proc.pid, msg)
            elif kind == "eval":
                outcome.record, outcome.progress = msg["record"], int(msg["progress"])
                outcome.step = outcome.record.get("step")
                prune = bool(on_report(outcome.progress, outcome.record))
                _answer(proc, "prune" if prune else "continue")
            elif kind == "done":
                outcome.checkpoint, outcome.progress, outcome.step = msg["checkpoint"], msg["progress"], msg["step"]
            elif kind == "pruned":
                outcome.progress, outcome.step = msg["progress"], msg["step"]
        code = proc.wait()
    finally:
        if proc.poll() is None:  # the judge raised: leave no trial behind
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError, AttributeError):
                pass
    if code == EXIT_DONE and outcome.checkpoint:
        outcome.status = "complete"
        outcome.detail = f"trained {outcome.progress} steps"
    elif code == EXIT_PRUNED:
        outcome.status = "pruned"
        outcome.detail = f"pruned after {outcome.progress} steps"
    else:
        what = "a user error" if code == EXIT_USER_ERROR else describe_exit(code)
        outcome.detail = f"trial process ended with {what} after {outcome.progress} steps; log tail:\n{_tail(log_path)}"
    return outcome


def _answer(proc: subprocess.Popen, verdict: str) -> None:
    try:
        assert proc.stdin is not None
        proc.stdin.write(verdict + "\n")
        proc.stdin.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass  # it died meanwhile; its exit status tells the rest
