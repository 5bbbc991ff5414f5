"""The ``spikeear`` command: one entry point for every job."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from app.errors import CliError
from app.mic import add_mic_arguments
from audio_frontend.audio_io import AudioError
from models.model_file import ModelFileError

# Commands that need the training code, with their help; their arguments and handlers
# live in app.train_commands, imported only when one of them runs, so that serving (and
# an install without training/) never loads it.
TRAINING_COMMANDS = {
    "evaluate": "Evaluate a model on speakers it never heard.",
    "export-nir": "Export the network as a NIR graph (.nir).",
    "train": "Train a classifier on folders of labelled clips.",
    "features": "Write a feature pack: cochlear features of a training split.",
}


def _cochlea_from_args(args: argparse.Namespace):
    from audio_frontend.cochlea import Cochlea, CochleaConfig

    try:
        return Cochlea(CochleaConfig(channels=args.channels))
    except ValueError as error:
        raise CliError(str(error)) from None


def cmd_encode(args: argparse.Namespace) -> None:
    import numpy as np

    from audio_frontend.audio_io import load_audio
    from audio_frontend.events import SpikeEvents
    from audio_frontend.spike_files import write_spike_file

    if args.chunk_ms is not None and args.chunk_ms <= 0:
        raise CliError("--chunk-ms must be positive")
    cochlea = _cochlea_from_args(args)
    audio, rate = load_audio(args.input)
    state = cochlea.new_state(rate)
    step = len(audio) if args.chunk_ms is None else max(1, int(rate * args.chunk_ms / 1000))
    parts = [
        cochlea.process(audio[i : i + step], state, final=i + step >= len(audio))
        for i in range(0, len(audio), step)
    ]
    events = SpikeEvents.concatenate(parts, cochlea.config.channels)
    write_spike_file(
        args.out,
        [events],
        [0],
        attributes={"frontend": cochlea.config.to_dict(), "source": Path(args.input).name},
        names=[Path(args.input).name],
    )
    duration = len(audio) / rate
    rate_hz = len(events) / duration
    print(
        f"{args.out}: {len(events)} spikes in {duration:.2f} s ({rate_hz:.0f} spikes/s, "
        f"{int(np.unique(events.channels).size)} active channels)"
    )


def cmd_plot(args: argparse.Namespace) -> None:
    from audio_frontend.audio_io import load_audio
    from audio_frontend.plot import plot_recording

    cochlea = _cochlea_from_args(args)
    audio, rate = load_audio(args.input)
    events = plot_recording(audio, rate, cochlea, args.out, title=Path(args.input).name)
    print(f"{args.out}: {len(events)} spikes plotted")


SERVE_HINT = "(demo page at /, API docs at /docs)"
MAX_AUTO_WORKERS = 4  # each holds its own torch, model and cochlea (~0.6 GB)


def cmd_serve(args: argparse.Namespace) -> None:
    import shutil
    import tempfile

    from app.metrics import MULTIPROCESS_DIR
    from app.server import create_app
    from app.settings import Settings
    from app.shutdown import run_server
    from app.transport import websocket_options
    from models.custom_words import CustomWordError

    tls = tls_options(args)
    settings = Settings(
        model_path=args.model,
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        torch_threads=torch.get_num_threads(),
        api_keys=api_keys(args.api_key, os.environ.get(API_KEYS_VARIABLE, "")),
        allow_origins=tuple(args.allow_origin or ()),
        max_streams=args.max_streams,
        idle_timeout_s=args.idle_timeout_s,
        max_stream_s=args.max_stream_s,
        max_audio_s=args.max_audio_s,
        max_batch_jobs=args.max_batch_jobs,
        shutdown_grace_s=args.shutdown_grace_s,
        words_path=args.words,
    )
    if settings.api_keys:
        print(f"spikeear: every client needs one of {len(settings.api_keys)} API keys")
    else:
        print(
            "spikeear: no API key set: anyone who can reach this port may use the server "
            f"(--api-key or {API_KEYS_VARIABLE})"
        )
    try:
        app = create_app(settings)  # also checks the model and words before any worker starts
    except CustomWordError as error:
        raise CliError(str(error)) from None
    options = {
        **websocket_options(settings),
        "log_level": args.log_level,
        **tls,
    }
    scheme = "https" if tls else "http"
    if args.workers == 1:
        print(f"spikeear: serving on {_server_url(args.host, args.port, scheme)} {SERVE_HINT}")
        if not run_server(app, host=args.host, port=args.port, **options):
            raise CliError("the server could not start (see the log above)")
        return
    from app.workers import listening_sockets, serve_workers

    # Streams are spread over processes by the kernel; each has its own scheduler.
    sockets = listening_sockets(args.host, args.port, args.workers)
    port = sockets[0].getsockname()[1]
    print(
        f"spikeear: serving on {_server_url(args.host, port, scheme)} {SERVE_HINT}, "
        f"{args.workers} workers"
    )
    # The workers count open streams and running uploads together here (--max-streams
    # and --max-batch-jobs are limits of the server, not of each process).
    shared_dir = tempfile.mkdtemp(prefix="spikeear-shared-")
    # Without --words the workers still share one set of custom words, for this run only.
    words_path = settings.words_path
    if words_path is None and app.state.services.bundle.enrollment is not None:
        words_path = os.path.join(shared_dir, "words.json")
    dataclasses.replace(settings, shared_dir=shared_dir, words_path=words_path).to_environment()
    metrics_dir = None
    if not os.environ.get(MULTIPROCESS_DIR):
        # Every worker writes its metrics here and /metrics sums them (set before
        # the workers start: prometheus-client reads it when it is imported).
        metrics_dir = tempfile.mkdtemp(prefix="spikeear-metrics-")
        os.environ[MULTIPROCESS_DIR] = metrics_dir
    try:
        if not serve_workers(sockets, options, settings.shutdown_grace_s):
            raise CliError("a worker could not start (see the log above)")
    finally:
        shutil.rmtree(shared_dir, ignore_errors=True)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _worker_count(value: str) -> int:
    """``--workers``: a count, or ``auto`` for one per usable core (one process's event
    loop and GIL carry about a core of streams: 100 streams of 20 ms messages needed
    two processes on two cores, see the README's throughput section)."""
    if value == "auto":
        usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        cores = len(usable) if usable else os.cpu_count() or 1
        return max(1, min(cores, MAX_AUTO_WORKERS))
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count or 'auto': {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return count


def _server_url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


API_KEYS_VARIABLE = "SPIKEEAR_API_KEYS"


def api_keys(flags: list[str] | None, variable: str) -> tuple[str, ...]:
    """``--api-key`` (repeated) and the comma-separated ``SPIKEEAR_API_KEYS``, together."""
    keys = [*(flags or ()), *(key.strip() for key in variable.split(",") if key.strip())]
    for key in keys:
        # A key travels in a header or a query string: visible ASCII only.
        if not key or not all("!" <= c <= "~" for c in key):
            raise CliError("an API key must be printable ASCII without spaces")
    return tuple(dict.fromkeys(keys))


def tls_options(args: argparse.Namespace) -> dict[str, str]:
    """uvicorn's TLS options, checked here: a bad file in a worker would only log there."""
    import ssl

    if not (args.ssl_certfile or args.ssl_keyfile):
        return {}
    if not (args.ssl_certfile and args.ssl_keyfile):
        raise CliError("--ssl-certfile and --ssl-keyfile go together")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(args.ssl_certfile, args.ssl_keyfile)
    except (OSError, ssl.SSLError) as error:
        raise CliError(f"cannot use the TLS certificate and key: {error}") from None
    return {"ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile}


def _count(value: str) -> int:
    """A limit's count: 0 turns the limit off."""
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {value!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError("0 (no limit) or more")
    return count


def _seconds(value: str) -> float:
    """A limit in seconds: 0 turns the limit off."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError("0 (no limit) or more seconds")
    return seconds


def cmd_enroll(args: argparse.Namespace) -> None:
    import time

    from app.words import Recording, WordSet, synthesized
    from audio_frontend.audio_io import load_audio
    from models.custom_words import CustomWordError
    from models.model_file import load_model
    from models.recognizer import Recognizer

    if not args.files and not args.synthesize:
        raise CliError("give recordings of the word, or --synthesize (or both)")
    started = time.perf_counter()
    try:
        words = WordSet(Recognizer(load_model(args.model)), args.words)
        word = words.new_word(args.word)
        recordings = []
        for path in args.files:
            audio, sample_rate = load_audio(path)
            recordings.append(Recording(Path(path).name, audio, sample_rate))
        if args.synthesize:
            recordings += synthesized(word)
        enrolled = words.enroll(word, recordings)
    except CustomWordError as error:
        raise CliError(str(error)) from None
    print(
        f"{args.words}: {enrolled.word!r} enrolled from {enrolled.examples} examples in "
        f"{time.perf_counter() - started:.1f} s; the set has {len(words.words.words)} words "
        f"({', '.join(words.words.names)})"
    )


def cmd_transcribe(args: argparse.Namespace) -> None:
    import json

    from app.archive import file_results

    if args.ray is not None or args.out is not None:
        cmd_transcribe_archive(args)
        return
    if args.workers is not None:
        raise CliError("--workers goes with --ray")
    from app.words import WordSet
    from models.model_file import load_model
    from models.recognizer import Recognizer

    recognizer = Recognizer(load_model(args.model))
    if args.words is not None:
        WordSet(recognizer, args.words)
    failures = 0
    for path in args.files:
        try:
            results = file_results(recognizer, path)
        except (AudioError, ValueError) as error:
            failures += 1
            print(f"spikeear transcribe: error: {error}", file=sys.stderr)
            continue
        for result in results:
            if args.json:
                print(json.dumps(result), flush=True)
            else:
                words = ", ".join(
                    f"{w['word']} ({w['start']:.2f}-{w['end']:.2f} s, {w['confidence']:.2f})"
                    for w in result["words"]
                )
                print(
                    f"{path}: {result['text'] or '(no words)'}" + (f"  [{words}]" if words else "")
                )
    if failures > 1 or (failures and len(args.files) > 1):
        raise CliError(f"{failures} of {len(args.files)} files could not be transcribed")
    if failures:
        raise SystemExit(2)  # the one error is already printed


def cmd_transcribe_archive(args: argparse.Namespace) -> None:
    """``--out`` (and ``--ray``): folders and globs of files to JSON lines, resumable."""
    from app.archive import transcribe_archive

    if args.out is None:
        raise CliError("--ray needs --out RESULTS.jsonl (one line per file, written as done)")
    if args.workers is not None and args.ray is None:
        raise CliError("--workers goes with --ray")
    if args.workers is not None and args.workers < 1:
        raise CliError("--workers must be at least 1")
    run = transcribe_archive(
        args.files, args.out, args.model, args.ray, args.workers, words=args.words
    )
    print(
        f"{args.out}: {run.transcribed - run.failed} files transcribed, {run.failed} failed, "
        f"{run.skipped} skipped as already there ({run.audio_s:.1f} s of audio in "
        f"{run.transcribe_s:.1f} s)"
    )
    if run.failed:
        raise CliError(
            f"{run.failed} of {run.transcribed} files could not be transcribed "
            f"(their lines in {args.out} have an 'error')"
        )


def cmd_mic(args: argparse.Namespace) -> None:
    from app.mic import cmd_mic as run

    run(args)


def _training_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    try:
        from app.train_commands import add_command_arguments
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] != "training":
            raise
        raise CliError(
            "training commands need the full install (the repository with its training/ "
            "package, 'pip install .'); this one only recognises"
        ) from None
    add_command_arguments(name, parser)


def add_network_arguments(p: argparse.ArgumentParser) -> None:
    """``serve``'s access, limit and TLS flags (README: "Running it on a network")."""
    from app.settings import Settings

    defaults = Settings()
    g = p.add_argument_group("network access (0 turns a limit off)")
    g.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help="a key clients must give (repeatable; also SPIKEEAR_API_KEYS, comma-separated); "
        "none: no access control",
    )
    g.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="another origin whose pages may use the API, e.g. https://app.example.com "
        "(repeatable; * for any)",
    )
    g.add_argument(
        "--max-streams",
        type=_count,
        default=defaults.max_streams,
        help="open streams, all workers together; the next is closed with 1013 "
        "(default %(default)s)",
    )
    g.add_argument(
        "--idle-timeout-s",
        type=_seconds,
        default=defaults.idle_timeout_s,
        help="close a stream that sends nothing this long (default %(default)g)",
    )
    g.add_argument(
        "--max-stream-s",
        type=_seconds,
        default=defaults.max_stream_s,
        help="audio seconds in one stream (default %(default)g)",
    )
    g.add_argument(
        "--max-audio-s",
        type=_seconds,
        default=defaults.max_audio_s,
        help="audio seconds in one upload (default %(default)g)",
    )
    g.add_argument(
        "--max-batch-jobs",
        type=_count,
        default=defaults.max_batch_jobs,
        help="uploads transcribed at a time, all workers together; more get 503 "
        "(default %(default)s)",
    )
    g.add_argument("--ssl-certfile", metavar="PEM", help="serve https/wss with this certificate")
    g.add_argument("--ssl-keyfile", metavar="PEM", help="the certificate's private key")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; the arguments of a training command are filled in only
    when ``command`` names it (the one about to run), which needs the training code."""
    parser = argparse.ArgumentParser(
        prog="spikeear",
        description="Speech command recognition with a spiking neural network.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable | None, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    def training(name: str) -> None:
        p = add(name, None, TRAINING_COMMANDS[name])
        if name == command:
            _training_arguments(name, p)

    p = add("encode", cmd_encode, "Convert audio to cochlear spike events (SHD-layout HDF5).")
    p.add_argument("input", help="audio file")
    p.add_argument("--out", required=True, help="output .h5 file")
    p.add_argument("--channels", type=int, default=64, help="cochlear channels (1-700)")
    p.add_argument("--chunk-ms", type=float, help="feed the audio in chunks of this size")

    p = add("plot", cmd_plot, "Plot waveform, cochleagram and spike raster to a PNG.")
    p.add_argument("input", help="audio file")
    p.add_argument("--out", required=True, help="output .png file")
    p.add_argument("--channels", type=int, default=64, help="cochlear channels (1-700)")

    p = add("serve", cmd_serve, "Run the recognition service (WebSocket, HTTP, demo page).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", help="model file (default: the bundled model)")
    p.add_argument(
        "--words",
        metavar="WORDS.json",
        help="custom words (spikeear enroll): recognised by every endpoint; words enrolled "
        "or deleted through /v1/words are saved to it",
    )
    p.add_argument("--max-upload-mb", type=int, default=50, help="batch upload size limit")
    p.add_argument(
        "--workers",
        type=_worker_count,
        default="auto",
        help="server processes, each with its own scheduler; /metrics sums them. auto "
        f"(default): one per CPU core, at most {MAX_AUTO_WORKERS} (~0.6 GB each)",
    )
    p.add_argument("--log-level", default="info")
    p.add_argument(
        "--shutdown-grace-s",
        type=_seconds,
        default=10.0,
        help="on SIGTERM/SIGINT, time open streams get to send the final of the word in "
        "progress before they close with 1012 (default: 10)",
    )
    add_network_arguments(p)

    p = add("enroll", cmd_enroll, "Teach the recognizer a new word from a few recordings.")
    p.add_argument("word", help="the new word (letters; an apostrophe or hyphen inside)")
    p.add_argument("files", nargs="*", metavar="FILE", help="3-10 recordings of it, one word each")
    p.add_argument(
        "--synthesize",
        action="store_true",
        help="also (or only) enroll it from offline speech synthesizers' voices",
    )
    p.add_argument(
        "--words",
        required=True,
        metavar="WORDS.json",
        help="the word set file to add it to (created if missing; spikeear serve --words)",
    )
    p.add_argument("--model", help="model file (default: the bundled model)")

    p = add("transcribe", cmd_transcribe, "Transcribe audio files (or SHD spike files).")
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="audio or spike files; with --out also folders (searched for audio) and quoted "
        "globs ('archive/**/*.flac')",
    )
    p.add_argument("--model", help="model file (default: the bundled model)")
    p.add_argument("--json", action="store_true", help="one JSON object per file per line")
    p.add_argument(
        "--words", metavar="WORDS.json", help="custom words to recognise too (spikeear enroll)"
    )
    p.add_argument(
        "--out",
        metavar="RESULTS.jsonl",
        help="append one JSON line per file (the --json fields, or an 'error') as each "
        "finishes; files already in it are skipped, so a stopped job resumes",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="transcribe on a Ray cluster, one model per worker (needs --out and "
        'pip install "spikeear[cluster]"): no ADDRESS starts one on this machine for the '
        "job; auto, HOST:PORT or ray://HOST:PORT joins a running one",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="Ray workers, one CPU each (default: one per CPU of the cluster)",
    )

    training("evaluate")
    training("export-nir")

    p = add("mic", cmd_mic, "Live recognition from the microphone (or a file).")
    add_mic_arguments(p)

    training("train")
    training("features")
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The command an argument list runs: its first word that is not an option (the
    top-level parser has no options that take a value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command_in(argv)
    try:
        parser = build_parser(command)
    except CliError as error:
        print(f"spikeear {command}: error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    # Inference multiplies tiny matrices: extra torch threads only add overhead, and
    # under load their spinning costs far more than it saves (measured 3-15x).  A
    # training run sets its own (--threads, default 1).
    torch.set_num_threads(getattr(args, "threads", None) or 1)
    try:
        args.handler(args)
    except (CliError, AudioError, ModelFileError, OSError, ValueError) as error:
        # ValueError includes the training code's DataError.
        print(f"spikeear {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
