"""The Telegram bot against a Bot API stand-in on 127.0.0.1, and the outbox relay.

The bot runs as in the daemon (``TelegramService``: its own thread, loop and journal
connection); the test plays the supervisor and the CLI on the same journal, and the
Telegram users through the stand-in (``telegram_standin.py``). The end-to-end scenarios
with a real trainer are in ``test_telegram_e2e.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from agent.actions import decide
from agent.bot_token import ENV_FILE_ENV, TOKEN_ENV, Redactor, bot_token
from agent.config import SupervisorConfig, TelegramConfig
from agent.journal import Journal
from agent.outbox import FloodGate, Relay, group_text, telegram_channel
from agent.paths import journal_path
from trainer.control import (
    CommandResult,
    EvalRecord,
    Rollback,
    SetGatePosWeight,
    SetLearningRate,
    SpeechSummary,
    StepTelemetry,
)

from conftest import fake_bot_token
from journal_helpers import proposal_messages
from telegram_standin import BotApiStandIn

ROOT = Path(__file__).resolve().parent.parent
TOKEN = fake_bot_token(123456789, "AAHtest-secret-part_of-the-token")
SECRET = TOKEN.split(":", 1)[1]
CHAT = USER = 4242
STRANGER = 666
FAST = dict(allowed_chat_ids=[CHAT], allowed_user_ids=[USER], retry_initial_seconds=0.05, retry_max_seconds=0.4,
            poll_timeout_seconds=1, group_seconds=0.2, flush_seconds=3, request_timeout_seconds=5)


class Log:
    """A structlog-shaped logger that keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    def __getattr__(self, level):
        return lambda event, **kw: self.events.append((level, event, kw))

    def text(self) -> str:
        return "\n".join(f"{lvl} {ev} {kw}" for lvl, ev, kw in self.events)


@pytest.fixture
def standin():
    server = BotApiStandIn(TOKEN).start()
    yield server
    server.close()


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    with Journal(journal_path(run)) as j:
        j.record_phase("warmup", step=0, reason="run started")
    return run


@pytest.fixture
def start_bot(run_dir, standin):
    from agent.telegram_service import TelegramService

    services = []

    def start(log=None, **overrides):
        cfg = TelegramConfig(**{**FAST, "api_base_url": standin.url, **overrides})
        svc = TelegramService(TOKEN, cfg, run_dir=run_dir, max_steps=120, probe_text="Hello there.",
                              log=log if log is not None else Log())
        svc.start()
        services.append(svc)
        assert svc.ready.wait(120), "the bot did not start"
        standin.wait_for(lambda: standin.calls_of("getUpdates", ok_only=False), what="first getUpdates")
        return svc

    yield start
    for svc in services:
        svc.stop()


def ask(j: Journal, **kw) -> int:
    """A proposal waiting for a human, announced in the outbox as the supervisor does."""
    p = j.add_proposal(policy=kw.get("policy", "loss_spike"), kind="rollback",
                       actions=kw.get("actions", [Rollback(step=10, skip_batches=4), SetLearningRate(factor=0.5)]),
                       reason=kw.get("reason", "loss jumped 8x in 5 steps"), evidence={"spike": 8.1, "steps": 5},
                       aim="loss", mode="ask", step=14, expires_at=kw.get("expires_at", time.time() + 600))
    j.outbox_put("proposal_ask", f"#{p.id} loss_spike: ... approve with 'smart-tuner approve {p.id}'",
                 {"proposal_id": p.id, "urgent": True})
    return p.id


def card_of(standin: BotApiStandIn, proposal_id: int) -> dict:
    def find():
        for m in standin.sent_to(CHAT):
            buttons = (m.get("reply_markup") or {}).get("inline_keyboard") or [[]]
            if any(b["callback_data"] == f"decide:{proposal_id}:approve" for b in buttons[0]):
                return m
        return None
    return standin.wait_for(find, what=f"card of proposal {proposal_id}")


def text_of(standin: BotApiStandIn, message: dict) -> str:
    return standin.messages[(message["chat"]["id"], message["message_id"])]["text"]


# -- the relay, pure (no Telegram) ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


def test_flapping_run_is_grouped_and_rate_limited(tmp_path):
    clock = Clock()
    with Journal(tmp_path / "j.sqlite") as j:
        relay = Relay(j, "telegram:1", ["telegram:1"], run_name="r", burst=2, per_minute=6, group_seconds=5,
                      max_items=4, clock=lambda: time.time() + clock.t - 1_000.0, monotonic=clock)
        j.outbox_put("phase", "phase aligning -> stable: aligned", {"urgent": False})
        out, wait = relay.next()
        assert out is None and 4 < wait <= 5  # a lone, non-urgent row waits for company
        j.outbox_put("child_crashed", "trainer crashed: killed by SIGKILL\nlog line 1\nlog line 2", {"urgent": True})
        out, _ = relay.next()
        assert out.ids == [1, 2] and "!! " in out.text and "log line" not in out.text  # urgent: now, grouped
        relay.delivered(out, "m1")
        for i in range(30):  # the run flaps
            j.outbox_put("phase", f"phase stable -> aligning: collapse {i}", {"urgent": True})
        out, _ = relay.next()
        relay.delivered(out, "m2")  # the second of the burst
        for i in range(20):
            j.outbox_put("child_restarted", f"trainer restarted {i}", {"urgent": False})
        assert relay.next() == (None, pytest.approx(10.0))  # then 6 a minute
        clock.t += 10
        out, _ = relay.next()
        assert out is not None and len(out.ids) == 20
        assert "20 notifications" in out.text and "child_restarted x20" in out.text and "newest 4:" in out.text
        relay.delivered(out, "m3")
        assert relay.next()[0] is None and j.outbox_pending() == []
        assert len({d.ref for d in j.deliveries()}) == 3 and len(j.deliveries()) == 52


def test_a_card_goes_alone_and_is_not_held_behind_a_group(tmp_path):
    with Journal(tmp_path / "j.sqlite") as j:
        relay = Relay(j, "telegram:1", ["telegram:1"], run_name="r", burst=5, per_minute=6, group_seconds=60,
                      max_items=4)
        j.outbox_put("digest", "all well", {"urgent": False})
        j.outbox_put("proposal_ask", "#1 approve?", {"proposal_id": 1, "urgent": True})
        out, _ = relay.next()
        assert out.ids == [1] and out.proposal_id is None  # not kept waiting 60 s: a card is behind it
        relay.delivered(out, "a")
        out, _ = relay.next()
        assert out.ids == [2] and out.proposal_id == 1


def test_a_message_goes_out_once_every_channel_has_it(tmp_path):
    with Journal(tmp_path / "j.sqlite") as j:
        chats = [telegram_channel(1), telegram_channel(2)]
        mid = j.outbox_put("phase", "phase warmup -> aligning")
        assert j.outbox_delivered([mid], chats[0], channels=chats, ref="10") == 1
        assert j.outbox_delivered([mid], chats[0], channels=chats, ref="11") == 0  # recorded once
        assert [m.id for m in j.outbox_pending()] == [mid]
        assert j.outbox_for_channel(chats[0]) == [] and [m.id for m in j.outbox_for_channel(chats[1])] == [mid]
        j.outbox_delivered([mid], chats[1], channels=chats, error="TelegramForbiddenError: bot was blocked")
        assert j.outbox_pending() == [] and j.outbox_messages()[0].last_error.startswith("TelegramForbidden")
        assert any(a.action == "undeliverable" for a in j.audit_log())
        # The second chat leaves the config: what waited only for it is settled.
        late = j.outbox_put("digest", "all well")
        j.outbox_delivered([late], chats[0], channels=chats, ref="12")
        assert [m.id for m in j.outbox_pending()] == [late]
        assert j.outbox_settle(chats[:1]) == 1 and j.outbox_pending() == []


def test_flood_gate():
    clock = Clock()
    gate = FloodGate(burst=3, per_minute=60, clock=clock)
    for _ in range(3):
        assert gate.wait_seconds() == 0
        gate.take()
    assert gate.wait_seconds() == pytest.approx(1.0)
    clock.t += 2.5
    assert gate.wait_seconds() == 0


def test_group_text_lists_urgent_rows_hidden_by_the_count():
    from agent.journal import OutboxMessage

    rows = [OutboxMessage(i, 1000.0 + i, "phase", f"phase {i}", {"urgent": i == 1}, None, None, 0, None)
            for i in range(1, 16)]
    text = group_text(rows, "run", 5)
    assert "15 notifications" in text and "phase x15" in text and "urgent among the older ones: 1" in text
    assert "!! " in text and "phase 15" in text and "phase 3\n" not in text


# -- the token ---------------------------------------------------------------------------------------


def test_token_comes_only_from_the_environment_or_dotenv(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setenv(ENV_FILE_ENV, str(tmp_path / "missing.env"))
    assert bot_token() is None
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"# secrets\n{TOKEN_ENV}={TOKEN}\n")
    monkeypatch.setenv(ENV_FILE_ENV, str(dotenv))
    assert bot_token() == TOKEN
    monkeypatch.setenv(TOKEN_ENV, "987:from-the-environment-wins")
    assert bot_token() == "987:from-the-environment-wins"
    monkeypatch.setenv(TOKEN_ENV, "  ")
    monkeypatch.setenv(ENV_FILE_ENV, "")
    assert bot_token() is None
    # A token in the YAML is refused, and the error does not repeat it.
    with pytest.raises(Exception) as info:
        SupervisorConfig.model_validate({"telegram": {"bot_token": TOKEN}})
    assert "TELEGRAM_BOT_TOKEN" in str(info.value) and SECRET not in str(info.value)
    assert Redactor(TOKEN)(f"POST /bot{TOKEN}/getMe and {SECRET}") == "POST /bot<redacted>/getMe and <redacted>"


# -- the bot -------------------------------------------------------------------------------------------


def test_a_stranger_is_refused_and_audited(run_dir, standin, start_bot):
    with Journal(journal_path(run_dir)) as j:
        pid = ask(j)
        start_bot()
        card = card_of(standin, pid)
        standin.inject_message(STRANGER, STRANGER, f"/approve {pid}")  # a private chat with the bot
        standin.inject_message(CHAT, STRANGER, "/pause")  # an allowed chat, not an allowed user
        standin.inject_press(CHAT, STRANGER, card["message_id"], f"decide:{pid}:approve")
        refusals = standin.wait_for(lambda: len([a for a in j.audit_log() if a.action == "refused"]) == 3 and
                                    [a for a in j.audit_log() if a.action == "refused"], what="3 refusals")
        assert all(a.actor == f"telegram:{STRANGER}" for a in refusals)
        assert "/approve" in refusals[0].detail and f"chat {STRANGER}" in refusals[0].detail
        reply = standin.wait_for(lambda: standin.sent_to(STRANGER), what="the refusal")[0]
        assert reply["text"].startswith("Not allowed") and f"user {STRANGER}" in reply["text"]
        answer = standin.wait_for(lambda: standin.callback_answers, what="the button's answer")[0]
        assert answer["text"] == "Not allowed." and answer["show_alert"] == "true"
        assert j.get_proposal(pid).status == "proposed" and j.commands() == []


def test_approve_button_decides_once_and_every_decision_edits_its_card(run_dir, standin, start_bot):
    with Journal(journal_path(run_dir)) as j:
        first = ask(j)
        second = ask(j, policy="grad_runaway", actions=[SetGatePosWeight(value=10.0)])
        third = ask(j, policy="gate", actions=[SetGatePosWeight(value=8.0)], expires_at=time.time() + 2)
        start_bot()
        card = card_of(standin, first)
        assert "loss jumped 8x in 5 steps" in card["text"] and '"spike": 8.1' in card["text"]
        # A double tap, and /approve typed at the same time: one decision.
        for _ in range(2):
            standin.inject_press(CHAT, USER, card["message_id"], f"decide:{first}:approve", username="alice")
        standin.inject_message(CHAT, USER, f"/approve {first}", username="alice")
        standin.wait_for(lambda: len(standin.callback_answers) == 2, what="two answers")
        decisions = [a for a in j.audit_log() if a.action == "approved"]
        assert [(a.actor, a.detail) for a in decisions] == [(f"telegram:{USER}/@alice", f"#{first}")]
        commands = j.commands(proposal_id=first)
        assert sorted(c.kind for c in commands) == ["rollback", "set_lr"]  # queued once
        # Which of the three lands first is up to the scheduler; exactly one of them
        # wins and the other two are told it was already approved.
        standin.wait_for(lambda: any(f"proposal #{first}" in m.get("text", "") or "was already approved"
                                     in m.get("text", "") for m in standin.sent_to(CHAT)), what="the /approve reply")
        reply = next(m["text"] for m in standin.sent_to(CHAT)
                     if f"proposal #{first}" in m.get("text", "") or "was already approved" in m.get("text", ""))
        outcomes = [a["text"] for a in standin.callback_answers] + [reply]
        wins = [t for t in outcomes if "already approved" not in t]
        assert len(wins) == 1 and len(outcomes) == 3, outcomes
        assert wins[0] == f"approved #{first}" or wins[0].startswith(f"approved proposal #{first}"), wins
        standin.wait_for(lambda: text_of(standin, card).startswith("[run] APPROVED: approved by telegram:4242/@alice"),
                         what="the card edited")
        assert "reply_markup" not in standin.messages[(CHAT, card["message_id"])]  # no buttons any more
        # The trainer applies it: the card says so.
        for c in commands:
            j.acknowledge(CommandResult(command_id=c.id, kind=c.kind, ok=True, detail="done", step=15))
        standin.wait_for(lambda: "APPLIED: approved by telegram:4242/@alice" in text_of(standin, card)
                         and "applied at step 15" in text_of(standin, card), what="the card shows applied")

        # Decided elsewhere: the CLI, and expiry (as the supervisor's tick does it).
        card2, card3 = card_of(standin, second), card_of(standin, third)
        assert decide(j, second, "rejected", by="cli:root").won
        time.sleep(2.1 - min(2.0, time.time() - j.get_proposal(third).created_at))
        for p in j.due_proposals():
            j.decide(p.id, "expired", by="expiry")
        standin.wait_for(lambda: text_of(standin, card2).startswith("[run] REJECTED: rejected by cli:root"),
                         what="card 2 edited")
        standin.wait_for(lambda: text_of(standin, card3).startswith("[run] EXPIRED: expired by expiry"),
                         what="card 3 edited")
        assert [m.shown for m in proposal_messages(j, second)] == ["rejected"]


def test_status_history_and_pause_reply_from_the_journal(run_dir, standin, start_bot):
    import fcntl

    from trainer.runlock import daemon_lock_path

    # The bot lives in the run's daemon, which holds the daemon lock (here this process does).
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = os.open(daemon_lock_path(run_dir), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
    try:
        _status_history_and_pause(run_dir, standin, start_bot)
    finally:
        os.close(lock)


def _status_history_and_pause(run_dir, standin, start_bot):
    t0 = time.time() - 30
    with Journal(journal_path(run_dir)) as j:
        steps = [StepTelemetry(step=i, epoch=0, wall_time=t0 + i, lr=2.5e-4, loss=1.0 + 1 / i, mel_loss=0.5,
                               mel_postnet_loss=0.4, gate_loss=0.1, guided_attention_loss=0.0, grad_norm=2.0,
                               grad_clip=1.0, guided_attention_weight=1.0, gate_pos_weight=5.0, step_seconds=0.5,
                               skipped_steps=0, finite=True) for i in range(1, 21)]
        j.add_steps(steps)
        j.add_eval(EvalRecord(step=20, wall_time=t0 + 20, val_loss=2.0625, val_mel_loss=0.7, val_mel_postnet_loss=0.6,
                              val_gate_loss=0.2, val_guided_attention_loss=0.0, diagonality=0.4375, focus=0.3125,
                              aligned_fraction=0.5, gate_accuracy=0.8125, speech_score=0.375, mcd_dtw=2.875,
                              speech=SpeechSummary(synthesized=10, utterances=8, spoken=3, score=0.375,
                                                   mcd_dtw=2.875, stopped=9, premature=1, runaway=0,
                                                   gate_missed_end=0, read=9, gate_fired=10, duration_ratio=1.0,
                                                   seconds=0.5)))
        j.record_phase("aligning", step=20, reason="warm-up over")
        start_bot()
        standin.inject_message(CHAT, USER, "/status")
        status = standin.wait_for(lambda: [m for m in standin.sent_to(CHAT) if "phase     aligning" in m["text"]],
                                  what="the /status reply")[0]["text"]
        for number in (f"daemon    running (pid {os.getpid()}, since ", "step      20 / 120", "loss 1.0500",
                       "lr 0.00025", "val loss 2.0625", "diagonality 0.438",
                       "accuracy 0.812", "1.00 steps/s", "ETA 1m 40s", "3 of 8 spoken (38%), MCD-DTW 2.88 dB",
                       "9 in range, 1 early, 0 runaway"):
            assert number in status, (number, status)
        standin.inject_message(CHAT, USER, "/pause")
        reply = standin.wait_for(lambda: [m for m in standin.sent_to(CHAT) if m["text"].startswith("queued pause")],
                                 what="the /pause reply")[0]
        (command,) = j.commands()
        assert command.kind == "pause" and command.source == "telegram" and command.id in reply["text"]
        assert ("telegram:4242", "pause", f"command {command.id}") in [(a.actor, a.action, a.detail)
                                                                       for a in j.audit_log()]
        standin.inject_message(CHAT, USER, "/history")
        history = standin.wait_for(lambda: [m for m in standin.sent_to(CHAT) if "warmup -> aligning" in m["text"]],
                                   what="the /history reply")[0]["text"]
        assert "pause [" in history and "from telegram -> pending" in history
        standin.inject_message(CHAT, USER, "/plot")
        standin.wait_for(lambda: [m for m in standin.sent_to(CHAT) if m.get("text", "").startswith("No alignment")],
                         what="/plot without an image")
        standin.wait_for(lambda: standin.calls_of("sendPhoto"), timeout=60, what="the loss curve")
        (photo,) = standin.calls_of("sendPhoto")
        assert photo.files["photo"][1].startswith(b"\x89PNG")


def test_failing_sends_never_show_the_token(run_dir, standin, start_bot, caplog):
    from agent.logs import configure_logging, get_logger

    out = io.StringIO()
    configure_logging("leak-test", json=True, stream=out)
    caplog.set_level(logging.DEBUG)
    standin.echo_path_in_errors = True  # a hostile server quotes the URL, token and all, in its errors
    with Journal(journal_path(run_dir)) as j:
        try:
            standin.fail_next("sendMessage", 500, "Internal Server Error", times=2)
            standin.fail_next("sendMessage", 400, "Bad Request: chat not found")
            standin.fail_next("getUpdates", 502, "Bad Gateway", times=2)
            j.outbox_put("child_crashed", "trainer crashed: exit code 1", {"urgent": True})
            svc = start_bot(log=get_logger())
            standin.wait_for(lambda: j.outbox_pending() == [], what="the outbox settled")
            standin.down()  # and an unreachable server for a while
            j.outbox_put("child_restarted", "trainer restarted", {"urgent": True})
            time.sleep(1.0)
            standin.up()
            standin.wait_for(lambda: j.outbox_pending() == [], what="delivered after the outage")
            svc.stop()
        finally:
            import structlog

            logging.getLogger().handlers[:] = [h for h in logging.getLogger().handlers if h.get_name() != "smart-tuner"]
            structlog.reset_defaults()
        journal_text = json.dumps([[m.last_error for m in j.outbox_messages()],
                                   [(a.actor, a.action, a.detail) for a in j.audit_log()],
                                   [d.error for d in j.deliveries()]])
    errors = [c for c in standin.calls if c.status != 200]
    assert len(errors) >= 5  # the failures happened, quoting the token in their text
    assert "undeliverable" in journal_text and "chat not found" in journal_text and "<redacted>" in journal_text
    logged = out.getvalue() + caplog.text + "\n".join(
        logging.Formatter().format(r) for r in caplog.records)
    assert "sending failed" in logged and "Failed to fetch updates" in logged
    for where, text in (("structlog output", logged), ("journal", journal_text)):
        assert SECRET not in text, where


def test_retry_waits_double_from_the_initial_wait_with_a_little_jitter_up_to_the_cap(run_dir):
    """tenacity's wait_exponential_jitter: initial * 2**(n-1), plus up to a fifth of the initial
    wait, never beyond retry_max_seconds (and no overflow however long Telegram stays away)."""
    from tenacity import RetryCallState

    from agent.telegram_bot import JITTER_FRACTION, TelegramBot

    cfg = TelegramConfig(**{**FAST, "retry_initial_seconds": 0.5, "retry_max_seconds": 6.0})

    async def waits() -> dict[int, list[float]]:
        with Journal(journal_path(run_dir)) as j:
            bot = TelegramBot(TOKEN, cfg, journal=j, run_dir=run_dir, max_steps=None, probe_text=None, log=Log(),
                              redactor=Redactor(TOKEN))
            try:
                state = RetryCallState(None, None, (), {})
                seen: dict[int, list[float]] = {}
                for n in (1, 2, 3, 4, 5, 6, 10_000):
                    state.attempt_number = n
                    seen[n] = [bot._retry_wait(state) for _ in range(200)]
                return seen
            finally:
                await bot.bot.session.close()

    seen = asyncio.run(waits())
    jitter = JITTER_FRACTION * 0.5
    for n, ws in seen.items():
        low = min(0.5 * 2 ** (n - 1), 6.0) if n < 100 else 6.0
        assert all(low <= w <= min(low + jitter, 6.0) + 1e-9 for w in ws), (n, min(ws), max(ws))
    assert len(set(seen[1])) > 1  # jittered: two bots do not retry in step
    assert max(seen[10_000]) == 6.0


@pytest.mark.parametrize("status,description", [(401, "Unauthorized"), (502, "Bad Gateway")])
def test_exit_with_telegram_failing_tries_a_few_times_then_leaves_the_outbox(run_dir, standin, start_bot, status,
                                                                             description):
    """A revoked token (401) or a broken proxy (502) at exit: a few tries with backoff, not
    a storm of requests, and the notice waits in the outbox for the next start."""
    log = Log()
    with Journal(journal_path(run_dir)) as j:
        svc = start_bot(log=log)
        standin.fail_always(status, description)
        j.outbox_put("child_finished", "trainer finished: trainer exited 0 at step 90", {"urgent": True})
        standin.wait_for(lambda: len(standin.calls_of("sendMessage", ok_only=False)) >= 2, what="failed sends")
        before = len(standin.calls)
        t0 = time.monotonic()
        svc.stop()
        took = time.monotonic() - t0
        during = standin.calls[before:]
        assert not svc._thread.is_alive() and took < FAST["flush_seconds"] + 5
        assert len(during) <= 10, [c.method for c in during]
        assert [m.kind for m in j.outbox_pending()] == ["child_finished"]  # for the next start
    assert ("info", "telegram: bot stopped") in [(lvl, ev) for lvl, ev, _ in log.events]
    assert "stopped by an error" not in log.text() and "OverflowError" not in log.text()
    assert "undelivered notifications stay in the outbox" in log.text()


def test_a_command_cut_short_is_handled_again_after_a_restart(run_dir, standin, start_bot, monkeypatch):
    """An update is confirmed to Telegram (the getUpdates offset) only once it was handled."""
    from agent.telegram_bot import TelegramBot

    entered = threading.Event()
    original = TelegramBot._control

    async def cut_short(self, message, kind):
        entered.set()
        await asyncio.sleep(3600)  # the daemon is stopped in the middle of the command

    monkeypatch.setattr(TelegramBot, "_control", cut_short)
    with Journal(journal_path(run_dir)) as j:
        svc = start_bot()
        update = standin.inject_message(CHAT, USER, "/pause")
        assert entered.wait(20), "the /pause handler did not start"
        time.sleep(0.5)  # time enough for a poll that would confirm it early

        def offsets():
            return [int(c.fields.get("offset") or 0) for c in standin.calls_of("getUpdates", ok_only=False)]

        assert max(offsets()) <= update, offsets()  # not confirmed while being handled
        svc.stop()
        assert j.commands() == []
        monkeypatch.setattr(TelegramBot, "_control", original)
        start_bot()
        standin.wait_for(lambda: [m for m in standin.sent_to(CHAT) if m["text"].startswith("queued pause")],
                         what="the /pause handled after the restart")
        (command,) = j.commands()
        assert command.kind == "pause"
        standin.wait_for(lambda: max(offsets()) == update + 1, what="the update confirmed once handled")


def test_commands_for_another_bot_are_ignored_and_huge_ids_answered(run_dir, standin, start_bot):
    huge = "99999999999999999999999"  # beyond SQLite's 64-bit integers
    with Journal(journal_path(run_dir)) as j:
        pid = ask(j)
        start_bot()
        card = card_of(standin, pid)
        standin.inject_message(CHAT, USER, "/status@other_bot")
        standin.inject_message(STRANGER, STRANGER, "/start@other_bot")  # not for us: not even refused
        standin.inject_message(CHAT, USER, f"/approve {huge}")
        standin.wait_for(lambda: [m for m in standin.sent_to(CHAT)
                                  if m["text"] == f"No proposal {huge} (/pending lists the waiting ones)."],
                         what="the /approve reply")
        standin.inject_press(CHAT, USER, card["message_id"], f"decide:{huge}:approve")
        answer = standin.wait_for(lambda: standin.callback_answers, what="the button's answer")[0]
        assert answer["text"] == f"No proposal {huge}."
        standin.inject_message(CHAT, USER, "/status@smart_tuner_test_bot")  # addressed to us: answered
        standin.wait_for(lambda: [m for m in standin.sent_to(CHAT) if "phase     warmup" in m["text"]],
                         what="the /status@ours reply")
        texts = [m.get("text", "") for m in standin.sent_to(CHAT)]
        assert not [t for t in texts if "Unknown command" in t], texts
        assert standin.sent_to(STRANGER) == [] and not [a for a in j.audit_log() if a.action == "refused"]
        assert j.get_proposal(pid).status == "proposed" and j.commands() == []


def test_daemon_without_a_token_notifies_on_the_console_and_never_imports_aiogram(tmp_path):
    """The README demo's set-up: no TELEGRAM_BOT_TOKEN. A stand-in child, no torch: fast."""
    script = textwrap.dedent(f"""
        import io, json, sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from conftest import micro_config
        from agent.daemon import run_daemon
        from agent.journal import Journal
        cfg = micro_config(__import__("pathlib").Path({str(tmp_path)!r}) / "ds", {str(tmp_path / "run")!r},
                           supervisor={{"tick_seconds": 0.2, "digest_minutes": 0.005}})
        events = []
        class Log:
            def __getattr__(self, level):
                return lambda event, **kw: events.append((event, kw.get("kind")))
        rc = run_daemon(cfg, log=Log(), echo_child=False,
                        child_command=[sys.executable, "-c", "import time; time.sleep(1.5)"])
        with Journal({str(tmp_path / "run" / "journal.sqlite")!r}) as j:
            unsent = len(j.outbox_pending())
        print(json.dumps({{"rc": rc, "aiogram": "aiogram" in sys.modules, "unsent": unsent,
                           "kinds": sorted({{k for e, k in events if e == "notification"}})}}))
    """)
    env = {k: v for k, v in __import__("os").environ.items() if k != TOKEN_ENV}
    env[ENV_FILE_ENV] = ""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0 and result["aiogram"] is False and result["unsent"] == 0
    assert {"child_started", "child_finished", "digest"} <= set(result["kinds"])
