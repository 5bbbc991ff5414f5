"""``/v1/stream``: audio (or spike events) in, partial and final words out."""

from __future__ import annotations

import asyncio
import contextlib
import math

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from app.routers.common import (
    CLOSE_INTERNAL,
    CLOSE_INVALID,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_RESTART,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    SHUTDOWN_REASON,
    SPIKE_RECORD,
    Inbox,
    ProtocolError,
    check_message_rate,
    check_stream_length,
    close_with_error,
    decode_spike_records,
    parse_json,
)
from app.scheduler import Session, SessionFailed
from app.schemas import ActivityMessage, EofMessage, StreamConfig, message_json
from app.service import word_message
from app.shutdown import ShuttingDown
from audio_frontend.audio_io import AudioError, check_sample_rate, decode_pcm, decode_s16le
from models.recognizer import Stream, StreamActivity, StreamOptions

router = APIRouter()
ACTIVITY_INTERVAL_S = 0.05  # "activity" messages: at most one per 50 ms of audio
_NO_EVENT = object()


def stream_options(
    config: StreamConfig, vocabulary: tuple[str, ...], n_channels: int
) -> StreamOptions:
    if config.vocabulary is not None:
        missing = sorted(set(config.vocabulary) - set(vocabulary))
        if missing:
            raise ProtocolError(CLOSE_INVALID, f"words not in the model: {', '.join(missing)}")
    if config.input == "spikes" and config.channels is not None and config.channels > n_channels:
        raise ProtocolError(
            CLOSE_INVALID, f"channels {config.channels} exceeds the model's {n_channels} inputs"
        )
    try:
        if config.input == "audio":
            check_sample_rate(config.sample_rate)
        return StreamOptions(
            sample_rate=config.sample_rate,
            input=config.input,
            vocabulary=tuple(config.vocabulary) if config.vocabulary is not None else None,
            emit_unknown=config.unknown,
            min_confidence=config.min_confidence,
            activity=config.activity,
        )
    except AudioError as error:
        raise ProtocolError(CLOSE_INVALID, str(error)) from None


def read_config(message: dict, vocabulary: tuple[str, ...], n_channels: int) -> StreamConfig:
    try:
        config = StreamConfig.model_validate(message["config"])
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        if first["type"] == "extra_forbidden":
            raise ProtocolError(CLOSE_INVALID, f"unknown config key '{where}'") from None
        raise ProtocolError(
            CLOSE_INVALID, f"bad config value for '{where}': {first['msg']}"
        ) from None
    stream_options(config, vocabulary, n_channels)  # validate early
    return config


class ActivityReporter:
    """Turns a stream's activity snapshots into ``activity`` messages (config ``activity``).

    Each message aggregates the bins since the previous one (at least 50 ms of
    audio unless flushing): input spikes per cochlear channel over those bins,
    and the class probabilities after the last of them.
    """

    def __init__(self, bin_s: float) -> None:
        self.bin_s = bin_s
        self.min_bins = max(1, math.ceil(ACTIVITY_INTERVAL_S / bin_s - 1e-6))
        self.sent: StreamActivity | None = None

    def message(self, stream: Stream, flush: bool = False) -> ActivityMessage | None:
        now = stream.activity
        if now is None:
            return None
        bins = now.bins_done - (self.sent.bins_done if self.sent is not None else 0)
        if bins <= 0 or (bins < self.min_bins and not flush):
            return None
        counts = now.input_counts - (self.sent.input_counts if self.sent is not None else 0.0)
        self.sent = now
        return ActivityMessage(
            time=round(now.bins_done * self.bin_s, 3),
            bins=bins,
            input=np.rint(counts).astype(int).tolist(),
            output=np.round(now.last_output.astype(float), 4).tolist(),
        )


async def send_events(
    websocket: WebSocket,
    session: Session,
    partials: bool,
    activity: ActivityReporter | None = None,
) -> None:
    """Forward a session's events to its client until the end-of-stream marker."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client is gone
        await _forward_events(websocket, session, partials, activity)


async def _forward_events(
    websocket: WebSocket,
    session: Session,
    partials: bool,
    activity: ActivityReporter | None,
) -> None:
    while True:
        if activity is None:
            event = await session.events.get()
        else:
            try:
                event = await asyncio.wait_for(session.events.get(), ACTIVITY_INTERVAL_S)
            except TimeoutError:
                event = _NO_EVENT
            message = activity.message(session.stream, flush=event is None)
            if message is not None:
                await websocket.send_json(message_json(message))
            if event is _NO_EVENT:
                continue
        if event is None:
            return
        if isinstance(event, SessionFailed):
            await close_with_error(websocket, ProtocolError(CLOSE_INTERNAL, event.reason))
            return
        if event.kind == "final" or partials:
            await websocket.send_json(message_json(word_message(event)))


@router.websocket("/v1/stream")
async def stream_endpoint(websocket: WebSocket) -> None:
    services = websocket.app.state.services
    recognizer = services.scheduler.recognizer
    settings = services.settings
    await websocket.accept()
    config = StreamConfig()
    session: Session | None = None
    sender: asyncio.Task | None = None
    pending_limit = int(settings.max_pending_seconds / recognizer.bin_s)
    audio_seconds = services.metrics.audio_seconds.labels("v1")  # looked up once, not per chunk
    stream_s = 0.0  # audio seconds sent so far
    messages = 0  # binary messages so far
    services.metrics.active_streams.labels("v1").inc()
    closing = services.streams.register()
    inbox = Inbox(websocket, closing, settings.max_message_bytes)
    try:
        while True:
            message = await inbox.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                control = parse_json(message["text"])
                if "config" in control:
                    if session is not None:
                        raise ProtocolError(CLOSE_POLICY, "config must come before any audio")
                    config = read_config(control, recognizer.known_words, recognizer.n_channels)
                    continue
                if "eof" in control:
                    if session is None:
                        session, sender = _open(services, websocket, config)
                    await _finish(session, sender, config, inbox)
                    await websocket.send_json(message_json(EofMessage()))
                    await websocket.close(CLOSE_NORMAL)
                    return
                raise ProtocolError(
                    CLOSE_UNSUPPORTED, "expected binary audio or a JSON config/eof message"
                )
            data = message.get("bytes") or b""
            if len(data) > settings.max_message_bytes:
                raise ProtocolError(
                    CLOSE_TOO_BIG,
                    f"message of {len(data)} bytes exceeds {settings.max_message_bytes}",
                )
            stream_s = chunk_end_s(config, data, stream_s)
            check_stream_length(services, stream_s)
            messages += 1
            check_message_rate(services, messages, stream_s)
            if session is None:
                session, sender = _open(services, websocket, config)
            # Backpressure: a client far ahead of the network waits here (bounded memory).
            while session.pending_bins > pending_limit:
                await inbox.wait(session.processed())  # notices the client leaving
            await _feed(session, config, data)
            audio_seconds.inc(
                len(data) / (2 if config.format == "s16le" else 4) / config.sample_rate
                if config.input == "audio"
                else 0.0
            )
    except ProtocolError as error:
        services.metrics.errors.labels(f"ws_{error.code}").inc()
        await close_with_error(websocket, error)
    except WebSocketDisconnect:
        services.metrics.errors.labels("ws_disconnect").inc()
    except ShuttingDown:
        await _end_for_shutdown(websocket, session, sender, config, inbox)
    except RuntimeError as error:  # the recognizer failed for this stream
        services.metrics.errors.labels("ws_internal").inc()
        await close_with_error(websocket, ProtocolError(CLOSE_INTERNAL, str(error)))
    finally:
        services.streams.unregister(closing)
        inbox.close()
        services.metrics.active_streams.labels("v1").dec()
        if session is not None:
            session.close()
        if sender is not None and not sender.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender


def chunk_end_s(config: StreamConfig, data: bytes, start_s: float) -> float:
    """Where a stream's audio ends after a chunk, in seconds: spike records carry their
    own times (a malformed chunk is left to the decoder to refuse)."""
    if config.input == "audio":
        return start_s + len(data) / (2 if config.format == "s16le" else 4) / config.sample_rate
    whole = len(data) - len(data) % SPIKE_RECORD.itemsize
    if not whole:
        return start_s
    times = np.frombuffer(data[:whole], SPIKE_RECORD)["time_us"]
    return max(start_s, int(times.max()) / 1e6)


def _open(services, websocket: WebSocket, config: StreamConfig) -> tuple[Session, asyncio.Task]:
    recognizer = services.scheduler.recognizer
    services.words.refresh()  # words another worker process enrolled
    session = services.scheduler.open(
        stream_options(config, recognizer.known_words, recognizer.n_channels)
    )
    reporter = ActivityReporter(recognizer.bin_s) if config.activity else None
    sender = asyncio.create_task(send_events(websocket, session, config.partials, reporter))
    return session, sender


async def _finish(
    session: Session, sender: asyncio.Task, config: StreamConfig, inbox: Inbox
) -> None:
    """End the stream's input and send its last words: the eof path, and a shutdown's.
    The waits notice a client that leaves meanwhile (its work then stops)."""
    await _feed(session, config, b"", final=True)
    await inbox.wait(session.processed(), shutdown=False)
    session.events.put_nowait(None)
    await inbox.wait(sender, shutdown=False)


async def _end_for_shutdown(
    websocket: WebSocket,
    session: Session | None,
    sender: asyncio.Task | None,
    config: StreamConfig,
    inbox: Inbox,
) -> None:
    """The server is stopping: the word in progress as a final, then 1012 and a reason."""
    if session is not None and sender is not None and not session.stream.finished:
        # A client gone meanwhile, or a failed stream, has no last words to hear.
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, ProtocolError):
            await _finish(session, sender, config, inbox)
    await close_with_error(websocket, ProtocolError(CLOSE_RESTART, SHUTDOWN_REASON))


async def _feed(session: Session, config: StreamConfig, data: bytes, final: bool = False) -> None:
    try:
        if config.input == "spikes":
            await session.feed_spikes(decode_spike_records(data, config.channels), final)
        else:
            samples = decode_s16le(data) if config.format == "s16le" else None
            await session.feed_audio(
                samples if samples is not None else decode_pcm(data, config.format), final
            )
    except (AudioError, ValueError) as error:
        raise ProtocolError(CLOSE_INVALID, str(error)) from None
