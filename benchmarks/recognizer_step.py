"""Recognizer step cost: CPU time of the live path for many streams, per audio second.

A live server feeds every stream's 20 ms chunks of audio through the cochlea,
binning and endpointer in one call (``Recognizer.feed_audio_many``), then steps
every stream that has bins ready as one batch (``Recognizer.step``), again while
any has bins left, as ``app.scheduler`` does.  This does the same in one thread,
without the server: ``--streams`` streams each play the committed test clips in a
row from their own starting point, ``--seconds`` of audio each, in 20 ms int16
chunks.

It reports the CPU time of this thread (``time.thread_time``: other jobs on the
machine disturb it far less than wall time) per audio second per stream, split
into feeding (cochlea, binning, endpointer) and stepping (network, decoder), as
the median and range over ``--repeat`` rounds after one warm-up round, and a
digest of every word event and each stream's spike counts: a change that should
not alter the output must leave it as it was.

Run from the repository root::

    python -m benchmarks.recognizer_step                   # bundled model, 100 streams
    python -m benchmarks.recognizer_step --streams 20 --seconds 3 --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from app.scheduler import MAX_STEP_BINS
from benchmarks.common import FIXTURES, RATE, read_audio
from models.model_file import load_model
from models.recognizer import Recognizer, StreamOptions

CHUNK_S = 0.02  # what a live client sends at a time


def stream_audio(n_streams: int, seconds: float) -> np.ndarray:
    """``[streams, samples]`` int16: the fixture clips in a row, looped to ``seconds``,
    each stream starting elsewhere in them."""
    recording = np.concatenate([read_audio(path) for path in sorted(FIXTURES.glob("*.wav"))])
    samples = round(seconds * RATE)
    looped = np.resize(recording, len(recording) + samples)  # np.resize repeats
    starts = np.arange(n_streams) * len(recording) // n_streams
    audio = np.stack([looped[start : start + samples] for start in starts])
    return (np.clip(audio, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def run_round(recognizer: Recognizer, audio: np.ndarray) -> tuple[float, float, str]:
    """Thread CPU seconds spent feeding and stepping all streams through ``audio``, and
    a digest of what they produced."""
    options = StreamOptions(sample_rate=RATE, activity=False, emit_unknown=True)
    streams = [recognizer.open_stream(options) for _ in audio]
    chunk = round(CHUNK_S * RATE)
    feed_s = step_s = 0.0
    digest = hashlib.sha256()
    for start in range(0, audio.shape[1], chunk):
        final = start + chunk >= audio.shape[1]
        chunks = [(s, a[start : start + chunk], final) for s, a in zip(streams, audio, strict=True)]
        began = time.thread_time()
        recognizer.feed_audio_many(chunks)
        fed = time.thread_time()
        while ready := [s for s in streams if s.ready]:
            for events in recognizer.step(ready, MAX_STEP_BINS):
                digest.update(repr(events).encode())
        step_s += time.thread_time() - fed
        feed_s += fed - began
    for stream in streams:
        digest.update(repr(recognizer.stats(stream)).encode())
        recognizer.close_stream(stream)
    return feed_s, step_s, digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model file (default: the bundled model)")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=4.0, help="audio per stream")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the server's setting: one core for the event loop's steps
    recognizer = Recognizer(load_model(args.model))
    recognizer.warm_up()
    audio = stream_audio(args.streams, args.seconds)
    audio_s = args.streams * audio.shape[1] / RATE
    rounds: dict[str, list[float]] = {"feed": [], "step": []}
    digests = set()
    for round_ in range(args.repeat + 1):  # the first round warms up (numba, caches, pool)
        feed_s, step_s, digest = run_round(recognizer, audio)
        digests.add(digest)
        if round_:
            rounds["feed"].append(feed_s / audio_s)
            rounds["step"].append(step_s / audio_s)
    if len(digests) != 1:
        raise SystemExit(f"rounds produced different outputs: {sorted(digests)}")
    result = {
        "model": args.model or "bundled",
        "streams": args.streams,
        "seconds": args.seconds,
        "rounds": args.repeat,
        "cpu_s_per_audio_s": {
            stage: {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
            for stage, values in rounds.items()
        },
        "output_digest": digests.pop(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    table = Table(
        title=f"recognizer, {args.streams} streams in 20 ms chunks, {args.repeat} rounds "
        f"of {args.seconds:g} s: thread CPU s per audio s per stream"
    )
    for column in ("stage", "median", "range"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    names = {"feed": "feed: cochlea, binning, endpointer", "step": "step: network, decoder"}
    for stage, values in result["cpu_s_per_audio_s"].items():
        table.add_row(
            names[stage], f"{values['median']:.5f}", f"{values['min']:.5f}-{values['max']:.5f}"
        )
    console = Console()
    console.print(table)
    console.print(f"output digest {result['output_digest']}")


if __name__ == "__main__":
    main()
