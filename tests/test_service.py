"""The service through the real app: streaming, Vosk protocol, batch, operations, bad input.

The protocol tests run on the controlled model (``tests/conftest.py``), whose words are
known in advance: with ``RANKING`` ("go", "stop", "no") every word heard is "go", or the
first of them a stream's vocabulary allows.  Tests named ``..._bundled_model`` check
what the shipped model hears, end to end.
"""

import json
import os
import re
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
from tests.conftest import RANKING, TEST_SETTINGS, fixture_path

LEADER = RANKING[0]  # what the controlled model reports for any word


@pytest.fixture(scope="module")
def client(controlled_client):
    return controlled_client


@pytest.fixture(scope="module")
def bundled_client():
    """The app on the bundled model, for the end-to-end tests."""
    with TestClient(create_app(Settings(**TEST_SETTINGS))) as test_client:
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


def words_of(messages: list[dict]) -> list[str]:
    return [m["word"] for m in finals(messages)]


def test_stream_gives_partials_before_the_final(client):
    messages = stream(client, sentence("yes"), {"sample_rate": 16000, "format": "s16le"})
    # One word: its leading hypothesis as soon as it opens, then the final, then eof.
    assert [m["type"] for m in messages] == ["partial", "final", "eof"]
    partial, final, eof = messages
    # The keys in the order they have always been sent.
    assert list(partial) == ["type", "word", "confidence", "time"]
    assert list(final) == ["type", "word", "start", "end", "confidence"]
    assert eof == {"type": "eof"}
    assert partial["word"] == final["word"] == LEADER
    assert final["start"] < partial["time"] < final["end"]
    assert final["start"] >= 0.0 and final["end"] <= 1.05  # inside the clip
    assert 0.35 <= final["confidence"] <= 1.0


def test_min_confidence_trades_words_for_unknown_per_stream(client):
    audio = sentence("yes", "no")
    confidence = finals(stream(client, audio))[0]["confidence"]
    assert 0.35 <= confidence < 1.0
    # Above the word's confidence the same speech is reported as unknown, on that
    # stream alone; at 0 every word stands.
    strict = {"min_confidence": min(1.0, confidence + 0.01), "unknown": True}
    assert words_of(stream(client, audio, strict)) == ["_unknown_", "_unknown_"]
    assert words_of(stream(client, audio, {"min_confidence": 1.0})) == []
    assert words_of(stream(client, audio, {"min_confidence": 0.0})) == [LEADER, LEADER]
    assert words_of(stream(client, audio)) == [LEADER, LEADER]


def test_partials_can_be_turned_off(client):
    messages = stream(client, sentence("yes"), {"partials": False})
    assert [m["type"] for m in messages] == ["final", "eof"]


def test_continuous_speech_gives_one_final_per_word_with_times(client):
    # Where words start and end comes from the input's activity, not from the weights.
    words = finals(stream(client, sentence("yes", "stop", "left")))
    assert [w["word"] for w in words] == [LEADER] * 3
    for word, offset in zip(words, (0.0, 1.3, 2.6), strict=True):
        assert offset <= word["start"] < word["end"] <= offset + 1.05


def test_continuous_speech_bundled_model(bundled_client):
    audio = sentence("yes", "stop", "left")
    words = finals(stream(bundled_client, audio))
    assert [w["word"] for w in words] == ["yes", "stop", "left"]
    for word, offset in zip(words, (0.0, 1.3, 2.6), strict=True):
        assert offset <= word["start"] < word["end"] <= offset + 1.05


def test_chunk_size_does_not_change_the_result(client):
    audio = sentence("no", "seven")
    reference = stream(client, audio, chunk=16000)
    assert words_of(reference) == [LEADER] * 2
    assert stream(client, audio, chunk=333) == reference


def test_float_audio_and_other_sample_rates(client):
    import soxr

    audio = pcm("stop").astype(np.float32) / 32768
    audio = np.concatenate([audio, np.zeros(4800, np.float32)])
    resampled = soxr.resample(audio, 16000, 44100).astype(np.float32)
    words = finals(stream(client, resampled, {"sample_rate": 44100, "format": "f32le"}, chunk=4410))
    assert [w["word"] for w in words] == [LEADER]


@pytest.mark.parametrize(
    "vocabulary, heard", [(["no", "stop"], "stop"), (["no", "up"], "no"), ([LEADER], LEADER)]
)
def test_vocabulary_restriction(client, vocabulary, heard):
    # The best word the stream may report wins: the words are reported, not dropped.
    messages = stream(client, sentence("yes", "no"), {"vocabulary": vocabulary})
    assert words_of(messages) == [heard, heard]
    assert {m["word"] for m in messages if m["type"] == "partial"} == {heard}


def test_unknown_words_only_with_the_unknown_flag(client):
    # Three words tied in the model: none is confident enough, so the word is unknown.
    config = {"vocabulary": ["up", "down", "left"]}
    without = stream(client, sentence("yes", "no"), config)
    assert finals(without) == []
    assert [m["type"] for m in without] == ["partial", "partial", "eof"]  # words were heard
    with_flag = finals(stream(client, sentence("yes", "no"), {**config, "unknown": True}))
    assert [w["word"] for w in with_flag] == ["_unknown_"] * 2
    assert all(w["confidence"] < 0.35 for w in with_flag)


def test_silence_gives_no_message(client):
    assert stream(client, np.zeros(32000, np.int16)) == [{"type": "eof"}]


def test_noise_gives_no_word_bundled_model(bundled_client):
    # The controlled model reports a word wherever the input opens one; telling noise
    # from speech there is the trained model's silence class.
    noise, _ = sf.read(fixture_path("noise"), dtype="int16")
    assert finals(stream(bundled_client, noise)) == []
    assert finals(stream(bundled_client, np.zeros(32000, np.int16))) == []


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
        (json.dumps({"config": {"min_confidence": 1.5}}), 1007, "min_confidence"),
        (json.dumps({"config": {"min_confidence": "high"}}), 1007, "min_confidence"),
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
    assert words_of(stream(client, audio)) == [LEADER] * 2
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
    assert " ".join(r["text"] for r in results) == f"{LEADER} {LEADER}"
    for r in results:
        assert list(r) == ["result", "text"]
        assert list(r["result"][0]) == ["conf", "end", "start", "word"]
    assert {r["partial"] for r in replies if r.get("partial")} == {LEADER}
    assert all(set(r) in ({"partial"}, {"result", "text"}, {"text"}) for r in replies)


def test_vosk_replies_are_formatted_as_vosk_server_formats_them(client):
    with client.websocket_connect("/vosk") as ws:
        ws.send_bytes(np.zeros(4000, np.int16).tobytes())
        assert ws.receive_text() == '{"partial": ""}'
        ws.send_text('{"eof" : 1}')
        assert ws.receive_text() == '{"text": ""}'


def test_vosk_protocol_bundled_model(bundled_client):
    replies = vosk_session(bundled_client, sentence("yes", "stop"), {"sample_rate": 16000})
    assert " ".join(r["text"] for r in replies if "result" in r) == "yes stop"


def test_vosk_options(client):
    audio = sentence("yes")
    replies = vosk_session(
        client, audio, {"sample_rate": 16000, "words": False, "max_alternatives": 3}
    )
    alternatives = [r for r in replies if "alternatives" in r and r["alternatives"][0]["text"]]
    assert len(alternatives) == 1
    assert [a["text"] for a in alternatives[0]["alternatives"]] == list(RANKING)
    assert all(list(a) == ["confidence", "text"] for a in alternatives[0]["alternatives"])
    with_words = vosk_session(client, audio, {"max_alternatives": 2})
    best = next(r for r in with_words if "alternatives" in r)["alternatives"][0]
    assert list(best) == ["confidence", "text", "result"]
    assert list(best["result"][0]) == ["start", "end", "word"] and best["text"] == LEADER
    restricted = vosk_session(client, audio, {"sample_rate": 16000, "phrase_list": ["no", "up"]})
    assert [r["text"] for r in restricted if r.get("text")] == ["no"]


def test_vosk_min_confidence(client):
    audio = sentence("yes")
    texts = [r["text"] for r in vosk_session(client, audio, {"min_confidence": 1.0}) if "text" in r]
    assert texts and not any(texts)  # replies, but no word passes
    assert [r["text"] for r in vosk_session(client, audio, {}) if r.get("text")] == [LEADER]
    with client.websocket_connect("/vosk") as ws:
        ws.send_text(json.dumps({"config": {"min_confidence": -0.5}}))
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1007 and "min_confidence" in closed.value.reason


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
def transcribe(client, tmp_path) -> dict:
    path = tmp_path / "two.flac"
    sf.write(path, sentence("yes", "no"), 16000)
    response = client.post("/v1/transcribe", files={"file": ("two.flac", path.read_bytes())})
    assert response.status_code == 200
    return response.json()


def test_transcribe_upload(client, tmp_path):
    body = transcribe(client, tmp_path)
    assert body["text"] == f"{LEADER} {LEADER}"
    assert list(body) == ["text", "words", "duration", "stats"]
    assert list(body["words"][0]) == ["word", "start", "end", "confidence"]
    # Batch is streaming with the whole file: the same words at the same times.
    assert body["words"] == [
        {k: v for k, v in m.items() if k != "type"}
        for m in finals(stream(client, sentence("yes", "no")))
    ]
    assert {"spikes", "synaptic_ops", "real_time_factor"} <= set(body["stats"])
    assert body["stats"]["synaptic_ops"] > 0 and body["duration"] == pytest.approx(2.6, abs=0.01)


def test_transcribe_upload_bundled_model(bundled_client, tmp_path):
    assert transcribe(bundled_client, tmp_path)["text"] == "yes no"


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


def test_transcribe_min_confidence(client, tmp_path):
    path = tmp_path / "two.flac"
    sf.write(path, sentence("yes", "no"), 16000)

    def post(query: str):
        with open(path, "rb") as f:
            return client.post(f"/v1/transcribe{query}", files={"file": ("two.flac", f)})

    assert [w["word"] for w in post("?min_confidence=0").json()["words"]] == [LEADER, LEADER]
    assert post("?min_confidence=1").json()["words"] == []
    for bad in ("?min_confidence=1.5", "?min_confidence=-1", "?min_confidence=high"):
        response = post(bad)
        assert response.status_code == 422 and "min_confidence" in response.json()["error"]


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


def test_openapi_names_the_websocket_messages(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    stream_messages = schemas["StreamMessage"]
    assert stream_messages["discriminator"]["propertyName"] == "type"
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in stream_messages["oneOf"]} == {
        "PartialMessage",
        "FinalMessage",
        "ActivityMessage",
        "ErrorMessage",
        "EofMessage",
    }
    assert schemas["FinalMessage"]["required"] == ["type", "word", "start", "end", "confidence"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in schemas["VoskMessage"]["anyOf"]} == {
        "VoskPartial",
        "VoskResult",
        "VoskAlternatives",
    }
    assert schemas["VoskResult"]["required"] == ["text"]  # "result" only with words
    assert "vocabulary" in schemas["StreamConfig"]["properties"]
    assert "phrase_list" in schemas["VoskConfig"]["properties"]
    # Every reference resolves inside the document.
    assert set(re.findall(r"#/components/schemas/(\w+)", json.dumps(schemas))) <= set(schemas)


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
    assert [w["word"] for w in from_audio] == [LEADER] * 2
    assert finals(spike_stream(client, spike_records(audio))) == from_audio


def test_spike_events_bundled_model(bundled_client):
    from_spikes = finals(spike_stream(bundled_client, spike_records(sentence("yes", "no"))))
    assert [w["word"] for w in from_spikes] == ["yes", "no"]


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


@pytest.mark.slow  # a fresh interpreter loads torch and the model (~5 s)
def test_transcribe_spike_file_bundled_model(tmp_path):
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
    assert words_of(stream(client, sentence("no"))) == [LEADER]


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
