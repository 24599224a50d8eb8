"""Settings from the environment or the ``.env`` file (the environment wins).

``./.env`` in the folder a command starts in, or the file ``SMART_TUNER_ENV_FILE``
names (empty: none), holds secrets and machine-specific settings (see
``.env.example``). Values are read on demand, one name at a time, and never copied
wholesale into the environment: a process Smart Tuner starts receives only the names
it needs (``agent.childenv``).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_FILE_ENV = "SMART_TUNER_ENV_FILE"

# MLflow's own variables for a tracking server that wants credentials (MLflow reads
# them from the environment): the processes that log to MLflow need them.
MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def env_file() -> Path | None:
    name = os.environ.get(ENV_FILE_ENV, ".env") or None
    if name is None or not Path(name).is_file():
        return None
    return Path(name)


def env_file_values(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """The non-empty values of ``names`` in the ``.env`` file (none when there is no file)."""
    path = env_file()
    if path is None:
        return {}
    from dotenv import dotenv_values

    values = dotenv_values(path, interpolate=False)
    return {k: v for k in names if (v := (values.get(k) or "").strip())}


def setting(name: str) -> str | None:
    """``name`` from the environment, else from ``.env``; None when unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or env_file_values([name]).get(name)


def load_mlflow_credentials() -> None:
    """MLflow's credential variables from ``.env`` into this process's environment (where
    MLflow looks for them), unless the environment already has them."""
    missing = [k for k in MLFLOW_CREDENTIALS if not os.environ.get(k)]
    for k, v in env_file_values(missing).items():
        os.environ[k] = v
