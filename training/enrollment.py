"""Fit a model's enrollment space (``models/custom_words.py``) on its training speakers'
clips and store it in the model file, so that the model can learn custom words.

Usage::

    python -m training.enrollment --model models/spikeear-default.pt \\
        --data ../shared/data/speech_commands --data ../shared/data/fsdd

Every spoken word of the training split (vocabulary words and the other words alike)
is a class of the whitening; the built-in vocabulary words' clips are the negatives a
custom word's threshold is set against.  Words given to ``--exclude-words`` are left
out entirely (held out for ``benchmarks/custom_words.py``).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch
from rich.progress import track

from audio_frontend.audio_io import load_audio
from models.custom_words import EMBEDDING_LAYERS, EnrollmentSpace
from models.model_file import ModelBundle, load_model
from models.recognizer import Recognizer, longest_word
from models.vocabulary import SILENCE, UNKNOWN
from training.data import Clip, discover, split_by_speaker

CLIPS_PER_WORD = 60  # enough for each word's covariance; the negatives stay ~1 MB


def spoken_rates(recognizer: Recognizer, clip: Clip) -> np.ndarray | None:
    """The hidden spike rates of the clip's longest word, or None when it has none."""
    audio, sample_rate = load_audio(clip.path)
    return longest_word(recognizer.describe(audio, sample_rate))


def training_clips(
    roots: list[str], bundle: ModelBundle, exclude: set[str], per_word: int, seed: int
) -> list[Clip]:
    """Up to ``per_word`` training-split clips of every spoken word."""
    clips = [c for root in roots for c in discover(root, bundle.vocabulary)]
    train, _ = split_by_speaker(clips)
    by_word: dict[str, list[Clip]] = defaultdict(list)
    for clip in train:
        if clip.label != SILENCE and not clip.synthetic and clip.spoken not in exclude:
            by_word[clip.spoken].append(clip)
    rng = np.random.default_rng(seed)
    chosen = []
    for word in sorted(by_word):
        members = by_word[word]
        keep = rng.choice(len(members), size=min(per_word, len(members)), replace=False)
        chosen += [members[i] for i in sorted(keep)]
    return chosen


def fit_space(bundle: ModelBundle, clips: list[Clip]) -> tuple[EnrollmentSpace, dict[str, int]]:
    recognizer = Recognizer(bundle)
    rates, labels, negative = [], [], []
    for clip in track(clips, description="hidden activity of the training clips"):
        described = spoken_rates(recognizer, clip)
        if described is None:
            continue
        rates.append(described)
        labels.append(clip.spoken)
        negative.append(clip.label not in (UNKNOWN, SILENCE))
    if not rates:
        raise SystemExit("no words found in the training clips")
    labels_array = np.array(labels)
    space = EnrollmentSpace.fit(np.stack(rates), labels_array, np.array(negative), EMBEDDING_LAYERS)
    counts = {"clips": len(rates), "words": len(set(labels)), "negatives": int(sum(negative))}
    return space, counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.enrollment", description=__doc__)
    parser.add_argument("--model", required=True, help="model file to add the space to")
    parser.add_argument("--data", action="append", required=True, help="training data folder")
    parser.add_argument("--out", help="write here instead of over --model")
    parser.add_argument("--exclude-words", nargs="+", default=[], metavar="WORD")
    parser.add_argument("--clips-per-word", type=int, default=CLIPS_PER_WORD)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bundle = load_model(args.model)
    clips = training_clips(
        args.data, bundle, set(args.exclude_words), args.clips_per_word, args.seed
    )
    space, counts = fit_space(bundle, clips)
    bundle.enrollment = space
    bundle.card["enrollment"] = {
        **counts,
        "clips_per_word": args.clips_per_word,
        "excluded_words": sorted(args.exclude_words),
        "command": "python -m training.enrollment --data ... "
        + (f"--exclude-words {' '.join(args.exclude_words)}" if args.exclude_words else ""),
    }
    bundle.save(args.out or args.model)
    print(
        f"{args.out or args.model}: enrollment space of {counts['clips']} clips, "
        f"{counts['words']} words ({counts['negatives']} negatives)"
    )


if __name__ == "__main__":
    main()
