"""Small facts about OS processes, shared by the daemon and the tuner."""

from __future__ import annotations

import signal

from trainer.runlock import proc_alive  # noqa: F401 - one definition, shared with the run lock


def describe_exit(code: int) -> str:
    """A child's return code in words: 'exit code 3', 'killed by SIGKILL'."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
