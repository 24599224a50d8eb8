"""Intervention rules from outside this package: the extension point for rules.

A custom rule is a :class:`CustomRule` object, installed as an entry point in the group
``smart_tuner.rules`` or named in ``supervisor.policies.custom_rules`` by its import
path (see docs/api.md). ``propose`` runs it in its phases after the built-in rules,
with its own settings validated from the section of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from policies.phases import Phase
from policies.settings import RuleSettings
from policies.types import Memory, Proposal, Window
from trainer.plugins import RULES_GROUP, collect

# (phase, window, memory, this rule's settings) -> proposals. The settings are an
# instance of the rule's ``settings`` model, filled from the user's YAML section.
CustomCheck = Callable[[Phase, Window, Memory, Any], list[Proposal]]


@dataclass(frozen=True)
class CustomRule:
    """An intervention rule of your own.

    ``name`` is the rule's name: its settings section (``supervisor.policies.<name>``),
    the ``policy`` of its proposals and the key of its memory.
    ``check(phase, window, memory, settings)`` returns its proposals (a list, often
    empty); it must be a pure function of its arguments, like the built-in rules: the
    supervisor calls it every tick. ``phases`` are the phases it runs in. ``settings`` is its settings model, a
    subclass of :class:`~policies.settings.RuleSettings` (which gives it ``enabled``).
    At equal severity, custom rules rank after the built-in ones.
    """

    name: str
    check: CustomCheck
    phases: Iterable[Phase | str]
    settings: type[RuleSettings] = RuleSettings

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"rule name {self.name!r} must be an identifier (it names a YAML section)")
        if not (isinstance(self.settings, type) and issubclass(self.settings, RuleSettings)):
            raise TypeError(f"rule {self.name!r}: settings must subclass policies.RuleSettings, got {self.settings!r}")
        phases = frozenset(Phase(p) for p in self.phases)
        if not phases:
            raise ValueError(f"rule {self.name!r} runs in no phase; give some of {[p.value for p in Phase]}")
        object.__setattr__(self, "phases", phases)  # frozen: set once, normalised

    def run(self, phase: Phase, window: Window, memory: Memory, settings: RuleSettings) -> list[Proposal]:
        """The rule's proposals; each must carry the rule's name as its ``policy``
        (the supervisor's memory is kept by that name)."""
        out = list(self.check(phase, window, memory, settings))
        for p in out:
            if not isinstance(p, Proposal) or p.policy != self.name:
                raise ValueError(f"rule {self.name!r} returned {p!r}: expected Proposals with policy={self.name!r}")
        return out


def load_custom_rules(import_paths: Sequence[str], reserved: Sequence[str] = ()) -> dict[str, CustomRule]:
    """The installed custom rules plus those at ``import_paths``, by name."""
    return collect(RULES_GROUP, import_paths, CustomRule, "rule", reserved)


__all__ = ["CustomCheck", "CustomRule", "RuleSettings", "load_custom_rules"]
