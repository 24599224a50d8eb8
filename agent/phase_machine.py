"""The supervisor's state machine as data: its phases, the tuning round's stages nested
in ``tuning``, every transition with its guards and effects, and the order a tick tries
the triggers in. ``agent.supervisor.Supervisor`` is the model: the names below are its
methods.

* ``conditions`` / ``unless``: the guards (is the window diverging, is attention aligned,
  is probation over, is the base checkpoint saved, ...); ``prepare`` runs before them.
* ``before``: the effects that belong to the move itself (the reason recorded with the
  phase, counting a failed recovery, remembering the best diagonality, ending a round).
* ``on_enter`` of a state: what entering it does. Every phase records itself in the
  journal (``_enter_phase``); each stage of a tuning round queues or starts its work.

The stages are states of ``tuning`` in transitions' ``HierarchicalMachine``, named
``tuning_<stage>``; the phase is the part before the separator.

``python -m agent.phase_machine`` prints the Mermaid state diagram;
``python -m agent.phase_machine --update-docs`` rewrites it in docs/supervisor.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from transitions import EventData

from policies import Phase

SEPARATOR = "_"  # HierarchicalMachine's default: the trials stage of tuning is "tuning_trials"
TUNING_STAGES = ["requested", "checkpointing", "trials", "applying", "over"]


def because(reason: str) -> Callable[[EventData], None]:
    """A ``before`` callback giving a transition its fixed reason (journal, log, notification)."""

    def give_reason(event: EventData) -> None:
        event.kwargs["reason"] = reason

    give_reason.__name__ = f"because({reason!r})"
    return give_reason


_ENTER_PHASE = "_enter_phase"
STATES: list[Any] = [{"name": p.value, "on_enter": _ENTER_PHASE} for p in Phase if p is not Phase.TUNING] + [
    {"name": Phase.TUNING.value, "on_enter": _ENTER_PHASE, "initial": "requested", "children": [
        # An approved tune proposal may start a round (or there is none to run).
        {"name": "requested"},
        # save_checkpoint and pause queued; waiting for the trainer's acknowledgements.
        {"name": "checkpointing", "on_enter": "_begin_round"},
        # The round's trials run in a background thread from the base checkpoint.
        {"name": "trials", "on_enter": "_fork_trials"},
        # The apply_winner proposal waits for its decision and the trainer.
        {"name": "applying", "on_enter": "_propose_winner"},
        # The round ended (winner applied, declined, or no winner); the phase ends next.
        {"name": "over"},
    ]},
]

_DIVERGENCE = "divergence: non-finite values, a loss spike or runaway validation loss"
TRANSITIONS: list[dict[str, Any]] = [
    # Divergence leaves every phase; from recovering it counts as a failed recovery.
    {"trigger": "diverge", "source": ["warmup", "aligning", "stable", "tuning"], "dest": "diverging",
     "conditions": "is_diverging", "before": because(_DIVERGENCE)},
    {"trigger": "diverge", "source": "recovering", "dest": "diverging", "conditions": "is_diverging",
     "before": ["_count_failed_recovery", because(_DIVERGENCE)]},
    {"trigger": "warmup_over", "source": "warmup", "dest": "aligning", "conditions": "warmup_done",
     "before": "_why_warmup_over"},
    {"trigger": "aligned", "source": "aligning", "dest": "stable", "conditions": "is_aligned",
     "before": "_remember_alignment", "after": "_announce_alignment"},
    # While stable, every tick raises the best diagonality seen (prepare), which a collapse is measured against.
    {"trigger": "collapse", "source": "stable", "dest": "aligning", "prepare": "_track_stable_diagonality",
     "conditions": "is_collapsed", "before": "_why_collapse"},
    # From aligning only on request (smart-tuner tune-now): the plateau rule runs in stable.
    {"trigger": "start_tuning", "source": "aligning", "dest": "tuning", "conditions": "tune_approved",
     "before": because("tuning requested")},
    {"trigger": "start_tuning", "source": "stable", "dest": "tuning", "conditions": "tune_approved",
     "before": because("tuning approved")},
    {"trigger": "recovery_applied", "source": "diverging", "dest": "recovering", "conditions": "recovery_was_applied",
     "before": because("recovery applied; on probation")},
    # Nothing was applied (no checkpoint to roll back to, or a human declined), yet the
    # run is healthy again: probation decides the rest.
    {"trigger": "recovery_applied", "source": "diverging", "dest": "recovering", "conditions": "probation_passed",
     "before": because("healthy again without an intervention; on probation")},
    {"trigger": "recovered", "source": "recovering", "dest": "stable",
     "conditions": ["probation_passed", "was_aligned"],
     "before": ["_reset_failures", because("healthy through probation")]},
    {"trigger": "recovered", "source": "recovering", "dest": "aligning", "conditions": "probation_passed",
     "before": ["_reset_failures", because("healthy through probation")]},
    # The tuning round's stages. A newly approved tune proposal (re)starts the round from any stage.
    {"trigger": "start_round", "source": "tuning", "dest": "tuning_checkpointing",
     "conditions": ["round_requested", "has_tuner"]},
    {"trigger": "abandon_round", "source": "tuning", "dest": "tuning_over", "conditions": "round_requested",
     "unless": "has_tuner", "before": "_abandon_without_tuner"},
    {"trigger": "nothing_to_run", "source": "tuning_requested", "dest": "tuning_over", "unless": "round_requested",
     "before": "_note_nothing_to_run"},
    {"trigger": "base_saved", "source": "tuning_checkpointing", "dest": "tuning_trials",
     "conditions": ["base_acknowledged", "base_usable"]},
    {"trigger": "abandon_round", "source": "tuning_checkpointing", "dest": "tuning_over",
     "conditions": "base_acknowledged", "unless": "base_usable", "before": "_abandon_without_base"},
    {"trigger": "trials_over", "source": "tuning_trials", "dest": "tuning_applying",
     "conditions": ["trials_finished", "has_winner"]},
    {"trigger": "abandon_round", "source": "tuning_trials", "dest": "tuning_over", "conditions": "trials_finished",
     "unless": "has_winner", "before": "_abandon_without_winner"},
    {"trigger": "winner_decided", "source": "tuning_applying", "dest": "tuning_over",
     "conditions": "winner_decided", "before": "_settle_winner"},
    {"trigger": "tuning_done", "source": "tuning_over", "dest": "stable", "conditions": "was_aligned",
     "before": "_why_tuning_done"},
    {"trigger": "tuning_done", "source": "tuning_over", "dest": "aligning", "before": "_why_tuning_done"},
]

# A tick tries these in order: the first phase trigger that fires ends the round of
# checks (one phase change per tick, divergence first). In tuning, the first stage
# trigger that fires moves the round one stage; then, if the round is over, the phase
# ends in the same tick.
PHASE_TRIGGERS = ("diverge", "warmup_over", "aligned", "collapse", "start_tuning", "recovery_applied", "recovered")
STAGE_TRIGGERS = ("start_round", "abandon_round", "nothing_to_run", "base_saved", "trials_over", "winner_decided")
END_TRIGGERS = ("tuning_done",)


def phase_of(state: str) -> str:
    """The phase of a machine state: ``tuning_trials`` is in ``tuning``."""
    return state.split(SEPARATOR, 1)[0]


def initial_state(phase: str | None, stage: str | None) -> str:
    """Where a (restarted) supervisor starts: the journal's phase, in tuning the stored stage
    (a finished or missing round: ``requested``, which ends the phase unless a round is asked for)."""
    if phase is None:
        return Phase.WARMUP.value
    if phase == Phase.TUNING.value:
        return SEPARATOR.join((phase, stage if stage in ("checkpointing", "trials", "applying") else "requested"))
    return phase


# -- the diagram ----------------------------------------------------------------------------------
DIAGRAM_BEGIN = "<!-- state-diagram:begin (generated by python -m agent.phase_machine --update-docs) -->"
DIAGRAM_END = "<!-- state-diagram:end -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "supervisor.md"


def state_diagram() -> str:
    """The machine as a Mermaid state diagram (transitions' mermaid backend), guards in brackets."""
    from transitions.extensions.diagrams import HierarchicalGraphMachine

    class _Model:
        pass

    model = _Model()
    HierarchicalGraphMachine(model=model, states=STATES, transitions=TRANSITIONS, initial=Phase.WARMUP.value,
                             graph_engine="mermaid", auto_transitions=False, show_conditions=True,
                             title="Smart Tuner phases")
    graph = model.get_graph()  # type: ignore[attr-defined]
    return "\n".join(line.rstrip() for line in graph.draw(None).splitlines()) + "\n"


def diagram_block() -> str:
    """The doc's block between the markers: a mermaid code fence around the diagram."""
    return f"{DIAGRAM_BEGIN}\n```mermaid\n{state_diagram()}```\n{DIAGRAM_END}"


def documented_block(text: str) -> str:
    """The block between the markers in a document's text (ValueError: no markers)."""
    start, end = text.index(DIAGRAM_BEGIN), text.index(DIAGRAM_END) + len(DIAGRAM_END)
    return text[start:end]


def update_docs(path: Path = DOC) -> bool:
    """Rewrite the diagram in ``path``; True if it changed."""
    text = path.read_text(encoding="utf-8")
    new = text.replace(documented_block(text), diagram_block())
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.phase_machine", description=__doc__.splitlines()[0])
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite the diagram in {DOC.name}")
    args = parser.parse_args(argv)
    if args.update_docs:
        print(f"{DOC}: {'updated' if update_docs() else 'up to date'}")
    else:
        sys.stdout.write(state_diagram())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
