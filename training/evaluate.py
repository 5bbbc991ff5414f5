"""Evaluation on a speaker-disjoint split: accuracy, early decisions, efficiency.

``spikeear evaluate`` prints (or, with ``--json``, emits) the figures and writes
a confusion matrix and an accuracy-versus-time-heard curve as PNG files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from models.costs import PICOJOULES_PER_AC, PICOJOULES_PER_MAC, NetworkCosts
from models.decoding import clip_decisions, log_evidence
from models.model_file import ModelBundle
from models.network import Classifier
from models.recognizer import Recognizer
from models.vocabulary import SILENCE, UNKNOWN, is_word
from training.config import features_command, train_command
from training.data import Clip, describe, discover, split_by_speaker
from training.features import FeatureSpec, build_features

HEARD_FRACTIONS = np.linspace(0.0, 1.5, 31)


@torch.no_grad()
def run_network(network: Classifier, rasters: np.ndarray, batch: int = 256):
    """Sequence mode over ``[clips, bins, channels]`` counts.

    Returns per-step probabilities ``[clips, bins, classes]`` and hidden spikes
    per clip and layer ``[clips, layers]``.
    """
    network.eval()
    device = next(network.parameters()).device
    probabilities, spikes = [], []
    for start in range(0, len(rasters), batch):
        x = torch.from_numpy(rasters[start : start + batch].astype(np.float32)).to(device)
        evidence, _, activity = network(x)
        probabilities.append(evidence.softmax(-1).cpu().numpy())
        spikes.append(np.stack([a.sum(dim=(1, 2)).cpu().numpy() for a in activity], axis=1))
    return np.concatenate(probabilities), np.concatenate(spikes)


def word_span(activity: np.ndarray, min_activity: float) -> tuple[int, int]:
    """First and last bin (inclusive) where the input is clearly active."""
    threshold = max(min_activity, 0.15 * float(activity.max()))
    active = np.flatnonzero(activity >= threshold)
    if not active.size:
        return 0, len(activity) - 1
    return int(active[0]), int(active[-1])


def running_predictions(probabilities: np.ndarray) -> np.ndarray:
    """The class each clip is read as after each bin ``[clips, bins]``."""
    return log_evidence(probabilities).cumsum(axis=1).argmax(axis=2)


def decision_points(running: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Bin from which the running prediction is correct and stays correct (-1: never)."""
    wrong = running != labels[:, None]
    n_bins = running.shape[1]
    last_wrong = np.where(wrong.any(axis=1), n_bins - 1 - np.argmax(wrong[:, ::-1], axis=1), -1)
    return np.where(last_wrong == n_bins - 1, -1, last_wrong + 1)


def _accuracy_by(correct: np.ndarray, words: np.ndarray, groups: list[str]) -> dict:
    """In-vocabulary accuracy and word count per group (source or speaker)."""
    keys = np.array(groups)
    figures = {}
    for group in sorted(set(groups)):
        mask = (keys == group) & words
        if mask.any():
            figures[group] = {"accuracy": float(correct[mask].mean()), "clips": int(mask.sum())}
    return figures


def speaker_summary(per_speaker: dict) -> dict | None:
    """How accuracy spreads over the held-out people: one voice can be far from the mean
    (and one FSDD speaker holds half of the held-out words)."""
    if not per_speaker:
        return None
    accuracies = np.array([f["accuracy"] for f in per_speaker.values()])
    lowest = min(per_speaker, key=lambda s: per_speaker[s]["accuracy"])
    return {
        "speakers": len(per_speaker),
        "mean": float(accuracies.mean()),
        "median": float(np.median(accuracies)),
        "lowest": per_speaker[lowest]["accuracy"],
        "lowest_speaker": lowest,
        "lowest_speaker_words": per_speaker[lowest]["clips"],
    }


def describe_speakers(summary: dict) -> str:
    """:func:`speaker_summary` in words, as the CLI and the model card show it."""
    return (
        f"mean {summary['mean']:.3f}, median {summary['median']:.3f}, lowest "
        f"{summary['lowest']:.3f} ({summary['lowest_speaker']}, "
        f"{summary['lowest_speaker_words']} words)"
    )


@dataclass
class Evaluation:
    report: dict
    confusion: np.ndarray
    heard_curve: np.ndarray


def evaluate_rasters(
    bundle: ModelBundle,
    rasters: np.ndarray,
    labels: np.ndarray,
    clips: list[Clip],
    min_activity: float,
) -> Evaluation:
    vocabulary = bundle.vocabulary
    probabilities, hidden_spikes = run_network(bundle.network, rasters)
    predictions = clip_decisions(probabilities)
    correct = predictions == labels
    words = np.array([is_word(vocabulary[i]) for i in labels])
    per_class = {
        name: {"accuracy": float(correct[labels == i].mean()), "clips": int((labels == i).sum())}
        for i, name in enumerate(vocabulary)
        if (labels == i).any()
    }
    per_source = _accuracy_by(correct, words, [c.source for c in clips])
    per_speaker = _accuracy_by(correct, words, [c.speaker for c in clips])

    # Early decisions, relative to each word's span in the input spikes.
    activity = rasters.sum(axis=2).astype(np.float64)
    spans = np.array([word_span(a, min_activity) for a in activity])
    running = running_predictions(probabilities)
    decided = decision_points(running, labels)
    durations = np.maximum(spans[:, 1] - spans[:, 0] + 1, 1)
    fraction = (decided - spans[:, 0]) / durations
    early_mask = words & correct & (decided >= 0)
    fraction_words = np.clip(fraction[early_mask], 0, None)

    # Accuracy of the running prediction after hearing a fraction of the word.
    curve = []
    for heard in HEARD_FRACTIONS:
        at = np.clip(spans[:, 0] + np.floor(heard * durations).astype(int), 0, rasters.shape[1] - 1)
        curve.append(float((running[np.arange(len(labels)), at] == labels)[words].mean()))

    costs = NetworkCosts.of(bundle.network)
    input_spikes = rasters.sum(axis=(1, 2)).astype(np.float64)
    synaptic_ops = costs.synaptic_ops(input_spikes, hidden_spikes)
    dense_macs = costs.dense_macs(rasters.shape[1])
    confusion = np.zeros((len(vocabulary), len(vocabulary)), int)
    np.add.at(confusion, (labels, predictions), 1)
    report = {
        "clips": len(labels),
        "accuracy": float(correct.mean()),
        "in_vocabulary_accuracy": float(correct[words].mean()) if words.any() else None,
        "unknown_accuracy": per_class.get(UNKNOWN, {}).get("accuracy"),
        "silence_accuracy": per_class.get(SILENCE, {}).get("accuracy"),
        "per_source_in_vocabulary": per_source,
        "speakers_in_vocabulary": speaker_summary(per_speaker),
        "per_speaker_in_vocabulary": per_speaker,
        "per_class": per_class,
        "early_decision": {
            "median_fraction_of_word": float(np.median(fraction_words))
            if fraction_words.size
            else None,
            "decided_before_word_end": float((fraction_words < 1.0).mean())
            if fraction_words.size
            else None,
            "median_ms_after_onset": float(
                np.median(decided[early_mask] - spans[early_mask, 0]) * bundle.bin_ms
            )
            if early_mask.any()
            else None,
            "clips": int(early_mask.sum()),
        },
        "per_clip": {
            "input_spikes": float(input_spikes.mean()),
            "hidden_spikes": float(hidden_spikes.sum(axis=1).mean()),
            "hidden_spikes_per_layer": hidden_spikes.mean(axis=0).round(1).tolist(),
            "synaptic_ops": float(synaptic_ops.mean()),
            "dense_macs": float(dense_macs),
            "energy_uj_snn": float(synaptic_ops.mean() * PICOJOULES_PER_AC * 1e-6),
            "energy_uj_dense": float(dense_macs * PICOJOULES_PER_MAC * 1e-6),
        },
    }
    return Evaluation(report, confusion, np.array(curve))


def plot_confusion(
    confusion: np.ndarray, vocabulary: tuple[str, ...], out: Path, title: str
) -> None:
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = confusion / np.maximum(rows, 1)
    fig, ax = plt.subplots(figsize=(9, 8))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(vocabulary)), vocabulary, rotation=90)
    ax.set_yticks(range(len(vocabulary)), vocabulary)
    for i in range(len(vocabulary)):
        for j in range(len(vocabulary)):
            if confusion[i, j]:
                colour = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(j, i, confusion[i, j], ha="center", va="center", fontsize=6, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_heard_curve(
    curves: dict[str, np.ndarray],
    out: Path,
    title: str = "Accuracy versus time heard (in-vocabulary words, unseen speakers)",
    colours: dict[str, str] | None = None,
) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        ax.plot(
            HEARD_FRACTIONS * 100,
            np.array(curve) * 100,
            marker="o",
            ms=3,
            label=name,
            color=(colours or {}).get(name),
        )
    ax.axvline(100, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("share of the word heard (%)")
    ax.set_ylabel("running prediction correct (%)")
    ax.set_title(title)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def evaluate(
    bundle: ModelBundle,
    data: list[str],
    out_dir: Path,
    split: str = "validation",
    cache_dir: str = "cache",
) -> dict:
    """Evaluate on the validation speakers of ``data`` (or on all clips with ``split='all'``)."""
    clips: list[Clip] = []
    for root in data:
        clips += discover(root, bundle.vocabulary)
    if split == "validation":
        _, clips = split_by_speaker(clips)
    clips = [c for c in clips if not c.synthetic]
    spec = FeatureSpec(bundle.frontend, bundle.bin_ms, 0)
    cache = Path(cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    min_activity = Recognizer(bundle).endpointer.min_activity
    results, curves = {}, {}
    native = build_features(clips, bundle.vocabulary, spec, cache, False, description="eval")
    ok = native.ok
    if not ok.any():
        raise ValueError("no readable clips to evaluate")
    evaluation = evaluate_rasters(
        bundle,
        native.rasters[ok, 0],
        native.labels[ok],
        [c for c, k in zip(clips, ok, strict=False) if k],
        min_activity,
    )
    results["native"] = evaluation.report
    curves["native rate"] = evaluation.heard_curve
    plot_confusion(
        evaluation.confusion,
        bundle.vocabulary,
        out_dir / "confusion.png",
        f"{bundle.card.get('name', 'model')}: speaker-disjoint {split} split",
    )
    # The same 16 kHz clips as an 8 kHz recording would carry them.
    wide = [c for c in clips if c.source != "fsdd" and c.index < 0]  # 16 kHz audio
    if wide:
        limited = build_features(
            wide, bundle.vocabulary, spec, cache, False, band_limited=True, description="eval8k"
        )
        keep = limited.ok
        band = evaluate_rasters(
            bundle,
            limited.rasters[keep, 0],
            limited.labels[keep],
            [c for c, k in zip(wide, keep, strict=False) if k],
            min_activity,
        )
        results["band_limited_8k"] = {
            k: band.report[k]
            for k in ("clips", "accuracy", "in_vocabulary_accuracy", "per_source_in_vocabulary")
        }
        curves["16 kHz clips band-limited to 8 kHz"] = band.heard_curve
    plot_heard_curve(curves, out_dir / "accuracy_vs_time.png")
    results["data"] = describe(clips)
    results["split"] = split
    (out_dir / "evaluation.json").write_text(json.dumps(results, indent=2))
    return results


def baseline_figures(bundle: ModelBundle, path: str | Path, results: dict) -> dict:
    """What a model card keeps of another network evaluated on the same split: enough for
    the side-by-side table (accuracy, size, operations) and the command that trained it."""
    native = results["native"]
    config = bundle.network.config
    figures = {
        "model": Path(path).name,
        "kind": config.kind,
        "hidden": list(config.hidden),
        "parameters": bundle.network.parameter_count(),
        "train_command": train_command(bundle.card["training"])
        if "training" in bundle.card
        else None,
        "native": {
            key: native[key]
            for key in (
                "in_vocabulary_accuracy",
                "accuracy",
                "unknown_accuracy",
                "silence_accuracy",
                "per_source_in_vocabulary",
                "speakers_in_vocabulary",
                "early_decision",
                "per_clip",
            )
        },
    }
    if "band_limited_8k" in results:
        figures["band_limited_8k"] = results["band_limited_8k"]["in_vocabulary_accuracy"]
    return figures


def _teachers(training: dict) -> str:
    count = len(training.get("teachers") or ())
    if count > 1:
        return f"an ensemble of {count} convolutional teachers (their logits averaged)"
    return "a convolutional teacher"


def card_markdown(bundle: ModelBundle) -> str:
    """The model card as Markdown, from the figures stored in the model file."""
    card = bundle.card
    training = card.get("training", {})
    evaluation = card.get("evaluation", {})
    native = evaluation.get("native", {})
    lines = [
        f"# Model card: {card.get('name', 'spikeear model')}",
        "",
        f"Recurrent adLIF spiking network ({bundle.network.config.kind}), hidden layers "
        f"{list(bundle.network.config.hidden)}, {card.get('parameters', '?')} parameters; "
        f"input: {bundle.frontend.channels} cochlear channels binned at {bundle.bin_ms:g} ms; "
        f"vocabulary: {', '.join(bundle.vocabulary)}.",
        "",
        "## Training",
        "",
        (
            f"`{features_command(training)}` (the sources below), then "
            if training.get("features")
            else ""
        )
        + f"`{train_command(training)}` "
        f"(lr {training.get('lr')}, batch {training.get('batch_size')}, "
        f"{training.get('variants')} augmented variants per clip, "
        f"device {training.get('device')}).",
        "",
        *(
            [
                f"Distilled from {_teachers(training)} on the same features "
                f"(validation accuracy {training['teacher_validation_accuracy']:.3f}, 22 classes).",
                "",
            ]
            if "teacher_validation_accuracy" in training
            else []
        ),
        "| source | split | clips | speakers | synthetic |",
        "|---|---|---|---|---|",
    ]
    for split in ("train", "validation"):
        for source, figures in card.get("data", {}).get(split, {}).items():
            lines.append(
                f"| {source} | {split} | {figures['clips']} | {figures['speakers']} | "
                f"{'yes' if figures.get('synthetic') else 'no'} |"
            )
    lines += ["", f"Split: {card.get('split', '')}.", ""]
    if native:
        early = native["early_decision"]
        clip = native["per_clip"]
        lines += [
            "## Evaluation (speakers never heard in training)",
            "",
            f"Command: `{evaluation.get('command', 'spikeear evaluate')}`",
            "",
            "| figure | value |",
            "|---|---|",
            f"| in-vocabulary accuracy (20 words) | {native['in_vocabulary_accuracy']:.3f} |",
            f"| overall accuracy (22 classes) | {native['accuracy']:.3f} |",
            f"| `_unknown_` accuracy | {native['unknown_accuracy']} |",
            f"| `_silence_` accuracy | {native['silence_accuracy']} |",
        ]
        for source, figures in native["per_source_in_vocabulary"].items():
            lines.append(
                f"| in-vocabulary, {source} | "
                f"{figures['accuracy']:.3f} ({figures['clips']} clips) |"
            )
        speakers = native.get("speakers_in_vocabulary")
        if speakers:
            lines.append(
                f"| in-vocabulary, per held-out speaker ({speakers['speakers']}) | "
                f"{describe_speakers(speakers)} |"
            )
        if "band_limited_8k" in evaluation:
            lines.append(
                "| in-vocabulary, 16 kHz clips band-limited to 8 kHz | "
                f"{evaluation['band_limited_8k']['in_vocabulary_accuracy']:.3f} |"
            )
        lines += [
            f"| early decision: median share of the word heard | "
            f"{early['median_fraction_of_word']:.2f} |",
            f"| early decision: median time after word onset | "
            f"{early['median_ms_after_onset']:.0f} ms |",
            f"| input spikes per 1 s clip | {clip['input_spikes']:.0f} |",
            f"| hidden spikes per clip | {clip['hidden_spikes']:.0f} |",
            f"| synaptic operations per clip | {clip['synaptic_ops']:.3g} "
            f"({clip['energy_uj_snn']:.3f} uJ at 0.9 pJ/AC) |",
            f"| dense MACs of the same network | {clip['dense_macs']:.3g} "
            f"({clip['energy_uj_dense']:.3f} uJ at 4.6 pJ/MAC) |",
            "",
            "Energy figures are the commonly cited 45 nm per-operation estimates (Horowitz 2014) "
            "and ignore memory access.",
        ]
    if native and card.get("baselines"):
        lines += side_by_side(bundle, card["baselines"])
    if card.get("continuous"):
        lines += connected_words(card["continuous"])
    return "\n".join(lines) + "\n"


def connected_words(figures: dict) -> list[str]:
    """The card's section on connected speech, from ``benchmarks/continuous.py``'s
    figures (stored in the model file by its ``--write-card``)."""
    conditions = figures["conditions"]
    snrs = sorted({name.split(" | ")[2] for name in conditions}, key=lambda s: -float(s.split()[0]))
    lines = [
        "",
        "## Connected words",
        "",
        f"Command: `{figures['command']}`. Streams of 2-6 in-vocabulary words of the held-out "
        "speakers (one speaker per stream, and mixed), levels varying by 10 dB, background "
        "noise; word error rate (deletions + insertions) of the finals, in % of the words "
        "spoken, against the error rate of the same clips alone.",
        "",
        "| speakers | pause | " + " | ".join(snrs) + " | clips alone |",
        "|---|---|" + "---|" * (len(snrs) + 1),
    ]
    rows: dict[tuple[str, str], dict[str, dict]] = {}
    for name, c in conditions.items():
        variant, pause, snr = name.split(" | ")
        rows.setdefault((variant, pause), {})[snr] = c
    for (variant, pause), by_snr in rows.items():
        cells = [
            f"{100 * by_snr[s]['wer']:.1f} ({100 * by_snr[s]['deletions_plus_insertions']:.1f})"
            for s in snrs
        ]
        clip = 100 * next(iter(by_snr.values()))["clip_error"]
        lines.append(f"| {variant} | {pause} | " + " | ".join(cells) + f" | {clip:.1f} |")
    oov, noise = figures["oov"], figures["noise_alone"]
    settle = [c["settle_share_median"] for c in conditions.values() if c.get("settle_words")]
    lines += [
        "",
        f"- Out-of-vocabulary words ({oov['condition']}): {oov['vocabulary_words_emitted']} "
        f"vocabulary words for {oov['oov_words']} spoken ({100 * oov['per_oov_word']:.1f}%; "
        f"{oov['oov_clips']} clips of {oov['oov_speakers']} speakers).",
        "- Background noise alone: "
        + "; ".join(f"{k}: {v['per_hour']:g} false accepts per hour" for k, v in noise.items())
        + ".",
        f"- Partials settle on the final word at a median {min(settle):.2f}-{max(settle):.2f} "
        "of its speech span (per condition).",
    ]
    service = figures["streaming_equals_batch"]
    if "equal" in service:
        lines.append(
            f"- Streaming (`/v1/stream`, 20 ms chunks) equals batch: "
            f"{'yes' if service['equal'] else 'no'} ({service['streams']} streams, "
            f"{service['finals']} finals, {service['condition']})."
        )
    return lines


def _operations(kind: str, per_clip: dict) -> str:
    # An event-driven network pays per spike (accumulate); an analog one pays every
    # synapse every step (multiply-accumulate).
    if kind == "analog":
        return f"{per_clip['dense_macs']:.3g} MACs ({per_clip['energy_uj_dense']:.1f} uJ)"
    return f"{per_clip['synaptic_ops']:.3g} accumulates ({per_clip['energy_uj_snn']:.1f} uJ)"


def side_by_side(bundle: ModelBundle, baselines: dict) -> list[str]:
    """This model next to the baselines evaluated with it (``evaluate --baseline``)."""
    this = baseline_figures(bundle, "this model", bundle.card["evaluation"])
    columns = [this, *baselines.values()]

    def percent(value) -> str:
        return "–" if value is None else f"{100 * value:.1f}%"

    def share(value) -> str:
        return "–" if value is None else f"{value:.2f}"

    sources = list(this["native"]["per_source_in_vocabulary"])
    rows = [
        ("network", lambda c: f"{c['kind']}, {' x '.join(map(str, c['hidden']))}"),
        ("in-vocabulary accuracy", lambda c: percent(c["native"]["in_vocabulary_accuracy"])),
        *(
            (
                f"... {source}",
                lambda c, s=source: percent(
                    c["native"]["per_source_in_vocabulary"].get(s, {}).get("accuracy")
                ),
            )
            for source in sources
        ),
        ("... 16 kHz clips band-limited to 8 kHz", lambda c: percent(c.get("band_limited_8k"))),
        (
            "... per held-out speaker: mean / median",
            lambda c: " / ".join(
                percent((c["native"]["speakers_in_vocabulary"] or {}).get(key))
                for key in ("mean", "median")
            ),
        ),
        ("`_unknown_` accuracy", lambda c: percent(c["native"]["unknown_accuracy"])),
        ("`_silence_` accuracy", lambda c: percent(c["native"]["silence_accuracy"])),
        (
            "early decision (median share of the word)",
            lambda c: share(c["native"]["early_decision"]["median_fraction_of_word"]),
        ),
        ("trainable parameters", lambda c: f"{c['parameters']:,}"),
        ("operations per clip", lambda c: _operations(c["kind"], c["native"]["per_clip"])),
    ]
    lines = [
        "",
        "## Side by side, on the same split",
        "",
        "| figure | " + " | ".join(f"`{c['model']}`" for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    lines += [f"| {name} | " + " | ".join(cell(c) for c in columns) + " |" for name, cell in rows]
    lines += [""]
    lines += [
        f"`{b['model']}` was trained by `{b['train_command']}`."
        if b["train_command"]
        else f"`{b['model']}` has no training record."
        for b in baselines.values()
    ]
    return lines
