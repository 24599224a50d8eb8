"""The supervisor: a `transitions` state machine over the run's phases.

(Interface first; the implementation follows in this module.)
"""
from __future__ import annotations


class Supervisor:
    """Reads the journal, moves the phase, turns policy proposals into decisions.

    ``Supervisor(journal, cfg, warmup_steps=N)``; ``tick()`` is called periodically by
    the daemon (APScheduler job) and does one round: read new telemetry, transition,
    propose, expire, judge probation. ``note_child_event(kind, detail)`` is how the
    daemon reports 'started', 'crashed', 'restarted', 'hung', 'finished', 'gave_up'.
    ``phase`` is the current phase name.
    """
