"""Streaming load: N concurrent real-time WebSocket clients against ``spikeear serve``.

Starts ``spikeear serve`` as a subprocess on a free loopback port (or uses a running
server given with ``--url``), then opens ``--streams`` concurrent clients on
``/v1/stream`` from one asyncio loop (uvloop when installed).  Every client streams
``--seconds`` of real speech at real-time pace: s16le in 20 ms chunks (``--chunk-ms``;
real clients often send 100-250 ms), each sent at ``t0 + k * chunk`` against a
monotonic clock.  The audio is random in-vocabulary
words (Speech Commands clips trimmed to the word) separated by 0.4-0.8 s of
silence, as many as fit (3-4 per 5 s, ~15 per 20 s), so the ground truth (word,
start, end) is known.  Clients
ask for ``"unknown": true`` so that every detected segment yields a final.

Measured:

* partial latency: for a partial with ``time`` t (stream seconds at which it was
  decided) = receive wallclock - send wallclock of the chunk holding stream time t;
  p50 / p95 / max over all partials of all clients;
* final latency: receive wallclock - send wallclock of the chunk holding the
  final's ``end``.  This includes the decoder's hangover (by default 25 bins =
  250 ms of quiet before a word is closed), so it is also shown less the hangover;
  finals of words ending within the hangover of the stream's end (closed by the
  ``eof`` flush) are counted, not timed;
* correctness: a final matches a ground-truth word when its start..end overlaps
  it (one-to-one, largest overlap first); word accuracy = matched with the right
  word / ground-truth words; coverage = ground-truth words with any final;
* dropped audio: every client must get ``{"type": "eof"}`` and a normal close; the
  server's ``spikeear_audio_seconds_total{endpoint="v1"}`` must grow by exactly the
  audio sent; with ``--verify K`` (default 3) the finals of K streams are compared,
  after the load, with an in-process ``Recognizer.transcribe`` of the same audio
  (the recognizer is chunking-invariant, so they must be identical);
* server CPU (psutil user+system time of the server process over the streaming
  window, as cores and as a share of this machine's cores) and peak RSS (sampled
  every 0.2 s); the client's own CPU and how late it sent chunks (so a slow client
  shows up as such, not as server latency).

``--sweep 1,10,50,100`` repeats the run (fresh server each time unless ``--url``)
and shows server CPU per stream falling as load rises; ``--repeat K`` runs each count
K times, since on a shared machine one run's p95 can be far from the next.  Targets: 100 concurrent
real-time streams with partial p95 <= 200 ms and no audio dropped.

Without a trained model at ``models/spikeear-default.pt`` pass ``--model PATH`` or
``--random-model`` (an untrained network of the default size: timings are
representative, word accuracy is not).  Needs ``psutil`` and ``websockets``.

Run from the repository root::

    python -m benchmarks.load                          # 100 streams x 20 s
    python -m benchmarks.load --streams 5 --seconds 5 --random-model
    python -m benchmarks.load --sweep 1,10,50,100 --json > load.json
    python -m benchmarks.load --url ws://127.0.0.1:8000/v1/stream --streams 20
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from benchmarks.common import (
    LOOPBACK,
    RATE,
    ClipLibrary,
    Sequence,
    ServerProcess,
    add_model_flags,
    build_sequence,
    console,
    data_folder,
    emit,
    endpointing_s,
    greedy_pairs,
    http_get,
    resolve_model,
)

CHUNK_S = 0.02  # default chunk: 20 ms (``--chunk-ms``)
CHUNK = round(RATE * CHUNK_S)
TARGET_STREAMS = 100
TARGET_P95_S = 0.200
HANGOVER_S = endpointing_s()["hangover"]


def match_words(
    truth: list[tuple[str, float, float]], finals: list[tuple[str, float, float]]
) -> dict:
    """One-to-one matching by time overlap (largest first); counts of each outcome."""
    overlaps = [
        (min(te, fe) - max(ts, fs), i, j)
        for i, (_, ts, te) in enumerate(truth)
        for j, (_, fs, fe) in enumerate(finals)
    ]
    matched = greedy_pairs([o for o in overlaps if o[0] > 0])
    correct = sum(truth[i][0] == finals[j][0] for i, j in matched)
    return {
        "truth": len(truth),
        "finals": len(finals),
        "correct": correct,
        "substituted": len(matched) - correct,
        "missed": len(truth) - len(matched),
        "inserted": len(finals) - len(matched),
    }


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": len(a),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


# =========================================================================== server


def pid_listening_on(port: int) -> int | None:
    import psutil

    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    return None


class ProcessMonitor:
    """CPU time and peak RSS of one process and its children (``spikeear serve
    --workers N`` runs N worker processes under a supervisor), summed, sampled in
    a thread every ``interval`` s."""

    def __init__(self, pid: int | None, interval: float = 0.2) -> None:
        import psutil

        self.process = psutil.Process(pid) if pid is not None else None
        self.interval = interval
        self.peak_rss = 0
        self.samples: list[tuple[float, float, int]] = []  # (monotonic, cpu s, rss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[float, float, int] | None:
        if self.process is None:
            return None
        cpu_s, rss = 0.0, 0
        try:
            for process in [self.process, *self.process.children(recursive=True)]:
                with process.oneshot():
                    cpu = process.cpu_times()
                    cpu_s += cpu.user + cpu.system
                    rss += process.memory_info().rss
        except Exception:
            return None
        sample = (time.monotonic(), cpu_s, rss)
        self.peak_rss = max(self.peak_rss, rss)
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._sample()
        self._thread.start()

    def mark(self) -> tuple[float, float, int] | None:
        return self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()


def cpu_between(a: tuple | None, b: tuple | None) -> dict:
    if a is None or b is None or b[0] <= a[0]:
        return {"cpu_s": None, "wall_s": None, "cores": None}
    cpu, wall = b[1] - a[1], b[0] - a[0]
    return {"cpu_s": cpu, "wall_s": wall, "cores": cpu / wall}


def scrape_metrics(base: str) -> dict:
    """A few counters from the server's Prometheus text (zeros when absent)."""
    try:
        text = http_get(f"{base}/metrics")
    except OSError:
        return {}
    out = {}
    for name, pattern in {
        "audio_seconds_v1": r'^spikeear_audio_seconds_total\{endpoint="v1"\} (\S+)',
        "partial_latency_sum": r"^spikeear_partial_latency_seconds_sum (\S+)",
        "partial_latency_count": r"^spikeear_partial_latency_seconds_count (\S+)",
    }.items():
        found = re.search(pattern, text, re.MULTILINE)
        out[name] = float(found.group(1)) if found else 0.0
    for kind, value in re.findall(r'^spikeear_errors_total\{kind="([^"]+)"\} (\S+)', text, re.M):
        out[f"errors_{kind}"] = float(value)
    return out


# =========================================================================== clients


@dataclass
class ClientResult:
    index: int
    sequence: Sequence
    chunk: int = CHUNK  # samples per message
    send_times: list[float] = field(default_factory=list)
    send_late: list[float] = field(default_factory=list)
    eof_sent: float | None = None
    events: list[tuple[float, dict]] = field(default_factory=list)
    got_eof: bool = False
    close_code: int | None = None
    close_reason: str | None = None  # of a close before the eof answer
    error: str | None = None
    connected_at: float | None = None
    done_at: float | None = None


def chunk_of(t: float, chunk_s: float = CHUNK_S) -> int:
    """Index of the chunk holding stream time t (the sample just before t)."""
    return max(0, math.ceil(round(t / chunk_s, 6)) - 1)


async def run_client(
    result: ClientResult, url: str, start_at: float, partials: bool, timeout: float
) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    pcm = result.sequence.s16le()
    step = 2 * result.chunk
    chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    chunk_s = result.chunk / RATE

    async def receive(ws) -> None:
        try:
            async for message in ws:
                now = time.monotonic()
                if isinstance(message, bytes):
                    continue
                event = json.loads(message)
                result.events.append((now, event))
                if event.get("type") == "eof":
                    result.got_eof = True
        except ConnectionClosed:
            pass

    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    try:
        async with asyncio.timeout(timeout):
            async with connect(
                url, open_timeout=30, close_timeout=10, ping_interval=None, max_size=2**22
            ) as ws:
                result.connected_at = time.monotonic()
                config = {"sample_rate": RATE, "format": "s16le", "partials": partials}
                await ws.send(json.dumps({"config": {**config, "unknown": True}}))
                receiver = asyncio.create_task(receive(ws))
                t0 = time.monotonic()
                for k, chunk in enumerate(chunks):
                    target = t0 + k * chunk_s
                    delay = target - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    now = time.monotonic()
                    result.send_times.append(now)
                    result.send_late.append(now - target)
                    await ws.send(chunk)
                result.eof_sent = time.monotonic()
                await ws.send(json.dumps({"eof": 1}))
                await receiver
                result.close_code = ws.close_code
    except TimeoutError:
        result.error = f"timed out after {timeout:.0f} s"
    except ConnectionClosed as error:  # ended early: which code (1006: no close frame)
        result.close_code = error.rcvd.code if error.rcvd is not None else 1006
        result.close_reason = error.rcvd.reason if error.rcvd is not None else None
        result.error = f"{type(error).__name__}: {error}"
    except Exception as error:  # a failed client is a result, not a crash
        result.error = f"{type(error).__name__}: {error}"
    result.done_at = time.monotonic()


# =========================================================================== abusive clients

FAST_CHUNK_S = 0.1  # a fast client's messages: 100 ms of audio each
FAST_SPEED = 50.0  # times real time (0: as fast as the socket takes it)
TINY_BYTES = 4  # a tiny client's messages: 2 samples each, 8000 a second at real time
TINY_TICK_S = 0.01  # a tiny client writes the messages due every 10 ms as one blob
TINY_BUFFER = 1 << 16  # a tiny client waits while this much is unsent (socket backpressure)


@dataclass
class Abuse:
    """The abusive clients of a run and how they send."""

    clients: list[AbusiveResult]
    fast_speed: float = FAST_SPEED
    tiny_speed: float = 1.0
    tiny_bytes: int = TINY_BYTES


@dataclass
class AbusiveResult:
    """One client that streams faster than real time (``fast``) or in tiny messages
    (``tiny``), its audio the sequence repeated for the normal streams' whole run."""

    index: int
    kind: str  # "fast" or "tiny"
    sequence: Sequence
    messages: int = 0
    samples: int = 0  # audio handed to the socket
    sends: list[tuple[float, float]] = field(default_factory=list)  # (stream s, wallclock)
    send_s: float | None = None  # wall time spent sending, until eof or the server's close
    events: list[tuple[float, dict]] = field(default_factory=list)
    got_eof: bool = False
    close_code: int | None = None
    close_reason: str | None = None
    error: str | None = None


def _frames(payload: bytes, size: int) -> bytes:
    """``payload`` as client frames (binary, masked with a zero key, which leaves the
    bytes as they are) of ``size`` bytes each, for one write: thousands of messages a
    second cost the benchmark's client almost nothing, and the server all of its work."""
    header = bytes([0x82, 0x80 | size]) + b"\0\0\0\0"
    return b"".join(header + payload[i : i + size] for i in range(0, len(payload), size))


async def run_abusive_client(
    result: AbusiveResult,
    url: str,
    start_at: float,
    until: float,
    partials: bool,
    timeout: float,
    abuse: Abuse,
) -> None:
    """Stream until ``until`` (monotonic), then eof; ``fast``: 100 ms messages at
    ``abuse.fast_speed`` times real time (0: as fast as the socket takes them); ``tiny``:
    ``abuse.tiny_bytes`` messages at ``abuse.tiny_speed`` times real time."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    pcm = result.sequence.s16le()
    looped = pcm + pcm  # any span of at most len(pcm) bytes, from any start, without wrapping
    closed = asyncio.Event()

    async def receive(ws) -> None:
        try:
            async for message in ws:
                if isinstance(message, str):
                    event = json.loads(message)
                    result.events.append((time.monotonic(), event))
                    result.got_eof |= event.get("type") == "eof"
        except ConnectionClosed:
            pass
        closed.set()

    def take(n_bytes: int) -> bytes:
        """The next ``n_bytes`` (at most the sequence's length) of the looped audio."""
        start = (2 * result.samples) % len(pcm)
        data = looped[start : start + n_bytes]
        result.samples += n_bytes // 2
        result.sends.append((result.samples / RATE, time.monotonic()))
        return data

    async def send_fast(ws) -> None:
        step = 2 * round(RATE * FAST_CHUNK_S)
        speed = abuse.fast_speed
        t0 = time.monotonic()
        while time.monotonic() < until and not closed.is_set():
            if speed > 0:
                delay = t0 + result.samples / RATE / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await ws.send(take(step))  # waits while the socket's buffer is full
            result.messages += 1

    async def send_tiny(ws) -> None:
        tiny_bytes = abuse.tiny_bytes
        per_s = 2 * RATE * abuse.tiny_speed / tiny_bytes  # messages a second
        t0 = time.monotonic()
        while time.monotonic() < until and not closed.is_set():
            await asyncio.sleep(TINY_TICK_S)
            if ws.transport.is_closing():
                break
            if ws.transport.get_write_buffer_size() > TINY_BUFFER:
                continue  # the server reads no faster: wait, as a real client would
            due = int((time.monotonic() - t0) * per_s) - result.messages
            due = min(due, len(pcm) // tiny_bytes)  # after a stall, at most one sequence
            if due > 0:
                ws.transport.write(_frames(take(due * tiny_bytes), tiny_bytes))
                result.messages += due

    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    began = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            async with connect(
                url, open_timeout=30, close_timeout=10, ping_interval=None, max_size=2**22
            ) as ws:
                config = {"sample_rate": RATE, "format": "s16le", "partials": partials}
                await ws.send(json.dumps({"config": {**config, "unknown": True}}))
                receiver = asyncio.create_task(receive(ws))
                began = time.monotonic()
                await (send_fast(ws) if result.kind == "fast" else send_tiny(ws))
                result.send_s = time.monotonic() - began
                if not closed.is_set():
                    await ws.send(json.dumps({"eof": 1}))
                await receiver
                result.close_code = ws.close_code
                result.close_reason = ws.close_reason or None
    except TimeoutError:
        result.error = f"timed out after {timeout:.0f} s"
    except ConnectionClosed as error:
        result.close_code = error.rcvd.code if error.rcvd is not None else 1006
        result.close_reason = error.rcvd.reason if error.rcvd is not None else None
    except Exception as error:  # a failed client is a result, not a crash
        result.error = f"{type(error).__name__}: {error}"
    if result.send_s is None:
        result.send_s = time.monotonic() - began


def _abusive_latency(result: AbusiveResult) -> list[float]:
    """Each partial's receive - send of the message holding the partial's time."""
    ends = [s for s, _ in result.sends]
    latency = []
    for received, event in result.events:
        if event.get("type") == "partial" and ends:
            k = min(bisect.bisect_left(ends, event["time"] - 1e-9), len(ends) - 1)
            latency.append(received - result.sends[k][1])
    return latency


def analyse_abusive(result: AbusiveResult, normal_end: float | None) -> dict:
    """What the client sent, how fast, how it ended, its own partial latency, and how far
    the server had taken its stream when the last normal stream ended (by its words'
    times: its share of the server while the normal streams ran, whatever the CPU)."""
    reached = [
        event.get("end", event.get("time", 0.0))
        for received, event in result.events
        if event.get("type") in ("partial", "final")
        and (normal_end is None or received <= normal_end)
    ]
    audio_s = result.samples / RATE
    send_s = result.send_s or 0.0
    return {
        "kind": result.kind,
        "messages": result.messages,
        "audio_s_sent": audio_s,
        "send_s": send_s,
        "messages_per_s": result.messages / send_s if send_s else None,
        "times_real_time": audio_s / send_s if send_s else None,
        "got_eof": result.got_eof,
        "close_code": result.close_code,
        "close_reason": result.close_reason,
        "error": result.error,
        "latency_partial_s": percentiles(_abusive_latency(result)),
        "stream_s_done_while_normal_ran": max(reached, default=0.0),
    }


def analyse_client(result: ClientResult, hangover_s: float = HANGOVER_S) -> dict:
    partial_lat, final_lat, finals, flushed = [], [], [], 0
    sends = result.send_times
    chunk_s = result.chunk / RATE
    for received, event in result.events:
        kind = event.get("type")
        if kind == "partial" and sends:
            k = chunk_of(event["time"], chunk_s)
            sent = sends[k] if k < len(sends) else result.eof_sent
            if sent is not None:
                partial_lat.append(received - sent)
        elif kind == "final":
            finals.append((event["word"], event["start"], event["end"]))
            # Only a word ending within the hangover of the stream's end waits for eof.
            if event["end"] + hangover_s > result.sequence.seconds + 1e-6:
                flushed += 1
            elif sends:
                k = min(chunk_of(event["end"], chunk_s), len(sends) - 1)
                final_lat.append(received - sends[k])
    return {
        "partial_latency": partial_lat,
        "final_latency": final_lat,
        "finals": finals,
        "flushed_finals": flushed,
        "match": match_words(result.sequence.words, finals),
        "ok": result.got_eof and result.close_code == 1000 and result.error is None,
        "complete": len(sends) == math.ceil(len(result.sequence.audio) / result.chunk),
    }


def verify_offline(model: str, results: list[ClientResult], k: int) -> dict:
    """Finals of the first k streams vs an in-process transcription of the same audio."""
    from models.model_file import load_model
    from models.recognizer import Recognizer, StreamOptions

    recognizer = Recognizer(load_model(model))
    checked, identical, details = 0, 0, []
    for result in results[:k]:
        if not result.got_eof:
            continue
        pcm = np.frombuffer(result.sequence.s16le(), "<i2")
        options = StreamOptions(sample_rate=RATE, emit_unknown=True)
        offline = recognizer.transcribe(
            [pcm[i : i + 10 * RATE] for i in range(0, len(pcm), 10 * RATE)], RATE, options
        )
        want = [(w.word, round(w.start, 3), round(w.end, 3)) for w in offline.words]
        got = [(e["word"], e["start"], e["end"]) for _, e in result.events if e["type"] == "final"]
        checked += 1
        identical += want == got
        if want != got:
            details.append({"stream": result.index, "offline": want, "streamed": got})
    return {"checked": checked, "identical": identical, "differences": details[:3]}


def _machine_busy_s() -> float:
    """CPU seconds all processes of this machine have used (not idle or waiting)."""
    import psutil

    times = psutil.cpu_times()
    fields = ("user", "nice", "system", "irq", "softirq", "steal")
    return sum(getattr(times, name, 0.0) for name in fields)


async def run_load(
    url: str,
    sequences: list[Sequence],
    ramp: float,
    partials: bool,
    timeout: float,
    monitor: ProcessMonitor | None,
    chunk: int = CHUNK,
    abuse: Abuse | None = None,
) -> tuple[list[ClientResult], dict]:
    import psutil

    me = psutil.Process()
    results = [ClientResult(i, s, chunk) for i, s in enumerate(sequences)]
    n = len(results)
    start = time.monotonic() + 0.2
    mark0 = monitor.mark() if monitor else None
    own0 = (time.monotonic(), sum(me.cpu_times()[:2]))
    busy0 = _machine_busy_s()
    # Loop lag: how late a 10 ms timer fires, sampled while the clients run.
    lag: list[float] = []
    stop = asyncio.Event()

    async def lag_probe() -> None:
        while not stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.01)
            lag.append(time.monotonic() - t - 0.01)

    probe = asyncio.create_task(lag_probe())
    # The abusive clients stream from the first normal client's start to the last one's end.
    until = start + ramp + max((s.seconds for s in sequences), default=0.0)
    await asyncio.gather(
        *(
            run_client(r, url, start + ramp * i / max(1, n), partials, timeout)
            for i, r in enumerate(results)
        ),
        *(
            run_abusive_client(a, url, start, until, partials, timeout, abuse)
            for a in (abuse.clients if abuse else [])
        ),
    )
    stop.set()
    await probe
    mark1 = monitor.mark() if monitor else None
    own1 = (time.monotonic(), sum(me.cpu_times()[:2]))
    busy1 = _machine_busy_s()
    window = {
        "server": cpu_between(mark0, mark1),
        "client_cpu_s": own1[1] - own0[1],
        "client_cores": (own1[1] - own0[1]) / (own1[0] - own0[0]),
        "wall_s": own1[0] - own0[0],
        "loop_lag": percentiles(lag),
        "machine_busy_cores": (busy1 - busy0) / (own1[0] - own0[0]),
    }
    return results, window


# =========================================================================== one run


def one_run(
    args: argparse.Namespace, n: int, library: ClipLibrary, model: str | None, workdir: Path
) -> dict:
    rng = random.Random(args.seed * 1000 + n)
    sequences = [build_sequence(library, rng, seconds=args.seconds) for _ in range(n)]
    # Their own generator: the normal streams' audio is the same with or without them.
    abuse_rng = random.Random(args.seed * 1000 + n + 500)
    abuse = Abuse(
        [
            AbusiveResult(i, kind, build_sequence(library, abuse_rng, seconds=args.seconds))
            for i, kind in enumerate(["fast"] * args.fast_clients + ["tiny"] * args.tiny_clients)
        ],
        args.fast_speed,
        args.tiny_speed,
        args.tiny_bytes,
    )
    server = None
    if args.url:
        ws_url = args.url
        parsed = urlparse(ws_url)
        base = f"http://{parsed.hostname}:{parsed.port or 80}"
        pid = args.server_pid or pid_listening_on(parsed.port or 80)
    else:
        if model is None:
            raise SystemExit(
                "no model: models/spikeear-default.pt does not exist; "
                "pass --model PATH or --random-model"
            )
        server = ServerProcess(
            model,
            workdir / f"server-{n}.log",
            threads=args.server_threads,
            workers=args.workers,
            words=args.words,
        )
        ws_url = f"ws://127.0.0.1:{server.port}/v1/stream"
        base, pid = server.base, server.pid
    monitor, bin_ms = None, None
    try:
        with contextlib.suppress(Exception):
            monitor = ProcessMonitor(pid) if pid is not None else None
        if monitor:
            monitor.start()
        before = scrape_metrics(base)
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
            bin_ms = float(json.loads(http_get(f"{base}/v1/models"))["models"][0]["bin_ms"])
        idle0 = monitor.mark() if monitor else None
        time.sleep(1.0)  # idle baseline of the server
        idle = cpu_between(idle0, monitor.mark() if monitor else None)
        timeout = args.seconds * 1.5 + args.ramp + 60
        loop_run = _event_loop_runner(args.no_uvloop)
        results, window = loop_run(
            run_load(
                ws_url,
                sequences,
                args.ramp,
                not args.no_partials,
                timeout,
                monitor,
                args.chunk,
                abuse,
            )
        )
        time.sleep(0.3)
        after = scrape_metrics(base)
        if monitor:
            monitor.stop()
    finally:
        if server is not None:
            server.stop()
    # The decoder counts its hangover in whole bins.
    hangover_s = HANGOVER_S
    if bin_ms:
        hangover_s = max(1, round(HANGOVER_S / (bin_ms / 1000))) * bin_ms / 1000
    per_client = [analyse_client(r, hangover_s) for r in results]
    partial_lat = [x for c in per_client for x in c["partial_latency"]]
    final_lat = [x for c in per_client for x in c["final_latency"]]
    totals = {
        key: sum(c["match"][key] for c in per_client)
        for key in ("truth", "finals", "correct", "substituted", "missed", "inserted")
    }
    sent_audio = sum(min(len(r.send_times) * r.chunk, len(r.sequence.audio)) for r in results)
    sent_audio /= RATE
    audio_delta = (
        after.get("audio_seconds_v1", 0) - before.get("audio_seconds_v1", 0) if after else None
    )
    normal_end = max((r.done_at for r in results if r.done_at is not None), default=None)
    abusive = [analyse_abusive(a, normal_end) for a in abuse.clients]
    # Audio the server must have counted: the normal streams', and all of an abusive
    # client's that got its eof; of one closed early, any part.
    abusive_done = sum(a["audio_s_sent"] for a in abusive if a["got_eof"])
    abusive_sent = sum(a["audio_s_sent"] for a in abusive)
    errors = sorted({r.error for r in results if r.error})
    verification = None
    if args.verify and model and (args.model or not args.url):
        verification = verify_offline(model, results, args.verify)
    server_cpu = window["server"]
    cores = os.cpu_count() or 1
    late = [x for r in results for x in r.send_late]
    report = {
        "streams": n,
        "seconds_per_stream": args.seconds,
        "chunk_ms": 1000 * args.chunk / RATE,
        "workers": None if args.url else args.workers,
        "audio_s_sent": sent_audio,
        "words_per_stream": totals["truth"] / max(1, n),
        "latency_partial_s": percentiles(partial_lat),
        "latency_final_from_word_end_s": percentiles(final_lat),
        "hangover_s": hangover_s,
        "bin_ms": bin_ms,
        "latency_final_less_hangover_s": percentiles([x - hangover_s for x in final_lat]),
        "finals_flushed_at_eof": sum(c["flushed_finals"] for c in per_client),
        "words": {
            **totals,
            "accuracy": totals["correct"] / max(1, totals["truth"]),
            "coverage": (totals["correct"] + totals["substituted"]) / max(1, totals["truth"]),
        },
        "dropped": {
            "clients_ok": sum(c["ok"] for c in per_client),
            "clients_all_audio_sent": sum(c["complete"] for c in per_client),
            "clients_without_eof": sum(not r.got_eof for r in results),
            "errors": errors[:5],
            "server_audio_seconds_delta": audio_delta,
            "audio_seconds_sent": sent_audio,
            "server_counted_all_audio": (
                sent_audio + abusive_done - 1e-3 <= audio_delta <= sent_audio + abusive_sent + 1e-3
                if audio_delta is not None
                else None
            ),
            "offline_verification": verification,
        },
        "server": {
            "pid": pid,
            "idle_cores": idle["cores"],
            "cpu_s": server_cpu["cpu_s"],
            "cores": server_cpu["cores"],
            "machine_share": server_cpu["cores"] / cores if server_cpu["cores"] else None,
            "core_percent_per_stream": (
                100 * server_cpu["cores"] / n if server_cpu["cores"] is not None else None
            ),
            "cpu_s_per_audio_s": (
                server_cpu["cpu_s"] / sent_audio if server_cpu["cpu_s"] and sent_audio else None
            ),
            "peak_rss_mb": monitor.peak_rss / 2**20 if monitor else None,
            "own_partial_latency_mean_s": (
                (after["partial_latency_sum"] - before.get("partial_latency_sum", 0))
                / max(1.0, after["partial_latency_count"] - before.get("partial_latency_count", 0))
                if after
                else None
            ),
            "errors": {k: v for k, v in after.items() if k.startswith("errors_")},
        },
        "client": {
            "cpu_s": window["client_cpu_s"],
            "cores": window["client_cores"],
            "send_late_s": percentiles(late),
            "loop_lag_s": window["loop_lag"],
            "wall_s": window["wall_s"],
        },
        "machine": {
            "cpu_count": cores,
            "load_avg_1m": os.getloadavg()[0],
            "busy_cores": window["machine_busy_cores"],
            # Everything else that ran meanwhile (another job on a shared machine).
            "other_cores": (
                window["machine_busy_cores"] - server_cpu["cores"] - window["client_cores"]
                if server_cpu["cores"] is not None
                else None
            ),
        },
    }
    report["abusive"] = {
        "fast_clients": args.fast_clients,
        "fast_speed": args.fast_speed,
        "tiny_clients": args.tiny_clients,
        "tiny_bytes": args.tiny_bytes,
        "tiny_speed": args.tiny_speed,
        "clients": abusive,
        "audio_s_sent": abusive_sent,
        # What the server took from them (its counter, less the normal streams' audio).
        "server_audio_s": audio_delta - sent_audio if audio_delta is not None else None,
        "closed_codes": sorted({a["close_code"] for a in abusive if not a["got_eof"]}, key=str),
        "latency_partial_s": {
            kind: percentiles(
                [x for a in abuse.clients if a.kind == kind for x in _abusive_latency(a)]
            )
            for kind in ("fast", "tiny")
        },
    }
    if server is not None and not all(c["ok"] for c in per_client):
        report["server"]["log_tail"] = server.log_tail()
    return report


def _event_loop_runner(no_uvloop: bool) -> Callable[[Coroutine], object]:
    if not no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.run
    return asyncio.run


def verdict(report: dict) -> dict:
    lat = report["latency_partial_s"]["p95"]
    dropped = report["dropped"]
    no_drop = (
        dropped["clients_ok"] == report["streams"]
        and dropped["clients_all_audio_sent"] == report["streams"]
        and dropped["server_counted_all_audio"] is not False
        and (
            dropped["offline_verification"] is None
            or dropped["offline_verification"]["identical"]
            == dropped["offline_verification"]["checked"]
        )
    )
    return {
        "streams_at_target": report["streams"] >= TARGET_STREAMS,
        "p95_within_target": lat is not None and lat <= TARGET_P95_S,
        "no_audio_dropped": no_drop,
        "client_kept_pace": (report["client"]["send_late_s"]["p95"] or 0) < 0.02,
    }


# =========================================================================== report


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _mark(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]NO[/]"


def _abusive_latency_cell(kind: str) -> Callable[[dict], str]:
    def cell(r: dict) -> str:
        lat = r["abusive"]["latency_partial_s"][kind]
        return "{}/{} ms (n={})".format(_ms(lat["p50"]), _ms(lat["p95"]), lat["n"])

    return cell


def _abusive_sent_cell(kind: str) -> Callable[[dict], str]:
    def cell(r: dict) -> str:
        clients = [a for a in r["abusive"]["clients"] if a["kind"] == kind]
        if not clients:
            return "-"
        return "{:.0f} s, {}x, {}".format(
            sum(a["audio_s_sent"] for a in clients),
            _num(min(a["times_real_time"] or 0 for a in clients), ".1f"),
            _num(min(a["messages_per_s"] or 0 for a in clients), ".0f"),
        )

    return cell


def _abusive_end_cell(kind: str) -> Callable[[dict], str]:
    def cell(r: dict) -> str:
        clients = [a for a in r["abusive"]["clients"] if a["kind"] == kind]
        if not clients:
            return "-"
        codes = sorted({str(a["close_code"]) for a in clients if not a["got_eof"]})
        closed = len(clients) - sum(a["got_eof"] for a in clients)
        return f"{len(clients) - closed} / {closed}" + (f" ({', '.join(codes)})" if codes else "")

    return cell


def print_report(report: dict) -> None:
    from rich.table import Table

    runs, meta = report["runs"], report["meta"]
    out = console()
    out.print(
        f"[bold]Clips[/]: {meta['clips']} word clips ({meta['clip_words']} words) from "
        f"{meta['clip_source']}; model: {meta['model']}"
    )
    chunk_ms = ", ".join(sorted({f"{r['chunk_ms']:g}" for r in runs}))
    table = Table(title=f"spikeear /v1/stream under real-time load ({chunk_ms} ms s16le chunks)")
    table.add_column("")
    for r in runs:
        abusive = r["abusive"]
        extra = [
            f"{k} {kind}"
            for k, kind in ((abusive["fast_clients"], "fast"), (abusive["tiny_clients"], "tiny"))
            if k
        ]
        title = f"{r['streams']} x {r['seconds_per_stream']:g} s"
        table.add_column(" + ".join([title, *extra]), justify="right")

    def row(name: str, fn) -> None:
        table.add_row(name, *(fn(r) for r in runs))

    def lat(key: str):
        return lambda r: "{}/{}/{} ms (n={})".format(
            _ms(r[key]["p50"]), _ms(r[key]["p95"]), _ms(r[key]["max"]), r[key]["n"]
        )

    def verified(r: dict) -> str:
        v = r["dropped"]["offline_verification"]
        return f"{v['identical']}/{v['checked']}" if v else "-"

    counted = {True: "yes", False: "NO", None: "-"}
    row("server workers", lambda r: "-" if r["workers"] is None else str(r["workers"]))
    row("partial latency p50/p95/max", lat("latency_partial_s"))
    row("final latency from word end", lat("latency_final_from_word_end_s"))
    row("  ... less the decoder's hangover", lat("latency_final_less_hangover_s"))
    row(
        "  (hangover, network bin)",
        lambda r: "{} ms, {} ms".format(
            _ms(r["hangover_s"]), "-" if r["bin_ms"] is None else f"{r['bin_ms']:g}"
        ),
    )
    row("finals only at eof", lambda r: str(r["finals_flushed_at_eof"]))
    row("ground-truth words", lambda r: f"{r['words']['truth']}")
    row("word accuracy", lambda r: f"{r['words']['accuracy']:.3f}")
    row("coverage (word got a final)", lambda r: f"{r['words']['coverage']:.3f}")
    row("inserted finals", lambda r: str(r["words"]["inserted"]))
    row("clients eof + normal close", lambda r: f"{r['dropped']['clients_ok']}/{r['streams']}")
    row("server counted all audio", lambda r: counted[r["dropped"]["server_counted_all_audio"]])
    row("streamed == offline finals", verified)
    row("server CPU (cores)", lambda r: _num(r["server"]["cores"]))
    row(
        "server CPU % of machine",
        lambda r: (
            _num(100 * r["server"]["machine_share"], ".0f")
            if r["server"]["machine_share"] is not None
            else "-"
        ),
    )
    row(
        "server CPU % of one core / stream",
        lambda r: _num(r["server"]["core_percent_per_stream"], ".1f"),
    )
    row("server CPU s / audio s", lambda r: _num(r["server"]["cpu_s_per_audio_s"], ".4f"))
    row("server peak RSS MB", lambda r: _num(r["server"]["peak_rss_mb"], ".0f"))
    row("client CPU (cores)", lambda r: _num(r["client"]["cores"]))
    row(
        "client send lateness p95/max",
        lambda r: "{}/{} ms".format(
            _ms(r["client"]["send_late_s"]["p95"]), _ms(r["client"]["send_late_s"]["max"])
        ),
    )
    if any(r["abusive"]["clients"] for r in runs):
        for kind in ("fast", "tiny"):
            row(f"{kind} clients: partial latency p50/p95", _abusive_latency_cell(kind))
            row("  ... audio sent, x real time, msgs/s", _abusive_sent_cell(kind))
            row("  ... eof / closed (code)", _abusive_end_cell(kind))
        row("server audio s from abusive", lambda r: _num(r["abusive"]["server_audio_s"], ".1f"))
    row(
        "other processes' CPU (cores)",
        lambda r: _num(r["machine"]["other_cores"]),
    )
    row(
        "load avg (1 min) / cores",
        lambda r: "{:.1f} / {}".format(r["machine"]["load_avg_1m"], r["machine"]["cpu_count"]),
    )
    out.print(table)
    for r in runs:
        v = r["verdict"]
        out.print(
            f"{r['streams']} streams: {TARGET_STREAMS} streams {_mark(v['streams_at_target'])}, "
            f"partial p95 <= {TARGET_P95_S * 1000:.0f} ms {_mark(v['p95_within_target'])}, "
            f"no audio dropped {_mark(v['no_audio_dropped'])}, "
            f"client kept pace {_mark(v['client_kept_pace'])}"
        )
        if r["dropped"]["errors"]:
            out.print(f"  [red]client errors[/]: {r['dropped']['errors']}")
        for a in r["abusive"]["clients"]:
            if not a["got_eof"]:
                out.print(
                    f"  {a['kind']} client closed by the server: {a['close_code']} "
                    f"{a['close_reason'] or a['error'] or ''}"
                )
        if r["server"].get("log_tail"):
            out.print(f"  server log tail:\n{r['server']['log_tail']}")
        diffs = (r["dropped"]["offline_verification"] or {}).get("differences")
        if diffs:
            out.print(f"  [red]streamed != offline[/]: {diffs[0]}")
    out.print(
        "Partial latency = receive - send of the chunk holding the partial's time; final "
        "latency = receive - send of the chunk holding the word end (includes the decoder's "
        "hangover). Server CPU is over the streaming window, normalise by the machine's cores "
        "for a share of the machine."
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=100, help="concurrent clients")
    p.add_argument("--seconds", type=float, default=20.0, help="audio per stream")
    p.add_argument(
        "--chunk-ms",
        type=float,
        default=1000 * CHUNK_S,
        help="audio per WebSocket message (default 20; real clients often send 100-250)",
    )
    p.add_argument("--sweep", help="comma-separated stream counts, e.g. 1,10,50,100")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each stream count this many times (a fresh server each): on a shared "
        "machine one run's p95 can be far from the next",
    )
    p.add_argument("--url", help="ws://127.0.0.1:PORT/v1/stream of a running server")
    p.add_argument("--server-pid", type=int, help="with --url: the server's pid for CPU/RSS")
    p.add_argument(
        "--server-threads",
        type=int,
        help="OMP_NUM_THREADS/MKL_NUM_THREADS for the started server (default: inherited)",
    )
    p.add_argument(
        "--workers",
        default="auto",
        help="spikeear serve --workers for the started server (its /metrics sums them; "
        "default: the server's own, one per core)",
    )
    add_model_flags(p)
    p.add_argument(
        "--words",
        metavar="WORDS.json",
        help="custom words for the started server (spikeear enroll)",
    )
    p.add_argument("--data", help="Speech Commands layout folder (default: ../shared/data/...)")
    p.add_argument("--clips-per-word", type=int, default=12)
    p.add_argument("--ramp", type=float, default=1.0, help="spread client starts over this")
    p.add_argument("--verify", type=int, default=3, help="streams checked against offline")
    p.add_argument("--no-partials", action="store_true", help="ask the server for no partials")
    p.add_argument("--no-uvloop", action="store_true", help="use the stdlib asyncio loop")
    p.add_argument(
        "--fast-clients",
        type=int,
        default=0,
        help="abusive clients besides the streams: each streams its audio, looped, in 100 ms "
        "messages at --fast-speed times real time for the whole run",
    )
    p.add_argument(
        "--fast-speed",
        type=float,
        default=FAST_SPEED,
        help="times real time for --fast-clients (0: as fast as the socket takes it)",
    )
    p.add_argument(
        "--tiny-clients",
        type=int,
        default=0,
        help="abusive clients besides the streams: each streams its audio, looped, in "
        "--tiny-bytes messages (thousands a second) for the whole run",
    )
    p.add_argument(
        "--tiny-bytes", type=int, default=TINY_BYTES, help="bytes per --tiny-clients message"
    )
    p.add_argument(
        "--tiny-speed", type=float, default=1.0, help="times real time for --tiny-clients"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = p.parse_args(argv)
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        p.error("--url must point at a loopback address")
    if args.seconds <= 0 or args.seconds > 600:
        p.error("--seconds must be in (0, 600]")
    if not 1 <= args.chunk_ms <= 1000:
        p.error("--chunk-ms must be between 1 and 1000")
    args.chunk = round(RATE * args.chunk_ms / 1000)
    counts = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.streams]
    if any(not 1 <= c <= 1000 for c in counts):
        p.error("stream counts must be between 1 and 1000")
    if not (0 <= args.fast_clients <= 100 and 0 <= args.tiny_clients <= 100):
        p.error("--fast-clients and --tiny-clients must be between 0 and 100")
    if not 0 <= args.fast_speed <= 1000 or not 0 < args.tiny_speed <= 100:
        p.error("--fast-speed must be in [0, 1000], --tiny-speed in (0, 100]")
    if not 2 <= args.tiny_bytes <= 124 or args.tiny_bytes % 2:
        p.error("--tiny-bytes must be an even number from 2 to 124 (whole s16le samples)")
    if not 1 <= args.repeat <= 20:
        p.error("--repeat must be between 1 and 20")
    args.counts = [c for c in counts for _ in range(args.repeat)]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # One file per process: the client must not run out of descriptors at 1000 streams.
    with contextlib.suppress(Exception):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    library = ClipLibrary(data_folder(args.data), per_word=args.clips_per_word, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="spikeear-load-") as tmp:
        workdir = Path(tmp)
        model = resolve_model(args, workdir)
        runs = []
        for n in args.counts:
            if not args.json:
                print(f"running {n} streams x {args.seconds:g} s ...", file=sys.stderr)
            runs.append(one_run(args, n, library, model, workdir))
    meta = {
        "clips": len(library.clips),
        "clip_words": len(library.words),
        "clip_source": library.source,
        "model": "random untrained network" if args.random_model else (model or args.url),
    }
    for r in runs:
        r["verdict"] = verdict(r)
    return emit({"meta": meta, "runs": runs}, args.json, print_report)


if __name__ == "__main__":
    sys.exit(main())
