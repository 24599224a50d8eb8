"""Credentials in URLs: masked wherever a URL is shown or written, real only in memory.

A tracking URI or an Optuna storage URL may carry a password
(``postgresql://user:pw@host/db``, ``http://user:pw@mlflow:5000``). :func:`mask_text`
turns every such URL in a text into ``user:***@host`` (and masks ``password=``-like
query parameters); :func:`mask_urls` does the same to every string of a config dict.
Everything Smart Tuner logs, prints, stores as an MLflow parameter or writes to a file
(``run-config.yaml``, checkpoints, trial specs, best configs) goes through them.

The real URL still has to reach MLflow: a process that masked a URL remembers the
original (:func:`reveal`), and the daemon hands the trainer child the real tracking URI
in its environment (``SMART_TUNER_TRACKING_URI``), since the child reads the masked
``run-config.yaml``.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

MASK = "***"

# scheme://user:password@  (the password may hold '@': the netloc's last '@' ends it)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@:]*):(?P<secret>[^\s/?#]*)@")
_QUERY = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|token|access_token|secret|api_key|apikey|sslpassword)=)"
                    r"(?P<secret>[^&;#\s]*)", re.IGNORECASE)

_known: dict[str, str] = {}  # masked -> real, for the URLs this process masked
_lock = threading.Lock()


def mask_text(text: str) -> str:
    """``text`` with the password of every URL in it (and password-like query values) replaced by ``***``."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@" if m["secret"] else m[0], text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}" if m["secret"] else m[0], text)


def has_secret(text: str | None) -> bool:
    """Whether ``text`` holds a URL password (or a password-like query value) that masking would hide."""
    return bool(text) and mask_text(text) != text


def mask_urls(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, strings: a config dump) with every URL's password masked.

    The originals are remembered for :func:`reveal` in this process."""
    if isinstance(value, str):
        masked = mask_text(value)
        if masked != value:
            with _lock:
                _known[masked] = value
        return masked
    if isinstance(value, dict):
        return {k: mask_urls(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_urls(v) for v in value)
    return value


def reveal(url: str, env: str | None = None) -> str:
    """The real URL behind a masked one: one this process masked, or the environment
    variable ``env`` when its value masks to ``url``. Anything else comes back as it is."""
    if MASK not in url:
        return url
    with _lock:
        real = _known.get(url)
    if real is not None:
        return real
    candidate = os.environ.get(env, "") if env else ""
    if candidate and mask_text(candidate) == url:
        return candidate
    return url
