"""Clean shutdown: on SIGTERM every open stream ends with the words it has heard so far.

uvicorn's own shutdown fails every WebSocket with 1012 at once, so a word in progress
was lost.  :class:`GracefulServer` drains instead: from the signal on, ``/health``
answers 503 and a new stream is refused with 1012 (the port stays open, so a balancer
or a client is told why rather than finding the port closed); each open stream
(registered in :class:`OpenStreams`) flushes its current word as a final and closes
with 1012 and a reason, within a grace period; then the port closes and whatever is
still open is left to uvicorn's shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

POLL_S = 0.02  # how often a shutdown looks whether the streams have closed
logger = logging.getLogger("uvicorn.error")


class ShuttingDown(Exception):
    """Raised in a stream's handler when the server asks it to finish and close."""


class OpenStreams:
    """The WebSocket streams open in one server process.

    Each stream holds its own ``asyncio.Event`` (created on its handler's event loop),
    which a shutdown sets; a stream opened during a shutdown finds it set at once.
    """

    def __init__(self) -> None:
        self._closing: set[asyncio.Event] = set()
        self.shutting_down = False

    def __len__(self) -> int:
        return len(self._closing)

    def register(self) -> asyncio.Event:
        """A new stream's event, set when it must close; :meth:`unregister` it at its end."""
        closing = asyncio.Event()
        if self.shutting_down:
            closing.set()
        self._closing.add(closing)
        return closing

    def unregister(self, closing: asyncio.Event) -> None:
        self._closing.discard(closing)

    async def close_all(self, grace_s: float, abandon: Callable[[], bool] | None = None) -> bool:
        """Ask every open stream to close; True when all did within ``grace_s``.
        ``abandon()`` true (a second signal) stops the wait early."""
        self.shutting_down = True
        for closing in list(self._closing):
            closing.set()
        deadline = time.monotonic() + grace_s
        while self._closing and time.monotonic() < deadline:
            if abandon is not None and abandon():
                break
            await asyncio.sleep(POLL_S)
        return not self._closing


class GracefulServer(uvicorn.Server):
    """A uvicorn server whose shutdown gives open streams ``grace_s`` to finish."""

    def __init__(self, config: uvicorn.Config, streams: OpenStreams, grace_s: float) -> None:
        super().__init__(config)
        self.streams = streams
        self.grace_s = grace_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Draining from the signal itself, not from the main loop's next tick: a probe
        # or a client arriving meanwhile already hears "not ready".
        self.streams.shutting_down = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # The listening sockets stay open until the open streams are done (uvicorn's
        # shutdown closes them): meanwhile /health says 503 and new streams get 1012.
        self.streams.shutting_down = True
        if len(self.streams):
            logger.info(
                "Closing %d open stream(s) with their last words (grace %g s)",
                len(self.streams),
                self.grace_s,
            )
        if not await self.streams.close_all(self.grace_s, lambda: self.force_exit):
            logger.warning(
                "%d stream(s) still open after the %g s grace period; closing them",
                len(self.streams),
                self.grace_s,
            )
        await super().shutdown(sockets)


def run_server(app: FastAPI, sockets: list[socket.socket] | None = None, **options: object) -> bool:
    """Serve ``app`` (its ``services`` give the streams and the grace period) until
    SIGINT/SIGTERM; ``options`` are :class:`uvicorn.Config` keywords.  False when the
    server could not start."""
    services = app.state.services
    server = GracefulServer(
        uvicorn.Config(app, **options), services.streams, services.settings.shutdown_grace_s
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=sockets)
    return server.started
