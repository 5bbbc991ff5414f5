"""Front-end speed: seconds of audio one cochlea stream handles per CPU-second.

Measures the software cochlea (``audio_frontend.cochlea``) on one stream at 64 and
700 channels, fed in 20 ms chunks and as one whole-file call, on about 10 s of real
speech; and, at the default 64 channels, 100 streams fed 20 ms of int16 PCM each per
``Cochlea.process_many`` call (``--streams``), and the same counted straight into
10 ms bins per ``Cochlea.process_many_binned`` call and handed to each stream's
``SpikeBinner``, as the streaming server's recognizer does.
Times are CPU time of this process (``time.process_time``), the median of several
repetitions after a warm-up: the cost on one core, which other jobs on the machine disturb far less
than wall time (though they still share its caches).  The real-time factor (RTF)
is CPU seconds per audio second; the target for the default front end is
RTF <= 0.01 in 20 ms chunks.

For reference it also converts an excerpt of the same clip with ``lauscher``
(``pip install lauscher`` or ``pip install -e '.[bench]'``), the cochlea model
behind the Heidelberg spiking data sets, and prints the ratio of its CPU time to
ours on the identical excerpt.  lauscher spreads its per-channel work over a
``multiprocessing.Pool``; here that pool is replaced by an in-process serial map,
so all of its work is counted by ``process_time`` and none of its inter-process
overhead is: the ratio is, if anything, in lauscher's favour.  lauscher is slow
and memory-hungry (its bushy-cell stage holds channels x samples/2 x 40 doubles),
hence the short default excerpt (``--lauscher-seconds``, 1 s: about 20 CPU-seconds
at 64 channels and 4 CPU-minutes at 700 on a 2020s server core).

Run from the repository root::

    python -m benchmarks.frontend                 # tables
    python -m benchmarks.frontend --json          # machine-readable
    python -m benchmarks.frontend --audio my.wav --no-lauscher
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from audio_frontend.audio_io import AudioError, load_audio
from audio_frontend.cochlea import Cochlea, CochleaConfig
from audio_frontend.events import SpikeBinner
from benchmarks.common import DEFAULT_DATA, FIXTURES, emit, read_audio

TARGET_RTF = 0.01
BIN_MS = 10.0  # the bundled model's bins
DEFAULT_CHANNELS = CochleaConfig().channels


# --------------------------------------------------------------------------- audio


def _clip_files() -> tuple[list[Path], str]:
    """Speech clips to concatenate: one per Speech Commands word, else the test fixtures."""
    if DEFAULT_DATA.is_dir():
        words = sorted(
            p for p in DEFAULT_DATA.iterdir() if p.is_dir() and not p.name.startswith("_")
        )
        files = [f for w in words for f in sorted(w.glob("*.wav"))[:1]]
        if files:
            return files, f"{DEFAULT_DATA} (first clip of each word)"
    files = sorted(f for f in FIXTURES.glob("*.wav") if not f.name.startswith("noise_"))
    return files, f"{FIXTURES} (shared data set not found)"


def benchmark_audio(path: str | None, seconds: float, rate: int) -> tuple[np.ndarray, int, str]:
    """The clip to time: ``path`` as is, or ``seconds`` of concatenated real speech."""
    if path is not None:
        audio, file_rate = load_audio(path)
        return audio, file_rate, str(path)
    files, source = _clip_files()
    if not files:
        raise AudioError("no speech clips found; pass --audio FILE")
    want = round(seconds * rate)
    parts, have = [], 0
    while have < want:  # the fixtures are few: cycle through them if needed
        for f in files:
            parts.append(read_audio(f, rate))
            have += len(parts[-1])
            if have >= want:
                break
    return np.concatenate(parts)[:want], rate, source


# --------------------------------------------------------------------------- timing


def cpu_times(fn: Callable[[], int], repeats: int, warm_up: bool = True) -> tuple[list[float], int]:
    """CPU seconds of ``fn`` in this process, once per repetition (after one warm-up:
    numba cache load or JIT, allocator), and what its last call returned."""
    if warm_up:
        fn()
    times, result = [], 0
    for _ in range(repeats):
        start = time.process_time()
        result = fn()
        times.append(time.process_time() - start)
    return times, result


def cpu_summary(times: list[float], seconds: float, prefix: str = "") -> dict:
    """Median CPU seconds of ``times`` and per second of audio, keys led by ``prefix``."""
    cpu = statistics.median(times)
    return {
        f"{prefix}cpu_s_median": cpu,
        f"{prefix}cpu_s_all": times,
        f"{prefix}rtf": cpu / seconds,
    }


def run_whole(cochlea: Cochlea, audio: np.ndarray, rate: int) -> int:
    return len(cochlea.encode(audio, rate))


def run_chunked(cochlea: Cochlea, audio: np.ndarray, rate: int, chunk: int) -> int:
    state = cochlea.new_state(rate)
    spikes = 0
    for i in range(0, len(audio), chunk):
        spikes += len(cochlea.process(audio[i : i + chunk], state, final=i + chunk >= len(audio)))
    return spikes


def batched_streams(audio: np.ndarray, rate: int, streams: int, seconds: float) -> list[np.ndarray]:
    """``streams`` int16 clips of ``seconds`` from ``audio``, each starting elsewhere in
    it (rotated), so that the streams do not spike in step."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    length = min(len(pcm), round(seconds * rate))
    shift = max(1, len(pcm) // streams)
    return [np.roll(pcm, -k * shift)[:length] for k in range(streams)]


def run_batched(cochlea: Cochlea, streams: list[np.ndarray], rate: int, chunk: int) -> int:
    """All streams' chunks through one ``process_many`` call per chunk time, as the
    server's recognizer steps them."""
    states = [cochlea.new_state(rate) for _ in streams]
    spikes, length = 0, len(streams[0])
    for i in range(0, length, chunk):
        final = i + chunk >= length
        batch = [(s[i : i + chunk], state, final) for s, state in zip(streams, states, strict=True)]
        spikes += sum(len(events) for events in cochlea.process_many(batch))
    return spikes


def run_binned(cochlea: Cochlea, streams: list[np.ndarray], rate: int, chunk: int) -> int:
    """:func:`run_batched` with the spikes counted in bins, as the server's recognizer
    feeds them (``Recognizer.feed_audio_many``)."""
    states = [cochlea.new_state(rate) for _ in streams]
    bin_samples = round(BIN_MS / 1000 * cochlea.config.sample_rate)
    binners = [SpikeBinner(cochlea.config.channels, bin_samples, rate) for _ in streams]
    spikes, length = 0, len(streams[0])
    for i in range(0, length, chunk):
        final = i + chunk >= length
        batch = [(s[i : i + chunk], state, final) for s, state in zip(streams, states, strict=True)]
        for (first_bin, counts, n), state, binner in zip(
            cochlea.process_many_binned(batch, bin_samples), states, binners, strict=True
        ):
            binner.add_counts(counts, first_bin, state.samples_done)
            spikes += n
    return spikes


def measure(
    channels: int,
    feed: str,
    audio: np.ndarray,
    rate: int,
    chunk: int,
    repeats: int,
    streams: list[np.ndarray] | None = None,
) -> dict:
    cochlea = Cochlea(CochleaConfig(channels=channels))
    seconds = len(audio) / rate
    if feed == "whole":
        fn = lambda: run_whole(cochlea, audio, rate)  # noqa: E731
    elif feed in ("batched", "binned"):
        assert streams is not None
        run = run_batched if feed == "batched" else run_binned
        fn = lambda: run(cochlea, streams, rate, chunk)  # noqa: E731
        seconds = sum(len(s) for s in streams) / rate
    else:
        fn = lambda: run_chunked(cochlea, audio, rate, chunk)  # noqa: E731
    times, spikes = cpu_times(fn, repeats)
    summary = cpu_summary(times, seconds)
    cpu = summary["cpu_s_median"]
    return {
        "channels": channels,
        "feed": feed,
        "audio_s": seconds,
        **summary,
        "audio_s_per_cpu_s": seconds / cpu if cpu > 0 else float("inf"),
        "spikes": spikes,
    }


# --------------------------------------------------------------------------- lauscher


class _SerialPool:
    """Stands in for ``multiprocessing.Pool`` so lauscher runs in this process, one core."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __enter__(self) -> _SerialPool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Callable, items: object) -> list:
        return [fn(item) for item in items]


@contextlib.contextmanager
def _lauscher_in_process() -> Iterator[None]:
    import lauscher.transformations.basilar_membrane as basilar
    import lauscher.transformations.bushy_cell as bushy
    import lauscher.transformations.hair_cell as hair

    modules = (basilar, bushy, hair)
    saved = [m.Pool for m in modules]
    for m in modules:
        m.Pool = _SerialPool
    try:
        yield
    finally:
        for m, pool in zip(modules, saved, strict=True):
            m.Pool = pool


def lauscher_available() -> str | None:
    """None when lauscher can be used, else why not."""
    try:
        import lauscher.transformations.wave2spike  # noqa: F401
    except ImportError as error:
        return f"lauscher is not installed ({error}); install it with `pip install lauscher`"
    return None


def lauscher_memory_gb(channels: int, samples: int) -> float:
    # BushyCell holds float64 [channels, samples/2 + 1, 40] (lauscher works at rate/2).
    return channels * (samples // 2 + 1) * 40 * 8 / 1e9


def measure_lauscher(
    channels: int, audio: np.ndarray, rate: int, repeats: int, ours_repeats: int
) -> dict:
    from lauscher.audiowaves import MonoAudioWave
    from lauscher.transformations.wave2spike import Wave2Spike

    def convert(samples: np.ndarray, n: int) -> int:
        train = MonoAudioWave(samples.astype(np.float64), rate).transform(Wave2Spike(n))
        return int(train.spike_times.size)

    with _lauscher_in_process():
        # A short warm-up JIT-compiles lauscher's numba helper; a full one would take minutes.
        convert(audio[: rate // 20], 2)
        times, spikes = cpu_times(lambda: convert(audio, channels), repeats, warm_up=False)
    cochlea = Cochlea(CochleaConfig(channels=channels))
    ours = statistics.median(cpu_times(lambda: run_whole(cochlea, audio, rate), ours_repeats)[0])
    seconds = len(audio) / rate
    summary = cpu_summary(times, seconds, "lauscher_")
    return {
        "channels": channels,
        "audio_s": seconds,
        **summary,
        "lauscher_spikes": spikes,
        "ours_cpu_s_median": ours,
        "ours_rtf": ours / seconds,
        "ratio_lauscher_to_ours": (
            summary["lauscher_cpu_s_median"] / ours if ours > 0 else float("inf")
        ),
    }


# --------------------------------------------------------------------------- report


def print_tables(report: dict, console: Console) -> None:
    audio = report["audio"]
    console.print(
        f"[bold]Audio[/]: {audio['seconds']:.2f} s at {audio['rate']} Hz from {audio['source']}"
    )
    table = Table(title=f"spikeear cochlea, one stream (CPU time, median of {report['repeats']})")
    for name in ("channels", "feed", "audio s", "CPU s", "RTF", "x real time", "spikes"):
        table.add_column(name, justify="right")
    feeds = {
        "chunks": f"{report['chunk_ms']:g} ms chunks",
        "whole": "whole file",
        "batched": f"{report['streams']} streams x {report['chunk_ms']:g} ms, process_many",
        "binned": f"{report['streams']} streams x {report['chunk_ms']:g} ms, "
        f"process_many_binned ({BIN_MS:g} ms bins)",
    }
    for r in report["ours"]:
        feed = feeds[r["feed"]]
        table.add_row(
            str(r["channels"]),
            feed,
            f"{r['audio_s']:.2f}",
            f"{r['cpu_s_median']:.4f}",
            f"{r['rtf']:.4f}",
            f"{r['audio_s_per_cpu_s']:.1f}",
            str(r["spikes"]),
        )
    console.print(table)

    verdict = report["target"]
    if verdict["rtf"] is None:
        console.print(f"Target not checked: {verdict['note']}")
    else:
        mark = "[bold green]MET[/]" if verdict["met"] else "[bold red]NOT MET[/]"
        console.print(
            f"Target RTF <= {verdict['target_rtf']} for the default front end "
            f"({verdict['channels']} channels, {report['chunk_ms']:g} ms chunks, one core): "
            f"RTF {verdict['rtf']:.4f} -> {mark}"
        )

    lauscher = report["lauscher"]
    if not lauscher["available"]:
        console.print(f"[yellow]lauscher comparison skipped[/]: {lauscher['reason']}")
        return
    table = Table(
        title=(
            "lauscher (reference cochlea, in-process, one core) vs ours, whole-file call, "
            f"same {lauscher['audio_s']:.2f} s excerpt"
        )
    )
    for name in ("channels", "lauscher CPU s", "lauscher RTF", "ours CPU s", "ours RTF",
                 "lauscher / ours"):  # fmt: skip
        table.add_column(name, justify="right")
    for r in lauscher["results"]:
        if "skipped" in r:
            table.add_row(str(r["channels"]), "skipped", r["skipped"], "", "", "")
            continue
        table.add_row(
            str(r["channels"]),
            f"{r['lauscher_cpu_s_median']:.2f}",
            f"{r['lauscher_rtf']:.2f}",
            f"{r['ours_cpu_s_median']:.4f}",
            f"{r['ours_rtf']:.4f}",
            f"{r['ratio_lauscher_to_ours']:.0f}x",
        )
    console.print(table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--audio", help="audio file to time (default: ~10 s of concatenated speech)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the default clip")
    p.add_argument("--channels", type=int, nargs="+", default=[DEFAULT_CHANNELS, 700])
    p.add_argument("--chunk-ms", type=float, default=20.0, help="streaming chunk length")
    p.add_argument("--repeats", type=int, default=5, help="repetitions per measurement")
    p.add_argument(
        "--streams",
        type=int,
        default=100,
        help="streams batched per process_many call at the default channels (0: skip)",
    )
    p.add_argument("--stream-seconds", type=float, default=2.0, help="audio per batched stream")
    p.add_argument(
        "--lauscher-seconds",
        type=float,
        default=1.0,
        help="length of the excerpt (from the start of the clip) converted with lauscher",
    )
    p.add_argument("--lauscher-repeats", type=int, default=1)
    p.add_argument(
        "--lauscher-max-gb",
        type=float,
        default=4.0,
        help="skip a lauscher run whose bushy-cell array would exceed this",
    )
    p.add_argument("--no-lauscher", action="store_true", help="skip the lauscher comparison")
    p.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.lauscher_repeats < 1:
        p.error("repetitions must be at least 1")
    if args.chunk_ms <= 0 or args.seconds <= 0 or args.lauscher_seconds <= 0:
        p.error("--chunk-ms, --seconds and --lauscher-seconds must be positive")
    if args.streams < 0 or args.stream_seconds <= 0:
        p.error("--streams must be >= 0 and --stream-seconds positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=args.json)  # progress to stderr when stdout carries JSON
    rate = CochleaConfig().sample_rate
    try:
        audio, audio_rate, source = benchmark_audio(args.audio, args.seconds, rate)
    except AudioError as error:
        console.print(f"[red]error[/]: {error}")
        return 2
    chunk = max(1, round(audio_rate * args.chunk_ms / 1000))

    ours = []
    for channels in args.channels:
        for feed in ("chunks", "whole"):
            console.log(f"ours: {channels} channels, {feed} ...")
            ours.append(measure(channels, feed, audio, audio_rate, chunk, args.repeats))
    if args.streams and DEFAULT_CHANNELS in args.channels:
        console.log(f"ours: {DEFAULT_CHANNELS} channels, {args.streams} streams batched ...")
        streams = batched_streams(audio, audio_rate, args.streams, args.stream_seconds)
        for feed in ("batched", "binned"):
            ours.append(
                measure(DEFAULT_CHANNELS, feed, audio, audio_rate, chunk, args.repeats, streams)
            )

    target = {"target_rtf": TARGET_RTF, "channels": DEFAULT_CHANNELS, "rtf": None, "met": None}
    default = [r for r in ours if r["channels"] == DEFAULT_CHANNELS and r["feed"] == "chunks"]
    if default:
        target["rtf"] = default[0]["rtf"]
        target["met"] = default[0]["rtf"] <= TARGET_RTF
    else:
        target["note"] = f"{DEFAULT_CHANNELS} channels not among --channels"

    lauscher: dict = {"available": False}
    reason = "--no-lauscher" if args.no_lauscher else lauscher_available()
    if reason is not None:
        lauscher["reason"] = reason
    else:
        excerpt = audio[: max(1, round(args.lauscher_seconds * audio_rate))]
        lauscher = {"available": True, "audio_s": len(excerpt) / audio_rate, "results": []}
        for channels in args.channels:
            need = lauscher_memory_gb(channels, len(excerpt))
            if need > args.lauscher_max_gb:
                lauscher["results"].append(
                    {"channels": channels, "skipped": f"needs ~{need:.1f} GB (--lauscher-max-gb)"}
                )
                continue
            console.log(f"lauscher: {channels} channels on {len(excerpt) / audio_rate:.2f} s ...")
            lauscher["results"].append(
                measure_lauscher(channels, excerpt, audio_rate, args.lauscher_repeats, args.repeats)
            )

    report = {
        "audio": {"source": source, "seconds": len(audio) / audio_rate, "rate": audio_rate},
        "repeats": args.repeats,
        "chunk_ms": args.chunk_ms,
        "streams": args.streams,
        "clock": "time.process_time (CPU seconds of this process)",
        "ours": ours,
        "target": target,
        "lauscher": lauscher,
    }
    return emit(report, args.json, lambda r: print_tables(r, console))


if __name__ == "__main__":
    sys.exit(main())
