"""The service through the real app: streaming, Vosk protocol, batch, operations, bad input."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app.server import create_app
from app.settings import Settings
from tests.conftest import fixture_path


@pytest.fixture(scope="module")
def client():
    app = create_app(Settings(max_upload_bytes=400_000, max_message_bytes=200_000))
    with TestClient(app) as test_client:
        yield test_client


def pcm(word: str) -> np.ndarray:
    audio, rate = sf.read(fixture_path(word), dtype="int16")
    assert rate == 16000
    return audio


def sentence(*words: str, gap_s: float = 0.3) -> np.ndarray:
    gap = np.zeros(int(gap_s * 16000), np.int16)
    return np.concatenate([part for w in words for part in (pcm(w), gap)])


def stream(client, audio: np.ndarray, config: dict | None = None, chunk: int = 1600) -> list[dict]:
    messages = []
    with client.websocket_connect("/v1/stream") as ws:
        if config is not None:
            ws.send_text(json.dumps({"config": config}))
        for start in range(0, len(audio), chunk):
            ws.send_bytes(audio[start : start + chunk].tobytes())
        ws.send_text(json.dumps({"eof": 1}))
        while True:
            message = ws.receive_json()
            messages.append(message)
            if message["type"] == "eof":
                break
    return messages


def finals(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["type"] == "final"]


def test_stream_gives_partials_before_the_final(client):
    messages = stream(client, sentence("yes"), {"sample_rate": 16000, "format": "s16le"})
    words = finals(messages)
    assert [w["word"] for w in words] == ["yes"]
    assert set(words[0]) == {"type", "word", "start", "end", "confidence"}
    partials = [m for m in messages if m["type"] == "partial"]
    assert partials and set(partials[0]) == {"type", "word", "confidence", "time"}
    assert partials[0]["time"] < words[0]["end"]
    assert messages[-1] == {"type": "eof"}


def test_continuous_speech_gives_one_final_per_word_with_times(client):
    audio = sentence("yes", "stop", "left")
    words = finals(stream(client, audio))
    assert [w["word"] for w in words] == ["yes", "stop", "left"]
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    for word, offset in zip(words, (0.0, 1.3, 2.6), strict=True):
        assert offset <= word["start"] < word["end"] <= offset + 1.05


def test_chunk_size_does_not_change_the_result(client):
    audio = sentence("no", "seven")
    reference = finals(stream(client, audio, chunk=16000))
    assert finals(stream(client, audio, chunk=333)) == reference


def test_float_audio_and_other_sample_rates(client):
    import soxr

    audio = pcm("stop").astype(np.float32) / 32768
    audio = np.concatenate([audio, np.zeros(4800, np.float32)])
    resampled = soxr.resample(audio, 16000, 44100).astype(np.float32)
    words = finals(stream(client, resampled, {"sample_rate": 44100, "format": "f32le"}, chunk=4410))
    assert [w["word"] for w in words] == ["stop"]


def test_vocabulary_restriction(client):
    words = finals(stream(client, sentence("yes"), {"vocabulary": ["no", "stop"]}))
    assert all(w["word"] != "yes" for w in words)


def test_noise_gives_no_word(client):
    noise, _ = sf.read(fixture_path("noise"), dtype="int16")
    assert finals(stream(client, noise)) == []
    assert finals(stream(client, np.zeros(32000, np.int16))) == []


@pytest.mark.parametrize(
    "first, code, reason",
    [
        ("{not json", 1007, "malformed JSON"),
        (
            json.dumps({"config": {"sample_rate": 16000, "colour": "red"}}),
            1007,
            "unknown config key",
        ),
        (json.dumps({"config": {"sample_rate": 1234}}), 1007, "unsupported sample rate"),
        (json.dumps({"config": {"format": "mp3"}}), 1007, "format"),
        (json.dumps({"config": {"vocabulary": ["banana"]}}), 1007, "not in the model"),
        ("hello", 1007, "malformed JSON"),
        (json.dumps({"hello": 1}), 1003, "expected binary audio"),
    ],
)
def test_bad_control_messages_close_with_a_reason(client, first, code, reason):
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text(first)
        error = ws.receive_json()
        assert error["type"] == "error" and reason in error["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == code and reason in closed.value.reason


def test_bad_audio_messages(client):
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(b"\x00\x01\x02")  # not whole s16le samples
        assert ws.receive_json()["type"] == "error"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1007
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(b"\x00" * 300_000)  # over max_message_bytes
        ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1009
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(np.zeros(1600, np.int16).tobytes())
        ws.send_text(json.dumps({"config": {"sample_rate": 8000}}))
        ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1008
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text(json.dumps({"config": {"format": "f32le"}}))
        ws.send_bytes(np.array([0.0, np.nan], np.float32).tobytes())
        assert "NaN" in ws.receive_json()["message"]


def test_a_fast_sender_and_an_abrupt_disconnect_do_not_hurt_other_clients(client):
    audio = sentence("yes", "no")
    # 50x real time, then vanish mid-word without closing.
    with client.websocket_connect("/v1/stream") as ws:
        for start in range(0, len(audio) - 8000, 800):
            ws.send_bytes(audio[start : start + 800].tobytes())
    time.sleep(0.2)
    assert [w["word"] for w in finals(stream(client, audio))] == ["yes", "no"]
    assert client.get("/health").json()["status"] == "ok"


# ----- Vosk protocol, message by message, as its clients do -------------------------------
def vosk_session(client, audio: np.ndarray, config: dict, chunk: int = 4000, end: str = "eof"):
    replies = []
    with client.websocket_connect("/vosk") as ws:
        ws.send_text(json.dumps({"config": config}))
        for start in range(0, len(audio), chunk):
            ws.send_bytes(audio[start : start + chunk].tobytes())
            replies.append(json.loads(ws.receive_text()))  # exactly one reply per chunk
        ws.send_text('{"eof" : 1}' if end == "eof" else '{"reset" : 1}')
        replies.append(json.loads(ws.receive_text()))
        if end == "eof":
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
            assert closed.value.code == 1000
    return replies


def test_vosk_protocol(client):
    audio = sentence("yes", "stop")
    replies = vosk_session(client, audio, {"sample_rate": 16000, "words": True})
    assert len(replies) == -(-len(audio) // 4000) + 1
    results = [r for r in replies if "result" in r]
    assert " ".join(r["text"] for r in results) == "yes stop"
    for r in results:
        assert set(r["result"][0]) == {"conf", "end", "start", "word"}
    assert any(r.get("partial") for r in replies)
    assert all(set(r) in ({"partial"}, {"result", "text"}, {"text"}) for r in replies)


def test_vosk_options(client):
    audio = sentence("yes")
    replies = vosk_session(
        client, audio, {"sample_rate": 16000, "words": False, "max_alternatives": 3}
    )
    alternatives = [r for r in replies if "alternatives" in r and r["alternatives"][0]["text"]]
    assert alternatives and alternatives[0]["alternatives"][0]["text"] == "yes"
    assert len(alternatives[0]["alternatives"]) <= 3
    restricted = vosk_session(client, audio, {"sample_rate": 16000, "phrase_list": ["no", "go"]})
    assert all("yes" not in r.get("text", "") for r in restricted)


def test_vosk_reset_keeps_the_stream_open(client):
    audio = sentence("no")
    with client.websocket_connect("/vosk") as ws:
        for start in range(0, len(audio), 8000):
            ws.send_bytes(audio[start : start + 8000].tobytes())
            ws.receive_text()
        ws.send_text('{"reset" : 1}')
        assert "text" in json.loads(ws.receive_text())
        ws.send_bytes(audio[:8000].tobytes())
        assert set(json.loads(ws.receive_text())) & {"partial", "text"}


# ----- batch -------------------------------------------------------------------------------
def test_transcribe_upload(client, tmp_path):
    path = tmp_path / "two.flac"
    sf.write(path, sentence("yes", "no"), 16000)
    response = client.post("/v1/transcribe", files={"file": ("two.flac", path.read_bytes())})
    assert response.status_code == 200
    body = response.json()
    assert body["text"] == "yes no"
    assert set(body) == {"text", "words", "duration", "stats"}
    assert {"spikes", "synaptic_ops", "real_time_factor"} <= set(body["stats"])
    assert body["stats"]["synaptic_ops"] > 0 and body["duration"] == pytest.approx(2.6, abs=0.01)


@pytest.mark.parametrize(
    "payload, status, message",
    [
        (b"", 400, "empty"),
        (b"this is not audio at all", 415, "not a readable audio file"),
        (b"\x00" * 500_000, 413, "exceeds"),
    ],
)
def test_bad_uploads(client, payload, status, message):
    response = client.post("/v1/transcribe", files={"file": ("x.wav", payload)})
    assert response.status_code == status
    assert message in response.json()["error"]


def test_missing_upload_field(client):
    response = client.post("/v1/transcribe", data={"nothing": "here"})
    assert response.status_code == 422 and "error" in response.json()


# ----- operations -------------------------------------------------------------------------
def test_operations_endpoints(client):
    assert client.get("/health").json()["status"] == "ok"
    model = client.get("/v1/models").json()["models"][0]
    assert "yes" in model["vocabulary"] and model["input_channels"] == 64
    metrics = client.get("/metrics").text
    for name in (
        "spikeear_active_streams",
        "spikeear_audio_seconds_total",
        "spikeear_partial_latency_seconds_bucket",
        "spikeear_errors_total",
    ):
        assert name in metrics
    assert client.get("/docs").status_code == 200
    assert "/v1/transcribe" in client.get("/openapi.json").json()["paths"]


def batch_counts(client) -> dict[tuple[str, str], float]:
    """``(metric, stage) -> count`` of the scheduler's batch histograms in /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name in ("spikeear_batch_seconds_count", "spikeear_batch_streams_count"):
                counts[sample.name, sample.labels["stage"]] = sample.value
    return counts


def test_metrics_show_the_batched_cochlea_calls_and_network_steps(client):
    before = batch_counts(client)
    stream(client, sentence("yes"))
    after = batch_counts(client)
    for metric in ("spikeear_batch_seconds_count", "spikeear_batch_streams_count"):
        for stage in ("cochlea", "network"):
            assert after[metric, stage] > before.get((metric, stage), 0)


# ----- spike-event input ------------------------------------------------------------------
def spike_records(audio: np.ndarray) -> bytes:
    from audio_frontend import Cochlea

    events = Cochlea().encode(audio.astype(np.float32) / 32768, 16000)
    records = np.zeros(len(events), np.dtype([("t", "<u4"), ("c", "<u2")]))
    records["t"] = np.rint(events.times * 1e6).astype(np.uint32)
    records["c"] = events.channels
    return records.tobytes()


def spike_stream(client, payload: bytes, frame: int = 6000) -> list[dict]:
    messages = []
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text(json.dumps({"config": {"input": "spikes", "channels": 64}}))
        for start in range(0, len(payload), frame):
            ws.send_bytes(payload[start : start + frame])
        ws.send_text(json.dumps({"eof": 1}))
        while (message := ws.receive_json())["type"] != "eof":
            messages.append(message)
    return messages


def test_spike_events_in_give_the_same_words_as_audio(client):
    audio = sentence("yes", "no")
    from_audio = finals(stream(client, audio))
    from_spikes = finals(spike_stream(client, spike_records(audio)))
    assert [w["word"] for w in from_spikes] == [w["word"] for w in from_audio] == ["yes", "no"]


@pytest.mark.parametrize(
    "records, reason",
    [
        (b"\x00" * 7, "truncated spike record"),
        (
            np.array([(500, 3), (100, 3)], dtype=[("t", "<u4"), ("c", "<u2")]).tobytes(),
            "time order",
        ),
        (np.array([(100, 64)], dtype=[("t", "<u4"), ("c", "<u2")]).tobytes(), "channel"),
    ],
)
def test_bad_spike_input(client, records, reason):
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text(json.dumps({"config": {"input": "spikes", "channels": 64}}))
        ws.send_bytes(records)
        assert reason in ws.receive_json()["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1007


def test_transcribe_spike_file(tmp_path):
    from app.cli import main

    wav = tmp_path / "yes.wav"
    sf.write(wav, sentence("yes"), 16000)
    assert main(["encode", str(wav), "--out", str(tmp_path / "yes.h5")]) == 0
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "transcribe", str(tmp_path / "yes.h5"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["text"] == "yes"


def test_a_failing_network_step_closes_only_that_stream(client, monkeypatch):
    from models.recognizer import Recognizer

    original = Recognizer.step
    calls = {"n": 0}

    def flaky(self, streams, *args):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault")
        return original(self, streams, *args)

    monkeypatch.setattr(Recognizer, "step", flaky)
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(pcm("yes").tobytes())
        ws.send_bytes(pcm("yes").tobytes())
        message = ws.receive_json()
        assert message["type"] == "error" and "injected fault" in message["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1011
    assert [w["word"] for w in finals(stream(client, sentence("no")))] == ["no"]


def test_metrics_of_several_worker_processes_are_summed(tmp_path, monkeypatch):
    """``spikeear serve --workers N``: each worker counts its own streams into the
    multiprocess directory, and /metrics on any of them reports the sums."""
    from app.metrics import MULTIPROCESS_DIR, Metrics

    worker = (
        "from app.metrics import Metrics\n"
        "m = Metrics()\n"
        "m.audio_seconds.labels('v1').inc(1.5)\n"
        "m.active_streams.labels('v1').inc()\n"
    )
    env = {**os.environ, MULTIPROCESS_DIR: str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", worker], env=env, check=True, timeout=60)
    monkeypatch.setenv(MULTIPROCESS_DIR, str(tmp_path))
    text = Metrics().exposition().decode()
    assert 'spikeear_audio_seconds_total{endpoint="v1"} 3.0' in text
    # The workers have exited without marking themselves dead: live sums still count them.
    assert 'spikeear_active_streams{endpoint="v1"} 2.0' in text
