"""Training loop for the spikeear classifier, readable top to bottom.

Loss (per clip, from the per-step class evidence ``u_t`` of the readout):
``CE(log mean_t softmax(u_t))`` for the whole clip, plus firing-rate bounds (sparch)
for spiking networks.  With ``distill_weight``, part of the clip loss moves to
matching a convolutional teacher's softened outputs (:mod:`training.teacher`),
computed once per stored clip variant.

Features come from the data folders (cochlea run once, cached) or from a
feature pack (``spikeear features``), which trains on a machine without the audio.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from audio_frontend.cochlea import CochleaConfig
from models.decoding import log_evidence
from models.model_file import ModelBundle
from models.network import Classifier, NetworkConfig
from training import distributed
from training.augment import AugmentConfig
from training.config import DEFAULT_SPEECH_LEVEL_DBFS, TrainConfig
from training.data import DataError, describe, discover, split_by_speaker
from training.evaluate import run_network
from training.features import FeatureSet, FeatureSpec, build_features, load_pack, pack_meta
from training.teacher import ConvTeacher, TeacherEnsemble, distillation_loss

# Weight of the firing-rate bounds in a spiking network's loss.
RATE_WEIGHT = 0.5


def time_constants(
    bin_ms: float,
    tau_u_ms: tuple[float, float] = TrainConfig.tau_u_ms,
    tau_w_ms: tuple[float, float] = TrainConfig.tau_w_ms,
) -> dict:
    """Neuron time constants in bins for a bin width (chosen in milliseconds)."""
    per_bin = 1.0 / bin_ms
    return {
        "readout_tau": 150.0 * per_bin,
        "tau_u": (tau_u_ms[0] * per_bin, tau_u_ms[1] * per_bin),
        "tau_w": (tau_w_ms[0] * per_bin, tau_w_ms[1] * per_bin),
    }


def clip_loss(evidence: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    final = torch.log(evidence.softmax(dim=-1).mean(dim=1) + 1e-8)
    return F.nll_loss(final, labels)


def student_loss(
    evidence: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None, config: TrainConfig
) -> torch.Tensor:
    """The clip loss, part of it moved to the teacher's targets when there are any."""
    loss = clip_loss(evidence, labels)
    if targets is None:
        return loss
    return (1 - config.distill_weight) * loss + config.distill_weight * distillation_loss(
        evidence, targets, config.temperature
    )


def rate_penalty(activity: list[torch.Tensor]) -> torch.Tensor:
    """Mean over neurons of how far each neuron's rate leaves [0.01, 0.5] (sparch's bounds)."""
    rates = [a.mean(dim=(0, 1)) for a in activity]
    return sum((F.relu(0.01 - r) + F.relu(r - 0.5)).mean() for r in rates)


def make_batch(
    features: FeatureSet, indices: np.ndarray, config: TrainConfig, rng: np.random.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Float inputs ``[batch, bins, channels]``, labels and the stored variant each
    clip came from; with ``rng``, a random variant, time shift and time/channel masks
    per clip."""
    variant = np.zeros(len(indices), int)
    if rng is None:
        x = features.rasters[indices, 0].astype(np.float32)
    else:
        variant = rng.integers(0, features.rasters.shape[1], len(indices))
        x = features.rasters[indices, variant].astype(np.float32)
        n_bins, n_channels = x.shape[1:]
        max_shift = round(config.max_shift_ms / config.bin_ms)
        max_time_mask = round(config.max_time_mask_ms / config.bin_ms)
        for row in x:
            _shift_zero_filled(row, rng.integers(-max_shift, max_shift + 1), axis=0)
            width = rng.integers(0, max_time_mask + 1)
            start = rng.integers(0, n_bins - width + 1)
            row[start : start + width] = 0
            width = rng.integers(0, config.max_channel_mask + 1)
            start = rng.integers(0, n_channels - width + 1)
            row[:, start : start + width] = 0
    return torch.from_numpy(x), torch.from_numpy(features.labels[indices]), variant


def _shift_zero_filled(row: np.ndarray, shift: int, axis: int) -> None:
    """Move ``row`` by ``shift`` along ``axis`` in place; what moves in is zero."""
    if not shift:
        return
    row[:] = np.roll(row, shift, axis=axis)
    vacated = [slice(None)] * row.ndim
    vacated[axis] = slice(None, shift) if shift > 0 else slice(shift, None)
    row[tuple(vacated)] = 0


@dataclass
class SourceFeatures:
    """One data source's clips and features, each part ``None`` when it has no clips."""

    name: str
    train_clips: list
    val_clips: list
    train: FeatureSet | None
    val: FeatureSet | None


def source_features(config: TrainConfig, spec: FeatureSpec) -> list[SourceFeatures]:
    """Discover, split by speaker and featurise each data source; features are cached
    per source folder."""
    per_root = [
        [c for c in discover(root, config.vocabulary) if c.spoken not in config.exclude_words]
        for root in config.data
    ]
    if config.max_clips:
        rng = np.random.default_rng(config.seed)
        keep = config.max_clips / sum(len(clips) for clips in per_root)
        per_root = [[c for c in clips if rng.random() < keep] for clips in per_root]
    train_clips, val_clips = split_by_speaker([c for clips in per_root for c in clips])
    if not train_clips or not val_clips:
        raise DataError("need clips from at least two speakers to make a speaker-disjoint split")
    cache = Path(config.cache_dir)
    noise = [c for c in train_clips if c.spoken == "noise"]
    train_set, val_set = set(train_clips), set(val_clips)
    sources = []
    for root, clips in zip(config.data, per_root, strict=True):
        name = Path(root).name
        in_train = [c for c in clips if c in train_set]
        in_val = [c for c in clips if c in val_set]
        train = val = None
        if in_train:
            train = build_features(
                in_train, config.vocabulary, spec, cache, True, noise_clips=noise,
                seed=config.seed, description=f"train-{name}",
            )  # fmt: skip
        if in_val:
            val = build_features(
                in_val, config.vocabulary, spec, cache, False, description=f"val-{name}"
            )
        sources.append(SourceFeatures(name, in_train, in_val, train, val))
    return sources


def load_datasets(config: TrainConfig, spec: FeatureSpec) -> tuple[dict, FeatureSet, FeatureSet]:
    """All sources' features as one training and one validation set, with the clip and
    speaker counts of both parts (for the model card)."""
    sources = source_features(config, spec)
    summaries = {
        "train": describe([c for s in sources for c in s.train_clips]),
        "validation": describe([c for s in sources for c in s.val_clips]),
    }
    train = FeatureSet.concatenate([s.train for s in sources if s.train is not None])
    val = FeatureSet.concatenate([s.val for s in sources if s.val is not None])
    return summaries, train, val


def load_features(config: TrainConfig, spec: FeatureSpec) -> tuple[dict, FeatureSet, FeatureSet]:
    """Features from a pack when ``config.features`` names one, else from the data folders."""
    if config.features:  # checked against the run by ``adopt_pack``
        meta, train, val = load_pack(config.features)
        summaries = meta["summaries"]
    else:
        summaries, train, val = load_datasets(config, spec)
    for name, features in (("train", train), ("val", val)):
        skipped = int((~features.ok).sum())
        if skipped:
            print(f"{name}: skipped {skipped} unreadable clips")
        if not features.ok.any():
            raise DataError(f"no readable {name} clips")
    return summaries, train, val


def epochs_within(budget_s: float, seconds_per_epoch: float, epochs_done: int, epochs: int) -> int:
    """How many epochs fit a time budget at this pace (at least those done, at most ``epochs``)."""
    return max(epochs_done, min(epochs, int(budget_s / seconds_per_epoch)))


class OneCycle:
    """Learning-rate factor: linear warm-up over 15% of the steps, then cosine decay.

    ``total_steps`` may be set after the first epoch, when a time budget decides
    how many epochs fit.
    """

    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        progress = min(step / max(self.total_steps, 1), 1.0)
        if progress < 0.15:
            return 0.04 + 0.96 * progress / 0.15
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (progress - 0.15) / 0.85))


def _progress_columns() -> list:
    return [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]


def _accuracy(scores: np.ndarray, features: FeatureSet) -> float:
    """Accuracy of the highest of each clip's class ``scores`` ``[clips, classes]``."""
    ok = np.flatnonzero(features.ok)
    return float((scores[ok].argmax(-1) == features.labels[ok]).mean())


def train_teacher(
    config: TrainConfig,
    train_set: FeatureSet,
    val_set: FeatureSet,
    device: torch.device,
    time_budget_s: float | None = None,
) -> tuple[ConvTeacher, float]:
    """Fit the convolutional teacher on the same augmented batches; returns it and
    its validation accuracy."""
    teacher = ConvTeacher(
        len(config.vocabulary), config.teacher_width, config.teacher_arch, config.bin_ms
    ).to(device)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=3e-3, weight_decay=1e-2)
    rng = np.random.default_rng(config.seed + 1)
    train_indices = np.flatnonzero(train_set.ok)
    steps_per_epoch = math.ceil(len(train_indices) / config.batch_size)
    epochs = config.teacher_epochs
    cycle = OneCycle(epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cycle)
    started = time.time()
    with Progress(*_progress_columns()) as progress:
        task = progress.add_task("teacher", total=epochs * steps_per_epoch, status="")
        epoch = 0
        while epoch < epochs:
            teacher.train()
            order = rng.permutation(train_indices)
            for start in range(0, len(order), config.batch_size):
                x, y, _ = make_batch(
                    train_set, order[start : start + config.batch_size], config, rng
                )
                loss = F.cross_entropy(teacher(x.to(device)), y.to(device), label_smoothing=0.1)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                progress.update(task, advance=1, status=f"epoch {epoch + 1} loss {loss.item():.3f}")
            epoch += 1
            if time_budget_s and epoch == 1:
                epochs = epochs_within(time_budget_s, time.time() - started, epoch, epochs)
                cycle.total_steps = epochs * steps_per_epoch
                progress.update(task, total=epochs * steps_per_epoch)
    accuracy = _accuracy(teacher_probabilities(teacher, val_set.rasters[:, 0]), val_set)
    print(f"teacher: validation accuracy {accuracy:.3f} after {epochs} epochs")
    return teacher.eval(), accuracy


def feature_spec(config: TrainConfig) -> FeatureSpec:
    """The features a run (or a pack for it) is made of."""
    return FeatureSpec(
        CochleaConfig(channels=config.channels),
        config.bin_ms,
        config.variants,
        AugmentConfig(speech_level_dbfs=config.speech_level_dbfs or DEFAULT_SPEECH_LEVEL_DBFS),
    )


def adopt_pack(config: TrainConfig) -> TrainConfig:
    """A run's speech levels, and its pack's settings: a pack must be made for the run's
    channels, bin width and vocabulary, and the run trains on the levels the pack was made
    with (which its model card should say).  Without a pack the levels are the run's, or
    the default ones."""
    if not config.features:
        return replace(
            config, speech_level_dbfs=config.speech_level_dbfs or DEFAULT_SPEECH_LEVEL_DBFS
        )
    meta = pack_meta(config.features)
    made_for = (meta["frontend"].get("channels"), meta["bin_ms"], tuple(meta["vocabulary"]))
    wanted = (config.channels, config.bin_ms, config.vocabulary)
    if made_for != wanted:
        raise DataError(
            f"{config.features}: made for channels, bin width and vocabulary {made_for}, "
            f"this run needs {wanted}"
        )
    made = meta.get("augmentation", {}).get("speech_level_dbfs")
    level = tuple(made) if made else None  # None: a pack made with relative gains
    if config.speech_level_dbfs not in (None, level):
        made_as = f"with --speech-level-dbfs {made[0]:g} {made[1]:g}" if made else "without it"
        raise DataError(
            f"{config.features}: --speech-level-dbfs is fixed when a pack is made, "
            f"and this one was made {made_as}"
        )
    return replace(config, speech_level_dbfs=level)


def _start_run(
    config: TrainConfig,
) -> tuple[TrainConfig, torch.device, dict, FeatureSet, FeatureSet]:
    """A run's settings (with its pack's), seeds, threads and device, and its features
    (with their summaries)."""
    config = adopt_pack(config)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return config, device, *load_features(config, feature_spec(config))


def fit_teacher(config: TrainConfig) -> tuple[Path, float]:
    """Train only a teacher (to build an ensemble from several runs); it is written
    next to ``config.out`` as ``<out>.teacher.pt``."""
    config, device, _, train_set, val_set = _start_run(config)
    teacher, accuracy = train_teacher(config, train_set, val_set, device, config.time_budget_s)
    path = Path(config.out).with_suffix(".teacher.pt")
    teacher.save(path)
    return path, accuracy


@torch.no_grad()
def teacher_logits(teacher: ConvTeacher | TeacherEnsemble, rasters: np.ndarray) -> np.ndarray:
    """The teacher's logits for spike counts ``[clips, bins, channels]``."""
    teacher.eval()
    device = next(teacher.parameters()).device
    return np.concatenate([
        teacher(torch.from_numpy(rasters[i : i + 512].astype(np.float32)).to(device)).cpu().numpy()
        for i in range(0, len(rasters), 512)
    ])  # fmt: skip


def teacher_probabilities(
    teacher: ConvTeacher | TeacherEnsemble, rasters: np.ndarray
) -> np.ndarray:
    return torch.from_numpy(teacher_logits(teacher, rasters)).softmax(-1).numpy()


def cached_teacher_targets(
    teacher: ConvTeacher | TeacherEnsemble, rasters: np.ndarray, cache_dir: str
) -> np.ndarray:
    """The teacher's logits for every stored variant of every clip ``[clips, variants,
    classes]``, computed once: the student sees its shifted and masked batches, the
    teacher the whole variant, and a CPU run pays no teacher pass per batch.

    Kept in ``cache_dir``, one file per teacher, one row per clip copy found by its spike
    counts: runs from the same pack share them (a student and its analog twin), a pack
    that adds clips to another pays only for the new copies, and an ensemble's targets are
    the mean of its members', each cached on its own, so that a new ensemble reuses known
    members."""
    if isinstance(teacher, TeacherEnsemble):
        return np.mean(
            [cached_teacher_targets(member, rasters, cache_dir) for member in teacher.members],
            axis=0,
        )
    clips, variants = rasters.shape[:2]
    copies = rasters.reshape(clips * variants, *rasters.shape[2:])
    keys = copy_digests(copies)
    path = Path(cache_dir) / f"teacher-targets-{weights_digest(teacher)}.npz"
    known_keys, known_targets = read_target_cache(path, teacher.n_classes)
    row = {key: i for i, key in enumerate(known_keys)}
    missing = [i for i, key in enumerate(keys) if key not in row]
    if missing:
        new_keys, first = np.unique([keys[i] for i in missing], return_index=True)
        print(f"teacher targets for {len(new_keys)} of {len(keys)} clip copies ...")
        new_targets = teacher_logits(teacher, copies[np.array(missing)[first]])
        row.update((key, len(known_keys) + i) for i, key in enumerate(new_keys))
        known_keys = np.concatenate([known_keys, new_keys])
        known_targets = np.concatenate([known_targets, new_targets])
        write_target_cache(path, known_keys, known_targets)
    return known_targets[[row[k] for k in keys]].reshape(clips, variants, -1)


def weights_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha1()
    for tensor in module.state_dict().values():
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def copy_digests(copies: np.ndarray) -> list[str]:
    """A key per clip copy ``[copies, bins, channels]``: its shape and spike counts."""
    shape = str(copies.shape[1:]).encode()
    return [hashlib.sha1(shape + np.ascontiguousarray(c).data).hexdigest() for c in copies]


def read_target_cache(path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        return np.array([], dtype="U40"), np.zeros((0, n_classes), np.float32)
    with np.load(path) as stored:
        return stored["keys"], stored["targets"]


def write_target_cache(path: Path, keys: np.ndarray, targets: np.ndarray) -> None:
    # Written aside and renamed, so that two runs sharing a cache never read half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npz")
    np.savez(partial, keys=keys, targets=targets)
    os.replace(partial, path)


def train(config: TrainConfig) -> ModelBundle:
    """Train a model; under ``torchrun`` (:mod:`training.distributed`) one process of several."""
    if distributed.active() and config.distill_weight and not config.teachers:
        raise DataError(
            "under torchrun, give a trained --teacher (from spikeear train --teacher-only) "
            "or --distill 0"
        )
    with distributed.main_first():  # the first process builds the feature cache
        config, device, summaries, train_set, val_set = _start_run(config)
    rng = distributed.augmentation_rng(config.seed)
    out = Path(config.out)
    teacher, teacher_accuracy = None, None
    if config.distill_weight:
        if config.teachers:
            teacher = TeacherEnsemble.load(list(config.teachers), device, config.bin_ms)
            teacher_accuracy = _accuracy(
                teacher_probabilities(teacher, val_set.rasters[:, 0]), val_set
            )
        else:
            teacher, teacher_accuracy = train_teacher(config, train_set, val_set, device)
            teacher.save(out.with_suffix(".teacher.pt"))
    cached_targets = None
    if teacher is not None:
        with distributed.main_first():
            cached_targets = cached_teacher_targets(teacher, train_set.rasters, config.cache_dir)
    network = Classifier(
        NetworkConfig(
            n_inputs=config.channels,
            n_classes=len(config.vocabulary),
            hidden=tuple(config.hidden),
            kind=config.kind,
            neuron=config.neuron,
            input_delays=tuple(config.input_delays),
            input_conv=tuple(config.input_conv) if config.input_conv else None,
            hidden_conv=tuple(config.hidden_conv) if config.hidden_conv else None,
            dropout=config.dropout,
            **time_constants(config.bin_ms, config.tau_u_ms, config.tau_w_ms),
        )
    ).to(device)
    model = distributed.wrap(network)  # the network, or one that averages gradients
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=0.0)
    train_indices = np.flatnonzero(train_set.ok)
    steps_per_epoch = math.ceil(distributed.share_size(len(train_indices)) / config.batch_size)
    cycle = OneCycle(config.epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cycle)
    checkpoint = out.with_suffix(".ckpt")
    log_path = out.with_suffix(".log.jsonl")
    first_epoch, epochs = 0, config.epochs
    if config.resume and checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        network.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        distributed.restore_rng(rng, saved)
        first_epoch, epochs = saved["epoch"] + 1, saved["epochs"]
        cycle.total_steps = epochs * steps_per_epoch
        print(f"resuming after epoch {first_epoch}")
    elif log_path.exists() and distributed.is_main():
        log_path.unlink()
    run_started = time.time()
    with Progress(*_progress_columns()) as progress:
        task = progress.add_task(
            "training",
            total=epochs * steps_per_epoch,
            completed=first_epoch * steps_per_epoch,
            status="",
        )
        epoch = first_epoch
        while epoch < epochs:
            model.train()
            started = time.time()
            order = distributed.epoch_order(train_indices, rng, epoch, config.seed)
            total_loss, correct, rates = 0.0, 0, []
            for start in range(0, len(order), config.batch_size):
                indices = order[start : start + config.batch_size]
                x, y, variants = make_batch(train_set, indices, config, rng)
                x, y = x.to(device), y.to(device)
                targets = None
                if cached_targets is not None:
                    targets = torch.from_numpy(cached_targets[indices, variants]).to(device)
                evidence, _, activity = model(x)
                loss = student_loss(evidence, y, targets, config)
                if config.kind == "spiking":
                    loss = loss + RATE_WEIGHT * rate_penalty(activity)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(network.parameters(), 5.0)
                optimizer.step()
                schedule.step()
                network.clamp_()
                total_loss += loss.item() * len(indices)
                correct += (evidence.log_softmax(-1).sum(1).argmax(-1) == y).sum().item()
                rates.append([a.mean().item() for a in activity])
                progress.update(task, advance=1, status=f"epoch {epoch + 1} loss {loss.item():.3f}")
            if config.time_budget_s and epoch == first_epoch:
                # The first epoch's pace decides how many fit; the schedule stretches to match.
                per_epoch = time.time() - run_started
                epochs = epochs_within(config.time_budget_s, per_epoch, epoch + 1, epochs)
                epochs = distributed.agree(epochs)  # processes must take the same steps
                cycle.total_steps = epochs * steps_per_epoch
                progress.update(task, total=epochs * steps_per_epoch)
            total_loss, correct, seen = distributed.sum_over_processes(
                total_loss, correct, len(order)
            )
            rng_state = distributed.rng_states(rng)
            distributed.average_buffers(network)
            weights = distributed.gather(weights_digest(network))
            if not distributed.is_main():  # the first process alone validates and writes
                epoch += 1
                continue
            probabilities, _ = run_network(network, val_set.rasters[:, 0])
            val_accuracy = _accuracy(log_evidence(probabilities).sum(1), val_set)
            record = {
                "epoch": epoch + 1,
                "loss": total_loss / seen,
                "train_accuracy": correct / seen,
                "val_accuracy": val_accuracy,
                "firing_rates": np.mean(rates, axis=0).round(4).tolist(),
                "lr": schedule.get_last_lr()[0],
                "seconds": round(time.time() - started, 1),
            }
            if distributed.active():
                record["weights_sha1_per_process"] = weights
            with open(log_path, "a") as log:
                log.write(json.dumps(record) + "\n")
            progress.console.print(
                f"epoch {epoch + 1}/{epochs}: loss {record['loss']:.3f} "
                f"train {record['train_accuracy']:.3f} "
                f"val {val_accuracy:.3f} rates {record['firing_rates']} ({record['seconds']} s)"
            )
            torch.save(
                {
                    "network": network.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    **rng_state,
                    "epoch": epoch,
                    "epochs": epochs,
                },
                checkpoint,
            )
            epoch += 1
    network.cpu().eval()
    training = {k: v for k, v in asdict(config).items() if k not in ("resume", "cache_dir")}
    training.update(
        device=str(device),
        epochs=epochs,
        teachers=[Path(t).name for t in config.teachers],
        **distributed.card_fields(config.batch_size),
    )
    if teacher_accuracy is not None:
        training["teacher_validation_accuracy"] = round(teacher_accuracy, 4)
    card = {
        "name": out.stem,
        "training": training,
        "data": summaries,
        "split": "speaker-disjoint: a speaker is held out when sha1(source:speaker) < 0.15 "
        "(at least one speaker per source)",
        "parameters": network.parameter_count(),
    }
    bundle = ModelBundle(
        network, CochleaConfig(channels=config.channels), config.vocabulary, config.bin_ms, card
    )
    if distributed.is_main():
        bundle.save(out)
    return bundle
