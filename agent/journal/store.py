"""The run journal as one object: every table group on one connection."""

from __future__ import annotations

from agent.journal.outbox import OutboxTables
from agent.journal.proposals import ProposalTables
from agent.journal.rows import StatusSummary, read_checkpoint, read_proposal
from agent.journal.telemetry import TelemetryTables
from agent.journal.trials import TrialTables
from trainer.control import EvalRecord, StepTelemetry


class Journal(TelemetryTables, ProposalTables, TrialTables, OutboxTables):
    """One run's journal. Thread-safe (one connection behind a lock); open one per process.

    ``synchronous``: "FULL" (default) fsyncs every commit; "NORMAL" is for high-rate
    telemetry writers (durable writes still pass ``durable=True`` and get FULL).
    ``create=False`` refuses to create a journal: a missing file, or one that holds no
    journal (:class:`JournalEmptyError`), is not filled with a new one.
    ``readonly=True`` (``smart-tuner status``, ``history``, ``pending``): never writes to
    the file nor creates one beside it (see ``agent.journal.connection._connect_readonly``),
    so it also works for users who may only read the run folder; a journal of an older
    schema is refused rather than upgraded (the next ``smart-tuner run`` upgrades it);
    write methods fail.
    ``autocheckpoint=False`` leaves copying the WAL back into the database to other
    connections (see :meth:`checkpoint_wal`).
    """

    # -- status --------------------------------------------------------------------------------
    def status_summary(self, rate_window: int = 50) -> StatusSummary:
        """What ``smart-tuner status`` shows, read from one consistent snapshot."""
        with self._read() as con:
            steps = con.execute("SELECT record FROM telemetry ORDER BY seq DESC LIMIT ?", (rate_window,)).fetchall()
            ev = con.execute("SELECT record FROM evals ORDER BY seq DESC LIMIT 1").fetchone()
            ph = con.execute("SELECT to_phase, wall_time FROM phases ORDER BY id DESC LIMIT 1").fetchone()
            pending = con.execute("SELECT * FROM proposals WHERE status = 'proposed' ORDER BY id").fetchall()
            open_commands = con.execute("SELECT count(*) FROM commands WHERE status IN ('pending', 'delivered')"
                                        ).fetchone()[0]
            ck = con.execute("SELECT * FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
        records = [StepTelemetry.model_validate_json(r[0]) for r in steps]
        rate = None
        if len(records) >= 2:
            newest, oldest = records[0], records[-1]
            dt, ds = newest.wall_time - oldest.wall_time, newest.step - oldest.step
            rate = ds / dt if dt > 0 and ds > 0 else None
        return StatusSummary(
            latest_step=records[0] if records else None,
            latest_eval=EvalRecord.model_validate_json(ev[0]) if ev else None,
            phase=ph[0] if ph else None, phase_since=ph[1] if ph else None,
            pending_proposals=[read_proposal(r) for r in pending], open_commands=open_commands,
            latest_checkpoint=read_checkpoint(ck) if ck else None, steps_per_second=rate,
        )
