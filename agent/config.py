"""The supervisor's configuration: the ``supervisor:`` section of a run's YAML.

The trainer carries this section untouched (``RunConfig.supervisor``); the agent
validates it here, so a typo is reported with the same file/line precision.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from policies.config import PolicyConfig
from policies.types import KINDS

Mode = Literal["auto", "ask", "notify"]
# The policies' kinds plus the tuner's: "apply_winner" continues the run from a tuning
# round's best trial (agent/tuner/inrun.py).
APPROVAL_KINDS = (*KINDS, "apply_winner")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _default_modes() -> dict[str, Mode]:
    # Safe, reversible knobs apply themselves; rollbacks apply too (they restore a
    # known-good state) but are reported; ending or re-planning a run asks a human.
    return {
        "rollback": "auto",
        "set_lr": "auto",
        "set_grad_clip": "auto",
        "set_guided_attention": "auto",
        "set_gate_pos_weight": "auto",
        "pause": "auto",
        "early_stop": "ask",
        "tune": "ask",
        "ask_human": "ask",
        # The winner beat the current settings' own trial at equal steps; applying it
        # keeps its trained steps and can be judged (and undone) like any intervention.
        "apply_winner": "auto",
    }


class ApprovalConfig(_Section):
    # Only the kinds given change; the others keep their defaults.
    modes: dict[str, Mode] = Field(default_factory=_default_modes)

    @field_validator("modes", mode="before")
    @classmethod
    def _merge_with_defaults(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        unknown = sorted(set(value) - set(APPROVAL_KINDS))
        if unknown:
            raise ValueError(f"unknown intervention kind(s) {unknown}; known: {', '.join(APPROVAL_KINDS)}")
        return {**_default_modes(), **value}
    # An "ask" proposal nobody answers within this time gets ``on_timeout``.
    timeout_seconds: float = Field(3600.0, gt=0)
    on_timeout: Literal["reject", "approve"] = "reject"

    def mode_for(self, kind: str) -> Mode:
        return self.modes.get(kind, "ask")


class ProbationConfig(_Section):
    # Evaluations (or, for step-level aims, steps) after an intervention before its
    # outcome is judged.
    evals: int = Field(2, ge=1)
    steps: int = Field(50, ge=1)
    # After this many failed recoveries in a row the run is paused and a human called.
    max_failures: int = Field(3, ge=1)


class ProcessConfig(_Section):
    # No telemetry for this long (while not paused) counts as a hung trainer.
    hang_seconds: float = Field(600.0, gt=0)
    max_restarts: int = Field(5, ge=0)
    backoff_seconds: float = Field(5.0, ge=0)
    backoff_max_seconds: float = Field(300.0, ge=0)
    # SIGTERM -> grace period for the final checkpoint before SIGKILL.
    stop_grace_seconds: float = Field(120.0, gt=0)


class TelegramConfig(_Section):
    """The Telegram bot (on only when TELEGRAM_BOT_TOKEN is set; see docs/telegram.md).

    The token itself is never part of the config: it is read from the environment
    (or ``.env``) only, so that run-config.yaml, MLflow and logs cannot carry it.
    """

    # Commands are accepted only from a chat in allowed_chat_ids *and* a user in
    # allowed_user_ids (in a private chat both are your user id). Notifications go to
    # every allowed chat.
    allowed_chat_ids: list[int] = Field(default_factory=list)
    allowed_user_ids: list[int] = Field(default_factory=list)
    # Bot API server, e.g. a local telegram-bot-api (http://127.0.0.1:8081); None: Telegram's.
    api_base_url: str | None = None
    # Flood control: a token bucket per chat (a burst, then so many messages a minute);
    # what waits is grouped into one message. Non-urgent notifications wait group_seconds
    # for company first.
    burst_messages: int = Field(5, ge=1)
    messages_per_minute: float = Field(10.0, gt=0)
    group_seconds: float = Field(3.0, ge=0)
    group_max_items: int = Field(10, ge=1)  # more than this in one message: counted by kind, newest listed
    # Backoff while Telegram is unreachable (exponential, with jitter, capped); the same
    # for sending and for long polling.
    retry_initial_seconds: float = Field(1.0, gt=0)
    retry_max_seconds: float = Field(60.0, gt=0)
    poll_timeout_seconds: int = Field(25, ge=0)  # getUpdates long-poll wait
    request_timeout_seconds: float = Field(30.0, gt=0)
    # At daemon exit, how long to try to deliver what is still in the outbox (the rest
    # waits there for the next start).
    flush_seconds: float = Field(10.0, ge=0)
    # /listen: the sentence (default: the run's first eval.probe_sentences) and a time limit.
    listen_text: str | None = None
    listen_timeout_seconds: float = Field(300.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _no_token_here(cls, value: Any) -> Any:
        if isinstance(value, dict) and any("token" in str(k).lower() for k in value):
            # (the message names no value: it must not echo a secret back)
            raise ValueError("the bot token is not a config key: set the environment variable TELEGRAM_BOT_TOKEN "
                             "(or put it in .env), see docs/telegram.md")
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> "TelegramConfig":
        if self.retry_max_seconds <= self.retry_initial_seconds:
            raise ValueError("retry_max_seconds must be greater than retry_initial_seconds")
        return self


class SupervisorConfig(_Section):
    # A bot token pasted into the section anyway must not be echoed back in an error.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)

    policies: PolicyConfig = Field(default_factory=PolicyConfig)
    approvals: ApprovalConfig = Field(default_factory=ApprovalConfig)
    probation: ProbationConfig = Field(default_factory=ProbationConfig)
    process: ProcessConfig = Field(default_factory=ProcessConfig)
    telegram: TelegramConfig = Field(default_factory=TelegramConfig)
    # How often the supervisor reads the journal and decides.
    tick_seconds: float = Field(2.0, gt=0)
    # Periodic status digest to the notifiers (minutes; 0 = off).
    digest_minutes: float = Field(60.0, ge=0)
    # Steps and evaluations the policies see.
    window_steps: int = Field(2000, gt=0)
    window_evals: int = Field(30, gt=0)
