"""The environment of the processes Smart Tuner starts: an allow-list, not a copy.

The trainer child, tuning trials and the bot's helper processes (synthesis, plots) read
checkpoints, which a user may have been handed by someone else. They get what running
Python, PyTorch and MLflow needs (paths, locale, temporary folder, ``PYTHON*``,
``CUDA_*``/``NVIDIA_*``/``OMP_*``/``MKL_*``/``TORCH_*`` and the like, proxies and CA
bundles, ``MLFLOW_*``), and nothing else: not ``TELEGRAM_BOT_TOKEN``, not the Optuna
storage URL, not whatever else the daemon's environment or ``.env`` holds.
``SMART_TUNER_CHILD_ENV=NAME,NAME`` passes more names (e.g. ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY`` for an MLflow server whose artifacts the trainer uploads to
S3 itself).

MLflow's credential variables (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` /
``_TOKEN``) reach only the trainer child, taken from the environment or ``.env``;
a tracking URI with a password reaches it as ``SMART_TUNER_TRACKING_URI`` (its
``run-config.yaml`` holds the URI masked). A child reads no ``.env`` of its own.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from trainer.envfile import ENV_FILE_ENV, MLFLOW_CREDENTIALS, env_file_values

EXTRA_ENV = "SMART_TUNER_CHILD_ENV"
TRACKING_URI_ENV = "SMART_TUNER_TRACKING_URI"  # trainer.tracking reads it; a literal here keeps torch out

KEEP = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TZ", "LANG", "LANGUAGE", "TMPDIR", "TEMP", "TMP",
    "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD", "LIBRARY_PATH", "DYLD_LIBRARY_PATH",
    "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR",
    "MPLCONFIGDIR", "MPLBACKEND", "NUMBA_CACHE_DIR", "HF_HOME", "ESPEAK_DATA_PATH",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy",
    "SMART_TUNER_FAULTS", TRACKING_URI_ENV,
})
KEEP_PREFIXES = ("LC_", "PYTHON", "CUDA_", "NVIDIA_", "CUDNN_", "CUBLAS_", "NCCL_", "TORCH", "PYTORCH_", "OMP_",
                 "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "BLIS_", "VECLIB_", "NUMEXPR_", "HIP_", "ROCM_", "HSA_",
                 "MIOPEN_", "TRITON_", "MALLOC_", "MLFLOW_")


def _kept(name: str, extra: frozenset[str]) -> bool:
    return name in KEEP or name in extra or name.startswith(KEEP_PREFIXES)


def child_env(extra: Mapping[str, str] | None = None, *, mlflow_credentials: bool = False,
              environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: the allow-listed names of ``environ``
    (default ``os.environ``), then ``extra``. ``mlflow_credentials``: MLflow's credential
    variables too (from the environment or ``.env``); otherwise they are left out."""
    src = os.environ if environ is None else environ
    wanted = frozenset(n.strip() for n in src.get(EXTRA_ENV, "").split(",") if n.strip())
    env = {k: v for k, v in src.items() if _kept(k, wanted)}
    if mlflow_credentials:
        for k, v in env_file_values([k for k in MLFLOW_CREDENTIALS if not env.get(k)]).items():
            env[k] = v
    else:
        for k in MLFLOW_CREDENTIALS:
            env.pop(k, None)
    env[ENV_FILE_ENV] = ""  # what a child needs is in its environment: it reads no .env
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def trainer_env(config: Any) -> dict[str, str]:
    """The trainer child's environment for ``config`` (a RunConfig): :func:`child_env` with
    MLflow's credentials, and the real tracking URI when it carries a password."""
    from trainer.redact import has_secret

    extra: dict[str, str] = {}
    tracking = getattr(config, "tracking", None)
    uri = getattr(tracking, "tracking_uri", None)
    if getattr(tracking, "enabled", False) and uri and has_secret(uri):
        extra[TRACKING_URI_ENV] = uri
    return child_env(extra, mlflow_credentials=bool(getattr(tracking, "enabled", False)))
