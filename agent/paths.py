"""Where a supervised run keeps its files (all inside the run folder)."""

from __future__ import annotations

from pathlib import Path


def journal_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "journal.sqlite"


def trainer_log_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "trainer.log"


def child_config_path(run_dir: str | Path) -> Path:
    """The resolved config the daemon hands to its trainer child."""
    return Path(run_dir) / "run-config.yaml"
