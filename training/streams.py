"""Training streams: connected words cut where the recognizer would cut them.

A pre-cut 1 s clip never has a neighbouring word; the recognizer, which runs the
network continuously between rests, hears words that touch or follow each other after
short pauses.  This module synthesizes such streams from the *training* speakers'
clips and gives every 10 ms bin a target, so that a network can be fine-tuned on what
it meets in a stream.

Streams are mixed as audio and encoded by the cochlea, not stitched from clip rasters:
speech levels that vary from word to word, noise under the words and overlapping
tails change the cochlea's spike counts in ways that adding or scaling counts does not
reproduce (its fibres have stepped thresholds and saturate), and the endpointer's
decisions depend on exactly those counts.  The cost is modest: 800 streams (3,700 s)
took about 6 minutes on two busy cores, and they are cached.

1. :func:`word_pieces`: each training clip cut to its speech span, found from the
   clip's own spike activity (:func:`speech_span_bins` over
   :func:`models.decoding.speech_activity` of its clean raster).
2. :func:`plan_stream` / :func:`mix_stream`: 2-6 command words at random levels, an
   out-of-vocabulary word between commands now and then, pauses drawn from 0-0.8 s
   (none included) and slight overlaps, over looped training noise at a random SNR.
3. :func:`bin_targets`: per bin, the word's class over its speech span and a short
   tail (the leaky readout lags the input), extended to the end of the endpointer's
   word or the next word's onset (the decoder sums evidence over the endpointer's word,
   so those bins count for the word too), and the blank class (``_silence_``)
   everywhere else.
4. :func:`rest_segments`: the stream cut after every bin where the
   :class:`~models.decoding.Endpointer` sends the network back to rest, with the
   silence the recognizer appends at a stream's end, so that every training sequence
   starts from rest exactly where inference resets.

:func:`finetune` (``python -m training.streams --data DIR ... --out M.pt``) fine-tunes a
model on these sequences mixed with its training clips: per-step cross-entropy on the
readout (``--stream-loss step``) or the cross-entropy of each word's running mean
log-probability, what the decoder reads (``running``), plus the clip loss with most of
it moved to matching the start model's own per-step outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from audio_frontend.cochlea import Cochlea
from audio_frontend.events import bin_events
from models.decoding import DecoderConfig, Endpointer, speech_activity
from models.vocabulary import SILENCE, UNKNOWN

IGNORE = -100  # a bin without a target (F.cross_entropy's ignore_index)


@dataclass(frozen=True)
class StreamConfig:
    """How training streams are drawn; durations in seconds, levels in dBFS."""

    words: tuple[int, int] = (2, 6)  # command words per stream (inclusive)
    unknown_probability: float = 0.3  # an out-of-vocabulary word before a later command
    pause_s: tuple[float, float] = (0.0, 0.8)  # speech offset to the next onset
    short_pause_probability: float = 0.5  # ... drawn from the first 0.3 s this often
    overlap_probability: float = 0.1  # ... else, now and then, the words overlap
    max_overlap_s: float = 0.06
    edge_s: tuple[float, float] = (0.2, 0.7)  # background before the first and after the last
    level_dbfs: tuple[float, float] = (-40.0, -16.0)  # the stream's speech RMS
    word_level_db: float = 5.0  # each word within +- this of the stream's level
    noise_probability: float = 0.8
    snr_db: tuple[float, float] = (5.0, 35.0)
    tail_s: float = 0.1  # word target after its speech offset (the readout lags)
    margin_s: float = 0.03  # kept either side of a clip's speech span when cut


class WordPiece(NamedTuple):
    """One clip cut to its speech span (16 kHz)."""

    label: int  # class index
    speaker: str
    audio: np.ndarray  # float32, the span with ``margin_s`` either side
    onset: int  # samples into ``audio`` where the span starts
    offset: int  # ... and ends
    rms: float  # over the span


class PlacedWord(NamedTuple):
    label: int
    onset: int  # samples into the stream
    offset: int


class TrainingStream(NamedTuple):
    counts: np.ndarray  # float32 [bins, channels]
    targets: np.ndarray  # int64 [bins]
    words: list[PlacedWord]  # in bins


# ----------------------------------------------------------------------------- speech spans


def speech_span_bins(counts: np.ndarray, bridge_bins: int = 15) -> tuple[int, int]:
    """A clip's speech span ``(first bin, end bin)`` from its spike counts
    ``[bins, channels]``: bins whose speech activity reaches a tenth of the clip's peak
    and twice its floor (10th percentile), gaps up to ``bridge_bins`` bridged, the
    stretch holding the peak."""
    activity = speech_activity(counts)
    peak = float(activity.max())
    if peak <= 0:
        return 0, len(counts)
    floor = float(np.percentile(activity, 10))
    active = np.flatnonzero(activity >= max(0.1 * peak, 2 * floor))
    if not active.size:  # as active throughout as at its peak: no span to find
        return 0, len(counts)
    loudest = int(activity.argmax())
    breaks = np.flatnonzero(np.diff(active) > bridge_bins)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(active) - 1]])
    k = int(np.searchsorted(active[ends], loudest))
    return int(active[starts[k]]), int(active[ends[k]]) + 1


def cut_piece(
    audio: np.ndarray, span_bins: tuple[int, int], bin_samples: int, label: int, speaker: str,
    margin: int,
) -> WordPiece:  # fmt: skip
    """``audio`` (the clip as its raster was made from it) cut to a span of bins."""
    start, end = span_bins[0] * bin_samples, min(len(audio), span_bins[1] * bin_samples)
    a, b = max(0, start - margin), min(len(audio), end + margin)
    piece = audio[a:b].astype(np.float32)
    n = min(margin, len(piece) // 4)
    if n:
        ramp = (0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n))).astype(np.float32)
        piece[:n] *= ramp
        piece[-n:] *= ramp[::-1]
    span = audio[start:end].astype(np.float64)
    rms = float(np.sqrt(np.mean(span**2))) if len(span) else 0.0
    return WordPiece(label, speaker, piece, start - a, end - a, rms)


def word_pieces(
    clips: Sequence, rasters: np.ndarray, ok: np.ndarray, vocabulary: Sequence[str], rate: int,
    bin_samples: int, config: StreamConfig = StreamConfig(),
) -> list[WordPiece]:  # fmt: skip
    """The speech of each readable clip (``rasters``: its clean ``[bins, channels]``
    counts, made from the clip centred in 1 s as :mod:`training.features` does)."""
    from training.augment import place
    from training.features import CLIP_SECONDS, load_resampled

    pieces = []
    margin = round(config.margin_s * rate)
    length = round(CLIP_SECONDS * rate)
    for clip, raster, good in zip(clips, rasters, ok, strict=True):
        if not good:
            continue
        audio = place(load_resampled(clip.path, rate), length, None)
        span = speech_span_bins(raster.astype(np.float32))
        label = list(vocabulary).index(clip.label)
        piece = cut_piece(audio, span, bin_samples, label, clip.speaker, margin)
        if piece.rms > 0:
            pieces.append(piece)
    return pieces


# ----------------------------------------------------------------------------- mixing


class StreamPlan(NamedTuple):
    pieces: list[int]  # indices into the piece pool, in order
    pauses: list[float]  # seconds, one fewer than pieces; negative: overlap
    levels: list[float]  # dBFS per piece
    edges: tuple[float, float]  # seconds of background before and after
    noise: int  # noise recording index, -1: none
    noise_start: int
    snr_db: float


def plan_stream(
    rng: np.random.Generator,
    commands: Sequence[int],
    unknowns: Sequence[int],
    n_noises: int,
    config: StreamConfig,
) -> StreamPlan:
    """One stream's words, pauses, levels and noise (indices into the piece pool)."""
    n = int(rng.integers(config.words[0], config.words[1] + 1))
    order: list[int] = []
    for i in range(n):
        if i and len(unknowns) and rng.random() < config.unknown_probability:
            order.append(int(unknowns[rng.integers(len(unknowns))]))
        order.append(int(commands[rng.integers(len(commands))]))
    pauses = []
    for _ in range(len(order) - 1):
        if rng.random() < config.overlap_probability:
            pauses.append(-float(rng.uniform(0, config.max_overlap_s)))
        elif rng.random() < config.short_pause_probability:
            pauses.append(float(rng.uniform(config.pause_s[0], min(0.3, config.pause_s[1]))))
        else:
            pauses.append(float(rng.uniform(*config.pause_s)))
    level = rng.uniform(*config.level_dbfs)
    levels = [float(level + rng.uniform(-1, 1) * config.word_level_db) for _ in order]
    edges = (float(rng.uniform(*config.edge_s)), float(rng.uniform(*config.edge_s)))
    noisy = n_noises > 0 and rng.random() < config.noise_probability
    return StreamPlan(
        order,
        pauses,
        levels,
        edges,
        int(rng.integers(n_noises)) if noisy else -1,
        int(rng.integers(1 << 30)),
        float(rng.uniform(*config.snr_db)),
    )


def mix_stream(
    pieces: Sequence[WordPiece], plan: StreamPlan, noises: Sequence[np.ndarray], rate: int
) -> tuple[np.ndarray, list[PlacedWord]]:
    """The plan's audio and where each word's speech span lies (in samples)."""
    used = [pieces[i] for i in plan.pieces]
    onsets, t = [], round(plan.edges[0] * rate)
    for i, piece in enumerate(used):
        onsets.append(t)
        t += piece.offset - piece.onset
        if i < len(plan.pauses):
            t = max(onsets[-1] + 1, t + round(plan.pauses[i] * rate))
    length = t + round(plan.edges[1] * rate)
    audio = np.zeros(length, np.float64)
    words = []
    for piece, onset, level in zip(used, onsets, plan.levels, strict=True):
        gain = 10 ** (level / 20) / max(piece.rms, 1e-9)
        a = onset - piece.onset
        lo, hi = max(0, a), min(length, a + len(piece.audio))
        audio[lo:hi] += gain * piece.audio[lo - a : hi - a]
        words.append(PlacedWord(piece.label, onset, onset + piece.offset - piece.onset))
    if plan.noise >= 0:
        noise = noises[plan.noise].astype(np.float64)
        noise = noise / (np.sqrt(np.mean(noise**2)) + 1e-12)
        speech_power = float(np.mean(10 ** (np.asarray(plan.levels) / 10)))
        scale = np.sqrt(speech_power / 10 ** (plan.snr_db / 10))
        audio += scale * np.take(
            noise, np.arange(plan.noise_start, plan.noise_start + length), mode="wrap"
        )
    peak = float(np.abs(audio).max())
    if peak > 0.99:
        audio *= 0.99 / peak
    return audio.astype(np.float32), words


# ----------------------------------------------------------------------------- targets


def bin_targets(
    n_bins: int, words: Sequence[PlacedWord], spans: Sequence[tuple[int, int]], blank: int,
    tail_bins: int,
) -> np.ndarray:  # fmt: skip
    """Per-bin class targets: each word (in bins) over its speech span plus
    ``tail_bins``, and on to the end of the endpointer word ``spans`` ``(first, end)`` it
    falls in or the next word's onset; ``blank`` elsewhere.  Where words overlap, the
    later one takes over at its onset."""
    targets = np.full(n_bins, blank, np.int64)
    ordered = sorted(words, key=lambda w: w.onset)
    for k, word in enumerate(ordered):
        end = min(n_bins, word.offset + tail_bins)
        for first, last in spans:
            if first <= word.offset - 1 < last:
                end = max(end, min(n_bins, last))
        if k + 1 < len(ordered):
            end = min(end, ordered[k + 1].onset)
        targets[max(0, word.onset) : max(end, word.onset + 1)] = word.label
    return targets


class Segmentation(NamedTuple):
    cuts: list[tuple[int, int]]  # (first, end) bins of each stretch from rest to rest
    words: list[tuple[int, int]]  # (first, end) bins of each endpointer word


def rest_segments(
    counts: np.ndarray, bin_s: float, config: DecoderConfig = DecoderConfig()
) -> Segmentation:
    """The recognizer's rests over a whole stream ``[bins, channels]`` (as given: the
    caller appends the end-of-stream silence): a cut after every bin with ``rest``."""
    endpointer = Endpointer(bin_s, config)
    state = endpointer.new_state()
    activity = speech_activity(counts).tolist()
    cuts, words, start = [], [], 0
    for t, value in enumerate(activity):
        boundary = endpointer.step(state, value, t == len(activity) - 1)
        if boundary.closed:
            words.append((boundary.start_bin, boundary.bin + 1))
        if boundary.rest or t == len(activity) - 1:
            cuts.append((start, t + 1))
            start = t + 1
    return Segmentation(cuts, words)


def make_stream(
    pieces: Sequence[WordPiece],
    plan: StreamPlan,
    noises: Sequence[np.ndarray],
    cochlea: Cochlea,
    bin_ms: float,
    blank: int,
    config: StreamConfig = StreamConfig(),
    decoder: DecoderConfig = DecoderConfig(),
) -> tuple[TrainingStream, Segmentation]:
    """A planned stream's spike counts (with the end-of-stream silence the recognizer
    appends), per-bin targets, and its cuts at the recognizer's rests."""
    rate = cochlea.config.sample_rate
    audio, placed = mix_stream(pieces, plan, noises, rate)
    bin_samples = round(bin_ms / 1000 * rate)
    n_bins = -(-len(audio) // bin_samples)
    counts = bin_events(cochlea.encode(audio, rate), bin_ms / 1000, n_bins)
    hangover = decoder.bins(decoder.hangover_s, bin_ms / 1000)
    counts = np.concatenate([counts, np.zeros((hangover, counts.shape[1]), np.float32)])
    segmentation = rest_segments(counts, bin_ms / 1000, decoder)
    words = [
        PlacedWord(w.label, w.onset // bin_samples, -(-w.offset // bin_samples)) for w in placed
    ]
    tail = round(config.tail_s * 1000 / bin_ms)
    targets = bin_targets(len(counts), words, segmentation.words, blank, tail)
    return TrainingStream(counts, targets, words), segmentation


class Sequences(NamedTuple):
    """Training sequences, each starting from rest: counts and targets end to end."""

    counts: np.ndarray  # uint8 [total bins, channels]
    targets: np.ndarray  # int64 [total bins]
    bounds: np.ndarray  # int64 [sequences, 2]: (first, end) into the arrays


def synthesize(
    pieces: Sequence[WordPiece],
    vocabulary: Sequence[str],
    noises: Sequence[np.ndarray],
    cochlea: Cochlea,
    bin_ms: float,
    n_streams: int,
    seed: int,
    config: StreamConfig = StreamConfig(),
    decoder: DecoderConfig = DecoderConfig(),
    min_bins: int = 3,
) -> tuple[Sequences, dict]:
    """``n_streams`` streams cut at their rests into training sequences (those shorter
    than ``min_bins`` left out), and counts of what they hold."""
    rng = np.random.default_rng(seed)
    blank = list(vocabulary).index(SILENCE)
    unknown = list(vocabulary).index(UNKNOWN)
    commands = [i for i, p in enumerate(pieces) if p.label not in (blank, unknown)]
    unknowns = [i for i, p in enumerate(pieces) if p.label == unknown]
    counts, targets, bounds, total = [], [], [], 0
    stats = {"streams": n_streams, "words": 0, "endpointer_words": 0, "seconds": 0.0}
    for _ in range(n_streams):
        plan = plan_stream(rng, commands, unknowns, len(noises), config)
        stream, segmentation = make_stream(
            pieces, plan, noises, cochlea, bin_ms, blank, config, decoder
        )
        stats["words"] += len(stream.words)
        stats["endpointer_words"] += len(segmentation.words)
        stats["seconds"] += len(stream.counts) * bin_ms / 1000
        for first, end in segmentation.cuts:
            if end - first < min_bins:
                continue
            counts.append(np.minimum(stream.counts[first:end], 255).astype(np.uint8))
            targets.append(stream.targets[first:end])
            bounds.append((total, total + end - first))
            total += end - first
    stats["sequences"] = len(bounds)
    sequences = Sequences(
        np.concatenate(counts), np.concatenate(targets), np.array(bounds, np.int64)
    )
    return sequences, stats


_SHARED: dict = {}  # what forked synthesis workers read (set before they start)


def _synthesize_part(part: tuple[int, int, int]) -> tuple[Sequences, dict]:
    n_streams, seed, _ = part
    pieces, vocabulary, noises, frontend, bin_ms = _SHARED["synthesis"]
    return synthesize(pieces, vocabulary, noises, Cochlea(frontend), bin_ms, n_streams, seed)


def synthesize_parallel(
    pieces: Sequence[WordPiece], vocabulary: Sequence[str], noises: Sequence[np.ndarray],
    frontend, bin_ms: float, n_streams: int, seed: int, workers: int, parts: int = 16,
) -> tuple[Sequences, dict]:  # fmt: skip
    """:func:`synthesize` in ``parts`` independently seeded parts over ``workers``
    processes (the same streams whatever the number of workers)."""
    import multiprocessing

    sizes = [n_streams // parts + (k < n_streams % parts) for k in range(parts)]
    seeds = np.random.SeedSequence(seed).generate_state(parts)
    jobs = [(n, int(s), k) for k, (n, s) in enumerate(zip(sizes, seeds, strict=True)) if n]
    _SHARED["synthesis"] = (pieces, vocabulary, noises, frontend, bin_ms)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_synthesize_part, jobs)
    finally:
        _SHARED.clear()
    offsets = np.cumsum([0, *[len(r.counts) for r, _ in results][:-1]])
    sequences = Sequences(
        np.concatenate([r.counts for r, _ in results]),
        np.concatenate([r.targets for r, _ in results]),
        np.concatenate([r.bounds + o for (r, _), o in zip(results, offsets, strict=True)]),
    )
    stats = {k: sum(s[k] for _, s in results) for k in results[0][1]}
    return sequences, stats


# ----------------------------------------------------------------------------- fine-tuning


@dataclass
class FinetuneConfig:
    """A fine-tune of a trained model on stream sequences mixed with clips."""

    data: list[str]
    out: str
    model: str | None = None  # the model to start from (default: the bundled one)
    streams: int = 1500
    stream_seed: int = 0  # which streams (fixed per seed, cached)
    epochs: int = 4  # passes over the stream sequences
    batch_size: int = 64  # sequences and clips per step, each
    lr: float = 5e-4
    stream_weight: float = 1.0
    # "step": per-step cross-entropy on every bin; "running": what the decoder reads,
    # cross-entropy of each word's mean log-probabilities from its first bin to each bin
    # (blank bins keep a per-step loss, weighted ``blank_weight``)
    stream_loss: str = "step"
    blank_weight: float = 0.2
    distill_weight: float = 0.7  # share of the clip loss matching the start model per step
    seed: int = 0
    threads: int = 1
    workers: int = 2  # processes synthesizing streams
    cache_dir: str = "cache"


def _stream_batch(sequences: Sequences, indices: np.ndarray) -> tuple:
    """Sequences padded at their end (the network is causal; padding targets ignored)."""
    import torch

    lengths = sequences.bounds[indices, 1] - sequences.bounds[indices, 0]
    x = np.zeros((len(indices), lengths.max(), sequences.counts.shape[1]), np.float32)
    y = np.full((len(indices), lengths.max()), IGNORE, np.int64)
    for k, (first, end) in enumerate(sequences.bounds[indices]):
        x[k, : end - first] = sequences.counts[first:end]
        y[k, : end - first] = sequences.targets[first:end]
    return torch.from_numpy(x), torch.from_numpy(y)


def word_runs(targets: np.ndarray, blank: int) -> np.ndarray:
    """For each bin ``[..., bins]`` of targets, the first bin of its run of one word's
    label (-1 for blank and ignored bins)."""
    starts = np.full(targets.shape, -1, np.int64)
    for index in np.ndindex(targets.shape[:-1]):
        row, out = targets[index], starts[index]
        for t, label in enumerate(row):
            if label in (blank, IGNORE):
                continue
            out[t] = out[t - 1] if t and row[t - 1] == label else t
    return starts


def running_word_loss(evidence, targets, starts, blank: int, blank_weight: float):
    """Cross-entropy of each word's mean log-probability from its first bin to each of its
    bins (what the decoder's partials and final read), plus ``blank_weight`` times the
    per-step cross-entropy of the blank bins."""
    import torch
    import torch.nn.functional as F

    log_p = evidence.log_softmax(-1)
    total = log_p.cumsum(dim=1)
    start = torch.from_numpy(np.maximum(starts, 0))
    before = torch.where(
        (start > 0)[..., None],
        total.gather(1, (start - 1).clamp(min=0)[..., None].expand_as(total)),
        torch.zeros_like(total),
    )
    steps = torch.arange(evidence.shape[1])[None, :] - start + 1
    mean = (total - before) / steps[..., None].clamp(min=1)
    in_word = torch.from_numpy(starts >= 0)
    words = F.cross_entropy(mean[in_word], targets[in_word]) if in_word.any() else 0.0
    blanks = targets == blank
    quiet = F.cross_entropy(log_p[blanks], targets[blanks]) if blanks.any() else 0.0
    return words + blank_weight * quiet


def _length_batches(sequences: Sequences, size: int, rng: np.random.Generator) -> list:
    """Batches of sequences of similar length (little padding), in random order."""
    lengths = sequences.bounds[:, 1] - sequences.bounds[:, 0]
    order = np.argsort(lengths + rng.uniform(0, 20, len(lengths)), kind="stable")
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def stream_sequences(config: FinetuneConfig, bundle, train_clips: list, features) -> tuple:
    """The run's stream sequences, synthesized once per data, model front end and seed."""
    import hashlib
    import inspect
    import json
    from pathlib import Path

    from training.features import load_resampled

    rate = bundle.frontend.sample_rate
    key = json.dumps(
        [
            bundle.frontend.to_dict(), bundle.bin_ms, config.streams, config.stream_seed,
            str(StreamConfig()), [str(c.path) for c in train_clips],
            # the rests come from the endpointer: new rules make new cuts
            str(DecoderConfig()), inspect.getsource(Endpointer),
        ]
    )  # fmt: skip
    path = Path(config.cache_dir) / f"streams-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as data:
            stats = json.loads(str(data["stats"]))
            return Sequences(data["counts"], data["targets"], data["bounds"]), stats
    bin_samples = round(bundle.bin_ms / 1000 * rate)
    speech = [k for k, c in enumerate(train_clips) if c.label != SILENCE]
    pieces = word_pieces(
        [train_clips[k] for k in speech], features.rasters[speech, 0], features.ok[speech],
        bundle.vocabulary, rate, bin_samples,
    )  # fmt: skip
    noises = [load_resampled(c.path, rate) for c in train_clips if c.label == SILENCE]
    sequences, stats = synthesize_parallel(
        pieces, bundle.vocabulary, noises, bundle.frontend, bundle.bin_ms, config.streams,
        config.stream_seed, config.workers,
    )  # fmt: skip
    stats["pieces"] = len(pieces)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **sequences._asdict(), stats=np.array(json.dumps(stats)))
    return sequences, stats


def finetune(config: FinetuneConfig):
    """Fine-tune a model on stream sequences (per-step cross-entropy) mixed with clips
    (the clip loss, most of it moved to matching the start model's per-step outputs),
    and save it; returns the new bundle."""
    import copy
    import json
    import math
    import time
    from dataclasses import asdict
    from pathlib import Path

    import torch
    import torch.nn.functional as F

    from models.decoding import log_evidence
    from models.model_file import ModelBundle, load_model
    from training.config import TrainConfig
    from training.data import discover, split_by_speaker
    from training.evaluate import run_network
    from training.features import FeatureSet, FeatureSpec, build_features
    from training.train import RATE_WEIGHT, clip_loss, make_batch, rate_penalty

    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    bundle = load_model(config.model)
    vocabulary = bundle.vocabulary
    blank = vocabulary.index(SILENCE)
    clips = [c for root in config.data for c in discover(root, vocabulary)]
    train_clips, val_clips = split_by_speaker(clips)
    spec = FeatureSpec(bundle.frontend, bundle.bin_ms, 0)
    cache = Path(config.cache_dir)
    by_source = {
        source: [c for c in train_clips if c.source == source]
        for source in sorted({c.source for c in train_clips})
    }
    train_set = FeatureSet.concatenate([
        build_features(mine, vocabulary, spec, cache, False, description=f"clean-train-{source}")
        for source, mine in by_source.items()
    ])  # fmt: skip
    train_clips = [c for mine in by_source.values() for c in mine]  # the features' order
    val_set = build_features(val_clips, vocabulary, spec, cache, False, description="clean-val")
    sequences, stats = stream_sequences(config, bundle, train_clips, train_set)
    print(f"streams: {json.dumps(stats)}")

    teacher = copy.deepcopy(bundle.network).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    network = bundle.network
    batch_config = TrainConfig(data=[], out="", bin_ms=bundle.bin_ms)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=0.0)
    clip_indices = np.flatnonzero(train_set.ok)
    steps = config.epochs * len(_length_batches(sequences, config.batch_size, rng))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1))),
    )
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log.jsonl")
    log_path.unlink(missing_ok=True)

    def val_accuracy() -> float:
        probabilities, _ = run_network(network, val_set.rasters[:, 0])
        ok = np.flatnonzero(val_set.ok)
        decided = log_evidence(probabilities[ok]).sum(1).argmax(-1)
        return float((decided == val_set.labels[ok]).mean())

    started = time.time()
    record = {"epoch": 0, "val_accuracy": val_accuracy()}
    print(json.dumps(record), flush=True)
    clip_order = rng.permutation(clip_indices)
    clip_at = 0
    for epoch in range(config.epochs):
        totals = {"stream": 0.0, "clip": 0.0, "stream_bin_accuracy": 0.0}
        batches = _length_batches(sequences, config.batch_size, rng)
        for indices in batches:
            network.train()
            if clip_at + config.batch_size > len(clip_order):
                clip_order, clip_at = rng.permutation(clip_indices), 0
            chosen = clip_order[clip_at : clip_at + config.batch_size]
            clip_at += config.batch_size
            x, y, _ = make_batch(train_set, chosen, batch_config, rng)
            with torch.no_grad():
                target = teacher(x)[0].log_softmax(-1)
            evidence, _, activity = network(x)
            student = evidence.log_softmax(-1)
            matching = F.kl_div(student, target, log_target=True, reduction="none").sum(-1).mean()
            clip_part = (1 - config.distill_weight) * clip_loss(evidence, y)
            clip_part = clip_part + config.distill_weight * matching
            sx, sy = _stream_batch(sequences, indices)
            stream_evidence, _, stream_activity = network(sx)
            if config.stream_loss == "running":
                starts = word_runs(sy.numpy(), blank)
                stream_part = running_word_loss(
                    stream_evidence, sy, starts, blank, config.blank_weight
                )
            else:
                stream_part = F.cross_entropy(
                    stream_evidence.reshape(-1, stream_evidence.shape[-1]),
                    sy.reshape(-1),
                    ignore_index=IGNORE,
                )
            loss = clip_part + config.stream_weight * stream_part
            loss = loss + RATE_WEIGHT * rate_penalty([*activity, *stream_activity])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            network.clamp_()
            mask = sy != IGNORE
            right = (stream_evidence.argmax(-1) == sy)[mask].float().mean().item()
            totals["stream"] += stream_part.item() / len(batches)
            totals["clip"] += clip_part.item() / len(batches)
            totals["stream_bin_accuracy"] += right / len(batches)
        record = {
            "epoch": epoch + 1,
            **{k: round(v, 4) for k, v in totals.items()},
            "val_accuracy": val_accuracy(),
            "seconds": round(time.time() - started, 1),
        }
        print(json.dumps(record), flush=True)
        with open(log_path, "a") as log:
            log.write(json.dumps(record) + "\n")
    network.cpu().eval()
    card = dict(bundle.card)
    card["name"] = out.stem
    card["finetune"] = {
        **asdict(config),
        "streams_made": stats,
        "stream_config": asdict(StreamConfig()),
    }
    tuned = ModelBundle(network, bundle.frontend, vocabulary, bundle.bin_ms, card)
    tuned.save(out)
    return tuned


def main(argv: list[str] | None = None) -> int:
    """``python -m training.streams``: fine-tune a model on training streams."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data", action="append", required=True, metavar="DIR")
    parser.add_argument("--out", required=True)
    defaults = FinetuneConfig(data=[], out="")
    names = ("model", "streams", "stream_seed", "epochs", "batch_size", "lr", "stream_weight")
    names += ("distill_weight", "seed", "threads", "workers", "cache_dir", "stream_loss")
    names += ("blank_weight",)
    for name in names:
        default = getattr(defaults, name)
        kind = type(default) if default is not None else str
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default)
    args = parser.parse_args(argv)
    finetune(FinetuneConfig(**vars(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
