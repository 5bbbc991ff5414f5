"""Cochlear spike-count features for training, computed once and cached.

Each clip becomes a ``[bins, channels]`` uint8 raster of spike counts at the
model's bin width.  Training clips get ``variants`` randomly augmented copies in
addition to the clean one; epochs draw among them, so the cochlea never runs
during training.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from audio_frontend.audio_io import AudioError, load_audio
from audio_frontend.cochlea import KERNEL_DTYPE, Cochlea, CochleaConfig
from audio_frontend.events import SpikeEvents, bin_events
from training.augment import AugmentConfig, augment, band_limit, place
from training.data import Clip, DataError

CLIP_SECONDS = 1.0


@dataclass(frozen=True)
class FeatureSpec:
    frontend: CochleaConfig
    bin_ms: float = 10.0
    variants: int = 3  # augmented copies per training clip
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def n_bins(self) -> int:
        return round(CLIP_SECONDS * 1000 / self.bin_ms)

    def key(self, clips: list[Clip], augmented: bool, band_limited: bool, extra: list) -> str:
        text = json.dumps(
            [
                self.frontend.to_dict(),
                np.dtype(KERNEL_DTYPE).name,  # features from float64 kernels are stale
                self.bin_ms,
                self.variants if augmented else 0,
                band_limited,
                [str(c.path) + (f"#{c.index}" if c.index >= 0 else "") for c in clips],
                extra,
            ]
        )
        return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class FeatureSet:
    rasters: np.ndarray  # [clips, variants, bins, channels] uint8
    labels: np.ndarray  # [clips] class index
    ok: np.ndarray  # [clips] bool, False for unreadable clips

    @staticmethod
    def concatenate(parts: list[FeatureSet]) -> FeatureSet:
        return FeatureSet(
            np.concatenate([p.rasters for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.ok for p in parts]),
        )


def clip_raster(cochlea: Cochlea, audio: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Spike counts ``[bins, channels]`` of a clip at the cochlea's sample rate."""
    events = cochlea.encode(audio, cochlea.config.sample_rate)
    counts = bin_events(events, spec.bin_ms / 1000, spec.n_bins)
    return np.minimum(counts, 255).astype(np.uint8)


def load_resampled(path: Path, rate: int) -> np.ndarray:
    """A clip's mono audio at ``rate``."""
    import soxr

    audio, file_rate = load_audio(path)
    if file_rate != rate:
        audio = soxr.resample(audio, file_rate, rate).astype(np.float32)
    return audio


def _clip_worker(job: tuple) -> tuple[int, np.ndarray | None]:
    index, path, spec, variants, band_limited, noise_paths, seed = job
    cochlea = process_cochlea(spec.frontend)
    rate = spec.frontend.sample_rate
    length = round(CLIP_SECONDS * rate)
    try:
        audio = load_resampled(path, rate)
    except AudioError:
        return index, None
    clean = place(audio, length, None)
    if band_limited:
        clean = band_limit(clean, rate)
    rasters = [clip_raster(cochlea, clean, spec)]
    if variants:
        rng = np.random.default_rng(seed)
        noises = _worker_noises(noise_paths, rate)
        # Variants start from the whole recording so that placement is random too.
        for _ in range(variants):
            whole = place(audio, max(length, len(audio)), rng)
            varied = augment(whole, rate, noises, rng, spec.augmentation)
            rasters.append(clip_raster(cochlea, place(varied, length, rng), spec))
    return index, np.stack(rasters)


def _clip_seed(clip: Clip, seed: int) -> int:
    """Augmentation seed of one clip: independent of which other clips are in the run."""
    return int(hashlib.sha1(f"{seed}:{clip.path}".encode()).hexdigest()[:12], 16)


_WORKER_CACHE: dict = {}


def process_cochlea(config: CochleaConfig) -> Cochlea:
    """This worker process's cochlea for ``config`` (built once per process)."""
    if ("cochlea", config) not in _WORKER_CACHE:
        _WORKER_CACHE["cochlea", config] = Cochlea(config)
    return _WORKER_CACHE["cochlea", config]


def _worker_noises(paths: tuple[Path, ...], rate: int) -> list[np.ndarray]:
    if ("noises", paths) not in _WORKER_CACHE:
        _WORKER_CACHE["noises", paths] = [load_resampled(p, rate) for p in paths]
    return _WORKER_CACHE["noises", paths]


def build_features(
    clips: list[Clip],
    vocabulary: tuple[str, ...],
    spec: FeatureSpec,
    cache_dir: Path,
    augmented: bool,
    band_limited: bool = False,
    noise_clips: list[Clip] = (),
    seed: int = 0,
    description: str = "features",
) -> FeatureSet:
    """Rasters for ``clips`` (from the cache when present)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    noise_paths = tuple(c.path for c in noise_clips)
    extra = [seed, [str(p) for p in noise_paths], asdict(spec.augmentation)] if augmented else []
    path = cache_dir / f"{description}-{spec.key(clips, augmented, band_limited, extra)}.npz"
    labels = np.array([vocabulary.index(c.label) for c in clips], np.int64)
    if path.exists():
        data = np.load(path)
        return FeatureSet(data["rasters"], labels, data["ok"])
    variants = spec.variants if augmented else 0
    shape = (variants + 1, spec.n_bins, spec.frontend.channels)
    rasters = np.zeros((len(clips), *shape), np.uint8)
    ok = np.zeros(len(clips), bool)
    audio = [i for i, c in enumerate(clips) if c.index < 0]
    if audio:
        jobs = [
            (
                k,
                clips[i].path,
                spec,
                variants,
                band_limited,
                noise_paths,
                _clip_seed(clips[i], seed),
            )
            for k, i in enumerate(audio)
        ]
        rasters[audio], ok[audio] = run_cochlea_jobs(
            _clip_worker, jobs, shape, f"cochlea: {description}"
        )
    spiking = [i for i, c in enumerate(clips) if c.index >= 0]
    if spiking:
        # Recorded spikes cannot be re-synthesised with noise or another speed: every
        # variant is the recording; batches still shift and mask them at random.
        rasters[spiking] = spike_file_rasters([clips[i] for i in spiking], spec)[:, None]
        ok[spiking] = True
    np.savez(path, rasters=rasters, ok=ok)
    return FeatureSet(rasters, labels, ok)


def spike_file_rasters(clips: list[Clip], spec: FeatureSpec) -> np.ndarray:
    """``[clips, bins, channels]`` counts of samples of HDF5 spike files."""
    from audio_frontend.spike_files import read_spike_file

    channels = spec.frontend.channels
    samples: dict[Path, list[SpikeEvents]] = {}
    rasters = np.zeros((len(clips), spec.n_bins, channels), np.uint8)
    for k, clip in enumerate(clips):
        if clip.path not in samples:
            samples[clip.path] = read_spike_file(clip.path)[0]
        events = samples[clip.path][clip.index]
        if len(events) and int(events.channels.max()) >= channels:
            raise DataError(
                f"{clip.path}: spikes on channel {int(events.channels.max())}, but the model "
                f"has {channels} input channels (train with --channels {events.n_channels})"
            )
        events = SpikeEvents(events.times, events.channels, channels)
        rasters[k] = np.minimum(bin_events(events, spec.bin_ms / 1000, spec.n_bins), 255)
    return rasters


def run_cochlea_jobs(
    worker,
    jobs: list[tuple],
    shape: tuple[int, ...],
    description: str,
    workers: int | None = None,
    console=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``worker(job) -> (index, rasters | None)`` over processes with a progress bar.

    Returns uint8 rasters ``[jobs, *shape]`` and which jobs succeeded.
    """
    rasters = np.zeros((len(jobs), *shape), np.uint8)
    ok = np.zeros(len(jobs), bool)
    workers = workers or max(1, min(os.cpu_count() or 1, 8))
    # stderr: stdout may carry a command's data (``evaluate --json``)
    console = console or Console(stderr=True)
    with Progress(console=console) as progress, ProcessPoolExecutor(workers) as pool:
        task = progress.add_task(description, total=len(jobs))
        for index, result in pool.map(worker, jobs, chunksize=8):
            if result is not None:
                rasters[index] = result
                ok[index] = True
            progress.advance(task)
    return rasters, ok


PACK_VERSION = 1


def save_pack(
    path: str | Path,
    spec: FeatureSpec,
    vocabulary: tuple[str, ...],
    train: FeatureSet,
    val: FeatureSet,
    summaries: dict,
    max_variants: int | None = None,
) -> None:
    """Write a self-contained feature pack: train on another machine without the audio.

    ``max_variants`` keeps the clean copy and the first augmented ones, to fit a
    size limit (compressed, a 1 s clip with 4 copies takes about 5 kB).
    """
    meta = {
        "version": PACK_VERSION,
        "frontend": spec.frontend.to_dict(),
        "bin_ms": spec.bin_ms,
        "augmentation": asdict(spec.augmentation),
        "vocabulary": list(vocabulary),
        "summaries": summaries,
    }
    np.savez_compressed(
        path,
        meta=np.array(json.dumps(meta)),
        train_rasters=train.rasters[:, :max_variants],
        train_labels=train.labels,
        train_ok=train.ok,
        val_rasters=val.rasters,
        val_labels=val.labels,
        val_ok=val.ok,
    )


def pack_meta(path: str | Path) -> dict:
    """A feature pack's description (front end, bins, augmentation, vocabulary, data
    summaries), read without its rasters."""
    try:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{path}: not a spikeear feature pack ({error})") from None
    if meta.get("version") != PACK_VERSION:
        raise DataError(f"{path}: feature pack version {meta.get('version')}, need {PACK_VERSION}")
    return meta


def load_pack(path: str | Path) -> tuple[dict, FeatureSet, FeatureSet]:
    """``(meta, train, val)`` from :func:`save_pack`'s file."""
    meta = pack_meta(path)
    data = np.load(path)
    train, val = (
        FeatureSet(data[f"{part}_rasters"], data[f"{part}_labels"], data[f"{part}_ok"])
        for part in ("train", "val")
    )
    return meta, train, val
