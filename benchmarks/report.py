"""Efficiency report: spiking vs analog vs binary networks of the same shape.

Measures three classifiers trained by the same pipeline (``spikeear train --kind
spiking|analog|binary``) on the speaker-disjoint validation split of ``--data``
(synthetic folders never validate): accuracy on the 20 words and on all clips with
95 % Wilson intervals; the same with ``_silence_`` noise of the validation split
mixed in at 20, 10 and 5 dB SNR (cochlea features cached in ``--cache-dir``);
trainable parameters and the memory the weights need at inference; operations
and arithmetic energy per clip counted from the activity on the clips
(:mod:`models.costs`); and when the running prediction settles within the word.

It writes ``report.json`` (every figure), ``tables.md`` (the figures as markdown
tables) and three PNG plots to ``--out-dir``; what the figures mean is written by
hand in ``benchmarks/REPORT.md``.

Model files: ``--snn`` (default: the bundled model), ``--analog``
(``runs/analog.pt``), ``--binary`` (``runs/binary.pt``); a missing one is
reported as missing.

Run from the repository root::

    python -m benchmarks.report                      # the full report
    python -m benchmarks.report --quick 60 --out-dir /tmp/report   # a dry run on 60 clips
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from rich.console import Console

from benchmarks.common import REPO
from models.costs import PICOJOULES_PER_AC, PICOJOULES_PER_MAC, NetworkCosts
from models.model_file import DEFAULT_MODEL_PATH, ModelBundle, ModelFileError, load_model
from models.network import Classifier, FrequencyConv, NetworkConfig
from models.recognizer import Recognizer
from models.vocabulary import is_word
from training.augment import place
from training.data import Clip, describe, validation_clips
from training.evaluate import evaluate_rasters, plot_heard_curve
from training.features import (
    CLIP_SECONDS,
    FeatureSpec,
    _clip_seed,
    _worker_noises,
    build_features,
    clip_raster,
    load_resampled,
    process_cochlea,
    run_cochlea_jobs,
)

DEFAULT_DATA = ["../shared/data/speech_commands", "../shared/data/fsdd"]
DEFAULT_SNRS = (20.0, 10.0, 5.0)
MIX_VERSION = 1  # bump when mix_noise changes, to invalidate cached noisy features
NAMES = {"spiking": "SNN", "analog": "analog RNN", "binary": "binary NN"}
COLOURS = {"spiking": "tab:red", "analog": "tab:blue", "binary": "tab:green"}
# Per-neuron float32 constants: adLIF alpha, beta, a, b; the analog leak alpha; none
# for the binary neuron (no membrane).
NEURON_CONSTANTS = {"spiking": 4, "analog": 1, "binary": 0}
# Per-neuron arithmetic each bin beyond the synapses (MACs): adLIF beta*w, a*u,
# alpha*(u - s), (1 - alpha)*(I - w); the analog leak alpha*u, (1 - alpha)*I; the
# binary neuron a threshold compare.
NEURON_MACS = {"spiking": 4, "analog": 2, "binary": 0}
console = Console()


# --------------------------------------------------------------------------- data


def mix_noise(clean: np.ndarray, noise: np.ndarray, snr_db: float, offset: int) -> np.ndarray:
    """``clean`` plus ``noise`` (rolled by ``offset``, looped to length) at ``snr_db``.

    SNR is the ratio of mean powers over the whole clip window, as the training
    augmentation (``training.augment.augment``) defines it; nothing is rescaled
    afterwards, so the noise adds to the clip at its own level.
    """
    noise = np.resize(np.roll(noise, offset), len(clean))
    signal_power = float(np.mean(clean.astype(np.float64) ** 2)) + 1e-10
    noise_power = float(np.mean(noise.astype(np.float64) ** 2)) + 1e-10
    gain = math.sqrt(signal_power / noise_power / 10 ** (snr_db / 10))
    return (clean + gain * noise).astype(np.float32)


def _noisy_worker(job: tuple) -> tuple[int, np.ndarray | None]:
    """Rasters of one clip with the same noise (choice and offset) at each SNR."""
    index, path, spec, noise_paths, snrs, seed = job
    cochlea = process_cochlea(spec.frontend)
    rate = spec.frontend.sample_rate
    try:
        clean = place(load_resampled(path, rate), round(CLIP_SECONDS * rate), None)
    except Exception:  # an unreadable clip is left out, as build_features does
        return index, None
    noises = _worker_noises(noise_paths, rate)
    rng = np.random.default_rng(seed)
    choice = int(rng.integers(len(noise_paths)))
    if noise_paths[choice] == path and len(noise_paths) > 1:  # never a noise clip with itself
        choice = (choice + 1) % len(noise_paths)
    noise = noises[choice]
    offset = int(rng.integers(len(noise)))
    rasters = [clip_raster(cochlea, mix_noise(clean, noise, snr, offset), spec) for snr in snrs]
    return index, np.stack(rasters)


def noisy_features(
    clips: list[Clip], spec: FeatureSpec, noise_clips: list[Clip], args: argparse.Namespace
) -> tuple[np.ndarray, np.ndarray]:
    """``[clips, snrs, bins, channels]`` rasters of ``clips`` with noise mixed in, cached."""
    noise_paths = tuple(c.path for c in noise_clips)
    extra = ["noise-mix", MIX_VERSION, list(args.snrs), args.seed, [str(p) for p in noise_paths]]
    cache = Path(args.cache_dir)
    path = cache / f"report-noisy-{spec.key(clips, False, False, extra)}.npz"
    if path.exists():
        data = np.load(path)
        return data["rasters"], data["ok"]
    cache.mkdir(parents=True, exist_ok=True)
    jobs = [
        (i, c.path, spec, noise_paths, args.snrs, _clip_seed(c, args.seed))
        for i, c in enumerate(clips)
    ]
    shape = (len(args.snrs), spec.n_bins, spec.frontend.channels)
    rasters, ok = run_cochlea_jobs(
        _noisy_worker, jobs, shape, "cochlea: noisy validation clips", args.workers, console
    )
    np.savez(path, rasters=rasters, ok=ok)
    return rasters, ok


def validation_set(bundle: ModelBundle, args: argparse.Namespace) -> dict:
    """The held-out clips of ``--data`` featurised for ``bundle``: clean rasters
    ``[clips, bins, channels]``, noisy ones ``[clips, snrs, bins, channels]``."""
    clips = validation_clips(args.data, bundle.vocabulary)
    if not clips:
        raise SystemExit("no validation clips (are the --data folders real recordings?)")
    spec = FeatureSpec(bundle.frontend, bundle.bin_ms, 0)
    features = build_features(
        clips, bundle.vocabulary, spec, Path(args.cache_dir), False, description="eval"
    )
    keep = np.flatnonzero(features.ok)
    if args.quick:
        rng = np.random.default_rng(args.seed)
        keep = np.sort(rng.choice(keep, min(args.quick, len(keep)), replace=False))
    chosen = [clips[i] for i in keep]
    noise_clips = [c for c in clips if c.spoken == "noise"]
    if not noise_clips:
        raise SystemExit("no _silence_ noise clips in the validation split to mix in")
    noisy, ok = noisy_features(chosen, spec, noise_clips, args)
    if not ok.all():
        console.print(f"[yellow]{int((~ok).sum())} clips unreadable in the noisy pass[/]")
    return {
        "clips": [c for c, k in zip(chosen, ok, strict=True) if k],
        "labels": features.labels[keep][ok],
        "clean": features.rasters[keep, 0][ok],
        "noisy": noisy[ok],
        "noise_clips": len(noise_clips),
        "per_source": {k: v["clips"] for k, v in describe(clips).items()},
    }


# --------------------------------------------------------------------------- measuring


@torch.no_grad()
def activity_counts(network: Classifier, rasters: np.ndarray, batch: int = 256) -> np.ndarray:
    """Non-zero hidden outputs per clip and layer ``[clips, layers]``: spikes for the
    SNN and the binary network, non-zero ReLU outputs for the analog one."""
    network.eval()
    counts = []
    for start in range(0, len(rasters), batch):
        _, _, activity = network(
            torch.from_numpy(rasters[start : start + batch].astype(np.float32))
        )
        counts.append(np.stack([(a != 0).sum(dim=(1, 2)).numpy() for a in activity], axis=1))
    return np.concatenate(counts).astype(np.float64)


def weight_memory(network: Classifier) -> dict:
    """Numbers and bytes the network needs at inference.

    Synaptic weights: float32, or for the binary network 1 bit each plus one
    float32 scale per output neuron and matrix; a layer shared along frequency
    stores its kernels once (its synapses reuse them).  Batch-norm: folded into a
    float32 scale and shift per neuron.  Readout: float32 weights, biases and decay.
    """
    config = network.config
    binary = config.kind == "binary"
    weight_bits = float_numbers = 0
    for layer in network.layers:
        for weights in (layer.input, layer.recurrent):
            if weights is None:
                continue
            if isinstance(weights, FrequencyConv):  # never binary
                float_numbers += weights.kernel.numel()
            elif binary:
                weight_bits += weights.weight.numel()
                float_numbers += weights.weight.shape[0]  # per-neuron scale
            else:
                float_numbers += weights.weight.numel()
        float_numbers += (2 + NEURON_CONSTANTS[config.kind]) * layer.n_out
    float_numbers += network.readout.weight.numel() + network.readout.bias.numel() + 1
    return {
        "bytes": weight_bits / 8 + 4 * float_numbers,
        "binary_weights": weight_bits,
        "float32_numbers": float_numbers,
    }


def neuron_macs_per_bin(config: NetworkConfig) -> int:
    """Per-neuron arithmetic each bin outside the synapses: per hidden neuron 1 MAC for
    its batch-norm affine plus its dynamics; 2 per readout class for its leak."""
    return sum(config.hidden) * (1 + NEURON_MACS[config.kind]) + 2 * config.n_classes


def wilson(p: float | None, n: int, z: float = 1.96) -> list[float] | None:
    """95 % Wilson score interval of a proportion ``p`` of ``n``."""
    if p is None or n == 0:
        return None
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def event_figures(bundle: ModelBundle, rasters: np.ndarray, costs: NetworkCosts) -> dict:
    """Input spikes, non-zero hidden outputs and event-driven accumulates per clip."""
    nonzero = activity_counts(bundle.network, rasters)
    input_spikes = rasters.sum(axis=(1, 2)).astype(np.float64)
    return {
        "input_spikes": float(input_spikes.mean()),
        "hidden_nonzero": nonzero.mean(axis=0).tolist(),
        "event_accumulates": float(costs.synaptic_ops(input_spikes, nonzero).mean()),
    }


def measure(path: str, bundle: ModelBundle, data: dict, snrs: tuple[float, ...]) -> dict:
    """Every figure of one model on the validation clips, JSON-ready."""
    config = bundle.network.config
    kind = config.kind
    min_activity = Recognizer(bundle).endpointer.min_activity
    costs = NetworkCosts.of(bundle.network)
    n_bins = data["clean"].shape[1]
    labels, clips = data["labels"], data["clips"]
    clean = evaluate_rasters(bundle, data["clean"], labels, clips, min_activity)
    words = int(sum(is_word(bundle.vocabulary[i]) for i in labels))
    events = event_figures(bundle, data["clean"], costs)
    dense_ops = float(costs.dense_macs(n_bins))
    # Analog hardware pays every MAC; event-driven hardware one accumulate per event.
    headline_pj = (
        dense_ops * PICOJOULES_PER_MAC
        if kind == "analog"
        else events["event_accumulates"] * PICOJOULES_PER_AC
    )
    neuron_macs = float(neuron_macs_per_bin(config) * n_bins)
    training = bundle.card.get("training", {})
    recorded = bundle.card.get("data", {}).get("validation") or {}
    result = {
        "kind": kind,
        "name": NAMES[kind],
        "path": path,
        "shape": [config.n_inputs, *config.hidden, config.n_classes],
        "recurrent": config.recurrent,
        "bin_ms": bundle.bin_ms,
        "training": training,
        "training_clips": sum(
            s.get("clips", 0) for s in bundle.card.get("data", {}).get("train", {}).values()
        ),
        "card_validation": {k: v["clips"] for k, v in recorded.items() if not v.get("synthetic")},
        "clips": len(labels),
        "words": words,
        "accuracy": clean.report["accuracy"],
        "accuracy_ci": wilson(clean.report["accuracy"], len(labels)),
        "word_accuracy": clean.report["in_vocabulary_accuracy"],
        "word_accuracy_ci": wilson(clean.report["in_vocabulary_accuracy"], words),
        "early_decision": clean.report["early_decision"],
        "heard_curve": clean.heard_curve.tolist(),
        "parameters": bundle.network.parameter_count(),
        "memory": weight_memory(bundle.network),
        **events,
        "activity_share": sum(events["hidden_nonzero"]) / (sum(config.hidden) * n_bins),
        "fan_out": costs.fan_out.tolist(),
        "input_ops": events["input_spikes"] * float(costs.fan_out[0]),
        "dense_ops": dense_ops,
        "op_unit": "MAC" if kind == "analog" else "AC",
        "headline_ops": dense_ops if kind == "analog" else events["event_accumulates"],
        "headline_pj": headline_pj,
        "neuron_macs": neuron_macs,
        "with_neurons_pj": headline_pj + neuron_macs * PICOJOULES_PER_MAC,
        "dense_binary_pj": dense_ops * PICOJOULES_PER_AC if kind == "binary" else None,
        "noisy": {},
    }
    for i, snr in enumerate(snrs):
        rasters = data["noisy"][:, i]
        noisy = evaluate_rasters(bundle, rasters, labels, clips, min_activity).report
        result["noisy"][f"{snr:g}"] = {
            "accuracy": noisy["accuracy"],
            "word_accuracy": noisy["in_vocabulary_accuracy"],
            **event_figures(bundle, rasters, costs),
        }
    return result


# --------------------------------------------------------------------------- tables


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def ci(interval: list[float] | None) -> str:
    return "" if interval is None else f" ({100 * interval[0]:.1f}–{100 * interval[1]:.1f})"


def big(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g}"


def kib(value: float) -> str:
    return f"{value / 1024:.1f} KiB"


def uj(picojoules: float | None) -> str:
    return "–" if picojoules is None else f"{picojoules * 1e-6:.3g} µJ"


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def setting(key: str, value: object) -> str:
    """A card value, short enough for a table cell."""
    if key == "vocabulary" and isinstance(value, list | tuple):
        return f"{len(value)} classes"
    if isinstance(value, list | tuple):
        return ", ".join(f"`{v}`" if key == "data" else str(v) for v in value)
    return str(value)


def tables(report: dict) -> str:
    """The figures of ``report`` as markdown tables (no reading of them)."""
    meta, models, snrs = report["meta"], report["models"], report["meta"]["snrs"]
    lines = [
        "# Efficiency report: tables",
        "",
        f"Written by `{meta['command']}` on {meta['date']} at `{meta['code']}`; "
        f"{models[0]['clips'] if models else 0} validation clips"
        + (f" (**dry run, `--quick {meta['quick']}`**)" if meta["quick"] else "")
        + f". Validation clips per source: {meta['validation_per_source']}.",
        "",
    ]
    rows = [
        [
            m["name"],
            f"`{m['path']}`",
            f"{m['kind']}, {' → '.join(map(str, m['shape']))}, "
            f"{'recurrent' if m['recurrent'] else 'feed-forward'}, {m['bin_ms']:g} ms bins",
            "yes" if m["card_validation"] == meta["validation_per_source"] else "no",
        ]
        for m in models
    ]
    rows += [[name, "–", problem, "–"] for name, problem in report["missing"].items()]
    lines += table(["model", "file", "network", "card's validation split is this one"], rows)
    keys = sorted({k for m in models for k in m["training"]})
    rows = []
    for key in keys:
        values = [setting(key, m["training"].get(key, "–")) for m in models]
        differs = key not in ("kind", "out") and len(set(values)) > 1
        rows.append([f"**{key}**" if differs else key, *values])
    rows.append(["training clips (card)", *(str(m["training_clips"]) for m in models)])
    lines += ["## Training settings (from each model's card; differing ones in bold)", ""]
    lines += table(["setting", *(m["name"] for m in models)], rows)

    def row(label: str, fn: Callable[[dict], str]) -> list[str]:
        return [label, *(fn(m) for m in models)]

    rows = [
        row(
            "accuracy, 20 words (95 % CI)",
            lambda m: pct(m["word_accuracy"]) + ci(m["word_accuracy_ci"]),
        ),
        row("accuracy, all clips (95 % CI)", lambda m: pct(m["accuracy"]) + ci(m["accuracy_ci"])),
        *[
            row(
                f"accuracy, 20 words, {s} dB SNR",
                lambda m, s=s: pct(m["noisy"][s]["word_accuracy"]),
            )
            for s in snrs
        ],
        *[
            row(f"accuracy, all clips, {s} dB SNR", lambda m, s=s: pct(m["noisy"][s]["accuracy"]))
            for s in snrs
        ],
        row("trainable parameters", lambda m: f"{m['parameters']:,}"),
        row("weight memory", lambda m: kib(m["memory"]["bytes"])),
        row("input spikes per clip", lambda m: big(m["input_spikes"])),
        row(
            "hidden non-zero outputs per clip (per layer)",
            lambda m: " + ".join(map(big, m["hidden_nonzero"])),
        ),
        row("share of hidden outputs non-zero", lambda m: pct(m["activity_share"])),
        row(
            "fan-out per spike (input, each layer)",
            lambda m: ", ".join(f"{v:g}" for v in m["fan_out"]),
        ),
        row(
            "event-driven ops per clip (input spikes + non-zero outputs, × fan-out)",
            lambda m: big(m["event_accumulates"]),
        ),
        row("dense ops per clip (every synapse, every bin)", lambda m: big(m["dense_ops"])),
        row("**ops per clip as costed**", lambda m: f"{big(m['headline_ops'])} {m['op_unit']}"),
        row("**energy per clip (estimate)**", lambda m: uj(m["headline_pj"])),
        row("per-neuron update MACs per clip", lambda m: big(m["neuron_macs"])),
        row("energy incl. neuron updates (estimate)", lambda m: uj(m["with_neurons_pj"])),
        row(
            f"binary net: dense binary ops × {PICOJOULES_PER_AC} pJ",
            lambda m: uj(m["dense_binary_pj"]),
        ),
        row(
            "median decision point (share of word)",
            lambda m: pct(m["early_decision"]["median_fraction_of_word"]),
        ),
        row(
            "median decision after word onset",
            lambda m: ms(m["early_decision"]["median_ms_after_onset"]),
        ),
        row(
            "decided before the word ends",
            lambda m: pct(m["early_decision"]["decided_before_word_end"]),
        ),
    ]
    lines += ["## Results", ""]
    lines += table(["", *(m["name"] for m in models)], rows)
    rows = [
        [
            m["name"],
            condition,
            big(f["input_spikes"]),
            big(f["event_accumulates"]),
            uj(f["event_accumulates"] * PICOJOULES_PER_AC),
        ]
        for m in models
        if m["kind"] != "analog"
        for condition, f in [("clean", m), *((f"{s} dB", m["noisy"][s]) for s in snrs)]
    ]
    lines += ["## Noise: energy per clip of the event-driven models", ""]
    lines += table(["model", "condition", "input spikes", "accumulates", "energy"], rows)
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def plot_snr(models: list[dict], snrs: list[str], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = ["clean", *(f"{s} dB" for s in snrs)]
    for m in models:
        values = [m["word_accuracy"], *(m["noisy"][s]["word_accuracy"] for s in snrs)]
        ax.plot(
            labels, np.array(values) * 100, marker="o", label=m["name"], color=COLOURS[m["kind"]]
        )
    ax.set_xlabel("background noise (SNR)")
    ax.set_ylabel("accuracy on the 20 words (%)")
    ax.set_title("Accuracy versus added noise (unseen speakers, unseen noise clips)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, out)


def save(fig: plt.Figure, out: Path) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _log_bars(
    ax: plt.Axes,
    x: np.ndarray,
    values: list[float],
    fmt: Callable[[float], str],
    **style: object,
) -> None:
    bars = ax.bar(x, values, **style)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            fmt(value),
            (bar.get_x() + bar.get_width() / 2, value),
            ha="center",
            va="bottom",
            fontsize=7,
            xytext=(0, 2),
            textcoords="offset points",
        )


def plot_cost(models: list[dict], out: Path) -> None:
    fig, (ops_ax, energy_ax) = plt.subplots(1, 2, figsize=(11, 4.8))
    x, width = np.arange(len(models)), 0.38
    colours = [COLOURS[m["kind"]] for m in models]
    bars = (
        (ops_ax, "event_accumulates", 1, big, {"color": "tab:purple"},
         "event-driven: (input spikes + non-zero outputs) x fan-out"),
        (ops_ax, "dense_ops", 1, big, {"color": "tab:grey"}, "dense: every synapse, every bin"),
        (energy_ax, "headline_pj", 1e-6, "{:.3g}".format, {"color": colours},
         "synapses, as costed (SNN, binary: AC; analog: MAC)"),
        (energy_ax, "with_neurons_pj", 1e-6, "{:.3g}".format,
         {"color": colours, "hatch": "//", "alpha": 0.5}, "plus per-neuron updates (MAC)"),
    )  # fmt: skip
    for k, (ax, key, scale, fmt, style, label) in enumerate(bars):
        values = [m[key] * scale for m in models]
        offset = (k % 2 - 0.5) * width  # left bar, right bar
        _log_bars(ax, x + offset, values, fmt, width=width, label=label, **style)
    ops_ax.set_title("Synaptic operations per 1 s clip (log scale)")
    energy_ax.set_title(
        f"Energy estimate per 1 s clip, µJ (log scale)\n45 nm: {PICOJOULES_PER_AC} pJ/AC, "
        f"{PICOJOULES_PER_MAC} pJ/MAC; memory access ignored",
        fontsize=10,
    )
    for ax in (ops_ax, energy_ax):
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, ax.dataLim.y1 / 300), high * 4)
        ax.set_xticks(x, [m["name"] for m in models])
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for handle in energy_ax.get_legend().legend_handles:  # the colour is the model's, not the bar's
        handle.set_color("0.6")
    save(fig, out)


# --------------------------------------------------------------------------- main


def git_revision() -> str:
    def git(*command: str) -> str:
        return subprocess.run(
            ["git", *command], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "--short", "HEAD") + (
            " (with uncommitted changes)" if dirty else ""
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load(kind: str, path: str) -> ModelBundle | str:
    """The model file's bundle, or why there is none to compare."""
    try:
        bundle = load_model(path)
    except ModelFileError as error:
        return f"missing or unreadable: {error}"
    if bundle.network.config.kind != kind:
        return f"{path} holds a {bundle.network.config.kind!r} network, not {kind!r}"
    return bundle


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--snn", default=str(DEFAULT_MODEL_PATH.relative_to(REPO)), help="spiking model")
    p.add_argument("--analog", default="runs/analog.pt", help="analog model")
    p.add_argument("--binary", default="runs/binary.pt", help="binary model")
    p.add_argument(
        "--data",
        action="append",
        help="data folder (repeat); default: " + " and ".join(DEFAULT_DATA),
    )
    p.add_argument("--snr", type=float, nargs="+", default=list(DEFAULT_SNRS), help="dB")
    p.add_argument("--quick", type=int, metavar="N", help="only N validation clips (dry run)")
    p.add_argument(
        "--out-dir",
        type=Path,
        default=Path("benchmarks/report"),
        help="report.json, tables.md, plots",
    )
    p.add_argument("--cache-dir", default="cache", help="feature cache (shared with training)")
    p.add_argument("--seed", type=int, default=0, help="noise mixing and --quick sampling")
    p.add_argument(
        "--workers", type=int, default=max(1, min(os.cpu_count() or 1, 8)), help="cochlea processes"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    args.data = args.data or list(DEFAULT_DATA)
    args.snrs = tuple(sorted(set(args.snr), reverse=True))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = {"spiking": args.snn, "analog": args.analog, "binary": args.binary}
    found = {kind: (path, load(kind, path)) for kind, path in paths.items()}
    missing = {NAMES[k]: b for k, (_, b) in found.items() if isinstance(b, str)}
    for kind, (path, bundle) in found.items():
        console.print(
            f"{NAMES[kind]}: " + (f"[yellow]{bundle}[/]" if isinstance(bundle, str) else path)
        )
    loaded = [(path, b) for path, b in found.values() if not isinstance(b, str)]
    if not loaded:
        console.print("[red]no models to compare[/]")
        return 1
    # One feature set per front end, bin width and vocabulary (all three share one normally).
    sets: dict[tuple, dict] = {}
    models = []
    for path, bundle in loaded:
        key = (bundle.frontend, bundle.bin_ms, bundle.vocabulary)
        if key not in sets:
            sets[key] = validation_set(bundle, args)
        console.print(f"measuring {path} on {len(sets[key]['labels'])} clips ...")
        models.append(measure(path, bundle, sets[key], args.snrs))
    if len(sets) > 1:
        console.print("[yellow]models differ in front end or bin width: features differ[/]")
    data = next(iter(sets.values()))
    snrs = [f"{s:g}" for s in args.snrs]
    report = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["python", "-m", "benchmarks.report", *sys.argv[1:]]),
            "code": git_revision(),
            "torch": torch.__version__,
            "quick": args.quick,
            "data": args.data,
            "validation_per_source": data["per_source"],
            "noise_clips": data["noise_clips"],
            "seed": args.seed,
            "snrs": snrs,
            "picojoules_per_ac": PICOJOULES_PER_AC,
            "picojoules_per_mac": PICOJOULES_PER_MAC,
        },
        "models": models,
        "missing": missing,
    }
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "tables.md").write_text(tables(report))
    plot_snr(models, snrs, out / "accuracy_vs_snr.png")
    plot_heard_curve(
        {m["name"]: np.array(m["heard_curve"]) for m in models},
        out / "accuracy_vs_heard.png",
        title="Accuracy versus share of the word heard (20 words, unseen speakers)",
        colours={m["name"]: COLOURS[m["kind"]] for m in models},
    )
    plot_cost(models, out / "cost.png")
    console.print(f"wrote {out}/report.json, tables.md and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
