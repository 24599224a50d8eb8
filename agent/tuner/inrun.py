"""The supervisor's ``tuning`` phase: one round of trials, then the winner continues the run.

The round's stages are nested states of the supervisor's state machine
(``tuning_requested``, ``tuning_checkpointing``, ``tuning_trials``, ``tuning_applying``,
``tuning_over``: see agent/phase_machine.py); ``InRunTuning`` supplies what their
transitions ask (guards: is the base saved, are the trials over, is the winner
decided) and do (effects: queue the commands, fork the trials, propose the winner).
Each stage is also kept in the journal (state key ``tuning_round``), so that a
restarted daemon knows where a round stood:

1. **checkpointing**: ``save_checkpoint`` and ``pause`` are queued for the trainer; the
   saved checkpoint (found in the journal's registry by the acknowledged step) is the
   round's base. The paused trainer keeps its process (and the stall watchdog knows a
   paused trainer is silent).
2. **trials**: a background thread runs the round (:mod:`agent.tuner.rounds`), one
   journal row and one MLflow child run per trial. Trials read the base checkpoint and
   write only into ``RUN/tuning/round-R/``.
3. **applying**: an ``apply_winner`` proposal (mode from ``approvals.modes``, ``auto``
   by default) carries ``continue_from <winner's final checkpoint>`` and ``resume``.
   The trainer adopts the winner's weights, optimizer, step, data position and
   hyperparameters, saves that as its own checkpoint and trains on: the winner's steps
   are kept. Rejected or expired: the run continues from the baseline trial (the
   current hyperparameters, also trained those steps), or from the base if that trial
   did not complete.

Whatever goes wrong (no checkpoint, every trial failed, the daemon restarted mid-round)
ends the round with ``resume`` and the main run continues as it was; the base
checkpoint itself is never written by the round.

The daemon builds the tuner (:meth:`InRunTuning.for_run`) and hands it to the
supervisor.
"""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import ApprovalConfig
from agent.journal import Journal
from agent.paths import child_config_path
from trainer.control import ContinueFrom, Pause, Resume, SaveCheckpoint

if TYPE_CHECKING:
    from trainer.config import RunConfig

STATE_KEY = "tuning_round"
NO_RUN_CONFIG = "no run config (run-config.yaml) to fork trials from"


def round_state(journal: Journal) -> dict[str, Any] | None:
    """Where the newest round stands (``round``, ``stage``, ...), None before the first."""
    return journal.get_state(STATE_KEY)


def requested_round(journal: Journal) -> int | None:
    """The id of an approved ``tune`` proposal that has no round yet (a new round to begin)."""
    st = round_state(journal)
    tune = next((p for p in journal.proposals("approved", 20) if p.kind == "tune"), None)
    if tune is not None and (st is None or st.get("round") != tune.id):
        return tune.id
    return None


def notify(journal: Journal, kind: str, text: str, payload: dict | None = None, urgent: bool = False) -> None:
    """A notification from the tuning phase (the supervisor's outbox row format)."""
    journal.outbox_put(kind, text, {**(payload or {}), "urgent": urgent, "phase": "tuning"})


def resume_unless_held(journal: Journal, st: dict[str, Any]) -> None:
    """End the round's own pause, but not a pause someone else asked for meanwhile."""
    if journal.last_pause_or_resume_by_others(st.get("started_at", 0.0), "tuner") == "pause":
        notify(journal, "tuning", f"tuning round #{st['round']} is over; the run stays paused, as it was paused "
                                  "during the round (resume it to continue)")
        return
    journal.enqueue_command(Resume(), source="tuner")


def abandon(journal: Journal, st: dict[str, Any], why: str, step: int | None, *, resume: bool = True,
            log: Any = None) -> str:
    """End a round without a winner: its trials and its ``tune`` proposal failed, the run
    resumed (unless held); returns why the phase is over."""
    round_id = st["round"]
    journal.fail_running_trials(why, round=round_id)
    journal.finish_proposal(round_id, "failed", step=step, detail=why)
    if resume:
        resume_unless_held(journal, st)
    journal.set_state(STATE_KEY, {**st, "stage": "done"})
    notify(journal, "tuning_failed", f"tuning round #{round_id} ended without a winner: {why}; the run continues "
                                     "with its current settings", urgent=False)
    if log is not None:
        log.warning("tuning round abandoned", round=round_id, why=why)
    return f"tuning round abandoned: {why}"


def _tally(summary: Any) -> tuple[str, dict[str, int]]:
    counts = {k: sum(1 for r in summary.results if r.state == k) for k in ("complete", "pruned", "failed")}
    return (f"{len(summary.results)} trials ({counts['complete']} complete, {counts['pruned']} pruned, "
            f"{counts['failed']} failed)"), counts


class _JournalHooks:
    """Trial rows in the journal, trial runs in MLflow, a log line per trial."""

    def __init__(self, journal: Journal, round_id: int, study: str, base_step: int, tracker: Any, log: Any) -> None:
        self.journal, self.round_id, self.study, self.base_step = journal, round_id, study, base_step
        self.tracker, self.log = tracker, log

    def started(self, number: int, params: dict[str, float], baseline: bool, folder: Path) -> dict[str, Any]:
        row = self.journal.add_trial(round=self.round_id, study=self.study, number=number, params=params,
                                     baseline=baseline, base_step=self.base_step, folder=str(folder))
        return {"row": row.id, "number": number, "params": params, "baseline": baseline, "run": None}

    def forked(self, handle: dict[str, Any], pid: int, start: dict[str, Any]) -> None:
        self.journal.update_trial(handle["row"], pid=pid)
        if start and handle["run"] is None:
            parent = (start.get("extras") or {}).get("mlflow_run_id")
            params = start.get("live") if handle["baseline"] else handle["params"]
            handle["run"] = self.tracker.start(f"round {self.round_id} trial {handle['number']}", params or {},
                                               parent, tags={"smart_tuner.round": str(self.round_id),
                                                             "smart_tuner.trial": str(handle["number"]),
                                                             "smart_tuner.baseline": str(handle["baseline"])})
            if handle["run"]:
                self.journal.update_trial(handle["row"], mlflow_run_id=handle["run"])

    def reported(self, handle: dict[str, Any], progress: int, score: Any) -> None:
        self.journal.update_trial(handle["row"], steps=progress, objective=score.total)
        self.tracker.report(handle["run"], progress, score.as_dict())

    def finished(self, handle: dict[str, Any], result: Any) -> None:
        o = result.outcome
        metrics = {**result.score.as_dict(), "eval": o.record} if result.score is not None else None
        self.journal.finish_trial(handle["row"], result.state, detail=result.detail, steps=o.progress,
                                  objective=result.score.total if result.score is not None else None,
                                  metrics=metrics, checkpoint=o.checkpoint if result.state == "complete" else None)
        self.tracker.finish(handle["run"], result.state, result.detail)
        if self.log is not None:
            self.log.info("trial", round=self.round_id, trial=result.number, state=result.state,
                          objective=result.score.total if result.score is not None else None,
                          detail=result.detail.splitlines()[0] if result.detail else "")


class InRunTuning:
    """One run's tuning rounds: the guards and effects of the ``tuning_*`` stages."""

    def __init__(self, journal: Journal, approvals: ApprovalConfig, run_dir: str | Path, config: RunConfig,
                 log: Any = None) -> None:
        from agent.tuner.config import tuner_config

        self.journal = journal
        self.approvals = approvals
        self.run_dir = Path(run_dir)
        self.config = config
        # Validated now: a bad key stops `smart-tuner run` at start, not hours later at
        # the first plateau.
        self.tuner = tuner_config(config.tuner)
        self.log = log
        self._thread: threading.Thread | None = None
        self._summary: Any = None
        self._error: str | None = None
        self._stop = threading.Event()

    @classmethod
    def for_run(cls, journal: Journal, approvals: ApprovalConfig, run_dir: str | Path,
                log: Any = None) -> InRunTuning | None:
        """The tuner of the run in ``run_dir``, from the run-config.yaml the daemon wrote
        there (URL passwords masked, as trials write it into their folders); None without one."""
        from trainer.config import load_config

        path = child_config_path(run_dir)
        if not path.exists():
            return None
        return cls(journal, approvals, run_dir, load_config(path), log=log)

    def _state(self) -> dict[str, Any]:
        return round_state(self.journal) or {}

    def _save(self, st: dict[str, Any]) -> None:
        self.journal.set_state(STATE_KEY, st)

    # -- guards ---------------------------------------------------------------------------------
    def base_acknowledged(self) -> bool:
        """The trainer has answered the round's save_checkpoint and pause."""
        st = self._state()
        save, pause = self.journal.get_command(st.get("save", "")), self.journal.get_command(st.get("pause", ""))
        return not (save is None or save.acked_at is None or pause is None or pause.acked_at is None)

    def base_problem(self) -> str | None:
        """Why the acknowledged save gives no base to fork from (None: it does)."""
        save = self.journal.get_command(self._state().get("save", ""))
        if save is None:
            return "the round's save_checkpoint command is not in the journal"
        if not save.ok:
            return f"the trainer could not save a base checkpoint: {save.detail}"
        if self._base(save.step) is None:
            return f"no checkpoint of step {save.step} on disk to fork from"
        return None

    def _base(self, step: int | None) -> Any:
        return next((c for c in self.journal.checkpoints(20) if c.step == step and Path(c.path).exists()), None)

    def trials_finished(self) -> bool:
        """The round's thread is over (or there is none: the daemon restarted mid-round)."""
        return self._thread is None or not self._thread.is_alive()

    def trials_problem(self) -> str | None:
        """Why the finished round has no winner to propose (None: it has one)."""
        if self._thread is None:
            return "the daemon restarted during the round"
        if self._summary is None:
            return f"the round failed: {self._error}"
        if self._summary.winner is None:
            return f"no trial completed: {_tally(self._summary)[0]}"
        return None

    def winner_decided(self) -> bool:
        """The apply_winner proposal is settled: applied, failed, rejected or expired."""
        p = self.journal.get_proposal(self._state().get("apply", -1))
        return p is not None and p.status not in ("proposed", "approved")

    # -- effects --------------------------------------------------------------------------------
    def begin(self, round_id: int) -> None:
        """Entering ``tuning_checkpointing``: queue save_checkpoint and pause for the trainer."""
        save, pause = SaveCheckpoint(), Pause()
        self.journal.enqueue_command(save, source="tuner")
        self.journal.enqueue_command(pause, source="tuner")
        self._save({"round": round_id, "stage": "checkpointing", "save": save.id, "pause": pause.id,
                    "started_at": time.time()})
        notify(self.journal, "tuning", f"tuning round #{round_id}: checkpointing and pausing the trainer, then "
                                       f"{self.tuner.round.trials} trials of {self.tuner.round.steps} steps")

    def fork_trials(self) -> None:
        """Entering ``tuning_trials``: the saved checkpoint is the base; the round's thread starts."""
        st = self._state()
        save = self.journal.get_command(st["save"])
        base = self._base(save.step if save is not None else None)
        st.update(stage="trials", base_step=base.step, base_path=base.path)
        self._save(st)
        self._start_round(st)

    def abandon(self, why: str, step: int | None) -> str:
        """Entering ``tuning_over`` without a winner; returns why the phase is over."""
        self._thread = None
        return abandon(self.journal, self._state(), why, step, log=self.log)

    def _current_values(self) -> dict[str, float]:
        """The run's hyperparameters now: the trainer's live values from its newest step
        record, the config's for those telemetry does not carry."""
        from agent.tuner.space import config_values
        from trainer.tunables import TUNABLES

        values = config_values(self.config)
        latest = self.journal.latest_steps(1)
        if latest:
            values.update({name: getattr(latest[0], t.telemetry) for name, t in TUNABLES.items() if t.telemetry})
        return values

    def _start_round(self, st: dict[str, Any]) -> None:
        round_id, base_path, base_step = st["round"], st["base_path"], st["base_step"]
        current = self._current_values()
        main = self.config.model_dump(mode="json")

        def work() -> None:
            try:
                from agent.tuner.rounds import run_round, study_name
                from agent.tuner.tracking import TrialTracker

                tracker = TrialTracker(self.config.tracking, self.run_dir, log=print)
                hooks = _JournalHooks(self.journal, round_id, study_name(self.run_dir, round_id), base_step,
                                      tracker, self.log)
                self._summary = run_round(main, self.tuner, base_path, current, round_id, hooks, self._stop)
            except Exception as exc:  # noqa: BLE001 - reported by the next tick, the run resumes
                self._error = f"{type(exc).__name__}: {exc}"
                if self.log is not None:
                    self.log.error("tuning round failed", round=round_id, error=self._error,
                                   traceback=traceback.format_exc())

        self._summary, self._error = None, None
        # A daemon thread: a daemon that exits does not wait for a round (its trials die
        # with it, see trial_child), and the next daemon marks their rows failed.
        self._thread = threading.Thread(target=work, name=f"tuning-round-{round_id}", daemon=True)
        self._thread.start()

    def propose_winner(self, step: int | None) -> None:
        """Entering ``tuning_applying``: the round's report, and the apply_winner proposal."""
        from agent.tuner.space import describe

        st, summary = self._state(), self._summary
        self._thread = None
        rows = {r.number: r for r in self.journal.trials(round=st["round"])}
        tally, counts = _tally(summary)
        winner, baseline = summary.winner, summary.baseline
        if winner.number in rows:
            self.journal.set_trial_winner(rows[winner.number].id)
        base_score = baseline.score.total if baseline is not None and baseline.state == "complete" else None
        versus = f" vs {base_score:.4f} for the current settings" if base_score is not None else ""
        what = "the current settings" if winner.baseline else describe(winner.params)
        self.journal.finish_proposal(st["round"], "applied", step=step,
                                     detail=f"{tally}; winner trial {winner.number} ({what}) objective "
                                            f"{winner.score.total:.4f}{versus}")
        evidence: dict[str, Any] = {"round": st["round"], "trial": winner.number, "objective": winner.score.total,
                                    "base_step": st["base_step"], "steps": winner.outcome.progress, **counts,
                                    **{f"param.{k}": v for k, v in winner.params.items()}}
        if base_score is not None:
            evidence["baseline_objective"] = base_score
        if summary.front and self.tuner.objective.multi_objective:
            evidence["pareto_front"] = ", ".join(f"#{r.number} sound {r.score.sound:.4f} penalty {r.score.penalty:.4f}"
                                                 for r in summary.front)
        mode = self.approvals.mode_for("apply_winner")
        # A pause someone asked for during the round outlives it: adopt the winner, stay paused.
        held = self.journal.last_pause_or_resume_by_others(st.get("started_at", 0.0), "tuner") == "pause"
        actions = [ContinueFrom(path=winner.outcome.checkpoint)] + ([] if held else [Resume()])
        reason = (f"Tuning round #{st['round']}: trial {winner.number} ({what}) reached objective "
                  f"{winner.score.total:.4f}{versus} after {winner.outcome.progress} steps from step "
                  f"{st['base_step']}; {tally}. Continuing the run from its checkpoint.")
        row = self.journal.add_proposal(policy="tuner", kind="apply_winner", actions=actions, reason=reason,
                                        evidence=evidence, aim="val_loss", mode=mode, step=step,
                                        expires_at=time.time() + self.approvals.timeout_seconds if mode == "ask"
                                        else None, approve_by="auto" if mode == "auto" else None)
        if mode == "notify":
            self.journal.decide(row.id, "rejected", by="policy:notify-only", enqueue=False)
        notify(self.journal, "tuning_winner" if mode != "ask" else "proposal_ask",
               f"#{row.id} tuner: {reason}" + (f" Approve with 'smart-tuner approve {row.id}'." if mode == "ask"
                                               else ""), payload={"proposal_id": row.id}, urgent=mode == "ask")
        st.update(stage="applying", apply=row.id, winner=winner.number,
                  baseline_checkpoint=baseline.outcome.checkpoint if baseline is not None
                  and baseline.state == "complete" else None)
        self._save(st)

    def settle_winner(self) -> str:
        """Leaving ``tuning_applying`` once the winner is decided; returns why the phase is over."""
        st = self._state()
        p = self.journal.get_proposal(st["apply"])
        assert p is not None  # the guard (winner_decided) found it
        if p.status == "applied":
            self._finish(st)
            return f"winner of round #{st['round']} applied (trial {st['winner']})"
        if p.status == "failed":
            self._finish(st)
            return f"applying the winner failed ({p.outcome_detail}); the run continues with its current settings"
        # Rejected or expired: the run goes on as if there had been no tuning, keeping the
        # steps the baseline trial trained with the current settings.
        if st.get("baseline_checkpoint"):
            self.journal.enqueue_command(ContinueFrom(path=st["baseline_checkpoint"]), source="tuner")
        resume_unless_held(self.journal, st)
        self._finish(st)
        return f"winner {p.status}; continuing with the current settings" + (
            " from the baseline trial" if st.get("baseline_checkpoint") else "")

    def _finish(self, st: dict[str, Any]) -> None:
        st["stage"] = "done"
        self._save(st)
