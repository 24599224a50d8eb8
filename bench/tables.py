"""Plain-text tables for the benchmark scripts (run as ``python bench/NAME.py``)."""

from __future__ import annotations


def print_rows(header: list[str], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell, separated by ' | '."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))
