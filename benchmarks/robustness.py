"""Accuracy under recording conditions the validation clips do not have.

``spikeear evaluate`` scores clean validation clips (plus a band-limited copy).
Users' microphones are quieter or hotter, their rooms reverberate, their lines may
be telephone-band, their noise is not the training set's.  This script applies
each such condition to every validation clip of speakers the model never trained
on (the same split as ``evaluate``), runs the cochlea and the network, and reports
in-vocabulary accuracy per condition and source, ``_unknown_`` and ``_silence_``.

The conditions are synthetic and seeded per clip, so a run is reproducible:

* gain: -30 and -20 dB (a quiet microphone), +12 dB hard-clipped at full scale;
* white noise (not one of the ``_silence_`` noises the training mixes in) at 20, 10
  and 5 dB SNR;
* reverberation: an exponentially decaying noise impulse response with RT60 0.3 s
  (a living room) and 0.7 s (a hall), direct path kept;
* telephone band: 300-3400 Hz band-pass (4th-order Butterworth).

Run from the repository root::

    python -m benchmarks.robustness --data ../shared/data/speech_commands \\
        --data ../shared/data/fsdd [--model MODEL] [--out-dir DIR] [--json]

It writes ``robustness.json`` and ``robustness.png`` to ``--out-dir``.  ``--levels``
instead prints the speech level of every clip in ``--data`` (both parts of the split):
per source the median and 10th-90th percentiles, per speaker for sources with few
speakers.  A class whose recordings are quieter than the others' lets a model take
loudness for a cue.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import scipy.signal
from rich.console import Console
from rich.progress import track

from benchmarks.common import RATE
from models.model_file import DEFAULT_MODEL_PATH, load_model
from models.recognizer import Recognizer
from models.vocabulary import is_word
from training.augment import active_level_dbfs, place
from training.data import discover, split_by_speaker
from training.evaluate import evaluate_rasters
from training.features import (
    CLIP_SECONDS,
    FeatureSpec,
    clip_raster,
    load_resampled,
    process_cochlea,
    run_cochlea_jobs,
)

FEW_SPEAKERS = 10
CONDITIONS = (
    "clean",
    "gain -30 dB",
    "gain -20 dB",
    "gain +12 dB, clipped",
    "white noise 20 dB SNR",
    "white noise 10 dB SNR",
    "white noise 5 dB SNR",
    "reverberation RT60 0.3 s",
    "reverberation RT60 0.7 s",
    "telephone band 300-3400 Hz",
)


def _with_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(len(audio)).astype(np.float32)
    power = float(np.mean(audio**2)) + 1e-10
    return audio + noise * np.sqrt(power / 10 ** (snr_db / 10))


def _reverberant(audio: np.ndarray, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    # Energy falls by 60 dB in rt60_s: amplitude envelope exp(-6.9 t / rt60).
    t = np.arange(int(rt60_s * RATE)) / RATE
    response = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60_s)
    response[0] = 1.0  # the direct path
    response /= np.sqrt(np.sum(response**2))
    wet = scipy.signal.fftconvolve(audio, response)[: len(audio)]
    return (wet * (np.abs(audio).max() / (np.abs(wet).max() + 1e-9))).astype(np.float32)


_TELEPHONE = scipy.signal.butter(4, (300, 3400), "bandpass", fs=RATE, output="sos")


def apply(condition: str, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``audio`` (a 1 s, 16 kHz clip) as recorded under ``condition``."""
    if condition == "clean":
        out = audio
    elif condition.startswith("gain"):
        gain_db = float(condition.split()[1])
        out = np.clip(audio * 10 ** (gain_db / 20), -1.0, 1.0)
    elif condition.startswith("white noise"):
        out = _with_noise(audio, float(condition.split()[2]), rng)
    elif condition.startswith("reverberation"):
        out = _reverberant(audio, float(condition.split()[2]), rng)
    elif condition.startswith("telephone"):
        out = scipy.signal.sosfilt(_TELEPHONE, audio)
    else:
        raise ValueError(f"unknown condition {condition!r}")
    return np.asarray(out, np.float32)


def _worker(job: tuple) -> tuple[int, np.ndarray | None]:
    index, path, spec = job
    cochlea = process_cochlea(spec.frontend)
    audio = place(load_resampled(path, RATE), round(CLIP_SECONDS * RATE), None)
    seed = int(hashlib.sha1(str(path).encode()).hexdigest()[:12], 16)
    rasters = [
        clip_raster(cochlea, apply(condition, audio, np.random.default_rng(seed)), spec)
        for condition in CONDITIONS
    ]
    return index, np.stack(rasters)


def print_levels(clips: list) -> None:
    """Median and 10th-90th percentile speech level per source, and per speaker for
    sources with at most ``FEW_SPEAKERS``."""
    by_source: dict[str, dict[str, list[float]]] = {}
    for clip in track(clips, description="speech levels", console=Console(stderr=True)):
        level = active_level_dbfs(load_resampled(clip.path, RATE), RATE)
        by_source.setdefault(clip.source, {}).setdefault(clip.speaker, []).append(level)
    print("| source / speaker | clips | median | 10th-90th percentile | (dBFS) |")
    print("|---|---|---|---|---|")
    for source, speakers in sorted(by_source.items()):
        rows = [(source, [v for levels in speakers.values() for v in levels])]
        if len(speakers) <= FEW_SPEAKERS:
            rows += sorted(speakers.items())
        for name, levels in rows:
            low, median, high = np.percentile(levels, [10, 50, 90])
            print(f"| {name} | {len(levels)} | {median:.1f} | {low:.1f} to {high:.1f} | |")


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    sources = sorted({s for r in results.values() for s in r["per_source_in_vocabulary"]})
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / (len(sources) + 1)
    x = np.arange(len(names))
    ax.bar(x, [results[n]["in_vocabulary"] for n in names], width, label="20 words, all")
    for k, source in enumerate(sources, 1):
        values = [results[n]["per_source_in_vocabulary"].get(source, np.nan) for n in names]
        ax.bar(x + k * width, values, width, label=source)
    ax.set_xticks(x + 0.4 - width / 2, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("in-vocabulary accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True, help="dataset folder")
    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--out-dir", default="benchmarks/robustness", type=Path)
    parser.add_argument("--workers", type=int, help="cochlea processes (default: all cores)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--levels", action="store_true", help="print speech levels, then stop")
    args = parser.parse_args()

    bundle = load_model(args.model)
    clips = []
    for root in args.data:
        clips += discover(root, bundle.vocabulary)
    if args.levels:
        print_levels([c for c in clips if c.index < 0 and c.label != "_silence_"])
        return
    _, clips = split_by_speaker(clips)
    clips = [c for c in clips if not c.synthetic and c.index < 0]  # audio clips only
    if not clips:
        sys.exit("no validation clips with audio in --data")
    spec = FeatureSpec(bundle.frontend, bundle.bin_ms, 0)
    shape = (len(CONDITIONS), spec.n_bins, spec.frontend.channels)
    jobs = [(k, clip.path, spec) for k, clip in enumerate(clips)]
    rasters, ok = run_cochlea_jobs(_worker, jobs, shape, "cochlea", args.workers)
    kept = [c for c, k in zip(clips, ok, strict=True) if k]
    labels = np.array([bundle.vocabulary.index(c.label) for c in kept])
    min_activity = Recognizer(bundle).endpointer.min_activity
    results = {}
    for k, condition in enumerate(CONDITIONS):
        report = evaluate_rasters(bundle, rasters[ok, k], labels, kept, min_activity).report
        results[condition] = {
            "in_vocabulary": report["in_vocabulary_accuracy"],
            "per_source_in_vocabulary": {
                source: figures["accuracy"]
                for source, figures in report["per_source_in_vocabulary"].items()
            },
            "unknown": report["unknown_accuracy"],
            "silence": report["silence_accuracy"],
            "early_decision": report["early_decision"]["median_fraction_of_word"],
        }
    words = sum(is_word(c.label) for c in kept)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "model": Path(args.model).name,
        "clips": len(kept),
        "words": words,
        "unreadable": int((~ok).sum()),
        "conditions": results,
    }
    (args.out_dir / "robustness.json").write_text(json.dumps(summary, indent=2))
    plot(
        results,
        args.out_dir / "robustness.png",
        f"{bundle.card.get('name', 'model')}: {words} words of unseen speakers per condition",
    )
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    sources = sorted({s for r in results.values() for s in r["per_source_in_vocabulary"]})
    print(f"{len(kept)} validation clips ({words} words), model {Path(args.model).name}")
    print("| condition | 20 words | " + " | ".join(sources) + " | unknown | silence | early |")
    print("|---" * (len(sources) + 5) + "|")
    for condition, r in results.items():
        per_source = " | ".join(
            f"{100 * r['per_source_in_vocabulary'].get(s, float('nan')):.1f}" for s in sources
        )
        print(
            f"| {condition} | {100 * r['in_vocabulary']:.1f} | {per_source} | "
            f"{100 * (r['unknown'] or 0):.0f} | {100 * (r['silence'] or 0):.0f} | "
            f"{r['early_decision']:.2f} |"
        )


if __name__ == "__main__":
    main()
