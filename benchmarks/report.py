"""Efficiency report: spiking vs analog vs binary networks of the same shape.

Compares three classifiers trained by the same pipeline (``spikeear train``, with
``--kind spiking|analog|binary``) on the same cochlea features, evaluated on the
same speaker-disjoint validation split (the validation speakers of ``--data``;
synthetic folders never validate), and writes ``benchmarks/REPORT.md`` with PNG
plots in ``benchmarks/report/``.

Figures per model:

* accuracy on the 20 vocabulary words and over all clips (``_unknown_`` and
  ``_silence_`` included), with 95 % Wilson intervals;
* trainable parameters and the memory the weights need at inference (float32;
  the binary network: 1 bit per binarised weight plus float32 per-neuron scales,
  batch-norm and readout);
* operations per clip, counted from the activity on the validation clips:
  spiking = input spikes x fan-out + hidden spikes x fan-out (accumulates);
  analog = dense MACs (its non-zero ReLU outputs are counted too, to show how
  sparse they are); binary = input spikes x fan-out + binary activations x
  fan-out (accumulates of +-scale), and the dense binary op count;
* energy per clip from the Horowitz (2014) 45 nm figures (0.9 pJ per accumulate,
  4.6 pJ per MAC): estimates of arithmetic only, memory access ignored;
* latency: the median point in the word at which the running prediction becomes
  and stays correct (``training.evaluate.evaluate_rasters``, ``early_decision``);
* robustness: accuracy with ``_silence_`` background noise from the validation
  split mixed in at 20, 10 and 5 dB SNR (cochlea features cached in ``cache/``).

Model files: ``--snn`` (default ``models/spikeear-default.pt``, else
``runs/snn.pt``), ``--analog`` (``runs/analog.pt``), ``--binary``
(``runs/binary.pt``); a missing one is reported as missing.  A training
checkpoint (``runs/*.ckpt``) is accepted too, for dry runs while training is
under way: the report then says which epoch it holds.

Run from the repository root::

    python benchmarks/report.py                  # the full report
    python benchmarks/report.py --quick 60       # a fast dry run on 60 clips
    python benchmarks/report.py --snn runs/snn.ckpt --analog runs/analog.ckpt \\
        --binary runs/binary.ckpt --quick 60 --out /tmp/report/REPORT.md
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from models.model_file import ModelBundle, ModelFileError, load_model
from models.network import Classifier, FrequencyConv, NetworkConfig
from models.recognizer import PICOJOULES_PER_AC, PICOJOULES_PER_MAC, Recognizer
from models.vocabulary import DEFAULT_VOCABULARY, is_word
from training.augment import place
from training.config import TrainConfig
from training.data import Clip, describe, discover, split_by_speaker
from training.evaluate import evaluate_rasters, plot_heard_curve
from training.features import (
    CLIP_SECONDS,
    FeatureSet,
    FeatureSpec,
    _clip_seed,
    _worker_noises,
    build_features,
    clip_raster,
    load_resampled,
    process_cochlea,
    run_cochlea_jobs,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ["../shared/data/speech_commands", "../shared/data/fsdd"]
DEFAULT_SNRS = (20.0, 10.0, 5.0)
MIX_VERSION = 1  # bump when mix_noise changes, to invalidate cached noisy features
NAMES = {"spiking": "SNN", "analog": "analog RNN", "binary": "binary NN"}
COLOURS = {"spiking": "tab:red", "analog": "tab:blue", "binary": "tab:green"}
# Per-neuron arithmetic each bin (MACs), beyond the synapses; see neuron_macs_per_bin.
NEURON_MACS = {"spiking": 4, "analog": 2, "binary": 0}
console = Console()


# --------------------------------------------------------------------------- models


@dataclass
class Entry:
    kind: str
    candidates: list[Path]
    path: Path | None = None
    bundle: ModelBundle | None = None
    problem: str = ""
    from_checkpoint: bool = False

    @property
    def name(self) -> str:
        return NAMES[self.kind]


def bundle_from_checkpoint(path: Path, kind: str) -> ModelBundle:
    """A model bundle from a training checkpoint (the training defaults for the rest)."""
    from audio_frontend.cochlea import CochleaConfig
    from training.config import TrainConfig
    from training.train import time_constants

    saved = torch.load(path, map_location="cpu", weights_only=False)
    state = saved["network"]
    n_layers = len({k.split(".")[1] for k in state if k.startswith("layers.")})
    hidden = tuple(state[f"layers.{i}.input.weight"].shape[0] for i in range(n_layers))
    n_inputs = state["layers.0.input.weight"].shape[1]
    n_classes = state["readout.weight"].shape[0]
    bin_ms = TrainConfig.bin_ms
    config = NetworkConfig(
        kind=kind,
        hidden=hidden,
        n_inputs=n_inputs,
        n_classes=n_classes,
        recurrent="layers.0.recurrent.weight" in state,
        **time_constants(bin_ms),
    )
    network = Classifier(config)
    network.load_state_dict(state)
    network.eval()
    epoch = int(saved["epoch"]) + 1
    card = {
        "name": path.stem,
        "training": {"source": f"checkpoint {path}", "epochs_completed": epoch},
        "parameters": network.parameter_count(),
    }
    if n_classes != len(DEFAULT_VOCABULARY):
        raise ModelFileError(f"{path}: {n_classes} outputs, not the default vocabulary")
    return ModelBundle(network, CochleaConfig(channels=n_inputs), DEFAULT_VOCABULARY, bin_ms, card)


def load_entry(entry: Entry) -> Entry:
    found = [p for p in entry.candidates if p.exists()]
    if not found:
        entry.problem = "missing: " + ", ".join(str(p) for p in entry.candidates) + " not found"
        return entry
    entry.path = found[0]
    for attempt in range(3):  # a checkpoint may be being rewritten by training right now
        try:
            if entry.path.suffix == ".ckpt":
                entry.bundle = bundle_from_checkpoint(entry.path, entry.kind)
                entry.from_checkpoint = True
            else:
                entry.bundle = load_model(entry.path)
            break
        except Exception as error:
            if attempt == 2:
                entry.problem = f"unreadable: {entry.path}: {error}"
                return entry
            time.sleep(2)
    kind = entry.bundle.network.config.kind
    if kind != entry.kind:
        entry.problem = f"{entry.path} holds a {kind!r} network, not {entry.kind!r}"
        entry.bundle = None
    return entry


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
    except Exception:
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


def build_noisy_features(
    clips: list[Clip],
    spec: FeatureSpec,
    noise_clips: list[Clip],
    snrs: tuple[float, ...],
    cache_dir: Path,
    seed: int,
    workers: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``[clips, snrs, bins, channels]`` rasters of ``clips`` with noise mixed in, cached."""
    noise_paths = tuple(c.path for c in noise_clips)
    extra = ["noise-mix", MIX_VERSION, list(snrs), seed, [str(p) for p in noise_paths]]
    path = cache_dir / f"report-noisy-{spec.key(clips, False, False, extra)}.npz"
    if path.exists():
        data = np.load(path)
        return data["rasters"], data["ok"]
    cache_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        (i, c.path, spec, noise_paths, tuple(snrs), _clip_seed(c, seed))
        for i, c in enumerate(clips)
    ]
    rasters, ok = run_cochlea_jobs(
        _noisy_worker,
        jobs,
        (len(snrs), spec.n_bins, spec.frontend.channels),
        "cochlea: noisy validation clips",
        workers=workers,
        console=console,
    )
    np.savez(path, rasters=rasters, ok=ok)
    return rasters, ok


@dataclass
class ValidationSet:
    clips: list[Clip]  # the clips evaluated (a subset with --quick)
    labels: np.ndarray
    clean: np.ndarray  # [clips, bins, channels]
    noisy: np.ndarray  # [clips, snrs, bins, channels]
    noise_clips: list[Clip]
    all_validation: list[Clip]


def validation_set(
    bundle: ModelBundle, args: argparse.Namespace, snrs: tuple[float, ...]
) -> ValidationSet:
    """The speaker-disjoint validation clips of ``--data``, featurised for ``bundle``.

    Clean features come from ``training.features.build_features`` per source
    folder, as training caches them (``cache/val-<folder>-*.npz``).
    """
    vocabulary = bundle.vocabulary
    per_root = [discover(root, vocabulary) for root in args.data]
    _, validation = split_by_speaker([c for clips in per_root for c in clips])
    chosen = set(validation)
    spec = FeatureSpec(bundle.frontend, bundle.bin_ms, 0)
    cache = Path(args.cache_dir)
    clips: list[Clip] = []
    parts: list[FeatureSet] = []
    for root, found in zip(args.data, per_root, strict=True):
        mine = [c for c in found if c in chosen and not c.synthetic]
        if mine:
            parts.append(
                build_features(
                    mine, vocabulary, spec, cache, False, description=f"val-{Path(root).name}"
                )
            )
            clips += mine
    if not clips:
        raise SystemExit("no validation clips (are the --data folders real recordings?)")
    features = FeatureSet.concatenate(parts)
    keep = np.flatnonzero(features.ok)
    if args.quick:
        rng = np.random.default_rng(args.seed)
        keep = np.sort(rng.choice(keep, min(args.quick, len(keep)), replace=False))
    chosen_clips = [clips[i] for i in keep]
    noise_clips = [c for c in clips if c.spoken == "noise"]
    if not noise_clips:
        raise SystemExit("no _silence_ noise clips in the validation split to mix in")
    noisy, ok = build_noisy_features(
        chosen_clips, spec, noise_clips, snrs, cache, args.seed, args.workers
    )
    if not ok.all():
        console.print(f"[yellow]{int((~ok).sum())} clips unreadable in the noisy pass[/]")
    return ValidationSet(
        [c for c, k in zip(chosen_clips, ok, strict=True) if k],
        features.labels[keep][ok],
        features.rasters[keep, 0][ok],
        noisy[ok],
        noise_clips,
        clips,
    )


# --------------------------------------------------------------------------- measuring


@torch.no_grad()
def activity_counts(network: Classifier, rasters: np.ndarray, batch: int = 256) -> np.ndarray:
    """Non-zero hidden outputs per clip and layer ``[clips, layers]`` (spikes, for the SNN)."""
    network.eval()
    counts = []
    for start in range(0, len(rasters), batch):
        x = torch.from_numpy(rasters[start : start + batch].astype(np.float32))
        _, _, activity = network(x)
        counts.append(np.stack([(a != 0).sum(dim=(1, 2)).numpy() for a in activity], axis=1))
    return np.concatenate(counts).astype(np.float64)


def weight_memory(network: Classifier) -> dict:
    """Numbers and bytes the network needs at inference.

    Synaptic weights: float32, or for the binary network 1 bit each plus one
    float32 scale per output neuron and matrix; a layer shared along frequency
    stores its kernels once (its synapses reuse them).  Batch-norm: folded into a
    float32 scale and shift per neuron.  Neuron constants (float32): alpha,
    beta, a, b for adLIF; alpha for the analog leak; none for the binary
    network (no membrane).  Readout: float32 weights, biases and its decay.
    """
    config = network.config
    binary = config.kind == "binary"
    weight_bits = 0
    float_numbers = 0
    synapses = 0
    for index, layer in enumerate(network.layers):
        synapses += network.input_synapses(index)
        if layer.recurrent is not None:
            synapses += layer.recurrent.weight.numel()
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
        float_numbers += 2 * layer.n_out  # folded batch-norm
        float_numbers += {"spiking": 4, "analog": 1, "binary": 0}[config.kind] * layer.n_out
    readout = network.readout.weight.numel() + network.readout.bias.numel() + 1
    synapses += network.readout.weight.numel()
    float_numbers += readout
    return {
        "bytes": weight_bits / 8 + 4 * float_numbers,
        "binary_weights": weight_bits,
        "float32_numbers": float_numbers,
        "synapses": synapses,
    }


def neuron_macs_per_bin(config: NetworkConfig) -> int:
    """Per-neuron arithmetic each bin, outside the synapses (counted as MACs).

    Every hidden neuron: 1 for its batch-norm affine; adLIF 4 more (beta*w,
    a*u, alpha*(u - s), (1 - alpha)*(I - w)), the analog leak 2 (alpha*u,
    (1 - alpha)*I), the binary neuron none (a threshold compare).  Readout:
    2 per class for its leak.
    """
    hidden = sum(config.hidden)
    return hidden * (1 + NEURON_MACS[config.kind]) + 2 * config.n_classes


def wilson(p: float | None, n: int, z: float = 1.96) -> tuple[float, float]:
    if p is None or n == 0:
        return (math.nan, math.nan)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class Result:
    entry: Entry
    clips: int
    words: int
    accuracy: float
    word_accuracy: float
    early: dict
    heard_curve: np.ndarray
    params: int
    memory: dict
    input_spikes: float
    hidden_nonzero: np.ndarray  # per layer, mean per clip
    hidden_outputs: int  # neuron outputs per clip (neurons x bins)
    input_ops: float  # input spikes x fan-out of the input, mean per clip
    event_accumulates: float
    dense_ops: float
    neuron_macs: float
    noisy: dict = field(default_factory=dict)  # snr -> figures

    @property
    def kind(self) -> str:
        return self.entry.kind

    @property
    def headline_ops(self) -> float:
        return self.dense_ops if self.kind == "analog" else self.event_accumulates

    @property
    def op_unit(self) -> str:
        return "MAC" if self.kind == "analog" else "AC"

    @property
    def headline_pj(self) -> float:
        if self.kind == "analog":
            return self.dense_ops * PICOJOULES_PER_MAC
        return self.event_accumulates * PICOJOULES_PER_AC

    @property
    def with_neurons_pj(self) -> float:
        return self.headline_pj + self.neuron_macs * PICOJOULES_PER_MAC

    @property
    def activity_share(self) -> float:
        return float(self.hidden_nonzero.sum() / self.hidden_outputs)


def measure(entry: Entry, data: ValidationSet, snrs: tuple[float, ...]) -> Result:
    bundle = entry.bundle
    recognizer = Recognizer(bundle)
    min_activity = recognizer.decoder.min_activity
    fan_out = recognizer._fan_out.astype(np.float64)
    n_bins = data.clean.shape[1]
    clean = evaluate_rasters(bundle, data.clean, data.labels, data.clips, min_activity)
    report = clean.report
    nonzero = activity_counts(bundle.network, data.clean)
    input_spikes = data.clean.sum(axis=(1, 2)).astype(np.float64)
    accumulates = input_spikes * fan_out[0] + nonzero @ fan_out[1:]
    if entry.kind != "analog":  # binary outputs: the counts must match evaluate_rasters' sums
        reference = report["per_clip"]["synaptic_ops"]
        if not math.isclose(float(accumulates.mean()), reference, rel_tol=1e-6):
            console.print(f"[red]{entry.name}: op count {accumulates.mean()} != {reference}[/]")
    words = np.array([is_word(bundle.vocabulary[i]) for i in data.labels])
    config = bundle.network.config
    result = Result(
        entry=entry,
        clips=len(data.labels),
        words=int(words.sum()),
        accuracy=report["accuracy"],
        word_accuracy=report["in_vocabulary_accuracy"],
        early=report["early_decision"],
        heard_curve=clean.heard_curve,
        params=bundle.network.parameter_count(),
        memory=weight_memory(bundle.network),
        input_spikes=float(input_spikes.mean()),
        hidden_nonzero=nonzero.mean(axis=0),
        hidden_outputs=sum(config.hidden) * n_bins,
        input_ops=float(input_spikes.mean() * fan_out[0]),
        event_accumulates=float(accumulates.mean()),
        dense_ops=float(recognizer._dense_macs_per_bin * n_bins),
        neuron_macs=float(neuron_macs_per_bin(config) * n_bins),
    )
    for i, snr in enumerate(snrs):
        rasters = data.noisy[:, i]
        noisy = evaluate_rasters(bundle, rasters, data.labels, data.clips, min_activity).report
        counts = activity_counts(bundle.network, rasters)
        spikes_in = rasters.sum(axis=(1, 2)).astype(np.float64)
        acc = spikes_in * fan_out[0] + counts @ fan_out[1:]
        result.noisy[snr] = {
            "accuracy": noisy["accuracy"],
            "word_accuracy": noisy["in_vocabulary_accuracy"],
            "input_spikes": float(spikes_in.mean()),
            "event_accumulates": float(acc.mean()),
        }
    return result


# --------------------------------------------------------------------------- plots


def plot_snr(results: list[Result], snrs: tuple[float, ...], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = ["clean", *(f"{s:g} dB" for s in snrs)]
    for r in results:
        values = [r.word_accuracy, *(r.noisy[s]["word_accuracy"] for s in snrs)]
        ax.plot(
            labels, np.array(values) * 100, marker="o", label=r.entry.name, color=COLOURS[r.kind]
        )
    ax.set_xlabel("background noise (SNR)")
    ax.set_ylabel("accuracy on the 20 words (%)")
    ax.set_title("Accuracy versus added noise (unseen speakers, unseen noise clips)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_heard(results: list[Result], out: Path) -> None:
    plot_heard_curve(
        {r.entry.name: r.heard_curve for r in results},
        out,
        title="Accuracy versus share of the word heard (20 words, unseen speakers)",
        colours={r.entry.name: COLOURS[r.kind] for r in results},
    )


def _log_bars(ax, x: np.ndarray, values: list[float], fmt, **style) -> None:
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


def plot_cost(results: list[Result], out: Path) -> None:
    fig, (ops_ax, energy_ax) = plt.subplots(1, 2, figsize=(11, 4.8))
    names = [r.entry.name for r in results]
    x = np.arange(len(results))
    width = 0.38
    _log_bars(
        ops_ax,
        x - width / 2,
        [r.event_accumulates for r in results],
        big,
        width=width,
        color="tab:purple",
        label="event-driven: (input spikes + non-zero outputs) x fan-out",
    )
    _log_bars(
        ops_ax,
        x + width / 2,
        [r.dense_ops for r in results],
        big,
        width=width,
        color="tab:grey",
        label="dense: every synapse, every bin",
    )
    ops_ax.set_title("Synaptic operations per 1 s clip (log scale)")
    colours = [COLOURS[r.kind] for r in results]
    _log_bars(
        energy_ax,
        x - width / 2,
        [r.headline_pj * 1e-6 for r in results],
        lambda v: f"{v:.3g}",
        width=width,
        color=colours,
        label="synapses, as costed (SNN, binary: AC; analog: MAC)",
    )
    _log_bars(
        energy_ax,
        x + width / 2,
        [r.with_neurons_pj * 1e-6 for r in results],
        lambda v: f"{v:.3g}",
        width=width,
        color=colours,
        hatch="//",
        alpha=0.5,
        label="plus per-neuron updates (MAC)",
    )
    energy_ax.set_title(
        f"Energy estimate per 1 s clip, µJ (log scale)\n45 nm: {PICOJOULES_PER_AC} pJ/AC, "
        f"{PICOJOULES_PER_MAC} pJ/MAC; memory access ignored",
        fontsize=10,
    )
    for ax in (ops_ax, energy_ax):
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, ax.dataLim.y1 / 300), high * 4)
        ax.set_xticks(x, names)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for handle in energy_ax.get_legend().legend_handles:  # the colour is the model's, not the bar's
        handle.set_color("0.6")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- report text


def pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f} %"


def ci(p: float | None, n: int) -> str:
    low, high = wilson(p, n)
    return "" if math.isnan(low) else f" ({100 * low:.1f}–{100 * high:.1f})"


def big(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g}"


def kib(value: float) -> str:
    return f"{value / 1024:.1f} KiB"


def uj(picojoules: float) -> str:
    return f"{picojoules * 1e-6:.3g} µJ"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def epochs_of(entry: Entry) -> int | None:
    training = entry.bundle.card.get("training", {}) if entry.bundle else {}
    value = training.get("epochs", training.get("epochs_completed"))
    return int(value) if value is not None else None


def setting(key: str, value) -> str:
    """A card value, short enough for a table cell."""
    if key == "vocabulary" and isinstance(value, list | tuple):
        return f"{len(value)} classes"
    if isinstance(value, list | tuple):
        return ", ".join(f"`{v}`" if key == "data" else str(v) for v in value)
    return str(value)


def split_check(entries: list[Entry], data: ValidationSet) -> str:
    """Whether the validation clips match what each card says training validated on."""
    ours = {k: v["clips"] for k, v in describe(data.all_validation).items()}
    verdicts = []
    for e in entries:
        recorded = e.bundle.card.get("data", {}).get("validation") if e.bundle else None
        if recorded is None:
            continue
        theirs = {k: v["clips"] for k, v in recorded.items() if not v.get("synthetic")}
        same = theirs == ours
        verdicts.append(f"{e.name}: {'same' if same else f'differs (card: {theirs})'}")
    if not verdicts:
        return "The model cards record no validation split to check against."
    return (
        f"Validation clips per source here (before any `--quick` sampling): {ours}; "
        "compared with the split recorded in each model's card: " + "; ".join(verdicts) + "."
    )


def training_section(entries: list[Entry]) -> list[str]:
    loaded = [e for e in entries if e.bundle is not None]
    lines = ["## Training settings (from each model's card)", ""]
    cards = {e.name: e.bundle.card.get("training", {}) for e in loaded}
    keys = sorted({k for card in cards.values() for k in card})
    # A setting an older card lacks did not exist when it was trained: it ran as the default.
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    rows = []
    for key in keys:
        values = [setting(key, cards[e.name].get(key, defaults.get(key, "–"))) for e in loaded]
        differs = key not in ("kind", "out") and len(set(values)) > 1
        rows.append([f"**{key}**" if differs else key, *values, "differs" if differs else ""])
    train_rows = []
    for e in loaded:
        train = e.bundle.card.get("data", {}).get("train", {})
        train_rows.append(str(sum(s.get("clips", 0) for s in train.values())) if train else "–")
    if any(v != "–" for v in train_rows):
        rows.append(["training clips (card)", *train_rows, ""])
    if rows:
        lines += table(["setting", *(e.name for e in loaded), ""], rows)
    epochs = {e.name: epochs_of(e) for e in loaded}
    known = {k: v for k, v in epochs.items() if v is not None}
    lines.append("")
    if len(set(known.values())) > 1:
        listing = ", ".join(f"{k} {v}" for k, v in known.items())
        fewest = min(known, key=known.get)
        lines.append(
            f"**The models were not trained for the same number of epochs** ({listing}). "
            f"The {fewest} had the fewest; its figures may understate what the same "
            "architecture reaches with the same training budget."
        )
    elif known:
        lines.append(f"All loaded models were trained for {next(iter(known.values()))} epochs.")
    if any(c.get("rate_weight") for c in cards.values()) and len(loaded) > 1:
        lines += [
            "",
            "`rate_weight` (the firing-rate bounds in the loss) is applied by "
            "`training/train.py` to the spiking network only; the others train on the "
            "classification loss alone.",
        ]
    blank = [e.name for e in loaded if not cards[e.name]]
    if blank:
        lines += [
            "",
            f"**No training settings in the card of: {', '.join(blank)}**, so this report "
            "cannot confirm that it was trained by the same pipeline as the others.",
        ]
    checkpoints = [e for e in loaded if e.from_checkpoint]
    if checkpoints:
        lines.append("")
        lines.append(
            "**Not finished models:** "
            + ", ".join(f"{e.name} = `{e.path}` after epoch {epochs_of(e)}" for e in checkpoints)
            + " (training checkpoints, front end and bin width assumed at the training defaults)."
        )
    lines.append("")
    return lines


def compare(pa: float, pb: float, n: int) -> str:
    """How accuracy ``pa`` relates to ``pb`` on ``n`` clips each, beyond sampling noise.

    An unpaired two-proportion test at 95 % (conservative for the paired clips here).
    """
    se = math.sqrt(max(pa * (1 - pa), 1e-4) / n + max(pb * (1 - pb), 1e-4) / n)
    if abs(pa - pb) <= 1.96 * se:
        return "about the same as"
    return "higher than" if pa > pb else "lower than"


def verdict(pa: float, pb: float, n: int, name: str) -> str:
    """``compare`` as a parenthesis: whether ``name``'s lead over the other is real."""
    if compare(pa, pb, n) == "about the same as":
        return f"the difference to the {name} is within 95 % sampling noise"
    return f"the {name} is {compare(pa, pb, n).split()[0]}, beyond 95 % sampling noise"


def noisy_acc(r: Result, snr: float) -> float:
    return r.noisy[snr]["word_accuracy"]


def at_chance(r: Result) -> bool:
    """Accuracy on the 20 words not clearly above guessing among them."""
    n_words = sum(is_word(w) for w in r.entry.bundle.vocabulary)
    return wilson(r.word_accuracy, r.words)[0] <= 1 / max(n_words, 1)


def shape_agreement(entries: list[Entry]) -> str:
    """'of the same shape', or which layers differ: a comparison across shapes says so."""
    shapes = {e.name: e.bundle.network.config.hidden for e in entries if e.bundle is not None}
    if len(set(shapes.values())) <= 1:
        return "of the same shape"
    listing = ", ".join(f"{name} {' x '.join(map(str, h))}" for name, h in shapes.items())
    return f"whose **hidden layers differ** ({listing}; compare them with that in mind)"


def conclusions(
    results: list[Result], snrs: tuple[float, ...], quick: bool, missing: list[str]
) -> list[str]:
    """Statements generated from the measured figures only."""
    out = ["## Conclusions", ""]
    if quick or any(r.entry.from_checkpoint for r in results):
        out += [
            "*Dry run: too few clips and/or unfinished checkpoints; "
            "these sentences only show the form the conclusions take.*",
            "",
        ]
    points = []
    if missing:
        points.append(
            f"Not measured (no model file): {', '.join(missing)}; nothing is concluded about "
            + ("them" if len(missing) > 1 else "it")
            + " here."
        )
    chance = [r for r in results if at_chance(r)]
    usable = [r for r in results if not at_chance(r)]
    for r in chance:
        points.append(
            f"The {r.entry.name} is at chance level ({pct(r.word_accuracy)} on the 20 words): "
            "it did not learn the task in this training run, so its accuracy, noise and latency "
            "figures say nothing about its kind of network, and its activity (hence its event "
            "count) is that of a network that failed to learn. Its memory and dense op counts "
            "depend only on the architecture and still hold."
        )
    n = results[0].words
    worst = snrs[-1] if snrs else None
    if usable:
        best = max(usable, key=lambda r: r.word_accuracy)
        others = [r for r in usable if r is not best]
        text = (
            f"Clean accuracy on the 20 words ({n} clips): "
            f"{best.entry.name} {pct(best.word_accuracy)}"
        )
        if others:
            text += "; " + "; ".join(
                f"{r.entry.name} {pct(r.word_accuracy)} "
                f"({verdict(best.word_accuracy, r.word_accuracy, n, best.entry.name)})"
                for r in others
            )
        points.append(text + ".")
    if worst is not None and usable:
        drops = {r.entry.name: r.word_accuracy - r.noisy[worst]["word_accuracy"] for r in usable}
        text = ", ".join(f"{k} {-100 * v + 0.0:+.1f} points" for k, v in drops.items())
        sentence = f"From clean to {worst:g} dB SNR the 20-word accuracy changed by: {text}"
        if len(usable) > 1:
            top = max(usable, key=lambda r: noisy_acc(r, worst))
            sentence += f"; at {worst:g} dB the {top.entry.name} ({pct(noisy_acc(top, worst))}) is "
            sentence += ", ".join(
                f"{compare(noisy_acc(top, worst), noisy_acc(r, worst), n)} "
                f"the {r.entry.name} ({pct(noisy_acc(r, worst))})"
                for r in usable
                if r is not top
            )
        points.append(sentence + ".")
    event = [r for r in usable if r.kind != "analog"]
    if worst is not None and event:
        rises = ", ".join(
            f"{r.entry.name} ×{r.noisy[worst]['event_accumulates'] / r.event_accumulates:.2f}"
            for r in event
        )
        points.append(
            f"Noise costs the event-driven models energy: at {worst:g} dB their accumulates per "
            f"clip were {rises} the clean figure (input spikes alone "
            f"×{event[0].noisy[worst]['input_spikes'] / event[0].input_spikes:.2f})"
            + (
                "; the dense MAC count of the analog network does not depend on the input."
                if any(r.kind == "analog" for r in results)
                else "."
            )
        )
    by = {r.kind: r for r in results}
    snn, analog, binary = by.get("spiking"), by.get("analog"), by.get("binary")
    if snn and analog and snn in usable:
        points.append(
            f"Arithmetic energy per clip: SNN {uj(snn.headline_pj)} vs analog RNN "
            f"{uj(analog.headline_pj)} (×{analog.headline_pj / snn.headline_pj:.1f}); with the "
            f"per-neuron updates {uj(snn.with_neurons_pj)} vs {uj(analog.with_neurons_pj)} "
            f"(×{analog.with_neurons_pj / snn.with_neurons_pj:.1f}). Input spikes × fan-out were "
            f"{pct(snn.input_ops / snn.event_accumulates)}"
            " of the SNN's accumulates. The analog network's ReLU outputs were non-zero in "
            f"{pct(analog.activity_share)} of neuron-bins (the SNN spiked in "
            f"{pct(snn.activity_share)}): a zero-skipping implementation could cut its count too, "
            "but each remaining operation would still be a MAC, not an accumulate."
        )
    if snn and binary:
        text = (
            "SNN vs binary network. The SNN keeps temporal state in every neuron (membrane and "
            "adaptation with learnt time constants) and sends sparse binary events: its hidden "
            f"neurons spiked in {pct(snn.activity_share)} of neuron-bins. The binary network has "
            "no membrane (its only memory across bins is its recurrent connection) and binary "
            f"weights; its activations were 1 in {pct(binary.activity_share)} of neuron-bins. "
            f"Counted as event-driven accumulates it needed {big(binary.event_accumulates)} per "
            f"clip vs the SNN's {big(snn.event_accumulates)}; evaluated densely (every synapse "
            f"every bin) {big(binary.dense_ops)} binary ops. Its weights take "
            f"{kib(binary.memory['bytes'])} vs the SNN's {kib(snn.memory['bytes'])} "
            f"(×{snn.memory['bytes'] / binary.memory['bytes']:.1f} less)."
        )
        if snn in usable and binary in usable:
            text += (
                f" Accuracy: the SNN's 20-word accuracy is "
                f"{compare(snn.word_accuracy, binary.word_accuracy, n)} the binary network's "
                f"({pct(snn.word_accuracy)} vs {pct(binary.word_accuracy)}); median decision at "
                f"{pct(snn.early.get('median_fraction_of_word'))} vs "
                f"{pct(binary.early.get('median_fraction_of_word'))} of the word "
                "(over the correctly classified words only)."
            )
        points.append(text)
        choice = []
        if binary.memory["bytes"] < snn.memory["bytes"]:
            choice.append(
                f"where weight memory is the limit, the binary network "
                f"({kib(binary.memory['bytes'])} vs {kib(snn.memory['bytes'])})"
            )
        if snn in usable and binary in usable:
            cheaper = min((snn, binary), key=lambda r: r.with_neurons_pj)
            choice.append(
                f"for the fewest operations on event-driven hardware, the {cheaper.entry.name} "
                f"({uj(cheaper.with_neurons_pj)} per clip with neuron updates, vs "
                f"{uj(max(snn.with_neurons_pj, binary.with_neurons_pj))})"
            )
            choice.append(
                f"for dense binary hardware, only the binary network applies "
                f"({big(binary.dense_ops)} binary ops per clip)"
            )
            outcome = compare(snn.word_accuracy, binary.word_accuracy, n)
            if outcome != "about the same as":
                better = snn if outcome == "higher than" else binary
                choice.append(f"where accuracy matters most, the {better.entry.name} of the two")
            if worst is not None:
                s_acc = snn.noisy[worst]["word_accuracy"]
                b_acc = binary.noisy[worst]["word_accuracy"]
                outcome = compare(s_acc, b_acc, n)
                if outcome != "about the same as":
                    robust = snn if outcome == "higher than" else binary
                    choice.append(
                        f"in noise, the {robust.entry.name} ({pct(max(s_acc, b_acc))} vs "
                        f"{pct(min(s_acc, b_acc))} at {worst:g} dB)"
                    )
        else:
            choice.append(
                "the other criteria cannot be judged here, as one of the two did not learn"
            )
        points.append("SNN or binary network, by these measurements: " + "; ".join(choice) + ".")
    out += [f"- {p}" for p in points]
    out.append("")
    return out


def write_report(
    args: argparse.Namespace,
    entries: list[Entry],
    results: list[Result],
    data: ValidationSet,
    snrs: tuple[float, ...],
    out: Path,
    plots: Path,
) -> None:
    rel = os.path.relpath(plots, out.parent)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# SNN vs analog vs binary network: efficiency report", ""]
    if args.quick:
        lines += [
            f"> **Dry run (`--quick {args.quick}`): {len(data.labels)} validation clips "
            "only. Not for conclusions.**",
            "",
        ]
    lines += [
        f"- Date: {now}",
        f"- Command: `{shlex.join(['python', *sys.argv])}` (from the repository root)",
        f"- Code: `{git_revision()}`; torch {torch.__version__}, CPU",
        "",
        "## Setup",
        "",
        "Classifiers (input → recurrent hidden layers → leaky integrator readout) "
        f"{shape_agreement(entries)}, trained by the same pipeline (`spikeear train --kind "
        "...`) on the same cochlea features, differing in the hidden neuron: adLIF spiking neurons "
        "(SNN), leaky ReLU units (analog RNN), binary weights and {0,1} activations without "
        "membrane (binary NN).",
        "",
    ]
    rows = []
    for e in entries:
        if e.bundle is None:
            rows.append([e.name, "–", e.problem])
            continue
        c = e.bundle.network.config
        shape = " → ".join(str(n) for n in (c.n_inputs, *c.hidden, c.n_classes))
        rec = "recurrent" if c.recurrent else "feed-forward"
        rows.append(
            [e.name, f"`{e.path}`", f"{c.kind}, {shape}, {rec}, {e.bundle.bin_ms:g} ms bins"]
        )
    lines += table(["model", "file", "network"], rows)
    sources = describe(data.clips)
    lines += [
        "",
        "Validation data: the speaker-disjoint validation split of "
        + ", ".join(f"`{d}`" for d in args.data)
        + " (`training.data.split_by_speaker`, as training splits; synthetic "
        "folders never validate): "
        + "; ".join(
            f"{name} {s['clips']} clips, {s['speakers']} speaker{'s' * (s['speakers'] != 1)}"
            for name, s in sources.items()
        )
        + f". {results[0].words if results else 0} of the clips are vocabulary words; the rest "
        "are `_unknown_` words and `_silence_`.",
        "",
    ]
    lines += [split_check(entries, data), ""]
    lines += training_section(entries)

    # ---- the figures
    lines += ["## Results", ""]
    header = ["", *(r.entry.name for r in results)]
    missing = [e for e in entries if e.bundle is None]
    if missing:
        header += [e.name for e in missing]
    dash = ["missing"] * len(missing)

    def row(label: str, values: list[str]) -> list[str]:
        return [label, *values, *dash]

    rows = [
        row(
            "accuracy, 20 words (95 % CI)",
            [pct(r.word_accuracy) + ci(r.word_accuracy, r.words) for r in results],
        ),
        row(
            "accuracy, all clips (95 % CI)",
            [pct(r.accuracy) + ci(r.accuracy, r.clips) for r in results],
        ),
        *[
            row(
                f"accuracy, 20 words, {s:g} dB SNR",
                [pct(r.noisy[s]["word_accuracy"]) for r in results],
            )
            for s in snrs
        ],
        *[
            row(
                f"accuracy, all clips, {s:g} dB SNR", [pct(r.noisy[s]["accuracy"]) for r in results]
            )
            for s in snrs
        ],
        row("trainable parameters", [f"{r.params:,}" for r in results]),
        row("weight memory", [kib(r.memory["bytes"]) for r in results]),
        row("input spikes per clip", [big(r.input_spikes) for r in results]),
        row(
            "hidden non-zero outputs per clip (per layer)",
            [" + ".join(big(v) for v in r.hidden_nonzero) for r in results],
        ),
        row("share of hidden outputs non-zero", [pct(r.activity_share) for r in results]),
        row(
            "event-driven ops per clip (input spikes + non-zero outputs, × fan-out)",
            [big(r.event_accumulates) for r in results],
        ),
        row("dense ops per clip (every synapse, every bin)", [big(r.dense_ops) for r in results]),
        row(
            "**ops per clip as costed**",
            [f"{big(r.headline_ops)} {r.op_unit}" for r in results],
        ),
        row("**energy per clip (estimate)**", [uj(r.headline_pj) for r in results]),
        row("per-neuron update MACs per clip", [big(r.neuron_macs) for r in results]),
        row("energy incl. neuron updates (estimate)", [uj(r.with_neurons_pj) for r in results]),
        row(
            "binary net: dense binary ops × 0.9 pJ",
            [uj(r.dense_ops * PICOJOULES_PER_AC) if r.kind == "binary" else "–" for r in results],
        ),
        row(
            "median decision point (share of word)",
            [pct(r.early.get("median_fraction_of_word")) for r in results],
        ),
        row(
            "median decision after word onset",
            [
                f"{r.early['median_ms_after_onset']:.0f} ms"
                if r.early.get("median_ms_after_onset") is not None
                else "n/a"
                for r in results
            ],
        ),
        row(
            "decided before the word ends",
            [pct(r.early.get("decided_before_word_end")) for r in results],
        ),
    ]
    lines += table(header, rows)
    lines += [
        "",
        "### How the figures are counted",
        "",
        f"- Accuracy: the class with the highest mean log-probability over the clip "
        f"(`training.evaluate.evaluate_rasters`); 20 words = clips labelled with a vocabulary "
        f"word ({results[0].words if results else 0} clips); all clips adds `_unknown_` and "
        "`_silence_`. Intervals: 95 % Wilson score intervals for the clip count.",
        "- Weight memory: what inference needs. Synaptic weights float32 (4 bytes); for the "
        "binary network 1 bit per binarised weight (input and recurrent matrices) plus one "
        "float32 scale per neuron and matrix; a layer shared along frequency (`--input-conv`, "
        "`--hidden-conv`) stores its kernels once, as hardware with shared weights can (the "
        "CPU expands them into a dense matrix). Batch-norm folded into a float32 scale and shift "
        "per neuron; neuron constants float32 (adLIF: alpha, beta, a, b; analog: alpha; binary: "
        "none); readout weights, biases and decay float32 (the readout is not binarised).",
        "- Event-driven accumulates: input spikes × fan-out of the input "
        "(first hidden layer) + each hidden layer's non-zero outputs × its fan-out (next layer "
        "plus its own recurrent connections), summed over the clip and averaged over clips "
        "(fan-outs from `Recognizer._synaptic_fan_out`: "
        + (
            ", ".join(str(int(v)) for v in Recognizer(results[0].entry.bundle)._fan_out)
            if results
            else ""
        )
        + "). For the SNN these are its synaptic operations; for the binary network each adds "
        "±scale (its input layer receives the same spike counts). For the analog network the "
        "count of its non-zero ReLU outputs is shown to say how sparse they are; on standard "
        "hardware its cost is the dense MAC count.",
        "- Dense ops: every synapse every bin (`Recognizer._dense_macs` × bins): the analog "
        "network's MACs; for the binary network, the binary ops of a dense evaluation (shown "
        "also costed at 0.9 pJ each, as accumulates).",
        f"- Energy: Horowitz (ISSCC 2014), 45 nm: {PICOJOULES_PER_AC} pJ per accumulate, "
        f"{PICOJOULES_PER_MAC} pJ per multiply-accumulate (32-bit float). **These are estimates "
        "of arithmetic only: they ignore memory access (fetching weights and neuron state), "
        "data movement and control, which on real hardware can cost more than the arithmetic.** "
        "The headline counts only synapses; the row with neuron updates adds, per hidden neuron "
        "and bin, 1 MAC for batch-norm and adLIF 4 / analog 2 / binary 0 MACs for the neuron "
        "dynamics, and 2 MACs per readout class per bin (`neuron_macs_per_bin`).",
        "- Decision point: per correctly classified word clip, the bin from which the running "
        "prediction (argmax of the summed log-probabilities so far) is correct and stays correct, "
        "as a share of the word's extent in the input spikes (`decision_points`, `word_span`); "
        "the median over clips.",
        f"- Noise: each clip's audio (centred in its 1 s window as for the clean features) plus "
        f"one of the {len(data.noise_clips)} `_silence_` noise clips **of the validation split** "
        "(none was mixed into training data; training augmentation drew its noise from the "
        "training split), looped and rolled by a random offset; the clip, offset and RNG are "
        f"fixed per clip by seed {args.seed}, the same noise at every SNR. SNR = mean power of "
        "the clip's 1 s window over the noise's, as training augmentation defines it; nothing is "
        "renormalised. Features: `audio_frontend.cochlea.Cochlea` + `bin_events` at each model's "
        "bin width, cached in `" + args.cache_dir + "/report-noisy-*.npz`. `_silence_` clips get "
        "another noise clip mixed in and keep their label.",
        "",
        "## Plots",
        "",
        f"![accuracy vs SNR]({rel}/accuracy_vs_snr.png)",
        "",
        f"![accuracy vs share of the word heard]({rel}/accuracy_vs_heard.png)",
        "",
        f"![operations and energy per clip]({rel}/cost.png)",
        "",
        "## Noise: energy per clip of the event-driven models",
        "",
    ]
    noise_rows = []
    for r in results:
        if r.kind == "analog":
            continue
        conditions = [("clean", r.input_spikes, r.event_accumulates)] + [
            (f"{s:g} dB", r.noisy[s]["input_spikes"], r.noisy[s]["event_accumulates"]) for s in snrs
        ]
        for name, spikes, acc in conditions:
            noise_rows.append(
                [r.entry.name, name, big(spikes), big(acc), uj(acc * PICOJOULES_PER_AC)]
            )
    if noise_rows:
        lines += table(["model", "condition", "input spikes", "accumulates", "energy"], noise_rows)
        lines.append("")
    if results:
        lines += conclusions(results, snrs, bool(args.quick), [e.name for e in missing])
    out.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--snn", help="spiking model (default: models/spikeear-default.pt, else runs/snn.pt)"
    )
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
        "--out", default="benchmarks/REPORT.md", help="report file; plots go to report/ next to it"
    )
    p.add_argument("--cache-dir", default="cache", help="feature cache (shared with training)")
    p.add_argument("--seed", type=int, default=0, help="noise mixing and --quick sampling")
    p.add_argument(
        "--workers", type=int, default=max(1, min(os.cpu_count() or 1, 8)), help="cochlea processes"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    args.data = args.data or list(DEFAULT_DATA)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    snrs = tuple(sorted(set(args.snr), reverse=True))
    snn = (
        [Path(args.snn)] if args.snn else [Path("models/spikeear-default.pt"), Path("runs/snn.pt")]
    )
    entries = [
        load_entry(Entry("spiking", snn)),
        load_entry(Entry("analog", [Path(args.analog)])),
        load_entry(Entry("binary", [Path(args.binary)])),
    ]
    for e in entries:
        status = f"[green]{e.path}[/]" if e.bundle else f"[yellow]{e.problem}[/]"
        note = f" (checkpoint, epoch {epochs_of(e)})" if e.from_checkpoint else ""
        console.print(f"{e.name}: {status}{note}")
    loaded = [e for e in entries if e.bundle is not None]
    if not loaded:
        console.print("[red]no models to compare[/]")
        return 1
    # One feature set per front end, bin width and vocabulary (all three share one normally).
    sets: dict[tuple, ValidationSet] = {}
    results = []
    for e in loaded:
        b = e.bundle
        key = (b.frontend, b.bin_ms, b.vocabulary)
        if key not in sets:
            sets[key] = validation_set(b, args, snrs)
        console.print(f"measuring {e.name} on {len(sets[key].labels)} clips ...")
        results.append(measure(e, sets[key], snrs))
    data = next(iter(sets.values()))
    if len(sets) > 1:
        console.print("[yellow]models differ in front end or bin width: features differ[/]")

    out = Path(args.out)
    plots = out.parent / "report"
    plots.mkdir(parents=True, exist_ok=True)
    plot_snr(results, snrs, plots / "accuracy_vs_snr.png")
    plot_heard(results, plots / "accuracy_vs_heard.png")
    plot_cost(results, plots / "cost.png")
    write_report(args, entries, results, data, snrs, out, plots)

    summary = Table(title=f"{len(data.labels)} validation clips")
    summary.add_column("")
    for r in results:
        summary.add_column(r.entry.name, justify="right")
    summary.add_row("20-word accuracy", *(pct(r.word_accuracy) for r in results))
    summary.add_row("all-clip accuracy", *(pct(r.accuracy) for r in results))
    for s in snrs:
        summary.add_row(
            f"20 words @ {s:g} dB", *(pct(r.noisy[s]["word_accuracy"]) for r in results)
        )
    summary.add_row("weight memory", *(kib(r.memory["bytes"]) for r in results))
    summary.add_row("ops per clip", *(f"{big(r.headline_ops)} {r.op_unit}" for r in results))
    summary.add_row("energy per clip", *(uj(r.headline_pj) for r in results))
    summary.add_row("+ neuron updates", *(uj(r.with_neurons_pj) for r in results))
    summary.add_row(
        "median decision", *(pct(r.early.get("median_fraction_of_word")) for r in results)
    )
    console.print(summary)
    console.print(f"wrote {out} and {plots}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
