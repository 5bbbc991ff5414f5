"""Batch transcription speed: real-time factor (RTF) of whole-recording transcription.

Transcribes ~60 s of concatenated real speech (1 s Speech Commands clips of the
model's words back to back, or the test fixtures cycled when the data set is
missing) and reports RTF = compute seconds / audio seconds (target: RTF <= 0.02):

* in-process ``Recognizer.transcribe`` (10 s float32 blocks, as the CLI and the
  HTTP route feed it), with ``torch.set_num_threads(1)``: the figures are for ONE
  core.  Wall time and CPU time (``time.process_time``) are both shown, the median
  of ``--repeats`` runs after a warm-up; the cochlea alone (same blocks) is timed
  too, so the rest is the network and decoder;
* ``POST /v1/transcribe`` with the same audio as a 16-bit WAV upload, through
  FastAPI's ``TestClient`` in this process (also one torch thread): request wall
  time, and the server's own ``stats.real_time_factor`` (recognition only);
* with ``--subprocess``: the same request to ``spikeear serve`` started on a free
  loopback port (its torch threads set with ``--server-threads``, default 1), or
  with ``--url http://127.0.0.1:PORT`` to a running server;
* with ``--ray-workers 1 2``: the same audio cut into files of ``--file-s`` seconds and
  transcribed as an archive (``spikeear transcribe DIR --out``), in this process and on
  a local Ray cluster with each number of workers (``--ray --workers N``, one CPU each):
  files/s and wall real-time factor from the first file sent to the last line written,
  and the start-up (cluster and model loads) apart.

Other jobs on the machine inflate wall time; CPU time is the steadier figure.
Without a trained model at ``models/spikeear-default.pt`` pass ``--model PATH`` or
``--random-model`` (an untrained network of the default size; speed is
representative).

Run from the repository root::

    python -m benchmarks.batch_speed
    python -m benchmarks.batch_speed --random-model --seconds 20 --repeats 2
    python -m benchmarks.batch_speed --subprocess --json
    python -m benchmarks.batch_speed --no-http --ray-workers 1 2 --json
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from benchmarks.common import (
    FIXTURES,
    RATE,
    WORDS,
    ServerProcess,
    add_model_flags,
    console,
    data_folder,
    emit,
    fixture_word,
    http_get,
    read_audio,
    resolve_model,
)

TARGET_RTF = 0.02
BLOCK_S = 10.0


def speech(data: Path | None, seconds: float, seed: int) -> tuple[np.ndarray, str, int]:
    """~``seconds`` of whole 1 s clips back to back; returns (audio, source, n_clips)."""
    rng = random.Random(seed)
    files: list[Path] = []
    if data is not None:
        for word in WORDS:
            files += sorted((data / word).glob("*.wav"))
        source = str(data)
    if not files:
        files = [f for f in sorted(FIXTURES.glob("*.wav")) if fixture_word(f) is not None]
        source = f"{FIXTURES} (no data folder)"
    rng.shuffle(files)
    parts, have, i = [], 0, 0
    while have < seconds * RATE and i < 10_000:
        parts.append(read_audio(files[i % len(files)]))
        have += len(parts[-1])
        i += 1
    return np.concatenate(parts)[: round(seconds * RATE)], source, len(parts)


def blocks(audio: np.ndarray) -> list[np.ndarray]:
    step = round(BLOCK_S * RATE)
    return [audio[i : i + step] for i in range(0, len(audio), step)]


def _rates(timing: dict, seconds: float) -> dict:
    """Audio length, wall and CPU time of a :func:`timed` run, and both per audio second."""
    return {
        "audio_s": seconds,
        "wall_s": timing["wall_s"],
        "cpu_s": timing["cpu_s"],
        "rtf_wall": timing["wall_s"] / seconds,
        "rtf_cpu": timing["cpu_s"] / seconds,
    }


def timed(fn: Callable[[], object], repeats: int) -> dict:
    fn()  # warm-up: numba cache load, allocator, torch kernels
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "wall_all": walls,
        "cpu_all": cpus,
        "result": result,
    }


def wav_bytes(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, RATE, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def measure_in_process(model: str, audio: np.ndarray, repeats: int) -> dict:
    from audio_frontend.cochlea import Cochlea
    from models.model_file import load_model
    from models.recognizer import Recognizer, StreamOptions

    bundle = load_model(model)
    recognizer = Recognizer(bundle)
    seconds = len(audio) / RATE
    parts = blocks(audio)
    options = StreamOptions(sample_rate=RATE)
    full = timed(lambda: recognizer.transcribe(parts, RATE, options), repeats)

    cochlea = Cochlea(bundle.frontend)

    def cochlea_only() -> int:
        state = cochlea.new_state(RATE)
        n = 0
        for i, part in enumerate(parts):
            n += len(cochlea.process(part, state, final=i == len(parts) - 1))
        return n

    front = timed(cochlea_only, repeats)
    transcript = full.pop("result")
    front.pop("result")
    return {
        **_rates(full, seconds),
        "cochlea_cpu_s": front["cpu_s"],
        "cochlea_rtf_cpu": front["cpu_s"] / seconds,
        "network_decoder_rtf_cpu": (full["cpu_s"] - front["cpu_s"]) / seconds,
        "words": len(transcript.words),
        "wall_all": full["wall_all"],
        "cpu_all": full["cpu_all"],
    }


def measure_testclient(model: str, wav: bytes, seconds: float, repeats: int) -> dict:
    import warnings

    warnings.filterwarnings("ignore", message=".*httpx.*")  # starlette's TestClient notice
    from fastapi.testclient import TestClient

    from app.server import create_app
    from app.settings import Settings

    app = create_app(Settings(model_path=model))
    with TestClient(app) as client:

        def post() -> dict:
            response = client.post(
                "/v1/transcribe", files={"file": ("speech.wav", wav, "audio/wav")}
            )
            response.raise_for_status()
            return response.json()

        result = timed(post, repeats)
    body = result.pop("result")
    return {
        **_rates(result, seconds),
        "server_reported_rtf": body["stats"]["real_time_factor"],
        "words": len(body["words"]),
        "wall_all": result["wall_all"],
    }


def measure_http(base: str, wav: bytes, seconds: float, repeats: int, pid: int | None) -> dict:
    import httpx
    import psutil

    http_get(f"{base}/health")  # also refuses non-loopback hosts
    process = psutil.Process(pid) if pid is not None else None
    with httpx.Client(base_url=base, timeout=120) as client:

        def post() -> tuple[dict, float]:
            before = sum(process.cpu_times()[:2]) if process else 0.0
            response = client.post(
                "/v1/transcribe", files={"file": ("speech.wav", wav, "audio/wav")}
            )
            response.raise_for_status()
            after = sum(process.cpu_times()[:2]) if process else 0.0
            return response.json(), after - before

        result = timed(post, repeats)
    body, server_cpu = result.pop("result")
    return {
        "audio_s": seconds,
        "wall_s": result["wall_s"],
        "rtf_wall": result["wall_s"] / seconds,
        "server_cpu_s_last": server_cpu if process else None,
        "rtf_server_cpu": server_cpu / seconds if process else None,
        "server_reported_rtf": body["stats"]["real_time_factor"],
        "words": len(body["words"]),
        "wall_all": result["wall_all"],
    }


def measure_archive(
    model: str, audio: np.ndarray, file_s: float, ray_workers: list[int], workdir: Path
) -> dict:
    """The audio as files of ``file_s`` seconds, transcribed as an archive in this process
    and on a local Ray cluster with each of ``ray_workers`` workers."""
    from app.archive import transcribe_archive

    folder = workdir / "archive"
    folder.mkdir()
    step = round(file_s * RATE)
    for i in range(0, len(audio), step):
        sf.write(folder / f"{i // step:05d}.wav", audio[i : i + step], RATE, subtype="PCM_16")
    paths = [("in process", None, 1), *(("Ray", "local", n) for n in ray_workers)]
    rows = []
    for name, address, workers in paths:
        out = workdir / f"{name.replace(' ', '-')}-{workers}.jsonl"
        run = transcribe_archive(
            [str(folder)], str(out), model, address, workers if address else None, False
        )
        if run.failed or run.transcribed != run.files:
            raise SystemExit(f"{name}: {run.failed} of {run.files} files failed")
        rows.append({
            "path": name,
            "workers": workers,
            "files": run.transcribed,
            "audio_s": run.audio_s,
            "startup_s": run.startup_s,
            "wall_s": run.transcribe_s,
            "files_per_s": run.transcribed / run.transcribe_s,
            "rtf_wall": run.transcribe_s / run.audio_s,
        })  # fmt: skip
    return {"file_s": file_s, "files": rows[0]["files"], "runs": rows}


def print_report(report: dict) -> None:
    from rich.table import Table

    out = console()
    out.print(
        f"[bold]Audio[/]: {report['audio_s']:.1f} s ({report['clips']} clips) from "
        f"{report['source']}; model: {report['model']}; torch threads in this process: "
        f"{report['torch_threads']}; median of {report['repeats']} after a warm-up"
    )
    table = Table(title="Batch transcription real-time factor (compute s / audio s)")
    for name in ("path", "wall s", "RTF wall", "CPU s", "RTF CPU", "server RTF", "words"):
        table.add_column(name, justify="right")

    def f(value: float | None, fmt: str = ".4f") -> str:
        return "-" if value is None else format(value, fmt)

    ip, http = report["in_process"], report.get("http")
    rows = [("Recognizer.transcribe", ip, "cpu_s", "rtf_cpu")]
    if report.get("testclient"):
        rows.append(("POST /v1/transcribe (TestClient)", report["testclient"], "cpu_s", "rtf_cpu"))
    if http:  # the server process's CPU, not this one's
        rows.append((f"POST /v1/transcribe ({http['where']})", http, "server_cpu_s_last",
                     "rtf_server_cpu"))  # fmt: skip
    for name, r, cpu, rtf in rows:
        table.add_row(
            name,
            f(r["wall_s"], ".3f"),
            f(r["rtf_wall"]),
            f(r[cpu], ".3f"),
            f(r[rtf]),
            f(r.get("server_reported_rtf"), ".5f"),
            str(r["words"]),
        )
    out.print(table)
    out.print(
        f"In process, CPU: cochlea RTF {ip['cochlea_rtf_cpu']:.4f} + network and decoder "
        f"{ip['network_decoder_rtf_cpu']:.4f}.  TestClient rows include upload and WAV decode; "
        "subprocess/--url rows show the server process's CPU; 'server RTF' is the route's own "
        "stats.real_time_factor (recognition wall time only)."
    )
    if report.get("archive"):
        archive = report["archive"]
        table = Table(
            title=f"Archive: {archive['files']} files of {archive['file_s']:g} s "
            "(spikeear transcribe DIR --out)"
        )
        for name in ("path", "workers", "start-up s", "wall s", "files/s", "RTF wall"):
            table.add_column(name, justify="right")
        for run in archive["runs"]:
            table.add_row(
                run["path"],
                str(run["workers"]),
                f(run["startup_s"], ".1f"),
                f(run["wall_s"], ".2f"),
                f(run["files_per_s"], ".2f"),
                f(run["rtf_wall"]),
            )
        out.print(table)
    target = report["target"]
    mark = "[bold green]MET[/]" if target["met"] else "[bold red]NOT MET[/]"
    out.print(
        f"Target RTF <= {TARGET_RTF} (in-process, one torch thread, CPU time): "
        f"{target['rtf']:.4f} -> {mark}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="length of the test audio")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", help="Speech Commands layout folder")
    add_model_flags(p)
    p.add_argument("--no-http", action="store_true", help="skip the TestClient measurement")
    p.add_argument("--subprocess", action="store_true", help="also time a served instance")
    p.add_argument("--server-threads", type=int, default=1, help="torch threads of --subprocess")
    p.add_argument("--url", help="http://127.0.0.1:PORT of a running server to time")
    p.add_argument(
        "--ray-workers",
        type=int,
        nargs="+",
        metavar="N",
        help="also time the audio as an archive of files: in process, and on a local Ray "
        "cluster with each N workers (needs the cluster extra)",
    )
    p.add_argument("--file-s", type=float, default=5.0, help="file length for --ray-workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.ray_workers and (min(args.ray_workers) < 1 or not args.file_s > 0):
        p.error("--ray-workers counts must be at least 1, and --file-s above 0")
    if not 1 <= args.repeats <= 50 or not 0 < args.seconds <= 3600:
        p.error("--repeats must be 1-50 and --seconds in (0, 3600]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # figures are for one core
    audio, source, clips = speech(data_folder(args.data), args.seconds, args.seed)
    seconds = len(audio) / RATE
    with tempfile.TemporaryDirectory(prefix="spikeear-batch-") as tmp:
        model = resolve_model(args, Path(tmp))
        if model is None:
            print("no model: pass --model PATH or --random-model", file=sys.stderr)
            return 2
        report: dict = {
            "audio_s": seconds,
            "source": source,
            "clips": clips,
            "model": "random untrained network" if args.random_model else model,
            "torch_threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "clock": "wall: time.perf_counter; CPU: time.process_time of this process",
        }
        report["in_process"] = measure_in_process(model, audio, args.repeats)
        wav = wav_bytes(audio)
        if not args.no_http:
            report["testclient"] = measure_testclient(model, wav, seconds, args.repeats)
        if args.url:
            report["http"] = {
                **measure_http(args.url.rstrip("/"), wav, seconds, args.repeats, None),
                "where": args.url,
            }
        elif args.subprocess:
            server = ServerProcess(model, Path(tmp) / "server.log", threads=args.server_threads)
            try:
                report["http"] = {
                    **measure_http(server.base, wav, seconds, args.repeats, server.pid),
                    "where": f"subprocess, {args.server_threads} torch thread(s)",
                }
            finally:
                server.stop()
        if args.ray_workers:
            report["archive"] = measure_archive(
                model, audio, args.file_s, args.ray_workers, Path(tmp)
            )
    rtf = report["in_process"]["rtf_cpu"]
    report["target"] = {"target_rtf": TARGET_RTF, "rtf": rtf, "met": rtf <= TARGET_RTF}
    return emit(report, args.json, print_report)


if __name__ == "__main__":
    sys.exit(main())
