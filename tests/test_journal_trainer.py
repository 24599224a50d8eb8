"""A real (micro) training run on the journal port: telemetry, evaluations, checkpoints
and an approved proposal's commands, applied once and acknowledged, all in the journal."""

from __future__ import annotations

import pytest

from agent.journal import Journal
from agent.port import JournalPort
from trainer.callbacks import BaseCallback
from trainer.control import SaveCheckpoint, SetLearningRate
from trainer.loop import Trainer

from conftest import micro_config
from journal_helpers import integrity_check


class Supervisor(BaseCallback):
    """Stands in for the daemon: decides through its own connection while the trainer runs."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.proposal = None

    def on_step(self, trainer, record) -> None:
        if record.step == 1:
            self.proposal = self.journal.add_proposal(
                policy="test", kind="set_lr", actions=[SetLearningRate(value=5e-4), SaveCheckpoint()],
                reason="testing", evidence={"loss": record.loss}, mode="ask", step=record.step)
        if record.step == 2:
            assert self.journal.decide(self.proposal.id, "approved", "cli")
            assert not self.journal.decide(self.proposal.id, "approved", "telegram")


def test_a_trainer_on_the_journal_port(espeak_dataset, tmp_path):
    path = tmp_path / "run" / "journal.sqlite"
    supervisor = Journal(path)
    port = JournalPort(path, flush_every_steps=4, flush_seconds=60)
    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=6)
    trainer = Trainer(cfg, port=port, callbacks=[Supervisor(supervisor)])
    assert trainer.train() == "max_steps"
    port.close()  # the loop does not close its port; whoever built it does

    steps = supervisor.telemetry_after(0)
    assert [r.record.step for r in steps] == [1, 2, 3, 4, 5, 6]
    by_step = {r.record.step: r.record for r in steps}
    assert by_step[2].lr != pytest.approx(5e-4) and by_step[3].lr == pytest.approx(5e-4)
    assert [e.step for e in supervisor.latest_evals(10)] == [3, 6]
    assert sorted({c.step for c in supervisor.checkpoints()}) == [2, 3, 6]
    assert all(c.health == "good" for c in supervisor.checkpoints())
    (proposal,) = supervisor.proposals()
    assert (proposal.status, proposal.decided_by, proposal.applied_step) == ("applied", "cli", 2)
    commands = supervisor.commands(proposal_id=proposal.id)
    assert {c.kind for c in commands} == {"set_lr", "save_checkpoint"}
    assert all(c.ok and c.deliveries == 1 and c.step == 2 and not c.duplicate for c in commands)
    summary = supervisor.status_summary()
    assert summary.latest_step.step == 6 and summary.latest_eval.step == 6 and summary.open_commands == 0
    assert integrity_check(supervisor) == "ok"
    supervisor.close()
