"""The Telegram bot (aiogram 3): commands, proposal cards, and the outbox for Telegram.

Runs inside the daemon, in the thread and event loop of
:class:`agent.telegram_service.TelegramService`, which imports this module (and so
aiogram, several seconds of imports) only after the daemon is ready. The trainer child
never sees it. Three kinds of task share the loop:

* **long polling** (aiogram's dispatcher): commands and button presses, handled one
  at a time, and each confirmed to Telegram (the next ``getUpdates`` offset) only once
  it was handled, so a command interrupted by a stop or a crash is handled again by
  the next daemon (decisions are compare-and-set; ``/plot`` and ``/listen`` run in
  tasks of their own and are confirmed when they start). Every update passes
  :meth:`TelegramBot._gate` first: a command addressed to another bot
  (``/status@other_bot``) is ignored; only a user in ``allowed_user_ids`` writing in
  a chat in ``allowed_chat_ids`` gets through; anyone else gets a refusal and an
  audit row. Handlers use :mod:`agent.views` and :mod:`agent.actions`, the CLI's logic, on the bot's own
  connection to the journal (in worker threads: SQLite waits must not stall the loop).
* **one relay per allowed chat**: :class:`agent.outbox.Relay` picks the next message
  (grouping, flood control), this module sends it with tenacity backoff while
  Telegram is unreachable, and the journal records the delivery (at-least-once; see
  :mod:`agent.outbox`). At exit a bounded flush: a few tries per message within
  ``flush_seconds``, then what is left waits in the outbox for the next start.
* **card upkeep**: a proposal's message is edited once its status changes, whoever
  decided it (a button, ``/approve``, the CLI, expiry), from ``proposal_messages``.

Failures are logged through :class:`agent.bot_token.Redactor`: the token is part of every
request URL and must not reach a log line or the journal.
"""

from __future__ import annotations

import asyncio
import html
import math
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiogram import Bot, Dispatcher, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramRetryAfter,
)
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.filters.callback_data import CallbackData
from aiogram.types import (
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    Update,
)
from aiogram.utils.backoff import BackoffConfig
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from agent import actions, media, views
from agent.bot_token import Redactor
from agent.config import TelegramConfig
from agent.journal import Journal, ProposalRow
from agent.outbox import Outgoing, Relay, clip, is_urgent, telegram_channel
from agent.paths import journal_path
from agent.telegram_format import DECIDE_HINT, card_text, help_text, refusal_text

HISTORY_LINES = 15
IDLE_POLL_SECONDS = 0.5  # how often an idle relay looks at the outbox (another process writes it)
CARD_SYNC_SECONDS = 1.0
REFUSAL_REPLY_SECONDS = 60.0  # a stranger is answered at most once a minute (every attempt is audited)
FLUSH_TRIES = 3  # at exit, tries per message (with backoff) before it is left in the outbox
# Backoff jitter: up to this fraction of retry_initial_seconds added to each wait, so that
# retries (of several chats, of a restarted daemon) do not all fall on one moment.
JITTER_FRACTION = 0.2


class Decide(CallbackData, prefix="decide"):
    proposal_id: int
    action: str  # "approve" | "reject"


def permanent(exc: BaseException) -> bool:
    """Errors that a retry cannot fix for this message (the others wait and retry)."""
    # 401 (token revoked) and 404 (wrong api_base_url) hit every message alike: they
    # wait for the operator's fix rather than dropping the whole outbox.
    return isinstance(exc, (TelegramBadRequest, TelegramForbiddenError, TelegramEntityTooLarge))


def transient(exc: BaseException) -> bool:
    return isinstance(exc, Exception) and not permanent(exc)


def keyboard(p: ProposalRow) -> InlineKeyboardMarkup | None:
    if p.status != "proposed":
        return None
    return InlineKeyboardMarkup(inline_keyboard=[[
        InlineKeyboardButton(text="Approve", callback_data=Decide(proposal_id=p.id, action="approve").pack()),
        InlineKeyboardButton(text="Reject", callback_data=Decide(proposal_id=p.id, action="reject").pack()),
    ]])


def actor(user: Any) -> str:
    """How a Telegram user is named in decisions and the audit: stable id, readable name."""
    if user is None:
        return "telegram:unknown"
    return f"telegram:{user.id}" + (f"/@{user.username}" if getattr(user, "username", None) else "")


class TelegramBot:
    def __init__(self, token: str, cfg: TelegramConfig, *, journal: Journal, run_dir: Path, max_steps: int | None,
                 probe_text: str | None, log: Any, redactor: Redactor) -> None:
        self.cfg, self.journal, self.log, self.redact = cfg, journal, log, redactor
        self.run_dir = Path(run_dir)
        self.run_name = self.run_dir.resolve().name or str(run_dir)
        self.max_steps = max_steps
        self.probe_text = cfg.listen_text or probe_text or "Hello there."
        api = TelegramAPIServer.from_base(cfg.api_base_url) if cfg.api_base_url else PRODUCTION
        self.bot = Bot(token, session=AiohttpSession(api=api, timeout=cfg.request_timeout_seconds))
        self.dp = Dispatcher()
        self.dp.update.outer_middleware(self._gate)
        self.dp.include_router(self._router())
        channels = [telegram_channel(c) for c in cfg.allowed_chat_ids]
        journal.outbox_settle(channels)  # rows that waited only for a chat no longer configured
        self.relays = [(chat, Relay(journal, telegram_channel(chat), channels, run_name=self.run_name,
                                    burst=cfg.burst_messages, per_minute=cfg.messages_per_minute,
                                    group_seconds=cfg.group_seconds, max_items=cfg.group_max_items))
                       for chat in dict.fromkeys(cfg.allowed_chat_ids)]
        self._stopping = asyncio.Event()
        self._cards_due = asyncio.Event()
        self._flush_deadline = math.inf  # monotonic time the exit flush ends
        # Doubling from retry_initial_seconds plus jitter, capped at retry_max_seconds (overflow-safe
        # however long Telegram stays away): the sending retries and the polling restarts.
        self._backoff = wait_exponential_jitter(multiplier=cfg.retry_initial_seconds, max=cfg.retry_max_seconds,
                                                jitter=JITTER_FRACTION * cfg.retry_initial_seconds)
        self._media_lock = asyncio.Lock()
        self._media_tasks: set[asyncio.Task[Any]] = set()  # /plot and /listen at work
        self._refused_at: dict[int | None, float] = {}

    # -- the life of the bot --------------------------------------------------------------
    async def run(self, stop: asyncio.Event, flush_seconds: float) -> None:
        """Serve until ``stop`` is set, then deliver what the outbox holds for up to ``flush_seconds``."""
        tasks = [asyncio.create_task(self._poll(), name="telegram-poll"),
                 asyncio.create_task(self._cards_loop(), name="telegram-cards")]
        tasks += [asyncio.create_task(self._relay_loop(chat, relay), name=f"telegram-relay-{chat}")
                  for chat, relay in self.relays]
        try:
            await stop.wait()
        finally:
            self._stopping.set()
            self._cards_due.set()
            with suppress(RuntimeError):  # "Polling is not started": it was between attempts
                await asyncio.wait_for(self.dp.stop_polling(), 5)
            _, late = await asyncio.wait(tasks, timeout=5)
            for task in [*late, *self._media_tasks]:
                task.cancel()
            await asyncio.gather(*tasks, *self._media_tasks, return_exceptions=True)
            try:
                await self._flush(flush_seconds)
            finally:
                await self.bot.session.close()

    async def _flush(self, seconds: float) -> None:
        """At exit: each chat gets everything waiting (grouped, no flood wait), each message
        tried at most FLUSH_TRIES times with backoff, all within ``seconds``; what is left
        waits in the outbox for the next start."""
        self._flush_deadline = time.monotonic() + seconds
        try:
            async with asyncio.timeout(seconds):  # a request may hang up to request_timeout_seconds
                for chat, relay in self.relays:
                    while True:
                        try:
                            if await self._send_next(chat, relay, flush=True) == math.inf:
                                break
                        except Exception as exc:  # noqa: BLE001 - Telegram still failing: it waits in the outbox
                            self.log.warning("telegram: undelivered notifications stay in the outbox for the "
                                             "next start", chat=chat, error=self.redact.error(exc))
                            break
                await self._sync_cards()
        except TimeoutError:
            self.log.warning("telegram: flush time is up; undelivered notifications stay in the outbox for the "
                             "next start", seconds=seconds)

    async def _poll(self) -> None:
        """aiogram's long polling, started again when its start fails (getMe while Telegram is down).

        Updates are handled one at a time (``handle_as_tasks=False``): aiogram moves the
        ``getUpdates`` offset past an update only when its handler returned, so Telegram
        keeps an update whose handling was cut short and gives it to the next daemon.
        The slow commands (``/plot``, ``/listen``) hand their work to a task of their own."""
        backoff = BackoffConfig(min_delay=self.cfg.retry_initial_seconds, max_delay=self.cfg.retry_max_seconds,
                                factor=2.0, jitter=0.1)  # aiogram's, between failed getUpdates once polling
        retrying = AsyncRetrying(retry=retry_if_exception_type(Exception), wait=self._backoff, stop=self._retry_stop,
                                 sleep=self._nap, before_sleep=self._poll_retry_log)
        try:
            async for attempt in retrying:
                with attempt:
                    if self._stopping.is_set():
                        return
                    await self.dp.start_polling(self.bot, polling_timeout=self.cfg.poll_timeout_seconds,
                                                handle_as_tasks=False, backoff_config=backoff, handle_signals=False,
                                                close_bot_session=False,
                                                allowed_updates=["message", "callback_query"])
        except RetryError:  # it failed as the bot was stopping: nothing left to do
            return

    def _poll_retry_log(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.log.warning("telegram: polling could not start; retrying", error=self.redact.error(exc) if exc else None,
                         in_seconds=round(state.upcoming_sleep, 2))

    async def _nap(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Sleep, cut short by stopping (or by ``wake``)."""
        waits = [asyncio.ensure_future(self._stopping.wait())]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=max(seconds, 0.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A journal call in a worker thread (it may wait on SQLite's lock or fsync)."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- notifications out ------------------------------------------------------------------
    async def _relay_loop(self, chat: int, relay: Relay) -> None:
        while not self._stopping.is_set():
            try:
                wait = await self._send_next(chat, relay)
            except Exception as exc:  # noqa: BLE001 - given up because the bot stops, or a bug
                if self._stopping.is_set():
                    return
                self.log.error("telegram: relay failed", chat=chat, error=self.redact.error(exc))
                wait = self.cfg.retry_max_seconds
            if wait > 0:
                await self._nap(min(wait, IDLE_POLL_SECONDS))

    def _retry_wait(self, state: RetryCallState) -> float:
        """Exponential backoff with jitter, capped; never shorter than Telegram's retry_after."""
        delay = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TelegramRetryAfter):
            delay = max(delay, float(exc.retry_after))
        return delay

    def _retry_stop(self, state: RetryCallState) -> bool:
        """While serving: retry until the bot stops (the exit flush takes over then)."""
        return self._stopping.is_set()

    def _flush_stop(self, state: RetryCallState) -> bool:
        """At exit: a message gets no more tries once the next would start past the deadline."""
        return time.monotonic() + state.upcoming_sleep >= self._flush_deadline

    def _retry_log(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if state.attempt_number == 1 or state.attempt_number % 10 == 0:
            self.log.warning("telegram: sending failed; retrying", attempt=state.attempt_number,
                             in_seconds=round(state.upcoming_sleep, 2),
                             error=self.redact.error(exc) if exc else None)

    async def _send_next(self, chat: int, relay: Relay, flush: bool = False) -> float:
        """Send this chat's next message, retrying while Telegram is unreachable. Each try
        plans again, so a backlog built up during an outage leaves as one grouped message.
        Returns how long until there may be another (inf: the outbox is empty for it)."""
        if flush:  # the bot is stopping: a few real waits (a nap ends at once now), then give up
            retrying = AsyncRetrying(retry=retry_if_exception(transient), wait=self._retry_wait,
                                     stop=stop_after_attempt(FLUSH_TRIES) | self._flush_stop, sleep=asyncio.sleep,
                                     before_sleep=self._retry_log, reraise=True)
        else:
            retrying = AsyncRetrying(retry=retry_if_exception(transient), wait=self._retry_wait,
                                     stop=self._retry_stop, sleep=self._nap, before_sleep=self._retry_log,
                                     reraise=True)
        out: Outgoing | None = None
        ref: str | None = None
        async for attempt in retrying:
            with attempt:
                if not flush and self._stopping.is_set():
                    return math.inf  # what waits is the flush's now
                out, wait = await self._db(relay.next, flush)
                if out is None:
                    return wait
                try:
                    ref = await self._deliver(chat, out)
                except Exception as exc:
                    error = self.redact.error(exc)
                    if permanent(exc):
                        self.log.error("telegram: message refused for good; recorded as undeliverable",
                                       chat=chat, outbox_ids=out.ids, error=error)
                        await self._db(relay.undeliverable, out, error)
                        return 0.0
                    tries = attempt.retry_state.attempt_number
                    if tries == 1 or tries % 10 == 0:  # the journal hears of an outage, not of every try
                        await self._db(relay.failed, out, error)
                    raise
        assert out is not None
        await self._db(relay.delivered, out, ref)
        return 0.0

    async def _deliver(self, chat: int, out: Outgoing) -> str:
        if out.proposal_id is not None:
            p = await self._db(self.journal.get_proposal, int(out.proposal_id))
            if p is not None:
                return str((await self._send_card(chat, p)).message_id)
        quiet = not any(map(is_urgent, out.messages))  # digests and phase changes arrive silently
        msg = await self.bot.send_message(chat, out.text, disable_notification=quiet)
        return str(msg.message_id)

    async def _send_card(self, chat: int, p: ProposalRow) -> Message:
        msg = await self.bot.send_message(chat, clip(card_text(p, self.run_name)), reply_markup=keyboard(p))
        await self._db(self.journal.add_proposal_message, p.id, chat, msg.message_id, p.status)
        return msg

    # -- cards follow their proposal ------------------------------------------------------------
    async def _cards_loop(self) -> None:
        while not self._stopping.is_set():
            self._cards_due.clear()
            try:
                await self._sync_cards()
            except Exception as exc:  # noqa: BLE001 - try again next round
                self.log.warning("telegram: updating proposal messages failed", error=self.redact.error(exc))
            await self._nap(CARD_SYNC_SECONDS, wake=self._cards_due)

    async def _sync_cards(self) -> None:
        """Edit each message whose proposal changed status since it was last shown."""
        for m in await self._db(self.journal.stale_proposal_messages):
            p = await self._db(self.journal.get_proposal, m.proposal_id)
            try:
                await self.bot.edit_message_text(text=clip(card_text(p, self.run_name)), chat_id=m.chat_id,
                                                 message_id=m.message_id, reply_markup=keyboard(p))
            except TelegramBadRequest as exc:
                if "not modified" not in str(exc):  # e.g. the message was deleted: nothing to edit
                    self.log.warning("telegram: could not edit a proposal message", proposal=p.id,
                                     error=self.redact.error(exc))
            except Exception as exc:  # noqa: BLE001 - unreachable: the next round tries again
                self.log.info("telegram: proposal message not edited yet", proposal=p.id,
                              error=self.redact.error(exc))
                return
            await self._db(self.journal.set_proposal_message_shown, m.chat_id, m.message_id, p.status)

    # -- who may command --------------------------------------------------------------------------
    def allowed(self, user: Any, chat: Any) -> bool:
        return (user is not None and chat is not None and user.id in self.cfg.allowed_user_ids
                and chat.id in self.cfg.allowed_chat_ids)

    async def _for_another_bot(self, event: Update) -> bool:
        """A command addressed to another bot (``/status@other_bot`` in a group): not for us."""
        text = event.message.text if event.message is not None else None
        if not text or not text.startswith("/"):
            return False
        _, at, mention = text.split(maxsplit=1)[0].partition("@")
        if not at:
            return False
        me = await self.bot.me()  # cached: polling asked getMe when it started
        return mention.lower() != (me.username or "").lower()

    async def _gate(self, handler: Callable[[Update, dict[str, Any]], Awaitable[Any]], event: Update,
                    data: dict[str, Any]) -> Any:
        if await self._for_another_bot(event):
            return None  # silently: neither answered nor refused
        user, chat = data.get("event_from_user"), data.get("event_chat")
        if self.allowed(user, chat):
            return await handler(event, data)
        what = (event.message.text if event.message is not None else
                f"button {event.callback_query.data}" if event.callback_query is not None else event.event_type)
        user_id, chat_id = getattr(user, "id", None), getattr(chat, "id", None)
        await self._db(self.journal.audit, actor(user), "refused",
                       f"{clip(str(what), 200)!r} in chat {chat_id}: not in supervisor.telegram.allowed_*")
        self.log.warning("telegram: refused a stranger", user=user_id, chat=chat_id)
        if event.callback_query is not None:
            await event.callback_query.answer("Not allowed.", show_alert=True)
        elif chat_id is not None:
            now = time.monotonic()
            if now - self._refused_at.get(user_id, -math.inf) >= REFUSAL_REPLY_SECONDS:
                self._refused_at[user_id] = now
                await self.bot.send_message(chat_id, refusal_text(user_id, chat_id))
        return None

    # -- commands -----------------------------------------------------------------------------------
    def _router(self) -> Router:
        r = Router(name="smart-tuner")
        r.message.register(self.on_help, CommandStart())
        r.message.register(self.on_help, Command("help"))
        r.message.register(self.on_status, Command("status"))
        r.message.register(self.on_plot, Command("plot"))
        r.message.register(self.on_listen, Command("listen"))
        r.message.register(self.on_pending, Command("pending"))
        r.message.register(self.on_approve, Command("approve"))
        r.message.register(self.on_reject, Command("reject"))
        r.message.register(self.on_pause, Command("pause"))
        r.message.register(self.on_resume, Command("resume"))
        r.message.register(self.on_history, Command("history"))
        r.callback_query.register(self.on_button, Decide.filter())
        r.message.register(self.on_other)
        return r

    async def _pre(self, message: Message, text: str) -> None:
        """A monospaced reply (status and history are column-aligned, as in a terminal)."""
        await message.answer(f"<pre>{html.escape(clip(text, 3800))}</pre>", parse_mode="HTML")

    async def on_help(self, message: Message) -> None:
        await message.answer(help_text(self.run_name, getattr(message.from_user, "id", None), message.chat.id))

    async def on_other(self, message: Message) -> None:
        await message.answer("Unknown command. /help lists what I understand.")

    async def on_status(self, message: Message) -> None:
        data = await self._db(views.status_data, self.journal, self.run_dir, self.max_steps)
        await self._pre(message, views.format_status(data, decide_hint=DECIDE_HINT))

    async def on_history(self, message: Message) -> None:
        events = (await self._db(views.history_events, self.journal))[-HISTORY_LINES:]
        text = "\n".join(views.format_event(e) for e in events) or "nothing has happened yet"
        await self._pre(message, text)

    async def on_pending(self, message: Message) -> None:
        pending = await self._db(self.journal.pending_proposals)
        if not pending:
            await message.answer("No proposals waiting.")
        for p in pending:
            await self._send_card(message.chat.id, p)

    async def on_approve(self, message: Message, command: CommandObject) -> None:
        await self._decide_command(message, command, "approved")

    async def on_reject(self, message: Message, command: CommandObject) -> None:
        await self._decide_command(message, command, "rejected")

    async def _decide_command(self, message: Message, command: CommandObject, decision: str) -> None:
        arg = (command.args or "").strip().lstrip("#")
        if not (arg.isascii() and arg.isdigit()):  # not "²", which isdigit() too
            await message.answer(f"Usage: /{command.command} ID (/pending lists the waiting proposals)")
            return
        outcome = await self._db(actions.decide, self.journal, int(arg), decision, actor(message.from_user))
        if outcome is None:
            await message.answer(f"No proposal {arg} (/pending lists the waiting ones).")
            return
        self._cards_due.set()
        await message.answer(views.format_decision(outcome))

    async def on_button(self, query: CallbackQuery, callback_data: Decide) -> None:
        decision = "approved" if callback_data.action == "approve" else "rejected"
        outcome = await self._db(actions.decide, self.journal, callback_data.proposal_id, decision,
                                 actor(query.from_user))
        if outcome is None:
            await query.answer(f"No proposal {callback_data.proposal_id}.", show_alert=True)
            return
        if outcome.won:
            await query.answer(f"{decision} #{outcome.after.id}")
        else:
            await query.answer(views.format_decision(outcome)[:190], show_alert=True)
        self._cards_due.set()  # the card shows the decision within a moment, this one or another

    async def on_pause(self, message: Message) -> None:
        await self._control(message, "pause")

    async def on_resume(self, message: Message) -> None:
        await self._control(message, "resume")

    async def _control(self, message: Message, kind: str) -> None:
        done = await self._db(actions.queue_control, self.journal, kind, source="telegram",
                              actor=actor(message.from_user))
        await message.answer(f"queued {kind} [{done.command_id}] for the trainer; "
                             f"it applies at the next step boundary{done.note()}")

    # -- pictures and sound -------------------------------------------------------------------------
    def _background(self, work: Awaitable[None], name: str) -> None:
        """Slow work in a task of its own: updates are handled one at a time, and a /listen
        (up to listen_timeout_seconds) must not hold up a decision."""
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._media_tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._media_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.warning("telegram: reply failed", task=task.get_name(), error=self.redact.error(task.exception()))

    async def on_plot(self, message: Message) -> None:
        self._background(self._plot(message), "telegram-plot")

    async def _plot(self, message: Message) -> None:
        evals = await self._db(self.journal.latest_evals, 50)
        image = next((e for e in reversed(evals) if e.alignment_image and Path(e.alignment_image).is_file()), None)
        if image is None:
            await message.answer("No alignment image yet (one comes with each evaluation).")
        else:
            data = await asyncio.to_thread(Path(image.alignment_image).read_bytes)
            await message.answer_photo(BufferedInputFile(data, Path(image.alignment_image).name),
                                       caption=f"alignment at step {image.step}: diagonality "
                                               f"{views.num(image.diagonality, '.3f')}, focus "
                                               f"{views.num(image.focus, '.3f')}")
        out = self.run_dir / "telegram" / "loss.png"
        async with self._media_lock:
            code, tail = await media.run_tool(media.loss_curve_command(journal_path(self.run_dir), out,
                                                                       f"{self.run_name}: loss"),
                                              self.cfg.listen_timeout_seconds)
            if code != 0:
                await message.answer(f"Could not draw the loss curve: {self.redact(tail)[-500:]}")
                return
            data = await asyncio.to_thread(out.read_bytes)
        await message.answer_photo(BufferedInputFile(data, "loss.png"), caption="training and validation loss")

    async def on_listen(self, message: Message) -> None:
        if self._media_tasks:
            await message.answer("Busy with another /listen or /plot; try again in a moment.")
            return
        ckpt = await self._db(self._newest_checkpoint)
        if ckpt is None:
            await message.answer("No checkpoint yet to listen to.")
            return
        self._background(self._listen(message, *ckpt), "telegram-listen")

    async def _listen(self, message: Message, step: int, path: Path) -> None:
        out = self.run_dir / "telegram" / f"listen_step_{step:08d}.wav"
        await message.answer(f"Synthesising {self.probe_text!r} with the checkpoint of step {step}...")
        async with self._media_lock:
            code, tail = await media.run_tool(media.synth_command(path, self.probe_text, out),
                                              self.cfg.listen_timeout_seconds)
            if code != 0 or not out.is_file():
                await message.answer(f"Synthesis failed: {self.redact(tail)[-500:]}")
                return
            data = await asyncio.to_thread(out.read_bytes)
        await message.answer_audio(BufferedInputFile(data, out.name), title=f"{self.run_name} step {step}",
                                   caption=f"step {step}: {self.probe_text}")

    def _newest_checkpoint(self) -> tuple[int, Path] | None:
        for c in self.journal.checkpoints(50):
            if c.health == "good" and Path(c.path).is_file():
                return c.step, Path(c.path)
        return None
