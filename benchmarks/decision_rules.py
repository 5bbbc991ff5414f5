"""How to read a clip's answer from the classifier's per-step outputs.

The classifier gives class probabilities at every 10-20 ms step; the training loss
trains their mean over the clip, and ``spikeear evaluate`` and the service's decoder
add up their logarithms (``models.decoding.log_evidence``).  This compares rules on the
same outputs, on the speaker-disjoint validation split, for one or more models, so that a
change of rule is measured on every model at hand rather than on one:

* ``mean probability``: what the loss trains (and the rule until eac031b, 2026-12-05);
* ``mean log-probability``: the rule in use; each class's evidence multiplied over the
  steps (the argmax of the mean readout potential, since the softmax's normaliser is the
  same for every class), so a class that some steps rule out cannot win on the others;
* ``last step``: the running readout at the end of the clip;
* ``most confident step``: the class of the single most confident step.

Paired over the same clips, so differences between rules of a few clips are real for
these clips; whether they hold for other speakers is what several models tell.
``--together`` adds a row for the models as one ensemble (the sum of their mean
log-probabilities), to see whether their errors are shared.

Run from the repository root::

    python -m benchmarks.decision_rules --data ../shared/data/speech_commands \\
        --data ../shared/data/fsdd --model A.pt [--model B.pt ...] [--together] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from models.decoding import log_evidence
from models.model_file import load_model
from models.vocabulary import is_word
from training.data import validation_clips
from training.evaluate import run_network
from training.features import FeatureSpec, build_features

RULES = {
    "mean probability": lambda p: p.mean(axis=1),
    "mean log-probability": lambda p: log_evidence(p).mean(axis=1),
    "last step": lambda p: p[:, -1],
    "most confident step": lambda p: p.max(axis=1),
}


def rule_accuracies(probabilities: np.ndarray, labels: np.ndarray, words: np.ndarray) -> dict:
    """In-vocabulary and all-class accuracy of each rule on ``[clips, steps, classes]``."""
    results = {}
    for name, rule in RULES.items():
        results[name] = scores(rule(probabilities), labels, words)
    return results


def scores(evidence: np.ndarray, labels: np.ndarray, words: np.ndarray) -> dict:
    """In-vocabulary and all-class accuracy of the argmax of ``[clips, classes]``."""
    correct = evidence.argmax(axis=1) == labels
    return {"in_vocabulary": float(correct[words].mean()), "all_classes": float(correct.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append", required=True, help="dataset folder")
    parser.add_argument("--model", action="append", required=True, help="model file (repeat)")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument(
        "--together", action="store_true", help="also read the models as one ensemble"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    results, evidence = {}, []
    for path in args.model:
        bundle = load_model(path)
        clips = validation_clips(args.data, bundle.vocabulary)
        spec = FeatureSpec(bundle.frontend, bundle.bin_ms, 0)
        features = build_features(
            clips, bundle.vocabulary, spec, Path(args.cache_dir), False, description="eval"
        )
        ok = features.ok
        probabilities, _ = run_network(bundle.network, features.rasters[ok, 0])
        labels = features.labels[ok]
        words = np.array([is_word(bundle.vocabulary[i]) for i in labels])
        results[path] = rule_accuracies(probabilities, labels, words)
        evidence.append(RULES["mean log-probability"](probabilities))
    if args.together:
        together = scores(np.sum(evidence, axis=0), labels, words)
        results["together"] = {"mean log-probability": together}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("| model | " + " | ".join(RULES) + " |")
    print("|---" * (len(RULES) + 1) + "|")
    for path, by_rule in results.items():
        cells = [
            f"{100 * by_rule[rule]['in_vocabulary']:.1f} / {100 * by_rule[rule]['all_classes']:.1f}"
            if rule in by_rule
            else ""
            for rule in RULES
        ]
        print(f"| {Path(path).name} | " + " | ".join(cells) + " |")
    print("\n(in-vocabulary / all 22 classes, % of the validation clips)")


if __name__ == "__main__":
    main()
