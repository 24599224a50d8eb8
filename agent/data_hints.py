"""What the data audit suspects, in a few words, for the alignment-stall policy.

When alignment stalls even after stronger guided attention and a lower learning rate,
the usual cause is the data: clips too long for the attention to cover, long silences
at the edges, transcripts that do not match their audio. The stall rule names these
suspects when it calls a human; this module turns ``trainer.data.audit``'s report into
those short phrases. The daemon runs it in a background thread after the child is up
(an audit reads every clip: seconds to minutes), so start-up stays fast.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

# Kinds the audit reports that bear on alignment (the errors stop training anyway).
_ALIGNMENT_SUSPECTS = ("too_long", "edge_silence")


def hints_from_report(report: Any) -> tuple[str, ...]:
    """Short phrases naming what in the data may keep attention from aligning."""
    hints: list[str] = []
    total = max(report.entries, 1)
    for kind in _ALIGNMENT_SUSPECTS:
        found = report.by_kind(kind)
        if not found:
            continue
        share = 100.0 * len(found) / total
        example = found[0]
        if kind == "too_long":
            hints.append(f"{len(found)} clips ({share:.0f}%) longer than data.max_audio_seconds "
                         f"({report.max_audio_seconds:g} s), e.g. {example.where}")
        else:
            hints.append(f"{len(found)} clips ({share:.0f}%) with more than {report.max_edge_silence_seconds:g} s "
                         f"of leading or trailing silence, e.g. {example.where}")
    stats = report.clip_stats
    if stats is not None and stats["max"] > 3 * max(stats["median"], 1e-6):
        hints.append(f"clip lengths spread widely (median {stats['median']:.1f} s, longest {stats['max']:.1f} s)")
    return tuple(hints)


def audit_hints(config: Any) -> tuple[str, ...]:
    """Run the data audit of a run's config and return its alignment hints."""
    from trainer.data.audit import audit_dataset

    return hints_from_report(audit_dataset(config.data, config.audio, config.text, jobs=2))


def collect_in_background(config: Any, deliver: Callable[[tuple[str, ...]], None],
                          on_error: Callable[[BaseException], None]) -> threading.Thread:
    """Audit in a daemon thread and hand the hints to ``deliver`` (never raises)."""

    def work() -> None:
        try:
            # Lowest CPU priority for this thread alone (Linux: a thread is a task): the audit
            # reads every clip and must not slow the trainer's first steps.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        try:
            deliver(audit_hints(config))
        except Exception as exc:  # a broken audit must not take the daemon down
            on_error(exc)

    thread = threading.Thread(target=work, name="data-hints", daemon=True)
    thread.start()
    return thread
