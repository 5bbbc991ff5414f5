"""Steps every active stream's network together, in one batch.

Transports feed audio into their :class:`Session`; the scheduler, woken by audio, waits
one short tick for other streams' audio and runs all of it through the cochlea in one
kernel call in a worker thread (numba releases the GIL), and, woken by new bins, waits
one short tick for other streams' bins and then steps all streams that have bins ready
as one batch, so the cost per stream falls as load rises (each stream advances by all
its ready bins, up to ``MAX_STEP_BINS``, in that call).  While any stream is live, one
whose client sends faster than real time is stepped no further ahead of real time than
``AHEAD_SLACK_S``: it gets a live stream's share of the network, not the server.  Each
session gets its word events and can wait until its audio so far has been fully
processed (the Vosk protocol answers every chunk).

The network step runs on the event loop itself: in a worker thread its many
small torch calls each give the GIL up and then wait for the busy event loop
to hand it back (up to the 5 ms switch interval), which made a step take
hundreds of milliseconds under load.
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

from audio_frontend.audio_io import to_mono_float
from audio_frontend.events import SpikeEvents
from models.decoding import WordEvent
from models.recognizer import Recognizer, Stream, StreamOptions

MAX_BATCH = 256
# Each step advances a stream by all its ready bins, up to MAX_STEP_BINS: a live stream's
# message's bins (two of 10 ms in a 20 ms message) in one network call rather than one call
# each (a quarter less CPU per bin), and a stream that has fallen behind catches up in a
# few calls, each short enough not to hold the event loop up for long.
MAX_STEP_BINS = 13
# A woken cochlea waits this long for other streams' chunks, so that one kernel call serves
# many streams: each call hands the GIL to and from the event loop, and at 10 streams those
# handoffs cost more than the kernel (measured: docs/performance.md), for ~10 ms of latency.
COCHLEA_TICK_S = 0.01
STEP_TICK_S = 0.02  # a woken scheduler waits one bin, so one step serves many streams
# How far ahead of real time (audio stepped vs wall time since the stream opened) a stream
# may get while other streams are live: room for a client's pre-roll at connect, while a
# client streaming 50x real time cannot take the network from everyone else.
AHEAD_SLACK_S = 2.0
INLINE_EVENTS = 4800  # spike chunks up to this size are binned on the event loop
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
        self._audio: list[np.ndarray] = []  # mono chunks (int16 or float32) for the cochlea
        self._audio_waiting = 0  # samples in them
        self._audio_final = False  # the last waiting chunk ends the stream
        self._audio_in_cochlea = False
        self._samples_fed = 0  # at the client's sample rate
        # Input samples per bin, at the client's rate: to count a chunk's bins at once.
        recognizer = scheduler.recognizer
        self._input_per_bin = recognizer.bin_s * stream.options.sample_rate
        # Real time counts from AHEAD_SLACK_S before the stream opened: the slack is a head
        # start, so a live stream (never ahead of the wall clock) is never held back.
        self._real_time_from = time.perf_counter() - AHEAD_SLACK_S
        self._bins_per_s = 1.0 / recognizer.bin_s

    @property
    def pending_bins(self) -> int:
        """Bins fed but not yet through the network, waiting audio included."""
        return len(self.stream.ready) + int(self._audio_waiting / self._input_per_bin)

    def ahead(self, now: float) -> bool:
        """Whether the network has taken the stream more than ``AHEAD_SLACK_S`` ahead of
        the wall time since it opened: a live client's audio never gets there."""
        return self.stream.bins_done > (now - self._real_time_from) * self._bins_per_s

    async def feed_audio(self, samples: np.ndarray, final: bool = False) -> None:
        """Queue a chunk for the cochlea (no wait: the scheduler runs the chunks of
        all streams waiting at a time in one kernel call)."""
        arrival = time.perf_counter()
        if self.error is not None:
            raise RuntimeError(self.error)
        if self._audio_final or self.stream.finished:
            raise ValueError("stream already finished")
        if samples.dtype != np.int16 or samples.ndim != 1:  # int16 is converted in the batch
            samples = to_mono_float(samples)  # bad audio fails this stream here, not a batch
        self._audio.append(samples)
        self._audio_final = final
        self._audio_waiting += len(samples)
        self._samples_fed += len(samples)
        self._note_arrival(int(self._samples_fed / self._input_per_bin), arrival)
        self._idle.clear()
        self.scheduler.audio_waiting(self)

    def take_audio(self) -> tuple[Stream, np.ndarray, bool]:
        """All waiting audio as one chunk (the cochlea is chunking-invariant)."""
        if len(self._audio) == 1:
            samples = self._audio[0]
        elif all(chunk.dtype == np.int16 for chunk in self._audio):
            samples = np.concatenate(self._audio)
        else:
            samples = np.concatenate([to_mono_float(chunk) for chunk in self._audio])
        self._audio = []
        self._audio_waiting = 0
        self._audio_in_cochlea = True
        return self.stream, samples, self._audio_final

    def cochlea_done(self) -> None:
        self._audio_in_cochlea = False
        if self.stream.ready:
            self.scheduler.wake()
        else:
            self._settle()

    async def feed_spikes(self, events: SpikeEvents, final: bool = False) -> None:
        arrival = time.perf_counter()
        if self.error is not None:
            raise RuntimeError(self.error)
        async with self._lock:  # keep one stream's chunks in order
            if len(events) <= INLINE_EVENTS:  # cheaper than a hop to a worker thread
                self.scheduler.recognizer.feed_spikes(self.stream, events, final)
            else:  # a big chunk must not stall other streams
                await asyncio.to_thread(
                    self.scheduler.recognizer.feed_spikes, self.stream, events, final
                )
            self._note_arrival(self.stream.bins_done + len(self.stream.ready), arrival)
            if self.stream.ready:
                self._idle.clear()
                self.scheduler.wake()

    async def processed(self) -> None:
        """Wait until every bin fed so far has gone through the network."""
        await self._idle.wait()

    def _note_arrival(self, bins: int, arrival: float) -> None:
        """Remember when the input completing ``bins`` bins arrived.  A chunk that
        completes no new bin adds no record: a bin's latency counts from the chunk
        that completed it, and millions of tiny chunks must not grow the stream."""
        if not self._arrivals or bins > self._arrivals[-1][0]:
            self._arrivals.append((bins, arrival))

    def _deliver(self, events: list[WordEvent]) -> None:
        for event in events:
            if event.kind == "partial":  # decided at the end of bin round(time / bin_s)
                bins = round(event.time / self.scheduler.recognizer.bin_s)
                self.scheduler.observe_latency(self._arrival_of(bins))
            self.events.put_nowait(event)
        # Later partials are for bins not yet done: records of done bins go now, not
        # at the next partial (silence makes none, and its records would pile up).
        self._arrival_of(self.stream.bins_done + 1)
        self._settle()

    def _settle(self) -> None:
        if not (self.stream.ready or self._audio or self._audio_in_cochlea):
            self._idle.set()

    def _arrival_of(self, bin_count: int) -> float:
        while len(self._arrivals) > 1 and self._arrivals[0][0] < bin_count:
            self._arrivals.popleft()
        return self._arrivals[0][1] if self._arrivals else time.perf_counter()

    def fail(self, reason: str) -> None:
        """Take the session out of scheduling; its next feed raises ``reason``."""
        self.error = reason
        self.scheduler.discard(self)
        self.stream.ready.clear()
        self._audio = []
        self._audio_waiting = 0
        self.events.put_nowait(SessionFailed(reason))
        self._idle.set()

    def close(self) -> None:
        self.scheduler.discard(self)
        self.scheduler.recognizer.close_stream(self.stream)
        self._idle.set()


class StreamScheduler:
    def __init__(
        self,
        recognizer: Recognizer,
        on_latency: Callable[[float], None] | None = None,
        on_batch: Callable[[str, float, int], None] | None = None,
    ) -> None:
        """``on_latency(seconds)``: each partial's delay since its audio arrived;
        ``on_batch(stage, seconds, streams)``: each cochlea call and network step
        (``stage`` "cochlea" or "network"), how long it took and for how many streams."""
        self.recognizer = recognizer
        self.sessions: set[Session] = set()
        self._wake = asyncio.Event()
        self._on_latency = on_latency
        self._on_batch = on_batch
        self._tasks: list[asyncio.Task] = []
        self._audio_sessions: dict[Session, None] = {}  # in arrival order
        self._audio_waiting = asyncio.Event()
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

    def _observe_batch(self, stage: str, started: float, streams: int) -> None:
        if self._on_batch:
            self._on_batch(stage, time.perf_counter() - started, streams)

    def start(self) -> None:
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._run()), loop.create_task(self._run_cochlea())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def discard(self, session: Session) -> None:
        """Schedule nothing more for the session."""
        self.sessions.discard(session)
        self._audio_sessions.pop(session, None)

    def audio_waiting(self, session: Session) -> None:
        self._audio_sessions[session] = None
        self._audio_waiting.set()

    async def _run_cochlea(self) -> None:
        """Runs the audio waiting in all sessions through one cochlea kernel call at a
        time, in a worker thread: the kernel releases the GIL once for all of them,
        so the cochlea runs on a second core while the event loop serves the sockets
        and the network.  A session's chunks that arrive meanwhile go together into
        the next call, so a slow call never limits a stream to one chunk per call."""
        while True:
            await self._audio_waiting.wait()
            await asyncio.sleep(COCHLEA_TICK_S)
            self._audio_waiting.clear()
            sessions = [s for s in self._audio_sessions if s.error is None]
            self._audio_sessions = {}
            if not sessions:  # every waiting stream was closed meanwhile (client gone)
                continue
            chunks = [session.take_audio() for session in sessions]
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self.recognizer.feed_audio_many, chunks)
            except Exception as error:  # a bug must not stall every other stream
                logger.exception("cochlea failed")
                for session in sessions:
                    session.fail(f"recognition failed: {error}")
                continue
            self._observe_batch("cochlea", started, len(sessions))
            for session in sessions:
                session.cochlea_done()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(STEP_TICK_S)
            self._wake.clear()
            while True:
                ready, held = self._ready(time.perf_counter())
                if not ready:
                    if held:  # ahead of real time: their turn comes as the clock moves
                        self._wake.set()
                    break
                if len(ready) > MAX_BATCH:  # the streams furthest behind go first
                    ready = heapq.nlargest(MAX_BATCH, ready, key=lambda s: s.pending_bins)
                started = time.perf_counter()
                try:
                    results = self.recognizer.step([s.stream for s in ready], MAX_STEP_BINS)
                except Exception as error:  # a bug must not stall every other stream
                    logger.exception("network step failed")
                    for session in ready:
                        session.fail(f"recognition failed: {error}")
                    continue
                self._observe_batch("network", started, len(ready))
                self.batches += 1
                self.batched_steps += len(ready)
                for session, events in zip(ready, results, strict=True):
                    session._deliver(events)
                await asyncio.sleep(0)  # let transports read and reply between steps

    def _ready(self, now: float) -> tuple[list[Session], bool]:
        """The sessions to step now, and whether any with bins was held back.  While
        some stream is live, those ahead of real time wait for the clock (one step of
        theirs at a time); without a live stream, every stream goes as fast as it can."""
        ready = [s for s in self.sessions if s.stream.ready]
        ahead = {s for s in self.sessions if s.ahead(now)}
        if not ahead or len(ahead) == len(self.sessions):
            return ready, False
        live = [s for s in ready if s not in ahead]
        return live, len(live) < len(ready)
