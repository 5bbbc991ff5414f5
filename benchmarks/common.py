"""What the benchmarks share: where the data is, test audio with known word
boundaries, stand-in models, and ``spikeear serve`` in a subprocess."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from models.vocabulary import COMMANDS, DIGITS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "speech_commands"
FIXTURES = REPO / "tests" / "fixtures"
RATE = 16000
WORDS = (*COMMANDS, *DIGITS)  # the vocabulary without its fillers
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def data_folder(path: str | None) -> Path | None:
    """``--data``, else the shared Speech Commands folder when present (None: use the
    test fixtures)."""
    if path is not None:
        if not Path(path).is_dir():
            raise SystemExit(f"--data {path}: not a folder")
        return Path(path)
    return DEFAULT_DATA if DEFAULT_DATA.is_dir() else None


def read_audio(path: Path, rate: int = RATE) -> np.ndarray:
    """A file's samples as float32 at ``rate``."""
    import soxr

    from audio_frontend.audio_io import load_audio

    audio, native = load_audio(path)
    if native != rate:
        audio = soxr.resample(audio, native, rate)
    return audio.astype(np.float32)


def fixture_word(path: Path) -> str | None:
    """The word a test fixture holds (None for noise), from its Speech Commands or
    FSDD (``fsdd_<digit>_<speaker>_<n>``) name."""
    name = path.stem
    if name.startswith("noise_"):
        return None
    if name.startswith("fsdd_"):
        digit = name.split("_")[1]
        return DIGITS[int(digit)] if digit.isdigit() else None
    return name.split("_")[0]


def endpointing_s() -> dict[str, float]:
    """The decoder's segmentation settings in seconds: a word opens after ``onset``
    of activity, closes after ``hangover`` of quiet, is kept from ``min`` and cut at
    ``max``."""
    from models.decoding import DecoderConfig

    c = DecoderConfig()
    return {"onset": c.onset_s, "hangover": c.hangover_s, "min": c.min_word_s, "max": c.max_word_s}


# --------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class Clip:
    word: str
    source: str
    audio: np.ndarray  # float32 at RATE: the word with short padding, faded in and out
    onset: float  # seconds into ``audio`` where the word starts (ground truth)
    offset: float  # ... and ends


def word_bounds(
    audio: np.ndarray, top_db: float = 35.0, frame_s: float = 0.02, hop_s: float = 0.01
) -> tuple[int, int, float]:
    """Word extent on a clean clip: frames within ``top_db`` of the loudest frame.

    Returns (first sample, end sample, peak-to-floor dB), the floor being the 10th
    percentile of frame power (a clip with a high floor is too noisy to trust).
    """
    frame, hop = round(frame_s * RATE), round(hop_s * RATE)
    n = 1 + max(0, (len(audio) - frame) // hop)
    index = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]
    index = np.minimum(index, len(audio) - 1)
    power_db = 10 * np.log10((audio[index].astype(np.float64) ** 2).mean(axis=1) + 1e-12)
    peak = power_db.max()
    active = np.flatnonzero(power_db >= peak - top_db)
    start, end = int(active[0] * hop), min(len(audio), int(active[-1] * hop + frame))
    return start, end, float(peak - np.percentile(power_db, 10))


class ClipLibrary:
    """Trimmed word clips and background-noise clips from a data folder (or the fixtures)."""

    def __init__(
        self,
        data: Path | None,
        words: tuple[str, ...] = WORDS,
        per_word: int = 12,
        seed: int = 0,
        top_db: float = 35.0,
        min_snr_db: float = 25.0,
        pad_s: float = 0.02,
    ) -> None:
        rng = random.Random(seed)
        self.clips: list[Clip] = []
        self.noise: list[np.ndarray] = []
        self.rejected = 0
        candidates: list[tuple[str, Path]] = []
        if data is not None:
            self.source = str(data)
            for word in words:
                files = sorted((data / word).glob("*.wav"))
                rng.shuffle(files)
                candidates += [(word, f) for f in files[: per_word * 2]]  # some get rejected
            noise_files = sorted((data / "_silence_").glob("*.wav"))
            rng.shuffle(noise_files)
            noise_files = noise_files[:40]
        else:
            self.source = f"{FIXTURES} (no data folder)"
            for f in sorted(FIXTURES.glob("*.wav")):
                if fixture_word(f) in words:
                    candidates.append((fixture_word(f), f))
            noise_files = sorted(FIXTURES.glob("noise_*.wav"))
        taken: dict[str, int] = {}
        for word, path in candidates:
            if taken.get(word, 0) >= per_word:
                continue
            audio = read_audio(path)
            if len(audio) < RATE // 4:
                self.rejected += 1
                continue
            start, end, snr = word_bounds(audio, top_db)
            # A noisy clip's trimmed extent is not a ground truth to score against.
            if snr < min_snr_db or not 0.12 <= (end - start) / RATE <= 0.95:
                self.rejected += 1
                continue
            pad = round(pad_s * RATE)
            a, b = max(0, start - pad), min(len(audio), end + pad)
            piece = audio[a:b].copy()
            fade = min(round(0.005 * RATE), len(piece) // 4)  # no click at the cut
            ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade, dtype=np.float32))
            piece[:fade] *= ramp
            piece[-fade:] *= ramp[::-1]
            self.clips.append(Clip(word, path.name, piece, (start - a) / RATE, (end - a) / RATE))
            taken[word] = taken.get(word, 0) + 1
        for path in noise_files:
            noise = read_audio(path)
            if len(noise) and np.abs(noise).max() > 0:
                self.noise.append(noise)
        if not self.clips:
            raise SystemExit(f"no usable word clips for {words} in {self.source}")

    @property
    def words(self) -> list[str]:
        return sorted({c.word for c in self.clips})


@dataclass
class Sequence:
    audio: np.ndarray  # float32 at RATE
    words: list[tuple[str, float, float]]  # ground truth: word, start s, end s
    sources: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.audio) / RATE

    def s16le(self) -> bytes:
        return (np.clip(self.audio, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()


def build_sequence(
    library: ClipLibrary,
    rng: random.Random,
    seconds: float | None = None,
    n_words: int | None = None,
    gap: tuple[float, float] = (0.4, 0.8),
    lead: float = 0.3,
    tail: float = 0.6,
) -> Sequence:
    """Random words separated by silence: ``n_words`` of them, or as many as fit ``seconds``.

    A sequence always holds at least one word; with ``seconds`` it is padded with
    silence to exactly that length (or longer if one word does not fit).
    """
    parts: list[np.ndarray] = [np.zeros(round(lead * RATE), np.float32)]
    pos = len(parts[0])
    truth: list[tuple[str, float, float]] = []
    sources = []
    while True:
        clip = rng.choice(library.clips)
        need = len(clip.audio) + round(tail * RATE)
        if truth:
            if n_words is not None and len(truth) >= n_words:
                break
            silence = round(rng.uniform(*gap) * RATE)
            if seconds is not None and pos + silence + need > seconds * RATE:
                break
            parts.append(np.zeros(silence, np.float32))
            pos += silence
        truth.append((clip.word, pos / RATE + clip.onset, pos / RATE + clip.offset))
        sources.append(clip.source)
        parts.append(clip.audio)
        pos += len(clip.audio)
    end = max(pos + round(tail * RATE), round((seconds or 0) * RATE))
    parts.append(np.zeros(end - pos, np.float32))
    return Sequence(np.concatenate(parts), truth, sources)


def greedy_pairs(scored: list[tuple[float, int, int]]) -> list[tuple[int, int]]:
    """One-to-one matching of ``(score, truth index, found index)`` candidates, best
    score first: how the benchmarks pair detected words with the ground truth."""
    used_t: set[int] = set()
    used_f: set[int] = set()
    matched = []
    for _, i, j in sorted(scored, reverse=True):
        if i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
            matched.append((i, j))
    return matched


# --------------------------------------------------------------------------- models


def default_bin_ms() -> float:
    """The network bin width ``spikeear train`` uses by default."""
    from training.config import TrainConfig

    return float(TrainConfig.bin_ms)


def make_random_model(path: Path, seed: int = 0, bin_ms: float | None = None) -> Path:
    """An untrained network of the default size whose batch norms have seen data, with
    the neuron time constants training would use for ``bin_ms`` (default: training's)."""
    import torch

    from audio_frontend.cochlea import CochleaConfig
    from models.model_file import ModelBundle
    from models.network import Classifier, NetworkConfig
    from models.vocabulary import DEFAULT_VOCABULARY
    from training.train import time_constants

    bin_ms = default_bin_ms() if bin_ms is None else bin_ms
    torch.manual_seed(seed)
    network = Classifier(NetworkConfig(**time_constants(bin_ms)))
    network.train()
    with torch.no_grad():  # untrained batch norms would scale the inputs by nothing useful
        for _ in range(3):
            network(torch.poisson(torch.rand(8, 30, 64) * 4 * bin_ms / 10))
    network.eval()
    card = {"name": "random-untrained (benchmark only)"}
    ModelBundle(network, CochleaConfig(), DEFAULT_VOCABULARY, bin_ms, card).save(path)
    return path


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model file (default: models/spikeear-default.pt)")
    parser.add_argument("--random-model", action="store_true", help="an untrained network")
    parser.add_argument(
        "--random-bin-ms", type=float, help="its bin (default: the training default)"
    )


def resolve_model(args: argparse.Namespace, workdir: Path) -> str | None:
    """The model file ``add_model_flags`` chose: --model, a random one written to
    ``workdir``, or the bundled default (None when there is none)."""
    from models.model_file import DEFAULT_MODEL_PATH

    if args.random_model:
        return str(make_random_model(workdir / "random-model.pt", bin_ms=args.random_bin_ms))
    if args.model:
        return args.model
    return str(DEFAULT_MODEL_PATH) if DEFAULT_MODEL_PATH.exists() else None


# --------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> str:
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to contact non-loopback host {host!r}")
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


class ServerProcess:
    """``spikeear serve`` in a subprocess on a free loopback port; ``stop()`` ends it."""

    def __init__(
        self,
        model: str,
        log_path: Path,
        startup_timeout: float = 90.0,
        threads: int | None = None,
        workers: str = "auto",
        words: str | None = None,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--model", model, "--log-level", "warning"]
        command += ["--workers", str(workers)]
        if words is not None:
            command += ["--words", words]
        env = dict(os.environ)
        if threads is not None:  # torch's intra-op pool reads these at startup
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.process.pid
        try:
            self._wait_until_up(startup_timeout, workers)
        except BaseException:  # also Ctrl-C: the server is in its own session, stop it here
            self.stop()
            raise

    def _wait_until_up(self, startup_timeout: float, workers: str) -> None:
        deadline = time.monotonic() + startup_timeout
        while True:
            if self.process.poll() is not None:
                raise SystemExit(
                    f"server exited at startup; see {self.log_path}:\n{self.log_tail()}"
                )
            try:
                http_get(f"{self.base}/health", timeout=2.0)
                if workers != "1":  # the first worker answers; give the others time to start
                    time.sleep(4.0)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"server not up after {startup_timeout:.0f} s") from None
                time.sleep(0.2)

    def log_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


# --------------------------------------------------------------------------- output


def console():
    """A rich console that does not wrap tables to 80 columns when piped."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def emit(report: dict, as_json: bool, show: Callable[[dict], None]) -> int:
    """Print ``report`` as JSON or through ``show``; the exit status of a finished run."""
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        show(report)
    return 0
