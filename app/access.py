"""Who may use the server, from which pages, and how many streams at once.

One ASGI middleware in front of every router, so that no endpoint can forget a check:

- API keys (``--api-key``): with keys set, every path except ``/health`` and the demo
  page (``/``, ``/static/``) needs one, as ``Authorization: Bearer KEY`` or
  ``X-API-Key: KEY``; a WebSocket may also give ``?api_key=KEY``, since browsers cannot
  set headers on one.  HTTP without a valid key gets 401 with a JSON message; a
  WebSocket is refused at the handshake with the same 401 (or 403 where the server
  cannot send a body), before any stream is opened.
- Origins (``--allow-origin``): a browser always names the page that opens a WebSocket
  in ``Origin``; a page of another origin than the server's own is refused (403) unless
  listed.  Clients that send no ``Origin`` (command-line tools, Vosk clients) pass.
  The HTTP API's counterpart is CORS, added in :func:`app.server.create_app`.
- Streams (``--max-streams``): a stream beyond the limit is accepted and closed at
  once with 1013 "try again later", so the client learns why.
- Idle streams (``--idle-timeout-s``): a stream that sends nothing at all for that long
  is closed with 1000 and a reason; the endpoint sees an ordinary disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers, QueryParams
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.routers.common import CLOSE_NORMAL
from app.schemas import ErrorMessage, message_json

CLOSE_TRY_AGAIN = 1013
OPEN_PATHS = ("/health", "/")  # and everything under /static/
STREAM_PATHS = {"/v1/stream": True, "/vosk": False}  # path: whether it speaks {"type": "error"}
KEY_HEADERS = ("Authorization", "X-API-Key")
KEY_MESSAGE = "a valid API key is needed (Authorization: Bearer KEY or X-API-Key: KEY)"


def offered_keys(scope: Scope) -> list[str]:
    """The keys a request offers: both headers, and for a WebSocket the query too."""
    headers = Headers(scope=scope)
    keys = []
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        keys.append(token.strip())
    if "x-api-key" in headers:
        keys.append(headers["x-api-key"])
    if scope["type"] == "websocket":
        keys += QueryParams(scope.get("query_string", b"")).getlist("api_key")
    return keys


def key_accepted(offered: list[str], keys: tuple[str, ...]) -> bool:
    # Constant-time comparisons: the time of a refusal says nothing about a key.
    return any(hmac.compare_digest(o.encode(), k.encode()) for o in offered for k in keys)


def origin_allowed(scope: Scope, allowed: tuple[str, ...]) -> bool:
    """True for no ``Origin`` (not a browser), the server's own origin, or a listed one."""
    headers = Headers(scope=scope)
    origin = headers.get("origin")
    if origin is None or "*" in allowed or origin.rstrip("/") in allowed:
        return True
    # Same origin: the page came from the host:port the client connects to.  The scheme
    # is not compared: behind a TLS-terminating proxy the page is https, the socket ws.
    return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()


class AccessControl:
    def __init__(self, app: ASGIApp, services: Any) -> None:
        self.app = app
        self.services = services
        settings = services.settings
        self.keys = settings.api_keys
        self.origins = tuple(origin.rstrip("/") for origin in settings.allow_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        needs_key = bool(self.keys) and not (path in OPEN_PATHS or path.startswith("/static/"))
        key_ok = not needs_key or key_accepted(offered_keys(scope), self.keys)
        errors = self.services.metrics.errors
        if scope["type"] == "http":
            if not key_ok:
                errors.labels("http_401").inc()
                response = JSONResponse(
                    {"error": KEY_MESSAGE}, 401, headers={"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if not origin_allowed(scope, self.origins):
            errors.labels("ws_403").inc()
            await refuse(scope, receive, send, 403, "this page's origin is not allowed")
        elif not key_ok:
            errors.labels("ws_401").inc()
            await refuse(scope, receive, send, 401, KEY_MESSAGE)
        elif path in STREAM_PATHS:
            await self._stream(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = self.services
        slots = services.stream_slots
        if not slots.acquire():
            services.metrics.limit_hits.labels("max_streams").inc()
            websocket = WebSocket(scope, receive, send)
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # already gone
                await websocket.accept()
                if STREAM_PATHS[scope["path"]]:
                    message = f"the server's limit of {slots.limit} streams is reached"
                    await websocket.send_json(message_json(ErrorMessage(message=message)))
                await websocket.close(CLOSE_TRY_AGAIN, "try again later")
            return
        try:
            timeout = services.settings.idle_timeout_s
            if timeout:
                receive, send = IdleTimeout(receive, send, timeout, services.metrics).wrap()
            await self.app(scope, receive, send)
        finally:
            slots.release()


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    """Refuse a WebSocket at the handshake: an HTTP status with a JSON body where the
    server supports that (uvicorn does), else a close before accepting (HTTP 403)."""
    websocket = WebSocket(scope, receive, send)
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        if "websocket.http.response" in scope.get("extensions", {}):
            await websocket.send_denial_response(JSONResponse({"error": message}, status))
        else:
            await websocket.close(code=1008, reason=message[:123])


class IdleTimeout:
    """Closes a stream whose client sends nothing for ``timeout`` seconds (1000, with a
    reason), and tells the endpoint it disconnected; whatever the endpoint sends after
    that has no socket to go to and is dropped.

    One timer per stream, moved on only when it fires, ends a read that has waited too
    long by cancelling it, as ``asyncio.timeout`` would; but a timeout per read schedules
    and cancels a timer for each of a live stream's 50 messages a second (~3% of a loaded
    server's CPU, measured: docs/performance.md).
    """

    def __init__(self, receive: Receive, send: Send, timeout: float, metrics: Any) -> None:
        self._receive = receive
        self._send = send
        self.timeout = timeout
        self.metrics = metrics
        self.closed = False
        self._reading: asyncio.Task | None = None  # the task waiting in receive()
        self._read_since = 0.0  # loop time when that read began
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    def wrap(self) -> tuple[Receive, Send]:
        return self.receive, self.send

    async def receive(self) -> Message:
        if self.closed:
            return {"type": "websocket.disconnect", "code": CLOSE_NORMAL}
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._reading, self._read_since = task, loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self._read_since + self.timeout, self._check)
        cancels = task.cancelling()
        try:
            return await self._receive()
        except asyncio.CancelledError:
            if not (self._expired and task.uncancel() <= cancels):
                raise
        finally:
            self._reading = None
        self.closed = True
        self.metrics.limit_hits.labels("idle_timeout_s").inc()
        reason = f"idle: nothing received for {self.timeout:g} s"
        with contextlib.suppress(OSError, RuntimeError):  # the client may be gone as well
            await self._send({"type": "websocket.close", "code": CLOSE_NORMAL, "reason": reason})
        return {"type": "websocket.disconnect", "code": CLOSE_NORMAL}

    def _check(self) -> None:
        """The timer: end the read in progress if it began ``timeout`` ago, else wait
        for its deadline (between reads the timer stops; the next read starts it)."""
        self._timer = None
        if self._reading is None:
            return
        deadline = self._read_since + self.timeout
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:
            self._timer = loop.call_at(deadline, self._check)
        else:
            self._expired = True
            self._reading.cancel()

    async def send(self, message: Message) -> None:
        if not self.closed:
            await self._send(message)
