"""Issue 28, the streaming defects: each test reproduces one finding of the attack probe.

Spike time jumps (1), work after the client leaves (2), NaN and deeply nested JSON (5),
error tracebacks on normal disconnects (7), tiny messages growing a worker (8), SIGTERM
mid-word (9) and oversized messages (10).  Tests that need the real transport run a
uvicorn server on loopback (in a thread, or as ``spikeear serve`` in a process).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import struct
import time
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile as sf
from starlette.websockets import WebSocketDisconnect, WebSocketState
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from app.routers.common import ProtocolError, close_with_error
from app.scheduler import StreamScheduler
from app.server import create_app
from app.settings import Settings
from app.shutdown import GracefulServer
from audio_frontend.events import SpikeBinner, SpikeEvents
from models.recognizer import MAX_SPIKE_LOOKAHEAD_S, Recognizer, StreamOptions
from tests.conftest import RANKING, TEST_SETTINGS, fixture_path
from tests.servers import (
    ServerProcess,
    free_port,
    in_thread,
    serve_config,
    stream_until_a_partial,
)

LEADER = RANKING[0]
WAIT_S = 5.0  # how long a test waits for the server to notice something
SPIKES_CONFIG = json.dumps({"config": {"input": "spikes", "channels": 64}})


def pcm(word: str) -> np.ndarray:
    audio, rate = sf.read(fixture_path(word), dtype="int16")
    assert rate == 16000
    return audio


def closed_by(ws, receive) -> WebSocketDisconnect:
    with pytest.raises(WebSocketDisconnect) as closed:
        receive()
    return closed.value


def wait_until(condition, timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# ----- a real uvicorn server in a thread, for the transport's own behaviour ----------------
@pytest.fixture(scope="module")
def live(controlled_model) -> Iterator[tuple[str, object]]:
    """``ws://`` base URL and the services of the controlled model served by uvicorn on
    loopback, with the transport options ``spikeear serve`` uses."""
    settings = Settings(**TEST_SETTINGS)
    app = create_app(settings, controlled_model)
    services = app.state.services
    config = serve_config(app, settings, "info")  # caplog sees uvicorn's errors
    server = GracefulServer(config, services.streams, grace_s=2.0)
    with in_thread(server) as port:
        yield f"ws://127.0.0.1:{port}", services


def read_until_closed(ws: ClientConnection) -> tuple[list, ConnectionClosed]:
    messages = []
    try:
        while True:
            messages.append(ws.recv(timeout=WAIT_S))
    except ConnectionClosed as closed:
        return messages, closed


# ----- 1: a spike time jump ------------------------------------------------------------------
def test_a_spike_time_jump_is_refused_before_any_bin_is_allocated(controlled_model):
    recognizer = Recognizer(controlled_model)
    with recognizer.opened(StreamOptions(input="spikes")) as stream:
        jump = SpikeEvents(np.array([0xFFFFFFFF / 1e6]), np.array([0], np.int32), 64)
        with pytest.raises(ValueError, match="jumps more than 60 s"):
            recognizer.feed_spikes(stream, jump)
        # Nothing was counted or allocated, and the stream goes on as if it never came.
        assert not stream.ready and stream.binner.next_bin == 0 and stream.input_spikes == 0
        assert len(stream.binner._pending) == 0
        gap = MAX_SPIKE_LOOKAHEAD_S / 2  # a long silence within the bound is still silence
        recognizer.feed_spikes(stream, SpikeEvents(np.array([gap]), np.array([3], np.int32), 64))
        assert len(stream.ready) == round(gap / recognizer.bin_s)


def test_the_spike_binner_bounds_its_look_ahead():
    binner = SpikeBinner(4, 160, 16000)  # 10 ms bins
    far = SpikeEvents(np.array([0.5]), np.array([1], np.int32), 4)
    with pytest.raises(ValueError, match=r"jumps more than 0\.2 s"):
        binner.add(far, 8000, max_ahead_bins=20)
    assert binner.next_bin == 0 and len(binner._pending) == 0
    assert len(binner.add(far, 8000)) == 50  # unbounded (whole files): as before


def test_a_spike_time_jump_closes_the_stream_with_1007(controlled_client):
    with controlled_client.websocket_connect("/v1/stream") as ws:
        ws.send_text(SPIKES_CONFIG)
        ws.send_bytes(struct.pack("<IH", 0xFFFFFFFF, 0))
        error = ws.receive_json()
        assert error["type"] == "error" and "jumps more than" in error["message"]
        closed = closed_by(ws, ws.receive_json)
    assert closed.code == 1007 and "jumps more than" in closed.reason


# ----- 2: work after the client leaves -------------------------------------------------------
@pytest.mark.parametrize("ending", ["throttled", "after_eof"])
def test_a_stream_waiting_on_its_backlog_stops_when_its_client_leaves(live, monkeypatch, ending):
    url, services = live
    # The network falls behind (it never steps): the stream waits on its backlog for good.
    monkeypatch.setattr(services.scheduler, "wake", lambda: None)
    seconds = 8.0 if ending == "throttled" else 1.0  # over the 5 s backlog limit, or under
    audio = np.zeros(int(seconds * 16000), np.int16)
    with connect(f"{url}/v1/stream") as ws:
        for start in range(0, len(audio), 1600):
            ws.send(audio[start : start + 1600].tobytes())
        if ending == "after_eof":
            ws.send(json.dumps({"eof": 1}))
        assert wait_until(lambda: len(services.scheduler.sessions) == 1)
    # The client has gone: its stream is closed and taken out of scheduling at once,
    # not after its backlog (here: never).
    assert wait_until(lambda: not services.scheduler.sessions), "the stream outlived its client"
    monkeypatch.undo()
    with connect(f"{url}/v1/stream") as ws:  # the server serves the next client as usual
        ws.send(pcm("yes").tobytes())
        ws.send(json.dumps({"eof": 1}))
        messages, closed = read_until_closed(ws)
    assert closed.rcvd.code == 1000
    assert [json.loads(m)["word"] for m in messages if '"final"' in m] == [LEADER]


# ----- 5: NaN, Infinity and deep JSON ---------------------------------------------------------
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_vosk_non_finite_sample_rates_close_with_1007(controlled_client, value):
    with controlled_client.websocket_connect("/vosk") as ws:
        ws.send_text(f'{{"config": {{"sample_rate": {value}}}}}')
        closed = closed_by(ws, ws.receive_text)
    assert closed.code == 1007 and "sample_rate" in closed.reason


@pytest.mark.parametrize("path", ["/v1/stream", "/vosk"])
@pytest.mark.parametrize(
    "text", ["[" * 1000 + "]" * 1000, '{"config": ' + "[" * 1000 + "]" * 1000 + "}"]
)
def test_json_nested_1000_deep_closes_with_1007(controlled_client, path, text):
    with controlled_client.websocket_connect(path) as ws:
        ws.send_text(text)
        if path == "/v1/stream":
            assert "nested too deeply" in ws.receive_json()["message"]
        closed = closed_by(ws, ws.receive_text)
    assert closed.code == 1007 and "nested too deeply" in closed.reason


# ----- 7: normal disconnects log no ERROR -------------------------------------------------
def test_a_stream_closed_before_its_audio_reaches_the_cochlea_logs_no_error(
    controlled_model, caplog
):
    async def hang_up_at_once() -> None:
        scheduler = StreamScheduler(Recognizer(controlled_model))
        scheduler.start()
        try:
            session = scheduler.open(StreamOptions())
            await session.feed_audio(pcm("yes"))
            session.close()  # the client hung up before the cochlea took the audio
            await asyncio.sleep(0.2)
            # ... and the cochlea still serves the next stream.
            other = scheduler.open(StreamOptions())
            await other.feed_audio(pcm("yes"), final=True)
            await asyncio.wait_for(other.processed(), WAIT_S)
            assert other.error is None
            other.close()
        finally:
            await scheduler.stop()

    with caplog.at_level(logging.WARNING):
        asyncio.run(hang_up_at_once())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_closing_after_a_protocol_error_when_the_client_is_gone_raises_nothing():
    class GoneClient:  # starlette raises WebSocketDisconnect when the socket has gone
        application_state = WebSocketState.CONNECTED

        async def send_json(self, data: dict) -> None:
            raise WebSocketDisconnect(1006)

        async def close(self, code: int, reason: str) -> None:
            raise WebSocketDisconnect(1006)

    asyncio.run(close_with_error(GoneClient(), ProtocolError(1007, "malformed JSON")))


def test_clients_hanging_up_at_once_log_no_error(live, caplog):
    url, services = live
    with caplog.at_level(logging.INFO):
        for first in [pcm("yes").tobytes(), "{not json", b"\x00" * 7]:
            for _ in range(5):
                with connect(f"{url}/v1/stream") as ws:
                    ws.send(first)
                    ws.close_socket()  # gone without a close frame
        assert wait_until(lambda: not services.scheduler.sessions)
        time.sleep(0.3)  # any late error has been logged by now
    # The test's own client logs its socket being pulled from under it: not the server's.
    errors = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and not r.name.startswith("websockets.client")
    ]
    assert not errors, "\n".join(r.getMessage() for r in errors)


# ----- 8: tiny messages -------------------------------------------------------------------
def test_millions_of_tiny_messages_keep_the_arrival_records_bounded(controlled_model):
    async def tiny_messages() -> tuple[int, int, int]:
        scheduler = StreamScheduler(Recognizer(controlled_model))
        session = scheduler.open(StreamOptions(activity=False))
        chunk = np.zeros(8, np.int16)  # 0.5 ms per message
        messages = 20_000  # 10 s of audio
        for _ in range(messages):
            await session.feed_audio(chunk)
        fed = len(session._arrivals)
        scheduler.start()
        try:
            await asyncio.wait_for(session.processed(), 60)
            done = len(session._arrivals)
        finally:
            await scheduler.stop()
            session.close()
        return messages, fed, done

    messages, fed, done = asyncio.run(tiny_messages())
    assert fed <= 10 / 0.01 + 1 < messages  # one record per completed bin, not per message
    assert done <= 2  # silence makes no partial, and its records still go


# ----- 10: oversized messages --------------------------------------------------------------
def test_an_oversized_message_gets_an_error_message_before_1009(live):
    url, _ = live
    with connect(f"{url}/v1/stream") as ws:
        ws.send(b"\x00" * (TEST_SETTINGS["max_message_bytes"] + 2))
        messages, closed = read_until_closed(ws)
    assert closed.rcvd.code == 1009
    assert [json.loads(m)["type"] for m in messages] == ["error"]
    assert "exceeds" in json.loads(messages[0])["message"]


# ----- 9: SIGTERM mid-word, through `spikeear serve` ---------------------------------------
def _mid_word_vosk(ws: ClientConnection, audio: np.ndarray) -> None:
    for start in range(0, len(audio), 1600):
        ws.send(audio[start : start + 1600].tobytes())
        if json.loads(ws.recv(timeout=WAIT_S)).get("partial"):
            return
    pytest.fail("no partial before the end of the word's audio")


@pytest.mark.slow  # a server process in a fresh interpreter
def test_sigterm_mid_word_sends_the_final_then_closes_with_1012(controlled_model_file):
    grace_s = 10.0
    port = free_port()
    server = ServerProcess(
        *("--port", str(port), "--workers", "1", "--model", controlled_model_file),
        *("--shutdown-grace-s", str(grace_s)),
    )
    try:
        server.wait_healthy(port)
        url = f"ws://127.0.0.1:{port}"
        # An oversized message, through the transport options `serve` sets: the error
        # message comes before the 1009.
        with connect(f"{url}/v1/stream", max_size=None) as ws:
            ws.send(b"\x00" * (Settings().max_message_bytes + 2))
            messages, closed = read_until_closed(ws)
        assert closed.rcvd.code == 1009 and json.loads(messages[0])["type"] == "error"

        word = pcm("yes")
        with connect(f"{url}/v1/stream") as stream, connect(f"{url}/vosk") as vosk:
            stream_until_a_partial(stream, word)
            _mid_word_vosk(vosk, word)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            messages, closed = read_until_closed(stream)
            vosk_messages, vosk_closed = read_until_closed(vosk)
            took = time.monotonic() - started
        kinds = [json.loads(m)["type"] for m in messages]
        assert kinds == ["final", "error"], messages
        assert json.loads(messages[0])["word"] == LEADER
        assert "shutting down" in json.loads(messages[1])["message"]
        assert closed.rcvd.code == 1012 and "shutting down" in closed.rcvd.reason
        assert [json.loads(m)["text"] for m in vosk_messages] == [LEADER]
        assert vosk_closed.rcvd.code == 1012 and "shutting down" in vosk_closed.rcvd.reason
        assert took < grace_s
    finally:
        server.stop(grace_s + 30)
    assert "Traceback" not in server.output, server.output
