"""Custom words by template matching: an offline simulation of a rule not yet in the product.

Today a custom word is the mean of its recordings' hidden spike rates over the word
(``models/custom_words.py``): the word's timing is averaged away, and for words the
network never heard the rates say little (``benchmarks.custom_words``: 59% detected
from 5 recordings with a network trained without them).  Here each enrolled recording
is kept as a sequence, the spikes of hidden layers ``--layers`` per 10 ms bin over the
word's span, and a word is compared with them by dynamic time warping (DTW): the mean
cosine distance between the two sequences' bins along the best alignment.

The rule simulated, per final of a recording (the longest word the endpointer found):
the custom word wins when (a) its score, the mean of its two nearest recordings' DTW
distances, is below the ``q`` quantile of the same score over half of the validation
speakers' built-in words (the other half measures false accepts), and (b) it is nearer
than the training templates (``--templates`` clips per class, training speakers) of the
word the network decided.  Held-out words, draws and speakers as in
``benchmarks.custom_words`` (5 recordings of 5 speakers, ``--repeats`` draws, tested on
every other speaker).  Background noise: the Speech Commands noise recordings end to end
in 10 s windows; only words the network decided can be taken over.  Beside it, the
product's rule on the same draws (``CustomWords.takes_over``, its enrollment space fitted
without the held-out words) and the two together (either takes the final over).

    python -m benchmarks.custom_word_templates --data ../shared/data/speech_commands \\
        --data ../shared/data/fsdd --model runs/heldout/base.pt
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import torch
from rich.progress import track

from audio_frontend.audio_io import load_audio
from benchmarks.common import console, read_audio
from benchmarks.custom_words import HELD_OUT, NOISE_WINDOW_S
from models.custom_words import CustomWord, CustomWords
from models.model_file import load_model
from models.network import StatePool
from models.recognizer import Recognizer, StreamOptions
from models.vocabulary import SILENCE, UNKNOWN
from training.data import discover, split_by_speaker
from training.enrollment import CLIPS_PER_WORD, fit_space, training_clips

SHOTS = 5
# templates: the rule simulated; embedding: the product's (``CustomWords.takes_over``);
# either: a final taken over by one or the other
RULES = ("templates", "embedding", "either")
MIN_WORD_BINS = 8


@numba.njit(cache=True)
def dtw_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine distance of unit-length bins ``a [n, d]`` and ``b [m, d]`` along the
    best warping path (steps (1, 0), (0, 1), (1, 1))."""
    n, m = a.shape[0], b.shape[0]
    cost = np.full((n + 1, m + 1), np.inf)
    length = np.zeros((n + 1, m + 1))
    cost[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            best, steps = cost[i - 1, j - 1], length[i - 1, j - 1]
            if cost[i - 1, j] < best:
                best, steps = cost[i - 1, j], length[i - 1, j]
            if cost[i, j - 1] < best:
                best, steps = cost[i, j - 1], length[i, j - 1]
            cost[i, j] = best + 1.0 - np.dot(a[i - 1], b[j - 1])
            length[i, j] = steps + 1
    return cost[n, m] / length[n, m]


@dataclass
class Word:
    """The longest word of a recording: its hidden spikes per bin and the network's word."""

    spikes: np.ndarray  # float [bins, neurons] of the chosen layers
    decided: str | None  # the final the recognizer reports (None: none)
    rates: np.ndarray | None = None  # its hidden rates, as the product's rule embeds them


class Describer:
    def __init__(self, recognizer: Recognizer, layers: list[int]) -> None:
        self.recognizer = recognizer
        self.layers = layers

    def words(self, audio: np.ndarray, rate: int) -> list[Word]:
        """Each word the endpointer closes (at least ``MIN_WORD_BINS`` long), with the
        final the recognizer reports for it."""
        rec = self.recognizer
        with rec.opened(StreamOptions(sample_rate=rate, activity=False)) as stream:
            rec.feed_audio(stream, audio, final=True)
            ready = list(stream.ready)
        counts = torch.from_numpy(np.stack([r.counts for r in ready]))[None]
        with torch.inference_mode():
            _, _, activity = rec.network(counts, rec.pool.gather([StatePool.REST]))
        spikes = np.concatenate([activity[i - 1][0].numpy() for i in self.layers], axis=1)
        finals = {round(e.start / rec.bin_s): (e.word, r) for e, r in rec.describe(audio, rate)}
        return [
            Word(
                spikes[r.boundary.start_bin : r.boundary.end_bin + 1],
                *finals.get(r.boundary.start_bin, (None, None)),
            )
            for r in ready
            if r.boundary.closed and r.boundary.end_bin - r.boundary.start_bin + 1 >= MIN_WORD_BINS
        ]

    def longest(self, audio: np.ndarray, rate: int) -> Word | None:
        return max(self.words(audio, rate), key=lambda w: len(w.spikes), default=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True, help="data folders")
    parser.add_argument("--model", help="base model (default: the bundled one)")
    parser.add_argument("--layers", default="1,2", help="hidden layers whose spikes are compared")
    parser.add_argument("--quantiles", default="0.02,0.05,0.1,0.2")
    parser.add_argument("--dims", type=int, default=0, help="principal axes kept (0: all)")
    parser.add_argument("--templates", type=int, default=10, help="training clips per class")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = console()
    quantiles = np.array([float(q) for q in args.quantiles.split(",")])
    bundle = load_model(args.model)
    # The product's rule, for comparison: its enrollment space fitted without the words.
    space_clips = training_clips(args.data, bundle, set(HELD_OUT), CLIPS_PER_WORD, args.seed)
    bundle.enrollment, _ = fit_space(bundle, space_clips)
    describer = Describer(Recognizer(bundle), [int(n) for n in args.layers.split(",")])
    rng = np.random.default_rng(args.seed)

    clips = [c for root in args.data for c in discover(root, bundle.vocabulary)]
    train, validation = split_by_speaker(clips)
    held: dict[str, list[tuple[str, Word]]] = {}
    for word in HELD_OUT:
        for clip in track([c for c in clips if c.spoken == word], word):
            described = describer.longest(*load_audio(clip.path))
            if described is not None:
                held.setdefault(word, []).append((clip.speaker, described))
    builtin = [
        (c.label, w)
        for c in track([c for c in validation if c.label not in (UNKNOWN, SILENCE)], "built-in")
        if (w := describer.longest(*load_audio(c.path))) is not None
    ]
    templates: dict[str, list[Word]] = {}
    for label in sorted({c.label for c in train} - {SILENCE}):
        pool = [c for c in train if c.label == label and c.spoken not in HELD_OUT]
        for i in rng.permutation(len(pool))[: args.templates]:
            described = describer.longest(*load_audio(pool[i].path))
            if described is not None:
                templates.setdefault(label, []).append(described)
    noise_audio = np.concatenate([read_audio(c.path) for c in clips if c.spoken == "noise"])
    window = int(NOISE_WINDOW_S * 16000)
    noise_words = []
    for start in range(0, len(noise_audio) - window + 1, window):
        noise_words += describer.words(noise_audio[start : start + window], 16000)
    noise_hours = len(noise_audio) // window * NOISE_WINDOW_S / 3600

    # Bins as unit vectors of standardised, square-rooted spikes (statistics of the
    # training templates), optionally projected on their --dims principal axes, smoothed
    # over 3 bins.
    frames = np.sqrt(np.concatenate([w.spikes for ws in templates.values() for w in ws]))
    mean, scale = frames.mean(0), frames.std(0) + 1e-3
    axes = np.eye(frames.shape[1])
    if args.dims:
        axes = np.linalg.svd((frames - mean) / scale, full_matrices=False)[2][: args.dims].T

    def unit(word: Word) -> np.ndarray:
        z = (np.sqrt(word.spikes.astype(np.float64)) - mean) / scale @ axes
        z = np.concatenate([z[:1], z, z[-1:]])
        z = (z[:-2] + z[1:-1] + z[2:]) / 3
        return z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-9)

    def score(x: np.ndarray, examples: list[np.ndarray]) -> float:
        return float(np.mean(sorted(dtw_distance(x, e) for e in examples)[:2]))

    units = {id(w): unit(w) for w in [*(w for _, w in builtin), *noise_words]}
    units |= {id(w): unit(w) for v in held.values() for _, w in v}
    class_templates = {label: [unit(w) for w in ws] for label, ws in templates.items()}
    nearest_builtin: dict[int, float] = {}

    def builtin_score(word: Word) -> float:
        if id(word) not in nearest_builtin:
            examples = class_templates.get(word.decided or "")
            nearest_builtin[id(word)] = score(units[id(word)], examples) if examples else np.inf
        return nearest_builtin[id(word)]

    def wins(
        candidate: Word, examples: list[np.ndarray], limits: np.ndarray, custom: CustomWords
    ) -> np.ndarray:
        """Whether the custom word takes the candidate's final over, at each quantile, by
        each rule (RULES)."""
        won = np.zeros((len(RULES), len(limits)), bool)
        if candidate.decided is None:  # no final: nothing to take over
            return won
        s = score(units[id(candidate)], examples)
        won[0] = (s < limits) & (s < builtin_score(candidate))
        won[1] = custom.takes_over(candidate.decided, candidate.rates, None) is not None
        won[2] = won[0] | won[1]
        return won

    order = rng.permutation(len(builtin))
    calibration = [builtin[i][1] for i in order[::2]]
    measured = [builtin[i] for i in order[1::2]]
    shape = (len(RULES), len(quantiles))
    tally = {k: np.zeros(shape) for k in ("detected", "builtin_fa", "lost", "other_fa", "noise")}
    counts = {"positives": 0, "builtin": 0, "others": 0, "draws": 0}
    for word, recordings in held.items():
        speakers = sorted({s for s, _ in recordings})
        for _ in range(args.repeats):
            chosen = set(rng.choice(speakers, SHOTS, replace=False))
            enrolled = [next(w for s, w in recordings if s == c) for c in chosen]
            examples = [units[id(w)] for w in enrolled]
            limits = np.quantile([score(units[id(w)], examples) for w in calibration], quantiles)
            rates = np.stack([w.rates for w in enrolled if w.rates is not None])
            custom = CustomWords(
                bundle.enrollment,
                (CustomWord.enroll(bundle.enrollment, word, rates, ("",) * len(rates)),),
            )
            for speaker, w in recordings:
                if speaker not in chosen:
                    tally["detected"] += wins(w, examples, limits, custom)
                    counts["positives"] += 1
            for label, w in measured:
                won = wins(w, examples, limits, custom)
                tally["builtin_fa"] += won
                tally["lost"] += won & (w.decided == label)
                counts["builtin"] += 1
            for other, others in held.items():
                if other != word:
                    for _, w in others:
                        tally["other_fa"] += wins(w, examples, limits, custom)
                        counts["others"] += 1
            for w in noise_words:
                tally["noise"] += wins(w, examples, limits, custom)
            counts["draws"] += 1

    rows = []
    for k, rule in enumerate(RULES):
        for i, q in enumerate(quantiles):
            if rule == "embedding" and i:
                continue  # it has no quantile
            r = {
                "rule": rule,
                "quantile": float(q) if rule != "embedding" else None,
                "detected": tally["detected"][k, i] / counts["positives"],
                "builtin_false_accepts": tally["builtin_fa"][k, i] / counts["builtin"],
                "builtin_right_words_lost": tally["lost"][k, i] / counts["builtin"],
                "other_held_out_false_accepts": tally["other_fa"][k, i] / counts["others"],
                "noise_false_accepts_per_hour": tally["noise"][k, i]
                / counts["draws"]
                / noise_hours,
            }
            rows.append(r)
            out.print(
                f"{rule:9s} {'' if r['quantile'] is None else f'q {q:.2f}':6s} detected "
                f"{r['detected']:.1%}; false accepts: built-in words "
                f"{r['builtin_false_accepts']:.2%} (right words lost "
                f"{r['builtin_right_words_lost']:.2%}), other held-out words "
                f"{r['other_held_out_false_accepts']:.1%}, noise "
                f"{r['noise_false_accepts_per_hour']:.0f}/h"
            )
    if args.json:
        report = {
            "model": args.model or "bundled",
            "layers": args.layers,
            "dims": args.dims,
            "shots": SHOTS,
            "recordings": {w: len(v) for w, v in held.items()},
            "builtin_measured": len(measured),
            "noise_hours": noise_hours,
            "rows": rows,
            "command": "python -m benchmarks.custom_word_templates " + " ".join(argv or []),
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
