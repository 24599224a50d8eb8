"""A Telegram Bot API stand-in on 127.0.0.1, speaking the HTTP protocol as aiogram uses it.

aiogram POSTs to ``{base}/bot{token}/{method}`` with form fields (url-encoded, or
multipart when a file is uploaded; nested values such as ``reply_markup`` as JSON
text) and reads ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N,
"description": "..."}``. This server implements what the bot uses: ``getMe``,
long-polled ``getUpdates`` (with offsets confirming updates), ``sendMessage``,
``sendPhoto`` and ``sendAudio`` (multipart uploads, kept), ``editMessageText`` (with
Telegram's "message is not modified" error), ``answerCallbackQuery``. A test injects
updates (messages, button presses), takes the server down and up again on the same
port, or makes it fail (the next calls, or every call until told otherwise: a revoked
token's 401, a broken proxy's 502). It never listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

BOT_ID = 123456789
BOT_USER = {"id": BOT_ID, "is_bot": True, "first_name": "Smart Tuner", "username": "smart_tuner_test_bot"}


@dataclass
class Call:
    """One request the bot made (successful or not)."""
    method: str
    fields: dict[str, Any]
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # name -> (filename, content)
    status: int = 200
    at: float = field(default_factory=time.time)


class BotApiStandIn:
    def __init__(self, token: str) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}  # (chat, message id) -> as last sent/edited
        self.sent: list[dict[str, Any]] = []  # every message created, in order (sendMessage/Photo/Audio)
        self.callback_answers: list[dict[str, Any]] = []
        self.echo_path_in_errors = False  # a hostile server: its error text quotes the URL (with the token)
        self._fail: list[tuple[str, int, str]] = []  # (method or "*", status, description), consumed in order
        self._fail_always: tuple[int, str] | None = None  # every call fails so (after the consumed ones)
        self._updates: list[dict[str, Any]] = []
        self._next_update = 1
        self._next_message = 1
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bot-api-stand-in", daemon=True)
        self._runner: web.AppRunner | None = None
        with socket.socket() as s:  # a free port, kept for the outages
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- life -------------------------------------------------------------------------------
    def start(self) -> "BotApiStandIn":
        self._thread.start()
        self.up()
        return self

    def up(self) -> None:
        self._run(self._up())

    def down(self) -> None:
        """Stop listening and drop every connection (long polls included), as a dead server."""
        self._run(self._down())

    def close(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _up(self) -> None:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def _down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- what tests do ------------------------------------------------------------------------
    def inject_message(self, chat_id: int, user_id: int, text: str, username: str | None = None) -> int:
        user = {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"}
        if username:
            user["username"] = username
        message = {"message_id": self._new_message_id(), "date": int(time.time()), "chat": self._chat(chat_id),
                   "from": user, "text": text}
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        return self._inject({"message": message})

    def inject_press(self, chat_id: int, user_id: int, message_id: int, data: str, username: str | None = None) -> int:
        """A press of an inline button under the bot's message ``message_id``."""
        user = {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"}
        if username:
            user["username"] = username
        with self._lock:
            message = self.messages[(chat_id, message_id)]
        query = {"id": f"cq{time.monotonic_ns()}", "from": user, "chat_instance": f"ci{chat_id}",
                 "message": message, "data": data}
        return self._inject({"callback_query": query})

    def fail_next(self, method: str, status: int, description: str, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` ("*": any) fail with this HTTP status."""
        with self._lock:
            self._fail += [(method, status, description)] * times

    def fail_always(self, status: int | None, description: str = "") -> None:
        """Every call fails with this HTTP status from now on (None: answer normally again)."""
        with self._lock:
            self._fail_always = None if status is None else (status, description)

    def calls_of(self, method: str, ok_only: bool = True) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and (c.status == 200 or not ok_only)]

    def sent_to(self, chat_id: int) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.sent if m["chat"]["id"] == chat_id]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
        from conftest import wait_until

        return wait_until(predicate, timeout, what)

    # -- the protocol ----------------------------------------------------------------------------
    def _inject(self, update: dict[str, Any]) -> int:
        with self._lock:
            update["update_id"] = self._next_update
            self._next_update += 1
            self._updates.append(update)
        return update["update_id"]

    def _new_message_id(self) -> int:
        with self._lock:
            self._next_message += 1
            return self._next_message

    @staticmethod
    def _chat(chat_id: int) -> dict[str, Any]:
        return {"id": chat_id, "type": "private" if chat_id > 0 else "group",
                **({"first_name": f"chat{chat_id}"} if chat_id > 0 else {"title": f"group{chat_id}"})}

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        form = await request.post()
        fields: dict[str, Any] = {}
        files: dict[str, tuple[str, bytes]] = {}
        for key, value in form.items():
            if isinstance(value, web.FileField):
                files[key] = (value.filename, value.file.read())
            else:
                fields[key] = value
        for key, value in list(fields.items()):  # aiogram uploads as photo=attach://<part name>
            if isinstance(value, str) and value.startswith("attach://") and value[9:] in files:
                files[key] = files.pop(value[9:])
        call = Call(method=method, fields=fields, files=files)
        with self._lock:
            self.calls.append(call)
        if request.match_info["token"] != self.token:
            return self._error(call, 401, "Unauthorized")
        with self._lock:
            failure = next((f for f in self._fail if f[0] in (method, "*")), None)
            if failure is not None:
                self._fail.remove(failure)
            elif self._fail_always is not None:
                failure = ("*", *self._fail_always)
        if failure is not None:
            description = failure[2] + (f" (at {request.path})" if self.echo_path_in_errors else "")
            return self._error(call, failure[1], description)
        handler = getattr(self, f"_m_{method.lower()}", None)
        if handler is None:
            return self._error(call, 404, "Not Found" + (f": {request.path}" if self.echo_path_in_errors else ""))
        try:
            result = await handler(fields, files)
        except _ApiError as exc:
            return self._error(call, exc.status, exc.description)
        return web.json_response({"ok": True, "result": result})

    def _error(self, call: Call, status: int, description: str) -> web.Response:
        call.status = status
        return web.json_response({"ok": False, "error_code": status, "description": description}, status=status)

    async def _m_getme(self, fields: dict, files: dict) -> Any:
        return BOT_USER

    async def _m_getupdates(self, fields: dict, files: dict) -> Any:
        offset = int(fields.get("offset", 0) or 0)
        timeout = float(fields.get("timeout", 0) or 0)
        with self._lock:  # an offset confirms (forgets) every update below it
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        deadline = time.monotonic() + timeout
        while True:  # the long poll: answer as soon as there is an update, or at the timeout
            with self._lock:
                ready = [u for u in self._updates if u["update_id"] >= offset][:100]
            left = deadline - time.monotonic()
            if ready or left <= 0:
                return ready
            await asyncio.sleep(min(0.05, left))

    def _new_message(self, fields: dict, **content: Any) -> dict[str, Any]:
        chat_id = int(fields["chat_id"])
        message = {"message_id": self._new_message_id(), "date": int(time.time()), "chat": self._chat(chat_id),
                   "from": BOT_USER, **content}
        if fields.get("reply_markup"):
            message["reply_markup"] = json.loads(fields["reply_markup"])
        with self._lock:
            self.messages[(chat_id, message["message_id"])] = message
            self.sent.append(message)
        return message

    @staticmethod
    def _text(fields: dict) -> str:
        """The text as Telegram keeps it: with parse_mode HTML, the markup taken out."""
        text = fields.get("text", "")
        if fields.get("parse_mode") == "HTML":
            text = html.unescape(re.sub(r"<[^>]+>", "", text))
        if not text.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            raise _ApiError(400, "Bad Request: message is too long")
        return text

    async def _m_sendmessage(self, fields: dict, files: dict) -> Any:
        return self._new_message(fields, text=self._text(fields))

    async def _m_sendphoto(self, fields: dict, files: dict) -> Any:
        name, data = files["photo"]
        photo = [{"file_id": f"photo{len(self.sent)}", "file_unique_id": f"u{len(self.sent)}", "width": 800,
                  "height": 400, "file_size": len(data)}]
        return self._new_message(fields, photo=photo, **({"caption": fields["caption"]} if "caption" in fields else {}))

    async def _m_sendaudio(self, fields: dict, files: dict) -> Any:
        name, data = files["audio"]
        audio = {"file_id": f"audio{len(self.sent)}", "file_unique_id": f"u{len(self.sent)}", "duration": 1,
                 "file_name": name, "file_size": len(data), **({"title": fields["title"]} if "title" in fields else {})}
        return self._new_message(fields, audio=audio, **({"caption": fields["caption"]} if "caption" in fields else {}))

    async def _m_editmessagetext(self, fields: dict, files: dict) -> Any:
        key = (int(fields["chat_id"]), int(fields["message_id"]))
        markup = json.loads(fields["reply_markup"]) if fields.get("reply_markup") else None
        with self._lock:
            message = self.messages.get(key)
            if message is None:
                raise _ApiError(400, "Bad Request: message to edit not found")
            text = self._text(fields)
            if message.get("text") == text and message.get("reply_markup") == markup:
                raise _ApiError(400, "Bad Request: message is not modified: specified new message content and "
                                     "reply markup are exactly the same as a current content and reply markup "
                                     "of the message")
            message = {**message, "text": text, "edit_date": int(time.time())}
            message.pop("reply_markup", None)
            if markup:
                message["reply_markup"] = markup
            self.messages[key] = message
        return message

    async def _m_answercallbackquery(self, fields: dict, files: dict) -> Any:
        with self._lock:
            self.callback_answers.append(dict(fields))
        return True


class _ApiError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status, self.description = status, description
