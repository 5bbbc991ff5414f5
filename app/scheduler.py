"""Steps every active stream's network together, one bin at a time, in one batch.

Transports feed audio into their :class:`Session` (the cochlea runs in a worker
thread; numba releases the GIL) and the scheduler, woken by any new bins, steps
all streams that have bins ready as one batch, so the cost per stream falls as
load rises.  Each session gets its word events and can wait until its audio so
far has been fully processed (the Vosk protocol answers every chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from audio_frontend.events import SpikeEvents
from models.decoding import WordEvent
from models.recognizer import Recognizer, Stream, StreamOptions

MAX_BATCH = 256
INLINE_SAMPLES = 4800  # chunks up to this size run the cochlea on the event loop
logger = logging.getLogger(__name__)


class SessionFailed(NamedTuple):
    """Put on a failed session's event queue, so that its transport ends it at once."""

    reason: str


class Session:
    """One client's stream, its outgoing events and latency bookkeeping."""

    def __init__(self, scheduler: StreamScheduler, stream: Stream) -> None:
        self.scheduler = scheduler
        self.stream = stream
        self.events: asyncio.Queue[WordEvent] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self._arrivals: deque[tuple[int, float]] = deque()  # (bins ready after chunk, arrival)
        self._lock = asyncio.Lock()
        self.error: str | None = None

    @property
    def pending_bins(self) -> int:
        return len(self.stream.ready)

    async def feed_audio(self, samples: np.ndarray, final: bool = False) -> None:
        await self._feed(
            lambda: self.scheduler.recognizer.feed_audio(self.stream, samples, final),
            inline=len(samples) <= INLINE_SAMPLES,
        )

    async def feed_spikes(self, events: SpikeEvents, final: bool = False) -> None:
        await self._feed(
            lambda: self.scheduler.recognizer.feed_spikes(self.stream, events, final),
            inline=len(events) <= INLINE_SAMPLES,
        )

    async def _feed(self, work: Callable[[], int], inline: bool) -> None:
        arrival = time.perf_counter()
        if self.error is not None:
            raise RuntimeError(self.error)
        async with self._lock:  # keep one stream's chunks in order
            if inline:
                work()  # ~0.1 ms: cheaper than a hop to a worker thread
            else:
                await asyncio.to_thread(work)  # a big chunk must not stall other streams
            self._arrivals.append((self.stream.bins_done + len(self.stream.ready), arrival))
            if self.stream.ready:
                self._idle.clear()
                self.scheduler.wake()

    async def processed(self) -> None:
        """Wait until every bin fed so far has gone through the network."""
        await self._idle.wait()

    def _deliver(self, events: list[WordEvent]) -> None:
        for event in events:
            if event.kind == "partial":
                self.scheduler.observe_latency(self._arrival_of(self.stream.bins_done))
            self.events.put_nowait(event)
        if not self.stream.ready:
            self._idle.set()

    def _arrival_of(self, bin_count: int) -> float:
        while len(self._arrivals) > 1 and self._arrivals[0][0] < bin_count:
            self._arrivals.popleft()
        return self._arrivals[0][1] if self._arrivals else time.perf_counter()

    def fail(self, reason: str) -> None:
        """Take the session out of scheduling; its next feed raises ``reason``."""
        self.error = reason
        self.scheduler.sessions.discard(self)
        self.stream.ready.clear()
        self.events.put_nowait(SessionFailed(reason))
        self._idle.set()

    def close(self) -> None:
        self.scheduler.sessions.discard(self)
        self.scheduler.recognizer.close_stream(self.stream)
        self._idle.set()


class StreamScheduler:
    def __init__(
        self, recognizer: Recognizer, on_latency: Callable[[float], None] | None = None
    ) -> None:
        self.recognizer = recognizer
        self.sessions: set[Session] = set()
        self._wake = asyncio.Event()
        self._on_latency = on_latency
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.batched_steps = 0

    def open(self, options: StreamOptions) -> Session:
        session = Session(self, self.recognizer.open_stream(options))
        self.sessions.add(session)
        return session

    def wake(self) -> None:
        self._wake.set()

    def observe_latency(self, arrival: float) -> None:
        if self._on_latency:
            self._on_latency(time.perf_counter() - arrival)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                ready = [s for s in self.sessions if s.stream.ready]
                if not ready:
                    break
                if len(ready) > MAX_BATCH:  # the streams furthest behind go first
                    ready = heapq.nlargest(MAX_BATCH, ready, key=lambda s: s.pending_bins)
                try:
                    results = await asyncio.to_thread(
                        self.recognizer.step, [s.stream for s in ready]
                    )
                except Exception as error:  # a bug must not stall every other stream
                    logger.exception("network step failed")
                    for session in ready:
                        session.fail(f"recognition failed: {error}")
                    continue
                self.batches += 1
                self.batched_steps += len(ready)
                for session, events in zip(ready, results, strict=True):
                    session._deliver(events)
                await asyncio.sleep(0)  # let transports read and reply between steps
