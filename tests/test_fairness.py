"""Issue 31: a client that streams far faster than real time, or in thousands of tiny
messages, must not delay other streams.

A stream ahead of real time gets a live stream's share of the network while other
streams are live (app/scheduler.py); a stream of tiny messages is closed with 1008
(app/routers/common.py, for /v1/stream and /vosk).  Normal clients lose no audio and
their finals equal an offline transcription, and so do fast clients that are held back.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile as sf
import uvicorn
from starlette.websockets import WebSocketDisconnect
from websockets.sync.client import connect

import app.scheduler
from app.routers.common import MAX_MESSAGES_PER_AUDIO_S, MESSAGE_ALLOWANCE
from app.scheduler import MAX_STEP_BINS, StreamScheduler
from app.server import create_app
from app.settings import Settings
from models.recognizer import Recognizer, StreamOptions
from tests.conftest import TEST_SETTINGS, fixture_path
from tests.servers import bounded, in_thread, serve_config

RATE = 16000
WAIT_S = 60.0  # a generous deadline: the machine running the tests may be busy


def words_audio(words: tuple[str, ...] = ("yes", "no", "stop", "left", "seven")) -> np.ndarray:
    """Recorded words, each followed by 0.5 s of silence (int16 at 16 kHz)."""
    gap = np.zeros(RATE // 2, np.int16)
    parts = []
    for word in words:
        audio, rate = sf.read(fixture_path(word), dtype="int16")
        assert rate == RATE
        parts += [audio, gap]
    return np.concatenate(parts)


def offline_finals(model, audio: np.ndarray) -> list[tuple[str, float, float]]:
    result = Recognizer(model).transcribe([audio], RATE, StreamOptions(sample_rate=RATE))
    return [(w.word, round(w.start, 3), round(w.end, 3)) for w in result.words]


def finals(messages: list[dict]) -> list[tuple[str, float, float]]:
    return [(m["word"], m["start"], m["end"]) for m in messages if m["type"] == "final"]


# ----- the scheduler: a stream ahead of real time waits for the clock ------------------------
def test_a_stream_ahead_of_real_time_is_held_to_real_time_while_another_is_live(
    controlled_model, monkeypatch
):
    slack_s = 0.3
    monkeypatch.setattr(app.scheduler, "AHEAD_SLACK_S", slack_s)
    fast_audio = np.tile(words_audio(), 2)  # ~16 s, all at once
    live_audio = words_audio(("no",))

    async def race() -> tuple[list[float], list, list, list]:
        recognizer = Recognizer(controlled_model)
        scheduler = StreamScheduler(recognizer)
        scheduler.start()
        fast = scheduler.open(StreamOptions())
        opened = time.perf_counter()
        live = scheduler.open(StreamOptions())
        fast_events, live_events = [], []
        overshoot = []  # how far the fast stream got past real time + slack, in seconds
        try:
            await fast.feed_audio(fast_audio, final=True)
            chunk = RATE // 20  # the live client: 50 ms of audio every 50 ms
            for start in range(0, len(live_audio), chunk):
                await live.feed_audio(live_audio[start : start + chunk])
                await asyncio.sleep(0.05)
                done_s = fast.stream.bins_done * recognizer.bin_s
                overshoot.append(done_s - (time.perf_counter() - opened + slack_s))
            await live.feed_audio(live_audio[:0], final=True)
            await asyncio.wait_for(live.processed(), WAIT_S)
            live.close()  # alone now: the fast stream goes as fast as it can
            await asyncio.wait_for(fast.processed(), WAIT_S)
            for session, events in ((fast, fast_events), (live, live_events)):
                while not session.events.empty():
                    events.append(session.events.get_nowait())
        finally:
            fast.close()
            await scheduler.stop()
        return overshoot, fast_events, live_events, [recognizer.bin_s]

    overshoot, fast_events, live_events, (bin_s,) = asyncio.run(race())
    # It may finish the window of bins it was given when it was last stepped, no more.
    assert max(overshoot) <= MAX_STEP_BINS * bin_s + 1e-6, max(overshoot)
    # Held back, then let go: nothing lost, the same words as offline.
    got = [(e.word, round(e.start, 3), round(e.end, 3)) for e in fast_events if e.kind == "final"]
    assert got == offline_finals(controlled_model, fast_audio)
    got = [(e.word, round(e.start, 3), round(e.end, 3)) for e in live_events if e.kind == "final"]
    assert got == offline_finals(controlled_model, live_audio)


def test_streams_that_are_all_ahead_of_real_time_are_not_held(controlled_model):
    async def alone() -> float:
        scheduler = StreamScheduler(Recognizer(controlled_model))
        sessions = [scheduler.open(StreamOptions()) for _ in range(2)]
        for session in sessions:
            await session.feed_audio(words_audio(), final=True)
        scheduler.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(s.processed() for s in sessions)), WAIT_S)
            return max(s.stream.bins_done for s in sessions) * scheduler.recognizer.bin_s
        finally:
            for session in sessions:
                session.close()
            await scheduler.stop()

    started = time.perf_counter()
    done_s = asyncio.run(alone())
    # Far more audio than wall time allows at real time: no live stream held them back.
    assert done_s > time.perf_counter() - started + app.scheduler.AHEAD_SLACK_S


# ----- the endpoint: tiny messages are closed, small ones are not --------------------------
def test_thousands_of_tiny_messages_close_the_stream_with_1008(controlled_client):
    two_samples = np.zeros(2, np.int16).tobytes()
    with controlled_client.websocket_connect("/v1/stream") as ws:
        for _ in range(MESSAGE_ALLOWANCE + 200):
            ws.send_bytes(two_samples)
        error = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert error["type"] == "error" and "too many messages" in error["message"]
    assert closed.value.code == 1008 and "per second of audio" in closed.value.reason
    metrics = controlled_client.get("/metrics").text
    assert 'spikeear_limit_hits_total{limit="max_messages_per_audio_s"} 1.0' in metrics


def test_tiny_messages_close_a_vosk_stream_with_1008_too(controlled_client):
    two_samples = np.zeros(2, np.int16).tobytes()
    with controlled_client.websocket_connect("/vosk") as ws:
        for _ in range(MESSAGE_ALLOWANCE + 200):
            ws.send_bytes(two_samples)
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:
                ws.receive_text()  # each message answered, until the limit
    assert closed.value.code == 1008 and "per second of audio" in closed.value.reason


def test_messages_of_2_ms_are_all_taken(controlled_client, controlled_model):
    audio = words_audio(("no", "stop", "left", "seven"))
    size = RATE // MAX_MESSAGES_PER_AUDIO_S  # 32 samples: as small as the limit allows
    assert len(audio) // size > MESSAGE_ALLOWANCE  # past the allowance
    with controlled_client.websocket_connect("/v1/stream") as ws:
        for start in range(0, len(audio), size):
            ws.send_bytes(audio[start : start + size].tobytes())
        ws.send_text(json.dumps({"eof": 1}))
        messages = [ws.receive_json()]
        while messages[-1]["type"] != "eof":
            messages.append(ws.receive_json())
    assert finals(messages) == offline_finals(controlled_model, audio)


# ----- the real transport: a fast client beside a real-time one ----------------------------
@pytest.fixture(scope="module")
def live_url(controlled_model) -> Iterator[str]:
    settings = Settings(**TEST_SETTINGS)
    app_ = create_app(settings, controlled_model)
    with in_thread(uvicorn.Server(serve_config(app_, settings))) as port:
        yield f"ws://127.0.0.1:{port}/v1/stream"


def _stream(url: str, audio: np.ndarray, chunk: int, pace_s: float) -> tuple[list[dict], int]:
    """Every message up to the eof, and the close code."""
    with connect(url, max_size=2**22) as ws:
        for start in range(0, len(audio), chunk):
            ws.send(audio[start : start + chunk].tobytes())
            time.sleep(pace_s)
        ws.send(json.dumps({"eof": 1}))
        messages = [json.loads(ws.recv(timeout=WAIT_S))]
        while messages[-1]["type"] != "eof":
            messages.append(json.loads(ws.recv(timeout=WAIT_S)))
    return messages, ws.close_code


def test_a_fast_client_beside_a_real_time_one_loses_nothing(live_url, controlled_model):
    fast_audio = np.tile(words_audio(), 2)
    live_audio = words_audio(("no", "left"))
    outcomes: dict[str, tuple[list[dict], int] | BaseException] = {}

    def run(name: str, audio: np.ndarray, chunk: int, pace_s: float) -> None:
        try:
            outcomes[name] = _stream(live_url, audio, chunk, pace_s)
        except BaseException as error:  # re-raised in the test's thread below
            outcomes[name] = error

    def both() -> None:
        threads = [
            threading.Thread(target=run, args=("fast", fast_audio, 1600, 0.0)),
            threading.Thread(target=run, args=("live", live_audio, 1600, 0.1)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    bounded(2 * WAIT_S, both)
    for name, audio in (("fast", fast_audio), ("live", live_audio)):
        if isinstance(outcomes[name], BaseException):
            raise outcomes[name]
        messages, code = outcomes[name]
        assert code == 1000 and messages[-1] == {"type": "eof"}, name
        assert finals(messages) == offline_finals(controlled_model, audio), name
