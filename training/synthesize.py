"""Synthetic keyword clips for training augmentation, in the Speech Commands layout.

Every synthetic voice (engine + voice + pitch/speed setting) is one "speaker" and says
each word once. The output folder looks like Speech Commands::

    OUT/SYNTHETIC                      empty marker: keep this folder out of validation
    OUT/README.md                      engines, voices and their licences
    OUT/<word>/<speakerhex>_nohash_<n>.wav

Clips are 16 kHz mono int16, exactly 1 s, with the word (leading/trailing silence
trimmed) at a random offset and peak-normalised to a random level in [-25, -3] dBFS.

Engines, each skipped when not installed (all run offline, all free for any use):

* ``espeak-ng`` (Debian ``espeak-ng``; GPL-3.0-or-later): English accents x voice variants,
  pitch 20-80, speed 120-200 words/min.
* ``flite`` (Debian ``flite``; BSD-style CMU licence): kal, kal16, awb, rms, slt, varied with
  sox ``pitch``/``tempo`` (Debian ``sox``) when sox is installed.
* ``nanotts`` (PyPI ``py-nanotts``, SVOX Pico; Apache-2.0): en-US, en-GB, pitch/speed varied.

MBROLA voices and the non-commercial RHVoice voices are never used.

Usage::

    python -m training.synthesize --out /path/to/synth
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000
CLIP_SAMPLES = SAMPLE_RATE  # exactly 1 s
KEYWORDS = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip
UNKNOWN_WORDS = ("cat", "bird", "house", "happy", "tree", "marvin", "wow", "bed", "dog", "learn")
WORDS = KEYWORDS + UNKNOWN_WORDS
MARKER = "SYNTHETIC"
LEVEL_DBFS = (-25.0, -3.0)
TIMEOUT_S = 10.0
TRIM_DB = 40.0  # silence = more than this below the clip's peak
TRIM_MARGIN_S = 0.02

ESPEAK_ACCENTS = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
    "en-029", "en-us-nyc",
)  # fmt: skip
ESPEAK_VARIANTS = (
    tuple(f"m{i}" for i in range(1, 8))
    + tuple(f"f{i}" for i in range(1, 6))
    + (
        "croak",
        "whisper",
    )
)
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")  # awb_time is limited-domain: left out
NANOTTS_VOICES = ("en-US", "en-GB")
ENGINES = ("espeak-ng", "flite", "nanotts")
# Pitch/speed variants per base voice. espeak-ng has 8 x 14 = 112 base voices; flite and
# Pico have few, so they get more pitch/speed settings each: 112 + 40 + 16 = 168 voices.
DEFAULT_VARIANTS = {"espeak-ng": 1, "flite": 8, "nanotts": 8}

LICENCES = {
    "espeak-ng": "espeak-ng (Debian package `espeak-ng`): GPL-3.0-or-later, engine and voice data",
    "flite": "CMU Flite (Debian package `flite`): BSD-style CMU/Flite licence, "
    "free for any use including commercial; pitch/tempo post-processing with SoX (GPL-2.0+)",
    "nanotts": "SVOX Pico via py-nanotts (PyPI `py-nanotts`): Apache-2.0, engine and lingware",
}


class SynthesisError(RuntimeError):
    """One clip could not be made; it is skipped and counted."""


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an engine, a voice and a pitch/speed setting bucket."""

    engine: str
    voice: str
    pitch: float  # espeak: 0-99; flite: sox cents; nanotts: multiplier
    speed: float  # espeak: words/min; flite: sox tempo factor; nanotts: multiplier

    @property
    def identity(self) -> str:
        return f"{self.engine}:{self.voice}:p{self.pitch:g}:s{self.speed:g}"

    @property
    def speaker(self) -> str:
        return hashlib.sha1(self.identity.encode()).hexdigest()[:8]


@dataclass
class EngineReport:
    voices: int = 0
    clips: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)


def available_engines() -> dict[str, str | None]:
    """Engine name -> None when usable, else why not."""
    status: dict[str, str | None] = {}
    status["espeak-ng"] = None if shutil.which("espeak-ng") else "espeak-ng not on PATH"
    status["flite"] = None if shutil.which("flite") else "flite not on PATH"
    status["nanotts"] = (
        None if importlib.util.find_spec("py_nanotts") else "Python package py-nanotts missing"
    )
    return status


def _grid(low: float, high: float, step: float) -> list[float]:
    return [round(v, 4) for v in np.arange(low, high + step / 2, step)]


# Settings are drawn from a grid so that the bucket *is* the setting: distinct variants of
# a base voice never share a speaker id.
SETTING_GRIDS: dict[str, tuple[list[float], list[float]]] = {
    "espeak-ng": (_grid(20, 80, 5), _grid(120, 200, 10)),
    "flite": (_grid(-400, 400, 50), _grid(0.8, 1.25, 0.05)),
    "nanotts": (_grid(0.7, 1.5, 0.05), _grid(0.75, 1.35, 0.05)),
}


def make_voices(
    engine: str, variants_per_voice: int, seed: int, *, sox: bool = True
) -> list[Voice]:
    """Base voices x distinct pitch/speed settings for one engine, reproducible from seed."""
    rng = np.random.default_rng([seed, int(hashlib.sha1(engine.encode()).hexdigest()[:8], 16)])
    if engine == "espeak-ng":
        bases = [f"{a}+{v}" for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS]
    elif engine == "flite":
        bases = list(FLITE_VOICES)
    elif engine == "nanotts":
        bases = list(NANOTTS_VOICES)
    else:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if any(b.startswith("mb") for b in bases):  # MBROLA voices: non-commercial licences
        raise ValueError("MBROLA voices are not allowed")
    if engine == "flite" and not sox:  # no way to shift pitch/tempo: one plain voice each
        return [Voice(engine, b, 0.0, 1.0) for b in bases]
    pitches, speeds = SETTING_GRIDS[engine]
    cells = [(p, s) for p in pitches for s in speeds]
    voices = []
    for base in bases:
        chosen = rng.choice(len(cells), size=min(variants_per_voice, len(cells)), replace=False)
        voices += [Voice(engine, base, *cells[i]) for i in sorted(chosen)]
    return voices


def _run(cmd: Sequence[str]) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SynthesisError(f"{cmd[0]} timed out after {TIMEOUT_S:g} s") from exc
    except OSError as exc:
        raise SynthesisError(f"{cmd[0]}: {exc}") from exc
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise SynthesisError(f"{cmd[0]} exit {done.returncode}: {message[0]}")


def _read(path: Path) -> np.ndarray:
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise SynthesisError(f"unreadable output: {exc}") from exc
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    return audio


def render(voice: Voice, word: str, workdir: Path) -> np.ndarray:
    """Raw float32 16 kHz audio of voice saying word (silence not yet trimmed)."""
    raw = workdir / "raw.wav"
    raw.unlink(missing_ok=True)
    pitch, speed, out = f"{voice.pitch:g}", f"{voice.speed:g}", str(raw)
    if voice.engine == "espeak-ng":
        _run(["espeak-ng", "-v", voice.voice, "-p", pitch, "-s", speed, "-w", out, word])
    elif voice.engine == "flite":
        _run(["flite", "-voice", voice.voice, "-t", word, "-o", out])
        if voice.pitch != 0 or voice.speed != 1:
            raw = workdir / "shifted.wav"
            raw.unlink(missing_ok=True)
            rate = str(SAMPLE_RATE)
            _run(["sox", out, "-r", rate, str(raw), "pitch", pitch, "tempo", "-s", speed])
    elif voice.engine == "nanotts":
        nanotts = [sys.executable, "-m", "py_nanotts", word, "-o", out, "-v", voice.voice]
        _run([*nanotts, "--pitch", pitch, "--speed", speed])
    else:
        raise ValueError(f"unknown engine {voice.engine!r}")
    return _read(raw)


def trim(audio: np.ndarray) -> np.ndarray:
    """Cut leading and trailing silence (TRIM_DB below peak), keeping a short margin."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak < 1e-4:
        raise SynthesisError("silent output")
    loud = np.flatnonzero(np.abs(audio) > peak * 10 ** (-TRIM_DB / 20))
    margin = int(TRIM_MARGIN_S * SAMPLE_RATE)
    return audio[max(0, loud[0] - margin) : loud[-1] + 1 + margin]


def place(audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Exactly one second: the word at a random offset, peak at a random level in dBFS."""
    cropped = audio.size > CLIP_SAMPLES
    word = audio[:CLIP_SAMPLES].copy()
    if cropped:  # fade out over 10 ms rather than cut off with a click
        fade = SAMPLE_RATE // 100
        word[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    out = np.zeros(CLIP_SAMPLES, dtype=np.float32)
    offset = int(rng.integers(0, CLIP_SAMPLES - word.size + 1))
    out[offset : offset + word.size] = word
    level = 10 ** (rng.uniform(*LEVEL_DBFS) / 20)
    out *= level / float(np.max(np.abs(out)))
    return out, cropped


def _clip_rng(seed: int, voice: Voice, word: str) -> np.random.Generator:
    digest = hashlib.sha1(f"{seed}:{voice.identity}:{word}".encode()).hexdigest()
    return np.random.default_rng(int(digest[:16], 16))


def _prepare(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / MARKER).exists():
            raise FileExistsError(
                f"{out_dir} is not empty and has no {MARKER} marker; refusing to write there"
            )
        for old in out_dir.glob("*/*_nohash_*.wav"):  # stale clips of an earlier run
            old.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).touch()


def _write_readme(
    out_dir: Path,
    voices: Sequence[Voice],
    reports: dict[str, EngineReport],
    skipped: dict[str, str],
    per_word: Counter,
    words: Sequence[str],
    seed: int,
) -> None:
    lines = [
        "# Synthetic keyword clips (training augmentation only)",
        "",
        "Made by `python -m training.synthesize` (spikeear). The empty `SYNTHETIC` marker keeps",
        "this folder out of validation: real speech is the measure.",
        "",
        f"Layout: Speech Commands, `<word>/<speakerhex>_nohash_<n>.wav`; 16 kHz mono int16, "
        f"1 s, word at a random offset, peak {LEVEL_DBFS[0]:g} to {LEVEL_DBFS[1]:g} dBFS. "
        "`<speakerhex>` = first 8 hex digits of sha1(`engine:voice:p<pitch>:s<speed>`); each",
        f"synthetic voice is one speaker. Seed {seed}. Words: {', '.join(words)}.",
        "",
        "## Engines and licences",
        "",
        "| engine | voices | clips | failures | licence |",
        "|---|---|---|---|---|",
    ]
    for engine, report in reports.items():
        lines.append(
            f"| {engine} | {report.voices} | {report.clips} | {report.failures} "
            f"| {LICENCES[engine]} |"
        )
    for engine, why in skipped.items():
        lines.append(f"| {engine} | skipped: {why} | 0 | 0 | {LICENCES.get(engine, '')} |")
    lines += [
        "",
        "Never used: MBROLA voices and RHVoice evgeniy/lyubov (non-commercial licences).",
        "",
        "## Clips per word",
        "",
        ", ".join(f"{w}: {per_word[w]}" for w in words),
        "",
        "## Voices",
        "",
        "Pitch/speed units: espeak-ng `-p` (0-99) and `-s` (words/min); flite: SoX `pitch`",
        "(cents) and `tempo` factor; nanotts: Pico pitch and speed multipliers.",
        "",
        "| speaker | engine | voice | pitch | speed |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {v.speaker} | {v.engine} | {v.voice} | {v.pitch:g} | {v.speed:g} |" for v in voices
    ]
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")


def _progress(items: Sequence, description: str, show: bool) -> Iterable:
    if not show:
        return items
    from rich.progress import track

    return track(items, description=description)


def synthesize(
    out_dir: str | Path,
    words: Sequence[str] = WORDS,
    engines: Sequence[str] | None = None,
    variants_per_voice: int | dict[str, int] | None = None,
    seed: int = 0,
    *,
    max_voices: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Write synthetic clips of ``words`` into ``out_dir``; return a summary.

    ``engines``: names from ENGINES (None: every installed one; an engine that is not
    installed is skipped and reported). ``variants_per_voice``: pitch/speed settings per base
    voice, an int for every engine or a dict per engine (None: DEFAULT_VARIANTS).
    ``max_voices``: keep at most this many voices per engine (a seeded random subset).
    """
    start = time.monotonic()
    out_dir = Path(out_dir)
    log = log or (lambda message: None)
    words = list(dict.fromkeys(w.strip().lower() for w in words))
    if not words or any(not w.isalpha() for w in words):
        raise ValueError(f"words must be non-empty alphabetic strings, got {words!r}")
    status = available_engines()
    wanted = list(ENGINES if engines is None else engines)
    unknown = [e for e in wanted if e not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engine(s) {unknown}; choose from {', '.join(ENGINES)}")
    skipped = {e: status[e] for e in wanted if status[e] is not None}
    for engine, why in skipped.items():
        log(f"skipping {engine}: {why}")
    use = [e for e in wanted if e not in skipped]
    sox = shutil.which("sox") is not None
    if "flite" in use and not sox:
        log("sox not on PATH: flite voices get no pitch/tempo variants")

    counts = dict(DEFAULT_VARIANTS)
    if isinstance(variants_per_voice, int):
        counts = dict.fromkeys(ENGINES, variants_per_voice)
    elif variants_per_voice is not None:
        counts.update(variants_per_voice)
    voices: list[Voice] = []
    reports: dict[str, EngineReport] = {}
    for engine in use:
        mine = make_voices(engine, max(1, counts.get(engine, 1)), seed, sox=sox)
        if max_voices is not None and len(mine) > max_voices:
            pick = np.random.default_rng(seed).choice(len(mine), size=max_voices, replace=False)
            mine = [mine[i] for i in sorted(pick)]
        voices += mine
        reports[engine] = EngineReport(voices=len(mine))

    _prepare(out_dir)
    per_word: Counter = Counter()
    cropped = 0
    taken: Counter = Counter()  # (word, speaker) -> next n
    jobs = [(v, w) for v in voices for w in words]
    with tempfile.TemporaryDirectory(prefix="synth-") as tmp:
        workdir = Path(tmp)
        for voice, word in _progress(jobs, "synthesizing", progress and bool(jobs)):
            report = reports[voice.engine]
            try:
                audio, was_cropped = place(
                    trim(render(voice, word, workdir)), _clip_rng(seed, voice, word)
                )
            except SynthesisError as exc:
                report.failures += 1
                if len(report.errors) < 5:
                    report.errors.append(f"{voice.identity} {word!r}: {exc}")
                continue
            n = taken[word, voice.speaker]
            taken[word, voice.speaker] += 1
            folder = out_dir / word
            folder.mkdir(exist_ok=True)
            pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)
            sf.write(folder / f"{voice.speaker}_nohash_{n}.wav", pcm, SAMPLE_RATE, "PCM_16")
            report.clips += 1
            per_word[word] += 1
            cropped += was_cropped

    _write_readme(out_dir, voices, reports, skipped, per_word, words, seed)
    return {
        "out_dir": str(out_dir),
        "clips": sum(per_word.values()),
        "voices": len(voices),
        "per_word": {w: per_word[w] for w in words},
        "engines": {
            e: {"voices": r.voices, "clips": r.clips, "failures": r.failures, "errors": r.errors}
            for e, r in reports.items()
        },
        "skipped_engines": skipped,
        "failures": sum(r.failures for r in reports.values()),
        "cropped": cropped,
        "seconds": round(time.monotonic() - start, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.synthesize",
        description="Write synthetic keyword clips (Speech Commands layout) for augmentation.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--words", nargs="+", default=list(WORDS), help="words to synthesize")
    parser.add_argument(
        "--engines", nargs="+", choices=ENGINES, default=None, help="default: all installed"
    )
    parser.add_argument(
        "--variants-per-voice",
        type=int,
        default=None,
        help="pitch/speed settings per base voice for every engine "
        f"(default per engine: {DEFAULT_VARIANTS})",
    )
    parser.add_argument("--max-voices", type=int, default=None, help="cap on voices per engine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    try:
        summary = synthesize(
            args.out,
            words=args.words,
            engines=args.engines,
            variants_per_voice=args.variants_per_voice,
            seed=args.seed,
            max_voices=args.max_voices,
            progress=not args.no_progress,
            log=log,
        )
    except (ValueError, FileExistsError) as exc:
        log(f"error: {exc}")
        return 2
    for engine, info in summary["engines"].items():
        log(
            f"{engine}: {info['voices']} voices, {info['clips']} clips, {info['failures']} failures"
        )
        for error in info["errors"]:
            log(f"  e.g. {error}")
    for engine, why in summary["skipped_engines"].items():
        log(f"{engine}: skipped ({why})")
    log(
        f"{summary['clips']} clips from {summary['voices']} voices in {summary['seconds']} s "
        f"({summary['cropped']} cropped to 1 s) -> {summary['out_dir']}"
    )
    if summary["clips"] == 0:
        log("error: no clips written (is espeak-ng, flite or py-nanotts installed?)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
