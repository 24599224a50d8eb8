"""The base of every rule's settings model, built-in or custom."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # A misspelt threshold is a user error, not something to ignore silently.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RuleSettings(Section):
    """Settings of one intervention rule: its section under ``supervisor.policies``.

    A custom rule subclasses this with its own fields (pydantic ``Field`` constraints
    included); unknown keys in the user's section are errors.
    """

    # Lets a user switch one rule off without touching the phase table.
    enabled: bool = True
