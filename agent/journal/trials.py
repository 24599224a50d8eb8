"""Tuning trials: one row per trial of an in-run tuning round (``agent.tuner``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

from agent.journal.connection import JournalConnection
from agent.journal.rows import TrialRow, dumps, num, read_trial


class TrialTables(JournalConnection):
    """The ``trials`` table; a round is the id of the "tune" proposal that started it."""

    def add_trial(self, *, round: int, study: str, number: int, params: Mapping[str, float], baseline: bool = False,
                  base_step: int | None = None, folder: str | None = None) -> TrialRow:
        """A trial has started (status running)."""
        now = time.time()
        with self._write() as con:
            tid = con.execute(
                "INSERT INTO trials (round, study, number, base_step, params, baseline, status, started_at, folder) "
                "VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
                (round, study, number, base_step, dumps(dict(params)), int(baseline), now, folder)).lastrowid
            self._audit(con, now, "tuner", "trial", f"round #{round} trial {number} started"
                        + (" (baseline)" if baseline else ""))
            return read_trial(con.execute("SELECT * FROM trials WHERE id = ?", (tid,)).fetchone())

    def update_trial(self, trial_id: int, *, pid: int | None = None, steps: int | None = None,
                     objective: float | None = None, mlflow_run_id: str | None = None) -> None:
        """Progress of a running trial (its process id, steps so far, latest objective)."""
        sets, args = [], []
        for column, value in (("pid", pid), ("steps", steps), ("objective", num(objective)),
                              ("mlflow_run_id", mlflow_run_id)):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        if sets:
            with self._write(durable=False) as con:
                con.execute(f"UPDATE trials SET {', '.join(sets)} WHERE id = ?", (*args, trial_id))

    def finish_trial(self, trial_id: int, status: Literal["complete", "pruned", "failed"], *, detail: str = "",
                     steps: int | None = None, objective: float | None = None,
                     metrics: Mapping[str, Any] | None = None, checkpoint: str | None = None) -> bool:
        """running -> complete | pruned | failed (compare-and-set: a trial finishes once)."""
        now = time.time()
        with self._write() as con:
            won = con.execute(
                "UPDATE trials SET status = ?, finished_at = ?, detail = ?, steps = COALESCE(?, steps), "
                "objective = COALESCE(?, objective), metrics = COALESCE(?, metrics), checkpoint = ? "
                "WHERE id = ? AND status = 'running'",
                (status, now, detail, steps, num(objective), dumps(dict(metrics)) if metrics is not None else None,
                 checkpoint, trial_id)).rowcount == 1
            if won:
                row = con.execute("SELECT round, number FROM trials WHERE id = ?", (trial_id,)).fetchone()
                self._audit(con, now, "tuner", f"trial_{status}",
                            f"round #{row[0]} trial {row[1]}" + (f": {detail.splitlines()[0]}" if detail else ""))
        return won

    def fail_running_trials(self, detail: str, round: int | None = None) -> int:
        """Trials still marked running (their tuner died with its daemon) become failed."""
        now = time.time()
        where, args = ("AND round = ?", (round,)) if round is not None else ("", ())
        with self._write() as con:
            n = con.execute(f"UPDATE trials SET status = 'failed', finished_at = ?, detail = ? "
                            f"WHERE status = 'running' {where}", (now, detail, *args)).rowcount
            if n:
                self._audit(con, now, "tuner", "trials_failed", f"{n} running trial(s): {detail}")
        return n

    def set_trial_winner(self, trial_id: int) -> None:
        with self._write() as con:
            con.execute("UPDATE trials SET winner = 1 WHERE id = ?", (trial_id,))

    def trials(self, round: int | None = None) -> list[TrialRow]:
        """Trials, oldest first (those of one round, if given)."""
        where, args = ("WHERE round = ?", (round,)) if round is not None else ("", ())
        with self._lock:
            rows = self._con.execute(f"SELECT * FROM trials {where} ORDER BY id", args).fetchall()
        return [read_trial(r) for r in rows]
