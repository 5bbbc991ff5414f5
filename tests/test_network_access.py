"""Running on a network (issue 28): API keys, origins, limits, TLS, and the batch defects.

Most tests run the real app on the controlled model (``tests/conftest.py``) through
TestClient or a uvicorn server in a thread; the slow ones start ``spikeear serve``
itself: TLS with a self-signed certificate made here, and two worker processes that
share one stream limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from app.access import CLOSE_TRY_AGAIN
from app.cli import api_keys, build_parser, main, tls_options
from app.errors import CliError
from app.limits import SlotCounter
from app.routers.batch import AudioTooLong, at_most, shown_name, spool_suffix
from app.server import create_app
from app.settings import Settings
from tests.conftest import TEST_SETTINGS, fixture_path
from tests.servers import ServerProcess, bounded, in_thread, speak

KEYS = ("key-one", "key-two")
RATE = 16000


def make_client(model, **settings) -> TestClient:
    return TestClient(create_app(Settings(**{**TEST_SETTINGS, **settings}), model))


@pytest.fixture(scope="module")
def keyed(controlled_model) -> Iterator[TestClient]:
    with make_client(controlled_model, api_keys=KEYS) as client:
        yield client


def pcm(word: str = "yes") -> np.ndarray:
    audio, rate = sf.read(fixture_path(word), dtype="int16")
    assert rate == RATE
    return audio


def flac(seconds: float) -> bytes:
    """``seconds`` of the "yes" clip padded or cut, as FLAC."""
    audio = np.resize(pcm(), int(seconds * RATE))
    out = io.BytesIO()
    sf.write(out, audio, RATE, format="FLAC")
    return out.getvalue()


def limit_hits(client: TestClient, limit: str, headers: dict | None = None) -> float:
    text = client.get("/metrics", headers=headers or {}).text
    match = re.search(rf'spikeear_limit_hits_total\{{limit="{limit}"\}} (\S+)', text)
    assert match, text
    return float(match.group(1))


def stream_to_eof(ws, audio: np.ndarray, chunk: int = 3200) -> list[dict]:
    """Send audio then eof on a TestClient WebSocket; the messages up to "eof"."""
    for start in range(0, len(audio), chunk):
        ws.send_bytes(audio[start : start + chunk].tobytes())
    ws.send_text(json.dumps({"eof": 1}))
    messages = []
    while not messages or messages[-1]["type"] != "eof":
        messages.append(ws.receive_json())
    return messages


# ----- API keys ------------------------------------------------------------------------------
def test_without_keys_every_endpoint_is_open_as_before(controlled_client):
    assert controlled_client.get("/v1/models").status_code == 200
    assert controlled_client.get("/metrics").status_code == 200
    with controlled_client.websocket_connect("/v1/stream") as ws:
        assert stream_to_eof(ws, pcm())[-1] == {"type": "eof"}


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/models"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("POST", "/v1/transcribe"),
        ("GET", "/no-such-page"),  # no hint of what exists without a key
    ],
)
def test_keys_guard_every_http_endpoint(keyed, method, path):
    response = keyed.request(method, path)
    assert response.status_code == 401
    assert "API key" in response.json()["error"]
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("path", ["/health", "/", "/static/demo.js", "/static/index.html"])
def test_health_and_the_demo_page_need_no_key(keyed, path):
    assert keyed.get(path).status_code == 200


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"Authorization": "Bearer key-one"}, 200),
        ({"Authorization": "bearer key-two"}, 200),  # the scheme is case-insensitive
        ({"X-API-Key": "key-two"}, 200),
        ({"X-API-Key": "key-three"}, 401),
        ({"Authorization": "Basic key-one"}, 401),
        ({"Authorization": "Bearer key-one-and-more"}, 401),
        ({}, 401),
    ],
)
def test_http_key_in_either_header(keyed, headers, status):
    assert keyed.get("/v1/models", headers=headers).status_code == status


def test_http_does_not_take_the_key_from_the_query(keyed):
    # Query strings end up in logs and browser history; only WebSockets need one.
    assert keyed.get("/v1/models?api_key=key-one").status_code == 401


@pytest.mark.parametrize("path", ["/v1/stream", "/vosk"])
@pytest.mark.parametrize("query", ["", "?api_key=wrong"])
def test_websocket_without_a_valid_key_is_refused_at_the_handshake(keyed, path, query):
    with pytest.raises(WebSocketDenialResponse) as refused, keyed.websocket_connect(path + query):
        pass
    assert refused.value.status_code == 401
    assert "API key" in json.loads(refused.value.content)["error"]


@pytest.mark.parametrize(
    "path, headers",
    [
        ("/v1/stream?api_key=key-one", {}),
        ("/v1/stream", {"X-API-Key": "key-two"}),
        ("/v1/stream", {"Authorization": "Bearer key-one"}),
    ],
)
def test_websocket_key_in_the_query_or_a_header(keyed, path, headers):
    with keyed.websocket_connect(path, headers=headers) as ws:
        assert stream_to_eof(ws, pcm())[-1] == {"type": "eof"}


def test_vosk_with_a_key_in_the_query(keyed):
    with keyed.websocket_connect("/vosk?api_key=key-two") as ws:
        ws.send_bytes(pcm()[:8000].tobytes())
        assert set(json.loads(ws.receive_text())) & {"partial", "text"}
        ws.send_text('{"eof" : 1}')
        assert "text" in json.loads(ws.receive_text())


def test_refusals_are_counted(keyed):
    keyed.get("/v1/models")
    text = keyed.get("/metrics", headers={"X-API-Key": "key-one"}).text
    assert re.search(r'spikeear_errors_total\{kind="http_401"\} [1-9]', text)


# ----- the demo page -----------------------------------------------------------------------
DEMO_HARNESS = Path(__file__).parent / "demo_page_harness.js"
DEMO_SCRIPT = Path(__file__).resolve().parent.parent / "app" / "static" / "demo.js"


def run_demo_page(mode: str = "") -> dict:
    """demo.js in Node with a stub DOM (no browser here): what the page did."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    result = subprocess.run(
        [node, str(DEMO_HARNESS), str(DEMO_SCRIPT), *([mode] if mode else [])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_demo_page_asks_for_a_key_when_the_server_needs_one():
    seen = run_demo_page()
    assert seen["asked"] and seen["firstFetchKey"] is None
    assert seen["socketsWithoutKey"] == 0  # the microphone waits for a key
    assert seen["wrongKeyMessage"] == "That key was not accepted." and seen["stillAsked"]
    assert seen["lastFetchKey"] == "k1" and seen["formHidden"] and seen["stored"] == "k1"
    assert seen["socketUrl"] == "ws://127.0.0.1:8000/v1/stream?api_key=k1"


def test_the_demo_page_asks_nothing_of_an_open_server():
    seen = run_demo_page("open")
    assert not seen["asked"]
    assert seen["socketUrl"] == "ws://127.0.0.1:8000/v1/stream"


def test_the_served_page_has_the_key_form(keyed):
    page = keyed.get("/").text
    assert 'id="key-form"' in page and 'id="api-key"' in page


# ----- origins -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def with_origins(controlled_model) -> Iterator[TestClient]:
    settings = {"allow_origins": ("https://app.example",), "api_keys": KEYS}
    with make_client(controlled_model, **settings) as client:
        yield client


@pytest.mark.parametrize(
    "origin, allowed",
    [
        (None, True),  # not a browser: command-line and Vosk clients
        ("http://testserver", True),  # the server's own page (TestClient's host)
        ("https://app.example", True),  # listed
        ("https://evil.example", False),
        ("null", False),  # a sandboxed or file:// page
    ],
)
def test_websocket_origin_check(with_origins, origin, allowed):
    headers = {"X-API-Key": "key-one", **({"Origin": origin} if origin else {})}
    if allowed:
        with with_origins.websocket_connect("/v1/stream", headers=headers) as ws:
            assert stream_to_eof(ws, pcm()[:4000])[-1] == {"type": "eof"}
    else:
        refusal = pytest.raises(WebSocketDenialResponse)
        with refusal as refused, with_origins.websocket_connect("/v1/stream", headers=headers):
            pass
        assert refused.value.status_code == 403
        assert "origin" in json.loads(refused.value.content)["error"]


def test_a_foreign_page_is_refused_without_allow_origin_too(controlled_client):
    foreign = {"Origin": "https://evil.example"}
    refusal = pytest.raises(WebSocketDenialResponse)
    with refusal as refused, controlled_client.websocket_connect("/vosk", headers=foreign):
        pass
    assert refused.value.status_code == 403


def test_cors_for_listed_origins_only(with_origins, controlled_client):
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key",
    }
    # A preflight carries no key (browsers never send one there): it must pass.
    response = with_origins.options("/v1/transcribe", headers=preflight)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-api-key" in response.headers["access-control-allow-headers"].lower()
    listed = {"Origin": "https://app.example", "X-API-Key": "key-one"}
    response = with_origins.get("/v1/models", headers=listed)
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    other = {"Origin": "https://evil.example", "X-API-Key": "key-one"}
    assert (
        "access-control-allow-origin" not in with_origins.get("/v1/models", headers=other).headers
    )
    # Without --allow-origin: no CORS at all, as before.
    plain = controlled_client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in plain.headers


# ----- limits --------------------------------------------------------------------------------
def test_max_streams_closes_the_next_stream_with_1013(controlled_model):
    with make_client(controlled_model, max_streams=2) as client:
        with client.websocket_connect("/v1/stream"), client.websocket_connect("/vosk"):
            with client.websocket_connect("/v1/stream") as third:
                error = third.receive_json()
                assert error["type"] == "error" and "2 streams" in error["message"]
                close = third.receive()
                assert close["code"] == CLOSE_TRY_AGAIN == 1013
                assert close["reason"] == "try again later"
            with client.websocket_connect("/vosk") as third:
                assert third.receive()["code"] == 1013  # Vosk clients get no JSON error
        assert limit_hits(client, "max_streams") == 2
        # The slots come back when streams end.
        deadline = time.monotonic() + 10
        while client.app.state.services.stream_slots.held() and time.monotonic() < deadline:
            time.sleep(0.02)
        with client.websocket_connect("/v1/stream") as ws:
            assert stream_to_eof(ws, pcm()[:4000])[-1] == {"type": "eof"}


@pytest.mark.parametrize("path", ["/v1/stream", "/vosk"])
def test_an_idle_stream_is_closed_with_1000_and_a_reason(controlled_model, path):
    with make_client(controlled_model, idle_timeout_s=0.3) as client:
        with client.websocket_connect(path) as ws:
            started = time.monotonic()
            close = ws.receive()
        assert close["type"] == "websocket.close" and close["code"] == 1000
        assert "idle" in close["reason"]
        assert 0.25 <= time.monotonic() - started < 5
        assert limit_hits(client, "idle_timeout_s") == 1
        assert client.app.state.services.stream_slots.held() == 0


def test_a_stream_that_keeps_sending_is_not_idle(controlled_model):
    with make_client(controlled_model, idle_timeout_s=0.3) as client:
        with client.websocket_connect("/v1/stream") as ws:
            for chunk in np.array_split(pcm(), 8):
                ws.send_bytes(chunk.tobytes())
                time.sleep(0.1)  # 0.8 s in all, each gap well under the timeout
            ws.send_text('{"eof": 1}')
            messages = [ws.receive_json()]
            while messages[-1]["type"] != "eof":
                messages.append(ws.receive_json())
        assert limit_hits(client, "idle_timeout_s") == 0


def test_the_idle_timer_ends_only_a_read_that_waited_too_long():
    """IdleTimeout's one timer per stream: reads that come in time never expire however
    long the stream lasts; a read that waits past the timeout gets a disconnect (and the
    client a close); a read cancelled by anyone else stays cancelled."""
    from app.access import IdleTimeout
    from app.metrics import Metrics

    metrics = Metrics()

    async def scenario() -> None:
        incoming: asyncio.Queue = asyncio.Queue()
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        idle = IdleTimeout(incoming.get, send, 0.2, metrics)
        for n in range(8):  # 0.8 s in all, each read answered within 0.1 s
            asyncio.get_running_loop().call_later(0.1, incoming.put_nowait, {"n": n})
            assert await idle.receive() == {"n": n}
        reader = asyncio.ensure_future(idle.receive())
        await asyncio.sleep(0.05)
        reader.cancel()  # not the timer's doing: the caller's cancellation
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert not idle.closed and sent == []
        started = time.monotonic()
        assert (await idle.receive())["type"] == "websocket.disconnect"
        assert 0.15 <= time.monotonic() - started < 1.0
        assert idle.closed and sent[0]["type"] == "websocket.close" and "idle" in sent[0]["reason"]

    asyncio.run(scenario())
    hits = metrics.registry.get_sample_value(
        "spikeear_limit_hits_total", {"limit": "idle_timeout_s"}
    )
    assert hits == 1


def test_a_shutdown_interrupts_a_stream_waiting_for_its_client_and_loses_no_message():
    """Inbox.receive reads in the stream's own task; a shutdown cancels that read (which
    leaves a message the read had not taken in the queue), anyone else's cancellation
    stays a cancellation."""
    from app.routers.common import Inbox
    from app.shutdown import ShuttingDown

    class Socket:  # the part of a WebSocket the inbox reads
        def __init__(self) -> None:
            self.queue: asyncio.Queue = asyncio.Queue()

        async def receive(self) -> dict:
            return await self.queue.get()

    async def scenario() -> None:
        socket, closing = Socket(), asyncio.Event()
        inbox = Inbox(socket, closing, read_ahead_bytes=1 << 20)
        socket.queue.put_nowait({"bytes": b"a"})
        assert await inbox.receive() == {"bytes": b"a"}
        reader = asyncio.ensure_future(inbox.receive())
        await asyncio.sleep(0.01)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        reader = asyncio.ensure_future(inbox.receive())
        await asyncio.sleep(0.01)
        socket.queue.put_nowait({"bytes": b"b"})  # arrives as the shutdown does
        closing.set()
        try:  # whichever comes first, the message is read or still queued
            assert await asyncio.wait_for(reader, 5) == {"bytes": b"b"}
        except ShuttingDown:
            assert socket.queue.get_nowait() == {"bytes": b"b"}
        with pytest.raises(ShuttingDown):  # the next read, and one already waiting
            await inbox.receive()
        inbox2 = Inbox(socket, asyncio.Event(), read_ahead_bytes=1 << 20)
        waiting = asyncio.ensure_future(inbox2.receive())
        await asyncio.sleep(0.01)
        started = time.monotonic()
        inbox2.closing.set()
        with pytest.raises(ShuttingDown):
            await asyncio.wait_for(waiting, 2)
        assert time.monotonic() - started < 1  # at once, not at the wait's deadline
        inbox.close()
        inbox2.close()

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def short_streams(controlled_model) -> Iterator[TestClient]:
    with make_client(controlled_model, max_stream_s=1.0) as client:
        yield client


def test_a_stream_within_max_stream_s_ends_normally(short_streams):
    with short_streams.websocket_connect("/v1/stream") as ws:
        assert stream_to_eof(ws, pcm()[: int(0.9 * RATE)])[-1] == {"type": "eof"}


def test_a_stream_longer_than_max_stream_s_is_closed_with_1008(short_streams):
    audio = np.resize(pcm(), int(1.5 * RATE))
    with short_streams.websocket_connect("/v1/stream") as ws:
        for start in range(0, len(audio), 1600):
            ws.send_bytes(audio[start : start + 1600].tobytes())
        message = ws.receive_json()
        while message["type"] != "error":
            message = ws.receive_json()
        assert "limit of 1 s" in message["message"]
        assert ws.receive()["code"] == 1008


def test_spike_times_count_towards_max_stream_s(short_streams):
    with short_streams.websocket_connect("/v1/stream") as ws:
        ws.send_text(json.dumps({"config": {"input": "spikes"}}))
        ws.send_bytes(np.array([(2_000_000, 3)], "<u4,<u2").tobytes())  # one spike at 2 s
        assert ws.receive_json()["type"] == "error"
        assert ws.receive()["code"] == 1008


def test_a_vosk_stream_longer_than_max_stream_s_is_closed_with_1008(short_streams):
    audio = np.resize(pcm(), int(1.5 * RATE))
    with short_streams.websocket_connect("/vosk") as ws:
        for start in range(0, len(audio), 4000):
            ws.send_bytes(audio[start : start + 4000].tobytes())
            message = ws.receive()
            if message["type"] == "websocket.close":
                break
        assert message["code"] == 1008 and "limit" in message["reason"]
    assert limit_hits(short_streams, "max_stream_s") >= 1


def test_an_upload_longer_than_max_audio_s_gets_413(controlled_model):
    with make_client(controlled_model, max_audio_s=1.0) as client:
        response = client.post("/v1/transcribe", files={"file": ("long.flac", flac(2.0))})
        assert response.status_code == 413
        assert "limit of 1 s of audio" in response.json()["error"]
        assert limit_hits(client, "max_audio_s") == 1
        ok = client.post("/v1/transcribe", files={"file": ("short.flac", flac(0.9))})
        assert ok.status_code == 200


def test_max_audio_counts_decoded_samples_not_the_header():
    # A header may understate a file's length; what decoding yields is what counts.
    blocks = at_most(iter([np.zeros(6), np.zeros(6)]), 10)
    assert len(next(blocks)) == 6
    with pytest.raises(AudioTooLong):
        next(blocks)


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """``app`` on a real uvicorn server on loopback, in a thread; its address."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    with in_thread(server) as port:
        yield f"127.0.0.1:{port}"


def test_uploads_beyond_max_batch_jobs_get_503_and_never_stall_live_streams(controlled_model):
    # More uploads at once than asyncio's default thread pool has threads: when uploads
    # shared that pool with the streams' cochlea calls, these stalled every live stream.
    default_pool = min(32, (os.cpu_count() or 1) + 4)
    jobs = default_pool + 1
    app = create_app(Settings(**{**TEST_SETTINGS, "max_batch_jobs": jobs}), controlled_model)
    recognizer = app.state.services.scheduler.recognizer
    original = recognizer.transcribe
    started = threading.Semaphore(0)
    gate = threading.Event()

    def held_transcribe(*args, **kwargs):
        started.release()
        gate.wait(60)
        return original(*args, **kwargs)

    recognizer.transcribe = held_transcribe
    body = flac(0.5)
    statuses: list[int] = []
    with serve_in_thread(app) as address:

        def upload() -> None:
            response = httpx.post(
                f"http://{address}/v1/transcribe", files={"file": ("a.flac", body)}, timeout=90
            )
            statuses.append(response.status_code)

        uploads = [threading.Thread(target=upload) for _ in range(jobs)]
        try:
            for thread in uploads:
                thread.start()
            for _ in range(jobs):
                assert started.acquire(timeout=60), "the uploads did not all start"
            refused = httpx.post(
                f"http://{address}/v1/transcribe", files={"file": ("b.flac", body)}, timeout=30
            )
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) > 0
            assert f"limit of {jobs} uploads" in refused.json()["error"]
            # A live stream while every upload slot is busy: it must finish at once.
            with connect(f"ws://{address}/v1/stream", open_timeout=OPEN_TIMEOUT_S) as ws:
                messages = speak(ws, pcm(), timeout=20)
            assert any(m["type"] == "final" for m in messages)
        finally:
            gate.set()
            for thread in uploads:
                thread.join(90)
        assert statuses == [200] * jobs
        metrics = httpx.get(f"http://{address}/metrics").text
        assert 'spikeear_limit_hits_total{limit="max_batch_jobs"} 1.0' in metrics


# ----- batch defects -----------------------------------------------------------------------
def test_a_flac_that_fails_while_decoding_is_a_400_not_a_500(controlled_client):
    whole = flac(3.0)
    cut = whole[: len(whole) // 2]  # opens (the header is whole), fails in the frames
    response = controlled_client.post("/v1/transcribe", files={"file": ("cut.flac", cut)})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("cut.flac: damaged audio data")
    assert "/tmp" not in error  # the spool file's path stays private


def multipart(filename: bytes, payload: bytes) -> tuple[bytes, dict]:
    """A multipart body written by hand, so the file name goes out byte for byte."""
    boundary = b"spikeear-test-boundary"
    body = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + payload + b"\r\n"
        b"--" + boundary + b"--\r\n"
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}


ODD_NAMES = [
    b"../../etc/passwd.flac",
    b"a/b/c.flac",
    b"nul\x00byte.flac",
    b"x" * 300 + b".flac",
    b"/",
    b"\xff\xfe.flac",
]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_upload_names_never_reach_the_file_system(controlled_client, tmp_path, name):
    body, headers = multipart(name, flac(1.0))
    response = controlled_client.post("/v1/transcribe", content=body, headers=headers)
    assert response.status_code == 200, response.text
    # And in an error message, the name is shown harmlessly.
    body, headers = multipart(name, b"not audio at all")
    response = controlled_client.post("/v1/transcribe", content=body, headers=headers)
    assert response.status_code == 415
    error = response.json()["error"]
    assert "\x00" not in error and len(error) < 400


def test_upload_name_helpers():
    assert spool_suffix("a/b.flac") == ".flac"
    assert spool_suffix("nul\x00.wav") == ".wav"
    assert spool_suffix("..") == spool_suffix(".hidden") == spool_suffix("x.fl/ac") == ""
    assert spool_suffix("x." + "a" * 20) == ""
    assert shown_name("a\x00b") == "a?b"
    assert len(shown_name("x" * 300)) == 100
    assert shown_name(None) == shown_name("") == "upload"


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("multipart/form-data", b"no boundary at all"),
        ("multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: broken"),
    ],
)
def test_multipart_errors_answer_error_json(controlled_client, content_type, body):
    response = controlled_client.post(
        "/v1/transcribe", content=body, headers={"Content-Type": content_type}
    )
    assert 400 <= response.status_code < 500
    assert list(response.json()) == ["error"]


def test_framework_errors_answer_error_json(controlled_client):
    assert controlled_client.get("/no-such-page").json() == {"error": "Not Found"}
    assert list(controlled_client.delete("/v1/models").json()) == ["error"]


def test_metrics_are_documented_as_prometheus_text(controlled_client):
    operation = controlled_client.get("/openapi.json").json()["paths"]["/metrics"]["get"]
    assert list(operation["responses"]["200"]["content"]) == ["text/plain"]
    response = controlled_client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")


def test_the_transcribe_limits_are_documented(controlled_client):
    responses = controlled_client.get("/openapi.json").json()["paths"]["/v1/transcribe"]["post"]
    assert {"413", "503"} <= set(responses["responses"])


# ----- the shared slot counter ---------------------------------------------------------------
def test_slot_counter_shares_a_limit_between_processes(tmp_path):
    path = tmp_path / "slots.json"
    # Another live process (this one's parent) holds two of three slots.
    path.write_text(json.dumps({str(os.getppid()): 2}))
    counter = SlotCounter(3, path)
    assert counter.acquire()
    assert not counter.acquire()
    assert counter.held() == 3
    counter.release()
    assert counter.acquire()
    counter.release()
    assert json.loads(path.read_text()) == {str(os.getppid()): 2}


def test_slot_counter_forgets_processes_that_died(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    path = tmp_path / "slots.json"
    path.write_text(json.dumps({str(finished.pid): 5}))
    counter = SlotCounter(1, path)
    assert counter.acquire()  # the dead worker's five slots are free again
    assert not counter.acquire()


def test_slot_counter_without_a_limit_or_a_file():
    counter = SlotCounter(0)
    assert all(counter.acquire() for _ in range(1000))
    counter = SlotCounter(1)
    assert counter.acquire() and not counter.acquire()
    counter.release()
    assert counter.acquire()


# ----- the command line ----------------------------------------------------------------------
def test_serve_flags_defaults_match_the_settings():
    args = build_parser("serve").parse_args(["serve"])
    defaults = Settings()
    assert args.api_key is None and args.allow_origin is None
    assert args.max_streams == defaults.max_streams
    assert args.idle_timeout_s == defaults.idle_timeout_s == 60
    assert args.max_stream_s == defaults.max_stream_s
    assert args.max_audio_s == defaults.max_audio_s
    assert args.max_batch_jobs == defaults.max_batch_jobs


@pytest.mark.parametrize(
    "flag, value", [("--max-streams", "-1"), ("--idle-timeout-s", "nan"), ("--max-audio-s", "x")]
)
def test_bad_limit_values_are_refused(flag, value, capsys):
    with pytest.raises(SystemExit):
        build_parser("serve").parse_args(["serve", flag, value])


def test_api_keys_from_flags_and_the_environment():
    assert api_keys(["a", "b"], " c, ,a ,d") == ("a", "b", "c", "d")
    assert api_keys(None, "") == ()
    for bad in (["two words"], [""], ["ключ"]):
        with pytest.raises(CliError):
            api_keys(bad, "")


@pytest.mark.parametrize(
    "argv, keys, line",
    [
        ([], "", "no API key set"),
        (["--api-key", "a"], "b,c", "every client needs one of 3 API keys"),
    ],
)
def test_serve_says_whether_it_needs_keys(monkeypatch, capsys, argv, keys, line):
    import app.server

    captured = {}

    class Stop(Exception):
        pass

    def fake_create_app(settings):
        captured["settings"] = settings
        raise Stop

    monkeypatch.setattr(app.server, "create_app", fake_create_app)
    monkeypatch.setenv("SPIKEEAR_API_KEYS", keys)
    flags = ["--allow-origin", "https://a.example", "--max-streams", "7", "--max-audio-s", "9"]
    with pytest.raises(Stop):
        main(["serve", *argv, *flags])
    assert line in capsys.readouterr().out
    settings = captured["settings"]
    assert len(settings.api_keys) == len(argv) // 2 + len([k for k in keys.split(",") if k])
    assert settings.allow_origins == ("https://a.example",)
    assert (settings.max_streams, settings.max_audio_s) == (7, 9.0)


def self_signed_certificate(directory: Path) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def test_tls_options_need_both_files_and_check_them(tmp_path):
    args = build_parser("serve").parse_args(["serve"])
    assert tls_options(args) == {}
    cert, key = self_signed_certificate(tmp_path)
    args = build_parser("serve").parse_args(["serve", "--ssl-certfile", cert])
    with pytest.raises(CliError, match="go together"):
        tls_options(args)
    args = build_parser("serve").parse_args(
        ["serve", "--ssl-certfile", cert, "--ssl-keyfile", cert]  # not a key
    )
    with pytest.raises(CliError, match="TLS"):
        tls_options(args)
    args = build_parser("serve").parse_args(["serve", "--ssl-certfile", cert, "--ssl-keyfile", key])
    assert tls_options(args) == {"ssl_certfile": cert, "ssl_keyfile": key}


# ----- spikeear serve: TLS, keys and one stream limit over two workers -----------------------
# The clients here are websockets' asyncio client and `spikeear mic`'s (the same, on a thread
# of its own): websockets' threaded client reads and writes one TLS connection from two
# threads at once, which OpenSSL does not allow, and it lost an opening request that way.
SERVED_MAX_STREAMS = 12  # both workers get some of 12 streams, but for 2 in 4096 tries
# A worker accepts connections before its warm-up (numba's first compile) is done: on a
# busy machine a handshake can wait tens of seconds.
OPEN_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def tls_server(controlled_model_file, tmp_path_factory) -> Iterator[dict]:
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    server = ServerProcess(
        *("--port", "0", "--workers", "2", "--model", controlled_model_file),
        *("--ssl-certfile", cert, "--ssl-keyfile", key, "--api-key", "served-key"),
        *("--max-streams", str(SERVED_MAX_STREAMS), "--log-level", "warning"),
        env={"SPIKEEAR_API_KEYS": ""},
    )
    try:
        port = server.port("https")
        context = ssl.create_default_context(cafile=cert)
        server.wait_healthy(port, context)
        yield {"port": port, "context": context, "server": server, "cert": cert}
    finally:
        server.stop()


def https_get(server: dict, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"https://127.0.0.1:{server['port']}{path}", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, context=server["context"], timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wss_connect(server: dict, query: str = "?api_key=served-key"):
    url = f"wss://127.0.0.1:{server['port']}/v1/stream{query}"
    return async_connect(url, ssl=server["context"], open_timeout=OPEN_TIMEOUT_S)


@pytest.mark.slow  # three processes, each loading torch and the model
def test_tls_serves_https_and_wss_behind_a_key(tls_server, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", tls_server["cert"])  # what `spikeear mic` trusts
    bounded(300, lambda: _tls_behind_a_key(tls_server))


def _tls_behind_a_key(tls_server: dict) -> None:
    assert "every client needs one of 1 API keys" in tls_server["server"].output
    assert https_get(tls_server, "/health")[0] == 200
    status, body = https_get(tls_server, "/v1/models")
    assert status == 401 and "error" in json.loads(body)
    assert https_get(tls_server, "/v1/models", {"X-API-Key": "served-key"})[0] == 200

    async def refused() -> None:
        with pytest.raises(InvalidStatus) as refusal:
            await wss_connect(tls_server, query="")
        assert refusal.value.response.status_code == 401

    asyncio.run(refused())
    from app.mic import RemoteRecognizer

    remote = RemoteRecognizer(
        f"https://127.0.0.1:{tls_server['port']}/v1/stream?api_key=served-key", RATE
    )
    try:
        audio = pcm().astype(np.float32) / 32768
        for start in range(0, len(audio), 3200):
            remote.feed(audio[start : start + 3200])
        messages = remote.finish()
    finally:
        remote.close()
    assert any(m["type"] == "final" for m in messages)
    # Plain http on the TLS port gets nowhere.
    plain = f"http://127.0.0.1:{tls_server['port']}/health"
    with pytest.raises((OSError, urllib.error.URLError)), urllib.request.urlopen(plain, timeout=5):
        pass


@pytest.mark.slow  # three processes, each loading torch and the model
def test_max_streams_is_one_limit_for_all_workers(tls_server):
    bounded(300, lambda: asyncio.run(_max_streams_over_workers(tls_server)))


async def _max_streams_over_workers(tls_server: dict) -> None:
    async with contextlib.AsyncExitStack() as streams:
        clients = [
            await streams.enter_async_context(wss_connect(tls_server))
            for _ in range(SERVED_MAX_STREAMS)
        ]
        counts = tls_server["server"].connections_per_worker(tls_server["port"])
        assert len(counts) == 2 and min(counts.values()) >= 1, counts  # both hold streams
        for _ in range(3):  # wherever the kernel sends them, the next ones are refused
            async with wss_connect(tls_server) as extra:
                error = json.loads(await asyncio.wait_for(extra.recv(), 10))
                assert error["type"] == "error"
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(extra.recv(), 10)
            assert closed.value.rcvd.code == 1013 and closed.value.rcvd.reason == "try again later"
        await clients[0].close()
        deadline = time.monotonic() + 20
        while True:  # a freed slot is free in every worker
            async with wss_connect(tls_server) as again:
                await again.send(json.dumps({"eof": 1}))
                if json.loads(await asyncio.wait_for(again.recv(), 10))["type"] == "eof":
                    break
            assert time.monotonic() < deadline, "the freed slot never came back"
            await asyncio.sleep(0.2)
    status, body = https_get(tls_server, "/metrics", {"X-API-Key": "served-key"})
    match = re.search(rb'spikeear_limit_hits_total\{limit="max_streams"\} (\S+)', body)
    assert status == 200 and match and float(match.group(1)) >= 3


def test_uploads_run_at_the_lowest_cpu_priority(controlled_model):
    """Live streams keep their latency while uploads fill the cores (benchmarks/soak.py:
    partial p95 625 ms -> 52 ms on 2 cores): upload threads yield the CPU to them."""
    if not hasattr(os, "setpriority"):
        pytest.skip("no per-thread CPU priority on this system")
    with make_client(controlled_model) as client:
        pool = client.app.state.services.batch_pool
        niceness = pool.submit(
            lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        ).result()
    assert niceness == 19
