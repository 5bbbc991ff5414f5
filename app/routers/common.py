"""WebSocket helpers shared by the streaming routers."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable
from typing import Any

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from app.schemas import ErrorMessage, message_json
from app.shutdown import ShuttingDown
from audio_frontend.events import SpikeEvents

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003  # text where audio is expected, and similar
CLOSE_INVALID = 1007  # malformed JSON, bad config, undecodable audio
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_RESTART = 1012  # the server is shutting down (after the stream's last words)
SHUTDOWN_REASON = "server shutting down; reconnect"  # through a balancer: to another replica
SPIKE_RECORD = np.dtype([("time_us", "<u4"), ("channel", "<u2")])


# Each message costs the server the same whatever it holds: a stream may send at most this
# many per second of its audio (2 ms of audio each at 16 kHz; a browser's 128-sample frames
# at 48 kHz are 375 a second), plus MESSAGE_ALLOWANCE more (empty ones, a silent spike
# source), or it is closed with 1008, before thousands of tiny messages tie up a worker.
MAX_MESSAGES_PER_AUDIO_S = 500
MESSAGE_ALLOWANCE = 2000
TOO_MANY_MESSAGES = (
    f"too many messages: at most {MAX_MESSAGES_PER_AUDIO_S} per second of audio; "
    "send 20-250 ms of audio per message"
)


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse_json(text: str) -> dict:
    if not text.isascii():
        try:
            text.encode()  # a text frame's bytes that were not UTF-8 (app/transport.py)
        except UnicodeEncodeError:
            raise ProtocolError(CLOSE_INVALID, "text messages must be UTF-8") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ProtocolError(CLOSE_INVALID, f"malformed JSON: {error.msg}") from None
    except RecursionError:  # the parser's own depth limit: the client's input, not our fault
        raise ProtocolError(CLOSE_INVALID, "malformed JSON: nested too deeply") from None
    except ValueError as error:  # e.g. an integer past Python's 4300-digit conversion limit
        raise ProtocolError(CLOSE_INVALID, f"malformed JSON: {error}".splitlines()[0]) from None
    if not isinstance(value, dict):
        raise ProtocolError(CLOSE_INVALID, "control messages must be JSON objects")
    return value


def decode_spike_records(data: bytes, sender_channels: int | None) -> SpikeEvents:
    """Binary frames of little-endian (uint32 time in microseconds, uint16 channel)."""
    if len(data) % SPIKE_RECORD.itemsize:
        raise ProtocolError(
            CLOSE_INVALID,
            f"truncated spike record: {len(data)} bytes is not a multiple of "
            f"{SPIKE_RECORD.itemsize}",
        )
    records = np.frombuffer(data, SPIKE_RECORD)
    channels = records["channel"].astype(np.int32)
    if sender_channels is not None and channels.size and channels.max() >= sender_channels:
        raise ProtocolError(CLOSE_INVALID, f"spike channel {channels.max()} >= declared channels")
    return SpikeEvents(records["time_us"].astype(np.float64) / 1e6, channels, 0)


async def close_with_error(
    websocket: WebSocket, error: ProtocolError, send_json: bool = True
) -> None:
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    try:
        if send_json:
            await websocket.send_json(message_json(ErrorMessage(message=error.reason)))
        # A close reason may hold at most 123 bytes.
        await websocket.close(
            code=error.code, reason=error.reason.encode()[:123].decode(errors="ignore")
        )
    except (RuntimeError, WebSocketDisconnect):
        pass  # the client is already gone: nothing to tell it


class Inbox:
    """A WebSocket's incoming messages, read so that a stream waiting on its own work
    (its backlog, its last words) still notices at once when the client leaves, and
    so that a server shutdown (``closing`` set) interrupts any wait with
    :class:`ShuttingDown`.

    While waiting it reads ahead, up to ``read_ahead_bytes`` of messages, which
    :meth:`receive` then returns in order: without reading, a disconnect stays queued
    behind them and the stream's work went on for tens of seconds after its client left.
    """

    def __init__(self, websocket: WebSocket, closing: asyncio.Event, read_ahead_bytes: int) -> None:
        self.websocket = websocket
        self.closing = closing
        self.read_ahead_bytes = read_ahead_bytes
        self._early: deque[dict] = deque()
        self._early_bytes = 0
        self._next: asyncio.Task | None = None  # a read that wait() began
        self._receiving: asyncio.Task | None = None  # the task in receive()
        self._interrupted = False  # the shutdown cancelled that task's read
        self._closing: asyncio.Task | None = None  # see _watch_closing

    async def receive(self) -> dict:
        if self._early:
            message = self._early.popleft()
            self._early_bytes -= _size(message)
            return message
        if self.closing.is_set():
            raise ShuttingDown
        self._watch_closing()
        # The read in this task, not in a task of its own: a live stream receives 50
        # messages a second.  A shutdown cancels it (_interrupt), which loses nothing:
        # uvicorn keeps a message in its queue until a read has taken it.
        task = asyncio.current_task()
        assert task is not None
        cancels = task.cancelling()
        self._receiving = task
        try:
            if self._next is not None:  # the read wait() began: its message comes first
                message = await self._next
                self._next = None
                return message
            return await self.websocket.receive()
        except asyncio.CancelledError:
            if self._interrupted and task.uncancel() <= cancels:
                raise ShuttingDown from None
            raise
        finally:
            self._receiving = None

    async def wait(self, work: Awaitable[object], shutdown: bool = True) -> None:
        """Wait for ``work``: WebSocketDisconnect as soon as the client leaves, and
        (with ``shutdown``) ShuttingDown when the server stops; either cancels it."""
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                waits: set[asyncio.Future] = {task}
                if self._early_bytes < self.read_ahead_bytes:
                    waits.add(self._reading())
                await self._first_of(waits, shutdown)
                if self._next is not None and self._next.done():
                    message, self._next = self._next.result(), None
                    if message["type"] == "websocket.disconnect":
                        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
                    self._early.append(message)
                    self._early_bytes += _size(message)
            task.result()
        finally:
            task.cancel()

    def close(self) -> None:
        """Stop reading (at the stream's end)."""
        for task in (self._next, self._closing):
            if task is not None:
                task.cancel()
        self._next = self._closing = None

    def _watch_closing(self) -> asyncio.Task:
        """One waiter for the shutdown for the stream's whole life; it ends the read in
        progress, so that a :meth:`receive` waiting for the client hears of it."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self.closing.wait())
            self._closing.add_done_callback(self._interrupt)
        return self._closing

    def _interrupt(self, closing: asyncio.Task) -> None:
        if not closing.cancelled() and self._receiving is not None:
            self._interrupted = True
            self._receiving.cancel()

    def _reading(self) -> asyncio.Task:
        if self._next is None:
            self._next = asyncio.ensure_future(self.websocket.receive())
        return self._next

    async def _first_of(self, waits: set[asyncio.Future], shutdown: bool) -> None:
        if shutdown and self.closing.is_set():
            raise ShuttingDown
        if shutdown:
            waits = {*waits, self._watch_closing()}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if shutdown and self.closing.is_set():
            raise ShuttingDown


def _size(message: dict) -> int:
    return len(message.get("bytes") or b"") + len(message.get("text") or "")


def check_message_rate(services: Any, messages: int, seconds: float) -> None:
    """Refuse a stream of many tiny messages (1008): see MAX_MESSAGES_PER_AUDIO_S."""
    if messages > MAX_MESSAGES_PER_AUDIO_S * seconds + MESSAGE_ALLOWANCE:
        services.metrics.limit_hits.labels("max_messages_per_audio_s").inc()
        raise ProtocolError(CLOSE_POLICY, TOO_MANY_MESSAGES)


def check_stream_length(services: Any, seconds: float) -> None:
    """Refuse more than ``--max-stream-s`` of audio in one stream (1008)."""
    limit = services.settings.max_stream_s
    if limit and seconds > limit:
        services.metrics.limit_hits.labels("max_stream_s").inc()
        raise ProtocolError(
            CLOSE_POLICY, f"the stream is longer than the server's limit of {limit:g} s of audio"
        )
