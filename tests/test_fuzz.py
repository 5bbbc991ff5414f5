"""Issue 28, "Prove it": the service fuzzed over HTTP and over both WebSockets.

Both run against one uvicorn server on loopback (in a thread, with the transport options
``spikeear serve`` sets) serving the controlled model, and both are deterministic: fixed
seeds and fixed numbers of examples, each bounded to about 30 s on two cores.

- HTTP: schemathesis generates requests from the app's own ``/openapi.json`` (valid and
  invalid ones): no response may be a server error (5xx), and every response must be one
  the document lists, with its content type and body schema.
- WebSockets: seeded sessions on ``/v1/stream`` and ``/vosk`` of random text, JSON of wrong
  types and depths, NaN, Infinity and huge numbers, odd-length and random binary, config
  after audio, unknown keys, eof twice...  Every session must end with a documented
  close code (never 1011 or 1006), leave nothing open in the server and log no ERROR or
  traceback; the server must be healthy after them all.

A failing session is reported with its path and index; ``session_moves(path, index)``
gives its messages again, to replay it alone.  What the fuzzer found is pinned by tests at
the end: a JSON integer of more than 4300 digits (fixed), and text frames of invalid UTF-8,
refused inside uvicorn's transport (an xfail: its outcome depends on timing there).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import struct
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import schemathesis
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from app.schemas import StreamConfig, StreamMessage, VoskConfig, VoskMessage
from app.server import create_app
from app.settings import Settings
from app.shutdown import GracefulServer
from tests.conftest import RANKING, TEST_SETTINGS, fixture_path
from tests.servers import in_thread, serve_config

SEED = 28  # the issue's number
WS_SESSIONS = 600  # per path
HTTP_EXAMPLES = 1000  # over all operations
DOCUMENTED_CLOSES = {1000, 1003, 1007, 1008, 1009, 1012, 1013}
WAIT_S = 15.0  # for a reply or a close; a 2-core CI machine may be busy
MAX_MESSAGE = TEST_SETTINGS["max_message_bytes"]
PATHS = ("/v1/stream", "/vosk")


class LogRecords(logging.Handler):
    """Every record of WARNING and above, from any thread (the server's included)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def server_errors(self, since: int = 0) -> list[str]:
        # The test's own client logs a socket pulled from under it: not the server's.
        return [
            f"{r.name} {r.levelname}: {r.getMessage()}"
            + (" (with a traceback)" if r.exc_info else "")
            for r in self.records[since:]
            if (r.levelno >= logging.ERROR or r.exc_info)
            and not r.name.startswith("websockets.client")
        ]


@dataclass
class Live:
    port: int
    services: object
    log: LogRecords

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def settled(self, timeout_s: float = WAIT_S) -> bool:
        """Whether every stream has closed and left scheduling (within ``timeout_s``)."""
        services = self.services
        deadline = time.monotonic() + timeout_s
        while len(services.streams) or services.scheduler.sessions:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


@pytest.fixture(scope="module")
def live(controlled_model) -> Iterator[Live]:
    options = Settings(**TEST_SETTINGS)
    app = create_app(options, controlled_model)
    services = app.state.services
    config = serve_config(app, options)  # records reach the root logger, so LogRecords
    log = LogRecords()
    root = logging.getLogger()
    root.addHandler(log)
    try:
        with in_thread(GracefulServer(config, services.streams, grace_s=2.0)) as port:
            yield Live(port, services, log)
    finally:
        root.removeHandler(log)


def pcm(word: str) -> np.ndarray:
    audio, rate = sf.read(fixture_path(word), dtype="int16")
    assert rate == 16000
    return audio


SPEECH = pcm("yes").tobytes()


# ----- HTTP: schemathesis over the app's own OpenAPI document ------------------------------
# Run as a plain Hypothesis test over strategies from the schema: schemathesis' pytest
# plugin for a schema from a fixture (``from_fixture``) fails on pytest 9
# ("'Function' object has no attribute '_nodeid'").
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Generating overly large repr")  # the upload's bytes
def test_http_api_fuzz_gives_no_server_error_and_only_documented_responses(live):
    schema = schemathesis.openapi.from_url(f"{live.http}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "GET /health",
        "GET /v1/models",
        "GET /metrics",
        "POST /v1/transcribe",
    }
    # Valid requests and invalid ones (wrong types, missing parts, out-of-range values).
    cases = [op.as_strategy(mode) for op in operations for mode in GenerationMode]
    # ... and uploads of real audio, whose answers (200) are checked against the schema too.
    (upload,) = (op for op in operations if op.path == "/v1/transcribe")
    cases.append(upload.as_strategy(body={"file": fixture_path("yes").read_bytes()}))
    logged = len(live.log.records)
    statuses: Counter[str] = Counter()

    @settings(
        max_examples=HTTP_EXAMPLES,
        deadline=None,  # a busy 2-core machine is not a failure
        derandomize=True,  # the same examples on every run
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(cases))
    def fuzz(case) -> None:
        # No 5xx, and status, content type, headers and body as the document says.  Not
        # "schema-valid data is accepted": any bytes fit the upload's schema, and bytes
        # that are no audio are refused (400/415) as documented.
        response = case.call_and_validate(
            base_url=live.http, timeout=WAIT_S, excluded_checks=[positive_data_acceptance]
        )
        statuses[f"{case.method} {case.path} {response.status_code}"] += 1

    fuzz()
    assert not live.log.server_errors(logged)
    # The examples reached past the happy path: refusals of bad uploads and values.
    assert "POST /v1/transcribe 200" in statuses, statuses
    assert any(key.startswith("POST /v1/transcribe 4") for key in statuses), statuses


# ----- the WebSocket fuzzer: what a session sends ------------------------------------------
class Raw(str):
    """A JSON token written as it is: NaN, Infinity and numbers Python would not write."""


# Integers of up to 4300 digits: Python's limit for int(str); longer ones are the
# known defect tested below (raise this when it is fixed).
HUGE_NUMBERS = [
    Raw(t) for t in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "1" + "0" * 400)
] + [Raw("9" * 4300), Raw("-" + "9" * 4000), Raw("0." + "1" * 5000), Raw("1" * 300 + "e-300")]
SCALARS = [
    None, True, False, 0, -1, 1, 2, 2**31, 2**63, -(2**63), 10**30, 0.5, -0.0, 1e308,
    5e-324, float("nan"), float("inf"), float("-inf"), "", "x", "16000", "\x00", "é" * 3,
]  # fmt: skip
# Values for the config keys of both endpoints, valid ones among them.
CONFIG_VALUES: dict[str, list] = {
    "sample_rate": [8000, 16000, 16000, 44100, 48000, 7999, 48001, 0, -16000, 16000.0,
                    16000.4, 8000.5, 47999.9, 10**30, 1e308, *HUGE_NUMBERS],
    "format": ["s16le", "s16le", "f32le", "S16LE", "", "mp3"],
    "input": ["audio", "audio", "spikes", "video"],
    "partials": [True, False],
    "vocabulary": [None, ["go"], ["go", "stop", "no"], ["yes"], [], ["nonword"], "go",
                   [1], [["go"]], ["go"] * 100],
    "unknown": [True, False],
    "min_confidence": [None, 0, 0.0, 0.35, 1, -0.1, 1.1],
    "channels": [None, 1, 16, 64, 0, -1, 65535, 65536, 10**20],
    "activity": [True, False],
    "words": [True, False],
    "max_alternatives": [0, 1, 3, 20, 21, -1, 10**9, 1.5],
    "phrase_list": [None, ["go stop"], ["GO", "no yes"], [], "go", [1], [""]],
}  # fmt: skip
CONFIG_KEYS = sorted({*StreamConfig.model_fields, *VoskConfig.model_fields})
assert set(CONFIG_KEYS) <= set(CONFIG_VALUES), "a config key the fuzzer does not know"
MALFORMED_JSON = [
    "", " ", "{", "}", "[", "{'config': {}}", '{"config": }', '{"eof": 1', '{"eof" 1}',
    "{\"eof\": 1}}", "nul", "tru", '"unterminated', "{\"a\": 01}", "{\"a\": .5}",
    "{\"a\": +1}", "{\"a\": 0x10}", "{\"a\": Infinity1}", "{\"a\": \"\\ud800\"}",
    "{\"a\": \"\\u12\"}", "\ufeff{}", "{}\x00", "[1, 2,]",
]  # fmt: skip


def json_text(value) -> str:
    """``value`` as JSON text, :class:`Raw` tokens and non-finite floats as they are."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(json_text(v) for v in value) + "]"
    return json.dumps(value)  # NaN and Infinity for non-finite floats


def random_text(rng: random.Random, max_length: int = 40) -> str:
    alphabet = rng.choice(
        [
            'abcxyz {}[]":,01',
            "".join(map(chr, range(0, 128))),
            "".join(map(chr, range(0x80, 0x800))) + "\u2028\ufeff\U0001f600",
        ]
    )
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_length)))


def random_value(rng: random.Random, depth: int):
    roll = rng.random()
    if depth <= 0 or roll < 0.5:
        pick = rng.random()
        if pick < 0.15:
            return rng.choice(HUGE_NUMBERS)
        if pick < 0.3:
            return random_text(rng, 12)
        return rng.choice(SCALARS)
    if roll < 0.75:
        return [random_value(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    return {random_key(rng): random_value(rng, depth - 1) for _ in range(rng.randint(0, 4))}


def random_key(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice([*CONFIG_KEYS, "config", "eof", "reset", "type"])
    return random_text(rng, 10)


def random_config(rng: random.Random) -> dict:
    config = {}
    for key in rng.sample(CONFIG_KEYS, rng.randint(0, 4)):
        config[key] = rng.choice(CONFIG_VALUES[key])
    if rng.random() < 0.15:
        config[random_key(rng)] = random_value(rng, 2)  # an unknown key, or a wrong type
    return config


def nested(rng: random.Random) -> str:
    depth = rng.choice([10, 100, 999, 1000, 5000, 50_000])
    shape = rng.choice(["list", "object", "config"])
    if shape == "list":
        return "[" * depth + "]" * depth
    if shape == "object":
        return '{"a": ' * depth + "1" + "}" * depth
    return '{"config": ' + "[" * depth + "]" * depth + "}"


def spike_records(rng: random.Random) -> bytes:
    n = rng.randint(0, 200)
    if rng.random() < 0.5:  # ordered, as a sender's cochlea makes them
        times = sorted(rng.randint(0, 2_000_000) for _ in range(n))
    else:
        times = [rng.choice([0, 1, 0xFFFFFFFF, rng.randint(0, 2**32 - 1)]) for _ in range(n)]
    channels = [rng.choice([0, 1, 15, 63, 64, 65535, rng.randint(0, 80)]) for _ in range(n)]
    data = b"".join(struct.pack("<IH", t, c) for t, c in zip(times, channels, strict=True))
    return data[: len(data) - rng.choice([0, 0, 0, 1, 5])] if data else data


def float32_audio(rng: random.Random) -> bytes:
    n = rng.randint(1, 2000)
    values = [
        rng.choice([0.0, 0.5, -1.0, 1e30, -3.4e38, 1e-45, rng.uniform(-2, 2)]) for _ in range(n)
    ]
    data = struct.pack(f"<{n}f", *values)
    if rng.random() < 0.2:  # NaN and Infinity bit patterns
        data += rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff"])
    return data


@dataclass
class Move:
    kind: str
    payload: str | bytes
    as_text: bool = False  # bytes sent as a text frame (invalid UTF-8)

    def __repr__(self) -> str:
        shown = self.payload[:60]
        more = f"... ({len(self.payload)})" if len(self.payload) > 60 else ""
        return f"{self.kind}:{shown!r}{more}"


def random_move(rng: random.Random, path: str, speech_at: list[int]) -> Move:
    roll = rng.random()
    if roll < 0.22:  # the next piece of a real word, so that words get recognized
        size = rng.choice([320, 640, 3200, 8000, 16000])
        start = speech_at[0] % len(SPEECH)
        speech_at[0] = start + size
        return Move("speech", SPEECH[start : start + size])
    if roll < 0.32:
        size = rng.choice([0, 1, 2, 3, 7, 6, 12, 641, 1600, 4001])
        return Move("bytes", rng.randbytes(size))
    if roll < 0.37:
        return Move("spikes", spike_records(rng))
    if roll < 0.41:
        return Move("f32", float32_audio(rng))
    if roll < 0.43:
        return Move("oversized", bytes(MAX_MESSAGE + rng.randint(1, 1000)))
    if roll < 0.57:
        return Move("config", json_text({"config": random_config(rng)}))
    if roll < 0.62:
        return Move("config", json_text({"config": random_value(rng, 3)}))
    if roll < 0.70:
        value = rng.choice([1, 1, 0, None, "yes", [], {}, float("nan")])
        return Move("eof", json_text({"eof": value}))
    if roll < 0.74:
        return Move("reset", json_text({"reset": rng.choice([1, 0, None])}))
    if roll < 0.79:
        return Move("json", json_text({random_key(rng): random_value(rng, 3) for _ in range(3)}))
    if roll < 0.84:
        return Move("json", json_text(random_value(rng, 3)))
    if roll < 0.89:
        return Move("malformed", rng.choice(MALFORMED_JSON))
    if roll < 0.94:
        return Move("nested", nested(rng))
    # Text frames of invalid UTF-8 are left out: the known defect tested below.
    return Move("text", random_text(rng))


def session_moves(path: str, index: int) -> tuple[list[Move], str]:
    """The messages of session ``index`` on ``path``, and how it ends: "eof", "close"
    (a close frame from the client) or "drop" (the socket pulled, no close frame)."""
    rng = random.Random(f"{SEED}:{path}:{index}")
    speech_at = [rng.randrange(0, len(SPEECH), 2)]
    moves = [random_move(rng, path, speech_at) for _ in range(rng.randint(1, 6))]
    ending = rng.choices(["eof", "close", "drop"], weights=[6, 3, 1])[0]
    return moves, ending


# ----- the WebSocket fuzzer: what a session must get ----------------------------------------
STREAM_MESSAGE = TypeAdapter(StreamMessage)
VOSK_MESSAGE = TypeAdapter(VoskMessage)


@dataclass
class Outcome:
    close_code: int | None = None  # None: no close frame came (1006)
    server_closed: bool = False  # the server closed first
    read_to_close: bool = False  # every message up to the close was read
    messages: list[str | bytes] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def drain(ws: ClientConnection, outcome: Outcome, timeout: float = 0.0) -> None:
    """Collect what the server has sent (waiting up to ``timeout`` for each message)."""
    while True:
        try:
            outcome.messages.append(ws.recv(timeout=timeout))
        except TimeoutError:
            return


def run_session(live: Live, path: str, moves: list[Move], ending: str) -> Outcome:
    outcome = Outcome()
    with connect(live.ws + path, max_size=None, open_timeout=WAIT_S, close_timeout=WAIT_S) as ws:
        try:
            for move in moves:
                ws.send(move.payload, text=True if move.as_text else None)
                drain(ws, outcome)
            if ending == "drop":
                ws.close_socket()
            elif ending == "eof":
                ws.send('{"eof": 1}')
                drain(ws, outcome, timeout=WAIT_S)  # ends in ConnectionClosed
                outcome.problems.append(f"neither an eof nor a close within {WAIT_S} s")
        except ConnectionClosed:  # the server closed: what it sent before is still queued
            with contextlib.suppress(ConnectionClosed):
                drain(ws, outcome)
            outcome.read_to_close = True
    # Leaving the block closed the connection ("close"), or found it closed.
    received = ws.protocol.close_rcvd
    if received is not None:
        outcome.close_code = received.code
        outcome.server_closed = ws.protocol.close_rcvd_then_sent is True
    checked = received is not None or ending != "drop"  # a dropped socket has no close
    if checked and outcome.close_code not in DOCUMENTED_CLOSES:
        code = outcome.close_code or "1006 (no close frame)"
        outcome.problems.append(f"closed with {code}")
    check_messages(path, outcome)
    return outcome


def check_messages(path: str, outcome: Outcome) -> None:
    shape = STREAM_MESSAGE if path == "/v1/stream" else VOSK_MESSAGE
    parsed = []
    for message in outcome.messages:
        try:
            parsed.append(shape.validate_json(message))
        except (ValidationError, TypeError) as error:
            outcome.problems.append(f"message {message!r:.80} does not fit the schema: {error}")
    # Documented: on /v1/stream an error message comes just before every other close.
    errored = outcome.server_closed and outcome.close_code != 1000 and outcome.read_to_close
    if path == "/v1/stream" and errored and (not parsed or parsed[-1].type != "error"):
        outcome.problems.append(f"closed with {outcome.close_code} after no error message")


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_websocket_fuzz_sessions_end_cleanly_and_leave_the_server_healthy(live, path):
    since = len(live.log.records)
    failures = []
    codes: dict[int | None, int] = {}
    for index in range(WS_SESSIONS):
        moves, ending = session_moves(path, index)
        logged = len(live.log.records)
        outcome = run_session(live, path, moves, ending)
        if not live.settled():
            outcome.problems.append("the server still holds the stream")
        outcome.problems += live.log.server_errors(logged)
        codes[outcome.close_code] = codes.get(outcome.close_code, 0) + 1
        if outcome.problems:
            failures.append(
                f"session_moves({path!r}, {index}) {moves} then {ending}: {outcome.problems}"
            )
    assert not failures, f"{len(failures)} of {WS_SESSIONS} sessions failed:\n" + "\n".join(
        failures[:10]
    )
    # The fuzzer reached the protocol's errors, not only its happy path.
    assert {1000, 1007} <= set(codes), codes
    assert_healthy(live, since)


def assert_healthy(live: Live, since: int) -> None:
    """GET /health answers 200 with no stream open, and a plain stream of a word on
    each path still gives its final."""
    with urllib.request.urlopen(f"{live.http}/health", timeout=WAIT_S) as response:
        assert response.status == 200
        assert json.loads(response.read())["active_streams"] == 0
    with connect(f"{live.ws}/v1/stream") as ws:
        ws.send(SPEECH)
        ws.send('{"eof": 1}')
        outcome = Outcome()
        with pytest.raises(ConnectionClosed):
            drain(ws, outcome, timeout=WAIT_S)
    finals = [json.loads(m)["word"] for m in outcome.messages if '"final"' in m]
    assert finals == [RANKING[0]] and ws.protocol.close_rcvd.code == 1000
    with connect(f"{live.ws}/vosk") as ws:
        ws.send(SPEECH)
        replies = [json.loads(ws.recv(timeout=WAIT_S))]
        ws.send('{"eof" : 1}')
        replies.append(json.loads(ws.recv(timeout=WAIT_S)))
    assert " ".join(r["text"] for r in replies if r.get("text")) == RANKING[0], replies
    assert live.settled() and not live.log.server_errors(since)


@pytest.mark.parametrize("path", PATHS)
def test_a_json_integer_of_more_than_4300_digits_closes_with_1007(live, path):
    logged = len(live.log.records)
    text = '{"config": {"sample_rate": ' + "9" * 5000 + "}}"
    outcome = run_session(live, path, [Move("json", text)], "eof")
    assert live.settled()
    assert outcome.close_code == 1007 and not outcome.problems, outcome
    assert not live.log.server_errors(logged)


@pytest.mark.parametrize("path", PATHS)
def test_text_frames_of_invalid_utf8_close_with_1007_and_log_no_error(live, path):
    logged = len(live.log.records)
    invalid = [Move("not-utf8", b"\xff", as_text=True), Move("not-utf8", b"\xc3(", as_text=True)]
    outcome = run_session(live, path, invalid, "eof")  # the client waits for the close
    assert live.settled()
    assert outcome.close_code == 1007 and not outcome.problems, outcome
    assert not live.log.server_errors(logged)
