"""Replicas behind nginx: live streams survive losing a replica.

Starts 3 ``spikeear serve --workers 1`` processes on loopback ports and nginx in front
of them (``deploy/nginx.conf`` with its upstream pointed at those ports), then runs the
load of :mod:`benchmarks.load` through nginx: ``--streams`` real-time clients, each
streaming ``--seconds`` of speech.  At ``--term-at`` s one replica gets SIGTERM (it
drains: open streams get the final of their word in progress, then 1012) and at
``--kill-at`` s another gets SIGKILL.  A client whose stream is cut reconnects at once
through nginx and goes on with the audio it had not sent yet, as a client told 1012
should.

Reported, against one server alone (no nginx, the same streams, run first):

* partial latency p50 / p95 and throughput (audio seconds and finals per second);
* every stream that was cut: the replica, the close code and reason;
* where the connections opened after each signal landed (nginx's access log names the
  upstream of every stream, by the ``?stream=N`` it was opened with);
* ``/health`` of the SIGTERMed replica just after the signal, and its drain time;
* words: every stream served start to end by a replica never signalled must give the
  finals of an offline transcription of its audio, word for word and time for time;
  a drained stream must have had every word that ended before the drain.

Writes ``benchmarks/replicas/replicas.json``.  Needs nginx (Debian: nginx-light).

    python -m benchmarks.replicas                          # 30 streams x 20 s
    python -m benchmarks.replicas --streams 100 --seconds 30 --term-at 8 --kill-at 16
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import (
    RATE,
    REPO,
    ClipLibrary,
    Sequence,
    ServerProcess,
    add_model_flags,
    build_sequence,
    data_folder,
    free_port,
    resolve_model,
)
from benchmarks.load import (
    CHUNK_S,
    HANGOVER_S,
    ClientResult,
    ProcessMonitor,
    _event_loop_runner,
    _machine_busy_s,
    analyse_client,
    one_run,
    percentiles,
    run_client,
    verify_offline,
)

OUT = Path(__file__).parent / "replicas"
DEPLOY_NGINX = REPO / "deploy" / "nginx.conf"
# The lines of deploy/nginx.conf that name the replicas and nginx's own port.
UPSTREAM_SERVER = re.compile(r"^(\s*)server\s+spikeear:8000\b([^;]*);", re.MULTILINE)
LISTEN = re.compile(r"^(\s*)listen\s+80;", re.MULTILINE)
ACCESS_LOG_FORMAT = '$arg_stream "$upstream_addr" $status "$upstream_status"'
ACCESS_LINE = re.compile(r'^(\d+) "([^"]*)" (\d+) "([^"]*)"$')
REPLICAS = ("A", "B", "C")  # A gets SIGTERM, B SIGKILL, C survives
MAX_RECONNECTS = 20  # per client: past this, a client gives up (and is reported)
REFUSED_BACKOFF_S = (0.1, 0.3)  # after a refusal at once: a jittered pause, not a busy loop


# ---------------------------------------------------------------------------- nginx


def nginx_site(template: str, upstream_ports: list[int], listen_port: int) -> str:
    """``deploy/nginx.conf`` with its upstream on loopback ports and nginx listening on
    ``listen_port``; every other line as deployed."""
    upstream, listen = UPSTREAM_SERVER.search(template), LISTEN.search(template)
    if upstream is None or listen is None:
        raise ValueError("the nginx config has no `server spikeear:8000` or `listen 80` line")
    indent, options = upstream.group(1), upstream.group(2)
    servers = "\n".join(f"{indent}server 127.0.0.1:{p}{options};" for p in upstream_ports)
    site = template[: upstream.start()] + servers + template[upstream.end() :]
    return LISTEN.sub(rf"\g<1>listen 127.0.0.1:{listen_port};", site, count=1)


def write_nginx_config(
    workdir: Path, upstream_ports: list[int], listen_port: int, template: Path = DEPLOY_NGINX
) -> Path:
    """A complete nginx configuration under ``workdir`` that includes the site: every file
    nginx writes (pid, logs, temp files) is in ``workdir``; the access log names the
    upstream of each request.  Returns the main file, for ``nginx -p workdir -c FILE``."""
    site = workdir / "spikeear.conf"
    site.write_text(nginx_site(template.read_text(), upstream_ports, listen_port))
    temp_paths = "\n".join(
        f"    {name}_temp_path {workdir / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = workdir / "nginx.conf"
    main.write_text(
        f"worker_processes 1;\n"
        f"pid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} warn;\n"
        f"events {{ worker_connections 4096; }}\n"
        f"http {{\n{temp_paths}\n"
        f"    log_format upstream '{ACCESS_LOG_FORMAT}';\n"
        f"    access_log {workdir / 'access.log'} upstream;\n"
        f"    include {site};\n}}\n"
    )
    return main


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


class Nginx:
    """nginx in the foreground on a config from :func:`write_nginx_config`."""

    def __init__(self, binary: str, workdir: Path, config: Path, port: int) -> None:
        self.workdir = workdir
        error_log = str(workdir / "error.log")  # -e: not the default path before the config
        command = [binary, "-p", str(workdir), "-e", error_log, "-c", str(config)]
        self.process = subprocess.Popen(
            [*command, "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"nginx exited: {(workdir / 'error.log').read_text()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2),
            ):
                return
            if time.monotonic() > deadline:
                raise SystemExit("nginx did not answer within 10 s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: the access log is complete
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def upstreams(self) -> dict[int, list[str]]:
        """Stream number -> the upstream addresses nginx tried for it, in order."""
        tried = {}
        for line in (self.workdir / "access.log").read_text().splitlines():
            if match := ACCESS_LINE.match(line):
                tried[int(match.group(1))] = [a.strip() for a in match.group(2).split(",")]
        return tried


# ---------------------------------------------------------------------------- clients


@dataclass
class Connection:
    """One WebSocket stream of a client; a client that is cut off opens another."""

    client: int
    number: int  # ``?stream=N``: how nginx's access log names it
    offset_s: float  # where in the client's audio it starts
    opened_at: float
    result: ClientResult
    replica: str | None = None


def remainder(sequence: Sequence, start: int) -> Sequence:
    """The audio from sample ``start`` on, with the words that start in it."""
    offset = start / RATE
    words = [(w, s - offset, e - offset) for w, s, e in sequence.words if s >= offset]
    return Sequence(sequence.audio[start:], words, sequence.sources)


async def reconnecting_client(
    client: int,
    sequence: Sequence,
    url: str,
    start_at: float,
    connections: list[Connection],
    timeout: float,
    chunk: int,
) -> None:
    """Stream ``sequence`` in real time; when the stream is cut before its eof answer,
    reconnect at once and go on from the first chunk not yet sent."""
    offset, rng = 0, random.Random(client)
    for _ in range(MAX_RECONNECTS + 1):
        part = remainder(sequence, offset) if offset else sequence
        result = ClientResult(len(connections), part, chunk)
        connection = Connection(client, result.index, offset / RATE, time.monotonic(), result)
        connections.append(connection)
        await run_client(result, f"{url}?stream={result.index}", start_at, True, timeout)
        start_at = 0.0
        connection.opened_at = result.connected_at or connection.opened_at
        if result.got_eof or result.error is None:
            return
        offset += len(result.send_times) * chunk
        if offset >= len(sequence.audio):
            return
        if not any(kind == "final" for kind in _kinds(result)):  # refused at once
            await asyncio.sleep(rng.uniform(*REFUSED_BACKOFF_S))


def _kinds(result: ClientResult) -> list[str]:
    return [event.get("type", "") for _, event in result.events]


# ---------------------------------------------------------------------------- the run


def health_now(port: int) -> dict:
    """``/health`` of one replica, directly: its status and body, or why there was none."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
            status, body = answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode()
    except OSError as error:
        return {"status": None, "error": str(error)}
    return {
        "status": status,
        "body": json.loads(body),
        "answered_in_s": round(time.monotonic() - started, 4),
    }


async def through_balancer(
    args: argparse.Namespace,
    sequences: list[Sequence],
    url: str,
    replicas: dict[str, ServerProcess],
) -> tuple[list[Connection], dict]:
    connections: list[Connection] = []
    events: dict = {}
    start = time.monotonic() + 0.2
    timeout = args.seconds * 2 + 60

    async def signals() -> None:
        await asyncio.sleep(max(0.0, start + args.term_at - time.monotonic()))
        drained = replicas["A"]
        drained.process.send_signal(signal.SIGTERM)
        events["sigterm_at"] = time.monotonic()
        events["health_after_sigterm"] = await asyncio.to_thread(health_now, drained.port)
        while drained.process.poll() is None:
            await asyncio.sleep(0.01)
        events["drained_exit_s"] = time.monotonic() - events["sigterm_at"]
        events["drained_exit_code"] = drained.process.returncode
        await asyncio.sleep(max(0.0, start + args.kill_at - time.monotonic()))
        replicas["B"].process.send_signal(signal.SIGKILL)
        events["sigkill_at"] = time.monotonic()

    signaller = asyncio.create_task(signals())
    await asyncio.gather(
        *(
            reconnecting_client(
                i, s, url, start + args.ramp * i / len(sequences), connections, timeout, args.chunk
            )
            for i, s in enumerate(sequences)
        )
    )
    await signaller
    events["wall_s"] = time.monotonic() - start
    return connections, events


def offline_words(recognizer, sequence: Sequence) -> list[tuple[str, float, float]]:
    from models.recognizer import StreamOptions

    pcm = np.frombuffer(sequence.s16le(), "<i2")
    transcript = recognizer.transcribe(
        [pcm[i : i + 10 * RATE] for i in range(0, len(pcm), 10 * RATE)],
        RATE,
        StreamOptions(sample_rate=RATE, emit_unknown=True),
    )
    return [(w.word, round(w.start, 3), round(w.end, 3)) for w in transcript.words]


def drained_words(model: str, drained: list[Connection], sigterm_at: float) -> dict:
    """Each stream drained by the SIGTERM: the words that ended (hangover included) before
    the signal must all have come as finals; the word in progress comes as one more."""
    from models.model_file import load_model
    from models.recognizer import Recognizer

    recognizer = Recognizer(load_model(model))
    lost, checked, flushed = [], 0, 0
    for connection in drained:
        result = connection.result
        if not result.send_times:
            continue
        # Stream time at the signal: the audio of the chunks sent before it.
        sent_before = sum(t < sigterm_at for t in result.send_times) * result.chunk / RATE
        got = [(e["word"], e["start"], e["end"]) for _, e in result.events if e["type"] == "final"]
        ended = [
            w for w in offline_words(recognizer, result.sequence) if w[2] + HANGOVER_S < sent_before
        ]
        checked += 1
        missing = [w for w in ended if w not in got]
        flushed += any(e["type"] == "final" and t >= sigterm_at for t, e in result.events)
        if missing:
            lost.append({"stream": connection.number, "missing": missing})
    return {"checked": checked, "with_a_final_after_sigterm": flushed, "lost": lost}


def summarise(
    args: argparse.Namespace,
    connections: list[Connection],
    events: dict,
    replica_of_address: dict[str, str],
    tried: dict[int, list[str]],
    model: str,
) -> dict:
    for connection in connections:
        addresses = tried.get(connection.number, [])
        connection.replica = replica_of_address.get(addresses[-1]) if addresses else None
    sigterm, sigkill, wall = events["sigterm_at"], events["sigkill_at"], events["wall_s"]
    analysed = [analyse_client(c.result) for c in connections]
    # The partials after the kill, when the one replica left carries every stream.
    after_kill = [
        analyse_client(
            dataclasses.replace(
                c.result, events=[(t, e) for t, e in c.result.events if t >= sigkill]
            )
        )
        for c in connections
    ]
    audio_s = sum(
        min(len(c.result.send_times) * c.result.chunk, len(c.result.sequence.audio))
        for c in connections
    )
    cut = [c for c in connections if not c.result.got_eof]
    # Served start to end by a replica that was never signalled (B: before its kill).
    healthy = [c for c in connections if c.replica in ("B", "C") and c.result.got_eof]
    clients = sorted({c.client for c in connections})
    return {
        "streams": len(clients),
        "connections": len(connections),
        "latency_partial_s": percentiles([x for a in analysed for x in a["partial_latency"]]),
        "latency_partial_after_sigkill_s": percentiles(
            [x for a in after_kill for x in a["partial_latency"]]
        ),
        "throughput": {
            "audio_s_per_s": audio_s / RATE / wall,
            "finals_per_s": sum(len(a["finals"]) for a in analysed) / wall,
            "wall_s": wall,
        },
        "clients_completed": sum(
            any(c.result.got_eof and c.client == i for c in connections) for i in clients
        ),
        "sigterm": {
            "replica": "A",
            "at_s": args.term_at,
            "health_just_after": events["health_after_sigterm"],
            "exit_after_s": events.get("drained_exit_s"),
            "exit_code": events.get("drained_exit_code"),
            "drained_streams": drained_words(
                model,
                [c for c in connections if c.replica == "A" and c.opened_at < sigterm],
                sigterm,
            ),
        },
        "sigkill": {"replica": "B", "at_s": args.kill_at},
        "cut_by_replica_and_code": _count(f"{c.replica} {c.result.close_code}" for c in cut),
        "cut": [
            {
                "stream": c.number,
                "client": c.client,
                "replica": c.replica,
                "code": c.result.close_code,
                "reason": c.result.close_reason,
                "after_sigterm_s": round((c.result.done_at or 0) - sigterm, 3),
                "audio_s_sent": round(len(c.result.send_times) * c.result.chunk / RATE, 2),
                "opened_after_sigterm": c.opened_at >= sigterm,  # refused by the draining one
            }
            for c in cut
        ],
        "landed": {
            "before_sigterm": _landed(connections, 0.0, sigterm),
            "sigterm_to_sigkill": _landed(connections, sigterm, sigkill),
            "after_sigkill": _landed(connections, sigkill, float("inf")),
        },
        "healthy_replica_streams_vs_offline": verify_offline(
            model, [c.result for c in healthy], len(healthy)
        ),
    }


def _landed(connections: list[Connection], since: float, until: float) -> dict[str, int]:
    """Connections opened in [since, until), by the replica nginx gave them to."""
    return _count(c.replica or "none" for c in connections if since <= c.opened_at < until)


def _count(items) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))


def throughput(report: dict) -> dict:
    wall = report["client"]["wall_s"]
    return {
        "audio_s_per_s": report["audio_s_sent"] / wall,
        "finals_per_s": report["words"]["finals"] / wall,
        "wall_s": wall,
    }


def run_replicas(
    args: argparse.Namespace, sequences: list[Sequence], model: str, workdir: Path, binary: str
) -> dict:
    with ThreadPoolExecutor(len(REPLICAS)) as pool:  # the model loads overlap
        started = [
            pool.submit(ServerProcess, model, workdir / f"replica-{n}.log", 180.0, None, "1")
            for n in REPLICAS
        ]
        replicas = {n: s.result() for n, s in zip(REPLICAS, started, strict=True)}
    nginx = None
    try:
        monitors = {n: ProcessMonitor(r.pid) for n, r in replicas.items()}
        for monitor in monitors.values():
            monitor.start()
        port = free_port()
        config = write_nginx_config(workdir, [r.port for r in replicas.values()], port)
        nginx = Nginx(binary, workdir, config, port)
        url = f"ws://127.0.0.1:{port}/v1/stream"
        busy0, wall0 = _machine_busy_s(), time.monotonic()
        connections, events = _event_loop_runner(args.no_uvloop)(
            through_balancer(args, sequences, url, replicas)
        )
        machine = {  # a shared machine: what else ran shows in busy_cores
            "cpu_count": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "busy_cores": (_machine_busy_s() - busy0) / (time.monotonic() - wall0),
        }
        for monitor in monitors.values():
            monitor.stop()
    finally:
        if nginx is not None:
            nginx.stop()
        for replica in replicas.values():
            replica.stop()
    replica_of_address = {f"127.0.0.1:{r.port}": n for n, r in replicas.items()}
    report = summarise(args, connections, events, replica_of_address, nginx.upstreams(), model)
    report["replica_peak_rss_mb"] = {n: m.peak_rss / 2**20 for n, m in monitors.items()}
    report["replica_cpu_s"] = {
        n: m.samples[-1][1] - m.samples[0][1] if m.samples else None for n, m in monitors.items()
    }
    report["machine"] = machine
    return report


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=30, help="concurrent real-time clients")
    p.add_argument("--seconds", type=float, default=20.0, help="audio per client")
    p.add_argument("--term-at", type=float, default=6.0, help="SIGTERM replica A (s)")
    p.add_argument("--kill-at", type=float, default=12.0, help="SIGKILL replica B (s)")
    p.add_argument("--ramp", type=float, default=1.0, help="spread client starts over this")
    p.add_argument("--chunk-ms", type=float, default=1000 * CHUNK_S, help="audio per message")
    p.add_argument("--verify", type=int, default=3, help="one server: streams vs offline")
    add_model_flags(p)
    p.add_argument("--data", help="Speech Commands layout folder (default: ../shared/data/...)")
    p.add_argument("--clips-per-word", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-uvloop", action="store_true", help="use the stdlib asyncio loop")
    p.add_argument("--out", type=Path, default=OUT / "replicas.json")
    args = p.parse_args(argv)
    if not 0 < args.term_at < args.kill_at < args.seconds:
        p.error("need 0 < --term-at < --kill-at < --seconds")
    if not 1 <= args.streams <= 1000:
        p.error("--streams must be between 1 and 1000")
    args.chunk = round(RATE * args.chunk_ms / 1000)
    # What benchmarks.load.one_run reads for the one-server run.
    args.url = args.server_threads = None
    args.workers, args.no_partials = "1", False
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    binary = nginx_binary()
    if binary is None:
        raise SystemExit("nginx not found (Debian: apt-get install nginx-light)")
    library = ClipLibrary(data_folder(args.data), per_word=args.clips_per_word, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="spikeear-replicas-") as tmp:
        workdir = Path(tmp)
        model = resolve_model(args, workdir)
        if model is None:
            raise SystemExit("no model: pass --model PATH or --random-model")
        print(f"one server: {args.streams} streams x {args.seconds:g} s ...", file=sys.stderr)
        alone = one_run(args, args.streams, library, model, workdir)
        # The same audio as one_run's: its generator, seeded the same way.
        rng = random.Random(args.seed * 1000 + args.streams)
        sequences = [
            build_sequence(library, rng, seconds=args.seconds) for _ in range(args.streams)
        ]
        print("3 replicas behind nginx ...", file=sys.stderr)
        balanced = run_replicas(args, sequences, model, workdir, binary)
    report = {
        "command": " ".join(["python -m benchmarks.replicas", *(argv or sys.argv[1:])]),
        "meta": {
            "streams": args.streams,
            "seconds_per_stream": args.seconds,
            "chunk_ms": args.chunk_ms,
            "clip_source": library.source,
            "model": "random untrained network" if args.random_model else model,
            "replicas": "3 x spikeear serve --workers 1, nginx (deploy/nginx.conf) in front",
        },
        "one_server": {
            "latency_partial_s": alone["latency_partial_s"],
            "throughput": throughput(alone),
            "clients_ok": alone["dropped"]["clients_ok"],
            "offline_verification": alone["dropped"]["offline_verification"],
            "server_cores": alone["server"]["cores"],
            "peak_rss_mb": alone["server"]["peak_rss_mb"],
            "machine": alone["machine"],
        },
        "through_nginx": balanced,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    show(report)
    print(f"written: {args.out}", file=sys.stderr)
    return 0


def show(report: dict) -> None:
    alone, nginx = report["one_server"], report["through_nginx"]

    def line(name: str, part: dict) -> str:
        latency, rate = part["latency_partial_s"], part["throughput"]
        return (
            f"{name:<14} partial p50 {1000 * (latency['p50'] or 0):6.1f} ms  "
            f"p95 {1000 * (latency['p95'] or 0):6.1f} ms  "
            f"{rate['audio_s_per_s']:5.1f} audio s/s  {rate['finals_per_s']:5.2f} finals/s"
        )

    print(line("one server", alone))
    print(line("through nginx", nginx))
    term = nginx["sigterm"]
    print(
        f"SIGTERM A: /health just after {term['health_just_after']}; exit after "
        f"{term['exit_after_s']:.2f} s; drained {term['drained_streams']}"
    )
    print(f"cut (replica code): {nginx['cut_by_replica_and_code']}")
    print(f"landed: {nginx['landed']}")
    print(f"healthy replicas vs offline: {nginx['healthy_replica_streams_vs_offline']}")


if __name__ == "__main__":
    sys.exit(main())
