"""Soak: real-time streams for many minutes against ``spikeear serve``; does memory stay flat?

Starts ``spikeear serve`` on a free loopback port and runs, from one asyncio loop,
for ``--minutes``:

* ``--streams`` real-time clients (the measured ones): each holds one ``/v1/stream``
  connection for the whole run and sends s16le in 20 ms chunks at real-time pace,
  cycling through random in-vocabulary words separated by silence; partial latency
  is measured as in :mod:`benchmarks.load` (receive time - send time of the chunk
  holding the partial's ``time``);
* ``--vanish`` clients that stream in real time and drop the TCP connection, with no
  close frame, at a random point inside a word, then come back;
* ``--fast`` clients that send whole recordings at 50x real time (``--fast-speed``),
  then ``eof``, over and over;
* ``--idle`` clients that send a config and then nothing: the server's idle timeout
  (``spikeear serve --idle-timeout-s``, default 60 s) closes them with 1000, which is
  expected and counted;
* ``--uploaders`` clients posting an ``--upload-s`` recording to ``POST /v1/transcribe``
  all at the same moment, every ``--upload-every-s``: beyond the server's
  ``--max-batch-jobs`` (default 2) the answer is 503 with Retry-After, which is expected
  and counted (that uploader then waits for the next round).

Every ``--sample-s`` (default: each minute, at most 1/12 of the run) the RSS of each
worker process is sampled.  After ``--warmup-min`` the RSS must stay within 10% of its
value at the end of the warm-up (every worker, every sample); the slope of a straight
line through those samples is reported per worker.  The summary also counts every
client kind's outcomes, marking the unexpected ones (an unexpected close code, an
error, a 5xx other than the documented 503), tracebacks in the server log and worker
restarts.

Output: a table on stdout (``--json``: the report as JSON instead), and in ``--out``
(default ``benchmarks/soak/``) ``soak.json`` and ``soak.png`` (RSS and partial latency
over time).  Ctrl-C (or SIGTERM) once ends the run early and still reports; twice
stops at once.  The server is stopped either way.

Run from the repository root::

    python -m benchmarks.soak                           # 50 streams x 60 min
    python -m benchmarks.soak --streams 20 --minutes 3  # the short documented run
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import io
import json
import os
import random
import signal
import sys
import tempfile
import time
import wave
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import (
    RATE,
    ClipLibrary,
    Sequence,
    ServerProcess,
    add_model_flags,
    build_sequence,
    console,
    data_folder,
    resolve_model,
)
from benchmarks.load import (
    TARGET_P95_S,
    _event_loop_runner,
    chunk_of,
    percentiles,
    scrape_metrics,
)

OUT = Path(__file__).parent / "soak"
FLAT_TOLERANCE = 0.10  # RSS after warm-up within 10% of its value at the end of warm-up
SEQUENCE_S = 20.0  # each pooled recording
POOL = 16  # recordings, shared by all clients
EOF_WAIT_S = 60.0  # how long a client waits for its eof answer and close
OPEN_TIMEOUT_S = 30.0
SEND_LOG_S = 120.0  # a partial older than this (stream time) is counted, not timed
FAST_CHUNK_S = 0.2  # audio per message of a fast client
IDLE_MARGIN_S = 15.0  # an idle client waits this much longer than the server's timeout

# Outcomes that are part of the plan; anything else is reported as unexpected.
EXPECTED = {
    "realtime": {"completed"},
    "vanish": {"vanished mid-word"},
    "fast": {"completed"},
    "idle": {"closed by idle timeout (1000)", "still idle at the end"},
    "batch": {"200", "503 with Retry-After"},
}
KINDS = tuple(EXPECTED)


# =========================================================================== state


class SendLog:
    """When each chunk of one long stream was sent: the last ``keep`` of them."""

    def __init__(self, keep: int) -> None:
        self.times: deque[float] = deque(maxlen=keep)
        self.first = 0  # chunk index of times[0]

    def add(self, t: float) -> None:
        if len(self.times) == self.times.maxlen:
            self.first += 1
        self.times.append(t)

    def get(self, k: int) -> float | None:
        i = k - self.first
        return self.times[i] if 0 <= i < len(self.times) else None


@dataclass
class Run:
    """What all clients share: the clock, the stop signal and the tallies."""

    ws_url: str
    http_base: str
    deadline: float
    chunk: int  # samples per real-time message
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    outcomes: dict[str, Counter] = field(default_factory=lambda: {k: Counter() for k in KINDS})
    interval_latency: list[float] = field(default_factory=list)  # since the last sample
    interval_late: list[float] = field(default_factory=list)
    latency: array.array = field(default_factory=lambda: array.array("f"))  # (t, latency)
    untimed_partials: int = 0
    finals: int = 0
    fast_speed: list[float] = field(default_factory=list)  # achieved, per fast session
    upload_s: list[float] = field(default_factory=list)  # wall time of each 200
    audio_s: Counter = field(default_factory=Counter)  # audio sent per kind

    @property
    def chunk_s(self) -> float:
        return self.chunk / RATE

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    async def pause(self, seconds: float) -> None:
        """Sleep, but not past the deadline or a stop."""
        seconds = min(seconds, max(0.0, self.deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)


def s16le(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()


def chunks_of(pcm: bytes, samples: int) -> list[bytes]:
    step = 2 * samples
    return [pcm[i : i + step] for i in range(0, len(pcm) - step + 1, step)]


def cycle(pool: list[list[bytes]], start: int) -> Iterator[bytes]:
    """The pool's chunks one recording after another, from ``start``, endlessly (the
    caller bounds it by its deadline)."""
    i = start
    while True:
        yield from pool[i % len(pool)]
        i += 1


def _connect(url: str):
    from websockets.asyncio.client import connect

    return connect(
        url,
        open_timeout=OPEN_TIMEOUT_S,
        close_timeout=10,
        ping_interval=None,
        max_size=2**22,
        proxy=None,  # loopback only, whatever the environment says
    )


def _config(partials: bool = True) -> str:
    config = {"sample_rate": RATE, "format": "s16le", "partials": partials, "unknown": True}
    return json.dumps({"config": config})


def _failure(error: BaseException) -> str:
    from websockets.exceptions import ConnectionClosed

    if isinstance(error, ConnectionClosed):
        code = error.rcvd.code if error.rcvd is not None else 1006
        return f"closed {code}"
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"error {type(error).__name__}"


# =========================================================================== clients


async def realtime_client(run: Run, pool: list[list[bytes]], index: int) -> None:
    """One connection for the whole run (another if it fails), at real-time pace."""
    sessions = 0
    while run.running() and sessions < 100:
        sessions += 1
        outcome = await _realtime_session(run, pool, index + sessions)
        run.outcomes["realtime"][outcome] += 1
        if outcome != "completed":
            await run.pause(1.0)


async def _realtime_session(run: Run, pool: list[list[bytes]], start: int) -> str:
    chunk_s = run.chunk_s
    log = SendLog(round(SEND_LOG_S / chunk_s))
    got_eof = False

    async def receive(ws) -> None:
        nonlocal got_eof
        async for message in ws:
            now = time.monotonic()
            if isinstance(message, bytes):
                continue
            event = json.loads(message)
            kind = event.get("type")
            if kind == "partial":
                sent = log.get(chunk_of(event["time"], chunk_s))
                if sent is None:
                    run.untimed_partials += 1
                else:
                    run.interval_latency.append(now - sent)
            elif kind == "final":
                run.finals += 1
            elif kind == "eof":
                got_eof = True

    try:
        async with _connect(run.ws_url) as ws:
            await ws.send(_config())
            receiver = asyncio.create_task(receive(ws))
            t0 = time.monotonic()
            for k, chunk in enumerate(cycle(pool, start)):
                if not run.running() or receiver.done():
                    break
                target = t0 + k * chunk_s
                delay = target - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = time.monotonic()
                log.add(now)
                run.interval_late.append(now - target)
                await ws.send(chunk)
                run.audio_s["realtime"] += chunk_s
            if not receiver.done():
                await ws.send(json.dumps({"eof": 1}))
            async with asyncio.timeout(EOF_WAIT_S):
                await receiver  # ends with the server's close
            if got_eof and ws.close_code == 1000:
                return "completed"
            return f"closed {ws.close_code}" + ("" if got_eof else " without eof")
    except Exception as error:  # a failed client is a result, not a crash
        return _failure(error)


async def vanish_client(run: Run, pool: list[Sequence], rng: random.Random) -> None:
    """Real-time audio, then gone in the middle of a word: no eof, no close frame."""
    sessions = 0
    while run.running() and sessions < 100_000:
        sessions += 1
        sequence = rng.choice(pool)
        _, start, end = rng.choice(sequence.words)
        cut = rng.uniform(start, end)
        outcome = await _vanish_session(run, sequence, cut)
        run.outcomes["vanish"][outcome] += 1
        await run.pause(rng.uniform(0.5, 2.0))


async def _vanish_session(run: Run, sequence: Sequence, cut_s: float) -> str:
    chunks = chunks_of(sequence.s16le(), run.chunk)
    last = min(len(chunks), int(cut_s / run.chunk_s) + 1)
    aborted = False
    try:
        async with _connect(run.ws_url) as ws:
            await ws.send(_config())
            drain = asyncio.create_task(_drain(ws))
            t0 = time.monotonic()
            for k in range(last):
                if drain.done():  # the server closed it first
                    return f"server closed {ws.close_code}"
                await asyncio.sleep(max(0.0, t0 + k * run.chunk_s - time.monotonic()))
                await ws.send(chunks[k])
                run.audio_s["vanish"] += run.chunk_s
            aborted = True
            ws.transport.abort()  # the client's machine is gone: no eof, no close frame
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await drain
        return "vanished mid-word"
    except Exception as error:
        # Leaving the context after the abort may raise for the lost connection.
        return "vanished mid-word" if aborted else _failure(error)


async def _drain(ws) -> None:
    async for _ in ws:
        pass


async def fast_client(run: Run, pool: list[list[bytes]], speed: float, index: int) -> None:
    """Whole recordings at ``speed`` x real time, each in its own stream."""
    sessions = 0
    while run.running() and sessions < 100_000:
        sessions += 1
        pcm = pool[(index + sessions) % len(pool)]
        outcome = await _fast_session(run, pcm, speed)
        run.outcomes["fast"][outcome] += 1
        await run.pause(0.5)


async def _fast_session(run: Run, chunks: list[bytes], speed: float) -> str:
    step_s = FAST_CHUNK_S / speed
    got_eof = False
    try:
        async with _connect(run.ws_url) as ws:
            await ws.send(_config())
            t0 = time.monotonic()
            for k, chunk in enumerate(chunks):
                await asyncio.sleep(max(0.0, t0 + k * step_s - time.monotonic()))
                await ws.send(chunk)  # the server's backpressure may hold this
                run.audio_s["fast"] += FAST_CHUNK_S
            await ws.send(json.dumps({"eof": 1}))
            async with asyncio.timeout(EOF_WAIT_S):
                async for message in ws:
                    if isinstance(message, str) and json.loads(message).get("type") == "eof":
                        got_eof = True
            run.fast_speed.append(len(chunks) * FAST_CHUNK_S / (time.monotonic() - t0))
            if got_eof and ws.close_code == 1000:
                return "completed"
            return f"closed {ws.close_code}" + ("" if got_eof else " without eof")
    except Exception as error:
        return _failure(error)


async def idle_client(run: Run, hold_s: float) -> None:
    """A config, then nothing, until the server's idle timeout closes the stream."""
    sessions = 0
    while run.running() and sessions < 10_000:
        sessions += 1
        outcome = await _idle_session(run, hold_s)
        run.outcomes["idle"][outcome] += 1
        await run.pause(1.0)


async def _idle_session(run: Run, hold_s: float) -> str:
    from websockets.exceptions import ConnectionClosed

    try:
        async with _connect(run.ws_url) as ws:
            await ws.send(_config())
            until = min(time.monotonic() + hold_s, run.deadline)
            while time.monotonic() < until and not run.stop.is_set():
                try:
                    async with asyncio.timeout(min(1.0, max(0.01, until - time.monotonic()))):
                        await ws.recv()  # nothing is expected before the close
                except TimeoutError:
                    continue
                except ConnectionClosed as closed:
                    rcvd = closed.rcvd
                    if rcvd is not None and rcvd.code == 1000 and rcvd.reason.startswith("idle"):
                        return "closed by idle timeout (1000)"
                    return _failure(closed)
            return "still idle at the end" if not run.running() else "idle longer than timeout"
    except Exception as error:
        return _failure(error)


async def upload_client(run: Run, wav: bytes, index: int, every_s: float) -> None:
    """``POST /v1/transcribe`` at every multiple of ``every_s`` (all uploaders at once);
    a 503 must come with Retry-After."""
    import httpx

    sessions = 0
    t0 = time.monotonic()
    async with httpx.AsyncClient(base_url=run.http_base, timeout=300, trust_env=False) as http:
        while run.running() and sessions < 100_000:
            sessions += 1
            await run.pause(every_s - (time.monotonic() - t0) % every_s)
            if not run.running():
                break
            started = time.monotonic()
            try:
                files = {"file": (f"soak-{index}.wav", wav, "audio/wav")}
                response = await http.post("/v1/transcribe", files=files)
            except httpx.HTTPError as error:
                run.outcomes["batch"][f"error {type(error).__name__}"] += 1
                continue
            status = response.status_code
            if status == 200:
                run.outcomes["batch"]["200"] += 1
                run.upload_s.append(time.monotonic() - started)
            elif status == 503 and response.headers.get("Retry-After") is not None:
                run.outcomes["batch"]["503 with Retry-After"] += 1
            else:
                run.outcomes["batch"][f"{status}"] += 1


# =========================================================================== sampling


def worker_processes(server) -> list:
    """The server's worker processes (``--workers N``: its spawned children; one
    worker: the server itself)."""
    import psutil

    workers = []
    with contextlib.suppress(psutil.Error):
        for child in server.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "spawn_main" in " ".join(child.cmdline()):
                    workers.append(child)
    return workers or [server]


def cpu_seconds(server) -> float:
    import psutil

    total = 0.0
    with contextlib.suppress(psutil.Error):
        for process in [server, *server.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                cpu = process.cpu_times()
                total += cpu.user + cpu.system
    return total


class Sampler:
    """Worker RSS, server CPU and the clients' partial latency, once per interval."""

    def __init__(self, pid: int, run: Run, t0: float, warmup_s: float) -> None:
        import psutil

        self.server = psutil.Process(pid)
        self.run = run
        self.t0 = t0
        self.warmup_s = warmup_s
        self.samples: list[dict] = []
        self._cpu = (time.monotonic(), cpu_seconds(self.server))

    def sample(self, phase: str) -> dict:
        import psutil

        rss = {}
        for worker in worker_processes(self.server):
            with contextlib.suppress(psutil.Error):
                rss[str(worker.pid)] = worker.memory_info().rss
        now, cpu = time.monotonic(), cpu_seconds(self.server)
        cores = (cpu - self._cpu[1]) / (now - self._cpu[0]) if now > self._cpu[0] else None
        self._cpu = (now, cpu)
        t = now - self.t0
        lat, late = self.run.interval_latency, self.run.interval_late
        self.run.interval_latency, self.run.interval_late = [], []
        if phase == "load" and t < self.warmup_s:
            phase = "warm-up"
        for x in lat:
            self.run.latency.extend((t, x))
        sample = {
            "t_s": round(t, 1),
            "phase": phase,
            "rss_bytes": rss,
            "rss_total_bytes": sum(rss.values()),
            "server_cores": cores,
            "partial_latency_s": percentiles(lat),
            "send_late_p95_s": percentiles(late)["p95"],
            "sessions_ended": {k: sum(self.run.outcomes[k].values()) for k in KINDS},
        }
        self.samples.append(sample)
        return sample


def progress(sample: dict) -> None:
    rss = " + ".join(f"{b / 2**20:.0f}" for b in sample["rss_bytes"].values())
    p95 = sample["partial_latency_s"]["p95"]
    print(
        f"  {sample['t_s'] / 60:6.2f} min {sample['phase']:8} worker RSS {rss} MB, "
        f"partial p95 {'-' if p95 is None else f'{p95 * 1000:.0f} ms'}",
        file=sys.stderr,
    )


async def sample_loop(sampler: Sampler, sample_s: float, quiet: bool) -> None:
    run = sampler.run
    for k in range(1, 100_000):
        target = sampler.t0 + k * sample_s
        if target > run.deadline + 1e-6:
            break
        await run.pause(target - time.monotonic())  # returns at the deadline at the latest
        if run.stop.is_set():
            break
        sample = sampler.sample("load")
        if not quiet:
            progress(sample)


# =========================================================================== run


async def soak(args: argparse.Namespace, run: Run, pid: int, library: ClipLibrary) -> dict:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            print("stopping early (again to abort)", file=sys.stderr)
            run.stop.set()
        elif main_task is not None:
            main_task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    rng = random.Random(args.seed)
    sequences = [build_sequence(library, rng, seconds=SEQUENCE_S) for _ in range(POOL)]
    realtime_pool = [chunks_of(s.s16le(), run.chunk) for s in sequences]
    fast_pool = [chunks_of(s.s16le(), round(FAST_CHUNK_S * RATE)) for s in sequences]
    upload = build_sequence(library, rng, seconds=args.upload_s)
    wav = io.BytesIO()
    with wave.open(wav, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(upload.s16le())
    idle_hold_s = args.idle_timeout_s + IDLE_MARGIN_S

    t0 = time.monotonic()
    run.deadline = t0 + 60 * args.minutes
    sampler = Sampler(pid, run, t0, 60 * args.warmup_min)
    metrics_before = scrape_metrics(run.http_base)
    first = sampler.sample("idle")
    if not args.json:
        progress(first)
    ramp = args.ramp_s

    async def later(delay: float, coroutine) -> None:
        await run.pause(delay)
        if run.running():
            await coroutine
        else:
            coroutine.close()

    clients = [
        later(ramp * i / max(1, args.streams), realtime_client(run, realtime_pool, i))
        for i in range(args.streams)
    ]
    clients += [
        later(ramp * rng.random(), vanish_client(run, sequences, random.Random(args.seed + i)))
        for i in range(args.vanish)
    ]
    clients += [
        later(ramp * rng.random(), fast_client(run, fast_pool, args.fast_speed, i))
        for i in range(args.fast)
    ]
    clients += [later(ramp * rng.random(), idle_client(run, idle_hold_s)) for _ in range(args.idle)]
    clients += [
        later(ramp, upload_client(run, wav.getvalue(), i, args.upload_every_s))
        for i in range(args.uploaders)
    ]
    sampling = asyncio.create_task(sample_loop(sampler, args.sample_s, args.json))
    await asyncio.gather(*clients)
    run.stop.set()
    await sampling
    ended = time.monotonic() - t0
    await asyncio.sleep(2.0)  # the server lets go of the last streams
    after = sampler.sample("after")
    if not args.json:
        progress(after)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    return {
        "samples": sampler.samples,
        "ran_s": ended,
        "stopped_early": signals > 0,
        "metrics_before": metrics_before,
        "metrics_after": scrape_metrics(run.http_base),
    }


def rss_verdict(samples: list[dict], warmup_s: float) -> dict:
    """Per worker: RSS at the end of warm-up, the slope after it, and whether every
    later sample is within FLAT_TOLERANCE of it."""
    after = [s for s in samples if s["phase"] == "load" and s["t_s"] >= warmup_s]
    workers = sorted({pid for s in samples for pid in s["rss_bytes"]}, key=int)
    per_worker = {}
    for pid in workers:
        points = [
            (s["t_s"] / 60, s["rss_bytes"][pid] / 2**20) for s in after if pid in s["rss_bytes"]
        ]
        if len(points) < 2:
            per_worker[pid] = {"samples": len(points), "flat": None, "slope_mb_per_min": None}
            continue
        t, mb = np.array(points).T
        slope = float(np.polyfit(t, mb, 1)[0])
        ref = mb[0]
        change = float(np.max(np.abs(mb - ref)) / ref)
        per_worker[pid] = {
            "samples": len(points),
            "rss_at_warmup_end_mb": float(ref),
            "rss_min_mb": float(mb.min()),
            "rss_max_mb": float(mb.max()),
            "largest_change": change,
            "slope_mb_per_min": slope,
            "slope_percent_per_hour": 100 * 60 * slope / ref,
            "flat": change <= FLAT_TOLERANCE,
        }
    total = [(s["t_s"] / 60, s["rss_total_bytes"] / 2**20) for s in after]
    total_slope = float(np.polyfit(*np.array(total).T, 1)[0]) if len(total) >= 2 else None
    # A worker that appears only after warm-up (or vanishes) was restarted.
    present = [set(s["rss_bytes"]) for s in samples if s["phase"] != "idle"]
    restarted = len(set().union(*present)) - len(present[0]) if present else 0
    flats = [w["flat"] for w in per_worker.values() if w["flat"] is not None]
    return {
        "warmup_s": warmup_s,
        "samples_after_warmup": len(after),
        "workers": per_worker,
        "total_slope_mb_per_min": total_slope,
        "worker_restarts": restarted,
        "flat": (all(flats) and restarted == 0) if flats else None,
    }


def spread(values: np.ndarray) -> dict:
    """:func:`benchmarks.load.percentiles` of an array (without a list of millions)."""
    if not values.size:
        return percentiles([])
    a = values.astype(np.float64)
    p50, p95 = np.percentile(a, [50, 95])
    return {
        "n": int(a.size),
        "p50": float(p50),
        "p95": float(p95),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


def latency_summary(run: Run, warmup_s: float) -> dict:
    pairs = np.frombuffer(run.latency, dtype=np.float32).reshape(-1, 2)
    return {
        "all": spread(pairs[:, 1]),
        "after_warmup": spread(pairs[pairs[:, 0] >= warmup_s, 1]),
        "untimed": run.untimed_partials,
    }


def server_log_problems(path: Path) -> dict:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace")
        lines = text.splitlines()
        return {
            "tracebacks": text.count("Traceback (most recent call last)"),
            "error_lines": sum(" ERROR" in line or line.startswith("ERROR") for line in lines),
            "tail": lines[-15:],
        }
    return {"tracebacks": None, "error_lines": None, "tail": []}


def one_soak(args: argparse.Namespace, library: ClipLibrary, model: str, workdir: Path) -> dict:
    log_path = workdir / "server.log"
    server = ServerProcess(model, log_path, threads=args.server_threads, workers=args.workers)
    try:
        run = Run(
            ws_url=f"ws://127.0.0.1:{server.port}/v1/stream",
            http_base=server.base,
            deadline=0.0,
            chunk=round(RATE * args.chunk_ms / 1000),
        )
        result = _event_loop_runner(args.no_uvloop)(soak(args, run, server.pid, library))
    finally:
        server.stop()
    warmup_s = 60 * args.warmup_min
    outcomes = {kind: dict(run.outcomes[kind]) for kind in KINDS}
    unexpected = {
        kind: {o: n for o, n in counts.items() if o not in EXPECTED[kind]}
        for kind, counts in outcomes.items()
    }
    before, after = result["metrics_before"], result["metrics_after"]
    errors = {
        k: after.get(k, 0) - before.get(k, 0) for k in sorted(after) if k.startswith("errors_")
    }
    return {
        "samples": result["samples"],
        "ran_s": result["ran_s"],
        "stopped_early": result["stopped_early"],
        "rss": rss_verdict(result["samples"], warmup_s),
        "partial_latency_s": latency_summary(run, warmup_s),
        "finals": run.finals,
        "outcomes": outcomes,
        "unexpected": {k: v for k, v in unexpected.items() if v},
        "audio_s_sent": dict(run.audio_s),
        "fast_speed_achieved": percentiles(run.fast_speed),
        "upload_wall_s": percentiles(run.upload_s),
        "server_errors_counted": errors,
        "server_log": server_log_problems(log_path),
    }


# =========================================================================== report


def _mb(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1000:.0f}"


def _yes(ok: bool | None) -> str:
    return {True: "[green]yes[/]", False: "[red]NO[/]", None: "-"}[ok]


def print_report(report: dict) -> None:
    from rich.table import Table

    out = console()
    meta, rss = report["meta"], report["rss"]
    early = ", stopped early" if report["stopped_early"] else ""
    out.print(
        f"[bold]Soak[/]: {meta['streams']} real-time streams x {meta['minutes']:g} min "
        f"(ran {report['ran_s'] / 60:.1f} min{early})"
        f", plus {meta['vanish']} vanishing, {meta['fast']} at {meta['fast_speed']:g}x, "
        f"{meta['idle']} idle, {meta['uploaders']} uploaders of {meta['upload_s']:g} s "
        f"every {meta['upload_every_s']:g} s; "
        f"server --workers {meta['workers']}, idle timeout {meta['server_idle_timeout_s']:g} s, "
        f"max batch jobs {meta['server_max_batch_jobs']}; model {meta['model']}; "
        f"{meta['cpu_count']} cores"
    )
    workers = sorted({pid for s in report["samples"] for pid in s["rss_bytes"]}, key=int)
    table = Table(title="Worker RSS (MB) over time")
    for name in ("min", "phase", *(f"worker {p}" for p in workers), "total"):
        table.add_column(name, justify="right")
    for name in ("partial p95 ms (n)", "send late p95 ms", "server cores"):
        table.add_column(name, justify="right")
    for s in report["samples"]:
        lat = s["partial_latency_s"]
        table.add_row(
            f"{s['t_s'] / 60:.2f}",
            s["phase"],
            *(_mb(s["rss_bytes"].get(p)) for p in workers),
            _mb(s["rss_total_bytes"]),
            f"{_ms(lat['p95'])} ({lat['n']})",
            _ms(s["send_late_p95_s"]),
            "-" if s["server_cores"] is None else f"{s['server_cores']:.2f}",
        )
    out.print(table)

    summary = Table(title="Summary")
    summary.add_column("")
    summary.add_column("", justify="right")
    for pid, w in rss["workers"].items():
        if w["slope_mb_per_min"] is None:
            summary.add_row(f"worker {pid}", f"{w['samples']} samples after warm-up: no slope")
            continue
        summary.add_row(
            f"worker {pid}: RSS at warm-up end, min-max after",
            f"{w['rss_at_warmup_end_mb']:.0f} MB, {w['rss_min_mb']:.0f}-{w['rss_max_mb']:.0f} MB",
        )
        summary.add_row(
            "  slope; largest change",
            f"{w['slope_mb_per_min']:+.2f} MB/min ({w['slope_percent_per_hour']:+.1f}%/h); "
            f"{100 * w['largest_change']:.1f}%",
        )
    total = rss["total_slope_mb_per_min"]
    summary.add_row("all workers: slope", "-" if total is None else f"{total:+.2f} MB/min")
    summary.add_row(
        f"RSS flat within {100 * FLAT_TOLERANCE:.0f}% after {rss['warmup_s'] / 60:g} min warm-up",
        f"{_yes(rss['flat'])} ({rss['samples_after_warmup']} samples, "
        f"{rss['worker_restarts']} worker restarts)",
    )
    lat = report["partial_latency_s"]
    for key, name in (("after_warmup", "after warm-up"), ("all", "whole run")):
        p = lat[key]
        summary.add_row(
            f"partial latency p50/p95/max, {name}",
            f"{_ms(p['p50'])}/{_ms(p['p95'])}/{_ms(p['max'])} ms (n={p['n']})",
        )
    p95 = lat["after_warmup"]["p95"]
    summary.add_row(
        f"partial p95 <= {TARGET_P95_S * 1000:.0f} ms after warm-up",
        _yes(None if p95 is None else p95 <= TARGET_P95_S),
    )
    summary.add_row("partials too late to time; finals", f"{lat['untimed']}; {report['finals']}")
    for kind in KINDS:
        counts = report["outcomes"][kind]
        text = ", ".join(
            f"{o}: {n}" if o in EXPECTED[kind] else f"[red]{o}: {n}[/]"
            for o, n in sorted(counts.items())
        )
        summary.add_row(f"{kind} clients ({meta[KIND_FLAG[kind]]})", text or "-")
    speed = report["fast_speed_achieved"]
    summary.add_row(
        "fast clients: speed achieved, median",
        "-" if speed["p50"] is None else f"{speed['p50']:.0f}x real time",
    )
    up = report["upload_wall_s"]
    summary.add_row(
        "uploads: wall time p50/max",
        "-" if up["p50"] is None else f"{up['p50']:.1f}/{up['max']:.1f} s",
    )
    errors = ", ".join(f"{k[7:]}: {v:g}" for k, v in report["server_errors_counted"].items() if v)
    summary.add_row("server error counters (/metrics)", errors or "none")
    log = report["server_log"]
    summary.add_row(
        "server log: tracebacks, ERROR lines", f"{log['tracebacks']}, {log['error_lines']}"
    )
    unexpected = "; ".join(
        f"{kind}: " + ", ".join(f"{o} x{n}" for o, n in counts.items())
        for kind, counts in report["unexpected"].items()
    )
    summary.add_row("unexpected outcomes", f"[red]{unexpected}[/]" if unexpected else "none")
    out.print(summary)
    if log["tracebacks"]:
        out.print("server log tail:\n" + "\n".join(log["tail"]))


KIND_FLAG = {
    "realtime": "streams",
    "vanish": "vanish",
    "fast": "fast",
    "idle": "idle",
    "batch": "uploaders",
}


def plot(report: dict, path: Path) -> None:
    """Each worker's RSS over time (warm-up and the 10% band marked), and the real-time
    streams' partial latency p95 per interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    rss = report["rss"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=(2, 1))
    workers = sorted({pid for s in samples for pid in s["rss_bytes"]}, key=int)
    for i, pid in enumerate(workers):
        points = [
            (s["t_s"] / 60, s["rss_bytes"][pid] / 2**20) for s in samples if pid in s["rss_bytes"]
        ]
        t, mb = zip(*points, strict=True)
        top.plot(t, mb, marker="o", ms=3, color=f"C{i}", label=f"worker {pid}")
        ref = rss["workers"].get(pid, {}).get("rss_at_warmup_end_mb")
        if ref:  # the band RSS must stay in after warm-up
            for edge in (1 - FLAT_TOLERANCE, 1 + FLAT_TOLERANCE):
                top.axhline(ref * edge, color=f"C{i}", lw=0.8, ls=":")
    for ax in (top, bottom):
        ax.axvline(rss["warmup_s"] / 60, color="gray", ls="--", lw=1)
        ax.grid(alpha=0.3)
    top.set_ylabel("RSS (MB)")
    top.legend(fontsize=8, loc="lower right")
    flat = {True: "flat", False: "NOT flat", None: "flat: -"}[rss["flat"]]
    meta = report["meta"]
    top.set_title(
        f"spikeear serve soak: {meta['streams']} real-time streams + mixed clients, "
        f"{report['ran_s'] / 60:.1f} min; RSS {flat} within {100 * FLAT_TOLERANCE:.0f}% "
        "after warm-up (dashed)",
        fontsize=9,
    )
    lat = [(s["t_s"] / 60, s["partial_latency_s"]["p95"]) for s in samples]
    lat = [(t, 1000 * p) for t, p in lat if p is not None]
    if lat:
        bottom.plot(*zip(*lat, strict=True), marker="o", ms=3, color="k")
    bottom.axhline(1000 * TARGET_P95_S, color="red", lw=1, ls=":")
    bottom.set_ylabel("partial p95 (ms)")
    bottom.set_xlabel("minutes")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# =========================================================================== main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from app.settings import Settings

    server = Settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=50, help="real-time clients (measured)")
    p.add_argument("--minutes", type=float, default=60.0, help="length of the run")
    p.add_argument(
        "--sample-s",
        type=float,
        help="RSS sampling interval (default: 60 s, at most 1/12 of the run)",
    )
    p.add_argument(
        "--warmup-min",
        type=float,
        help="minutes before RSS must stay flat (default: a third of the run, at most 5)",
    )
    p.add_argument("--vanish", type=int, default=5, help="clients that vanish mid-word")
    p.add_argument("--fast", type=int, default=2, help="clients sending at --fast-speed")
    p.add_argument("--fast-speed", type=float, default=50.0, help="x real time")
    p.add_argument("--idle", type=int, default=5, help="clients that send nothing")
    p.add_argument("--uploaders", type=int, default=4, help="clients posting uploads")
    p.add_argument("--upload-s", type=float, default=60.0, help="audio per upload")
    p.add_argument(
        "--upload-every-s", type=float, default=10.0, help="all uploaders post this often"
    )
    p.add_argument(
        "--idle-timeout-s",
        type=float,
        default=server.idle_timeout_s,
        help="the server's idle timeout (its default; idle clients wait this plus "
        f"{IDLE_MARGIN_S:g} s)",
    )
    p.add_argument("--chunk-ms", type=float, default=20.0, help="real-time message size")
    p.add_argument("--ramp-s", type=float, default=5.0, help="spread client starts over this")
    p.add_argument("--workers", default="auto", help="spikeear serve --workers")
    p.add_argument("--server-threads", type=int, help="OMP/MKL threads of the server")
    add_model_flags(p)
    p.add_argument("--data", help="Speech Commands layout folder (default: ../shared/data/...)")
    p.add_argument("--clips-per-word", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-uvloop", action="store_true", help="use the stdlib asyncio loop")
    p.add_argument("--out", default=str(OUT), help="folder for soak.json and soak.png ('': none)")
    p.add_argument("--json", action="store_true", help="print the report as JSON only")
    args = p.parse_args(argv)
    if not 1 <= args.streams <= 1000:
        p.error("--streams must be between 1 and 1000")
    if not 0 < args.minutes <= 24 * 60:
        p.error("--minutes must be in (0, 1440]")
    for name in ("vanish", "fast", "idle", "uploaders"):
        if not 0 <= getattr(args, name) <= 200:
            p.error(f"--{name} must be between 0 and 200")
    if not 1 <= args.fast_speed <= 1000 or not 1 <= args.upload_s <= 600:
        p.error("--fast-speed must be in [1, 1000] and --upload-s in [1, 600]")
    if not 0.1 <= args.upload_every_s <= 3600:
        p.error("--upload-every-s must be in [0.1, 3600]")
    if not 1 <= args.chunk_ms <= 1000 or not 0 <= args.ramp_s <= 600:
        p.error("--chunk-ms must be in [1, 1000] and --ramp-s in [0, 600]")
    if not 0 < args.idle_timeout_s <= 3600:
        p.error("--idle-timeout-s must be in (0, 3600]")
    duration_s = 60 * args.minutes
    args.sample_s = args.sample_s or min(60.0, duration_s / 12)
    if not 1 <= args.sample_s <= duration_s:
        p.error("--sample-s must be at least 1 and at most the run")
    if args.warmup_min is None:
        args.warmup_min = min(5.0, args.minutes / 3)
    if not 0 <= args.warmup_min < args.minutes:
        p.error("--warmup-min must be shorter than the run")
    args.server_max_batch_jobs = server.max_batch_jobs
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(Exception):  # one descriptor per client
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    library = ClipLibrary(data_folder(args.data), per_word=args.clips_per_word, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="spikeear-soak-") as tmp:
        model = resolve_model(args, Path(tmp))
        if model is None:
            raise SystemExit("no model: pass --model PATH or --random-model")
        if not args.json:
            print(
                f"soak: {args.streams} streams x {args.minutes:g} min, RSS every "
                f"{args.sample_s:g} s ...",
                file=sys.stderr,
            )
        try:
            result = one_soak(args, library, model, Path(tmp))
        except asyncio.CancelledError:
            print("aborted; the server is stopped", file=sys.stderr)
            return 130
    report = {
        "meta": {
            "command": "python -m benchmarks.soak "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "streams": args.streams,
            "minutes": args.minutes,
            "sample_s": args.sample_s,
            "warmup_min": args.warmup_min,
            "vanish": args.vanish,
            "fast": args.fast,
            "fast_speed": args.fast_speed,
            "idle": args.idle,
            "uploaders": args.uploaders,
            "upload_s": args.upload_s,
            "upload_every_s": args.upload_every_s,
            "chunk_ms": args.chunk_ms,
            "workers": args.workers,
            "server_idle_timeout_s": args.idle_timeout_s,
            "server_max_batch_jobs": args.server_max_batch_jobs,
            "model": "random untrained network" if args.random_model else model,
            "clips": len(library.clips),
            "clip_source": library.source,
            "cpu_count": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
        },
        **result,
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
        plot(report, out / "soak.png")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
