"""Where the spiking student loses to its convolutional teacher, per data source.

The student is distilled from a convolutional teacher on the same spike counts
(``training/teacher.py``); the teacher does better on held-out speakers.  This
script tells whether the difference is in fitting (the student already misses
on clips it trained on) or in generalising (it fits them but misses new
speakers): in-vocabulary accuracy of both, per source, on the clean copy of a
sample of the training clips and on the held-out speakers.  Features come from
the training cache (``cache/``), as ``spikeear train --data ...`` made them.

Run from the repository root::

    python -m benchmarks.teacher_gap --data ../shared/data/speech_commands \\
        --data ../shared/data/fsdd --teacher TEACHER.pt [--model MODEL] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from audio_frontend.cochlea import CochleaConfig
from models.decoding import clip_decisions
from models.model_file import load_model
from models.vocabulary import SILENCE, UNKNOWN
from training.config import TrainConfig
from training.evaluate import run_network
from training.features import FeatureSet, FeatureSpec
from training.teacher import TeacherEnsemble
from training.train import source_features, teacher_probabilities


def in_vocabulary_accuracy(predicted: np.ndarray, features: FeatureSet, words: int) -> dict:
    keep = features.ok & (features.labels < words)
    right = predicted[keep] == features.labels[keep]
    return {"accuracy": float(right.mean()) if right.size else None, "words": int(right.size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True, metavar="DIR")
    parser.add_argument("--teacher", action="append", required=True, metavar="FILE")
    parser.add_argument("--model", help="student model file (default: the bundled model)")
    parser.add_argument("--train-clips", type=int, default=1000, help="sampled per source")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    torch.set_num_threads(1)
    bundle = load_model(args.model)
    teacher = TeacherEnsemble.load(args.teacher, torch.device("cpu"), bundle.bin_ms)
    config = TrainConfig(
        data=args.data,
        out="unused",
        cache_dir=args.cache_dir,
        channels=bundle.frontend.channels,
        bin_ms=bundle.bin_ms,
        vocabulary=bundle.vocabulary,
    )
    if bundle.frontend != CochleaConfig(channels=config.channels):
        sys.exit("the model's front end differs from the training default: no cached features")
    spec = FeatureSpec(bundle.frontend, bundle.bin_ms, config.variants)
    words = len([w for w in bundle.vocabulary if w not in (UNKNOWN, SILENCE)])
    rng = np.random.default_rng(0)
    results = {}
    for source in source_features(config, spec):
        for part, features in (("train", source.train), ("held-out speakers", source.val)):
            if features is None:
                continue
            if part == "train":
                sample = rng.permutation(np.flatnonzero(features.ok))[: args.train_clips]
                features = FeatureSet(
                    features.rasters[sample, :1], features.labels[sample], features.ok[sample]
                )
            rasters = features.rasters[:, 0]
            student, _ = run_network(bundle.network, rasters)
            results.setdefault(source.name, {})[part] = {
                "student": in_vocabulary_accuracy(clip_decisions(student), features, words),
                "teacher": in_vocabulary_accuracy(
                    teacher_probabilities(teacher, rasters).argmax(-1), features, words
                ),
            }
    if args.json:
        print(json.dumps(results))
        return
    print("in-vocabulary accuracy, student / teacher (words)")
    for name, parts in results.items():
        for part, figures in parts.items():
            student, teacher_figures = figures["student"], figures["teacher"]
            if student["words"]:
                print(
                    f"  {name:16s} {part:18s} {student['accuracy']:.3f} / "
                    f"{teacher_figures['accuracy']:.3f}  ({student['words']})"
                )


if __name__ == "__main__":
    main()
