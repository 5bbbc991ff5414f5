"""Finding labelled clips, splitting them by speaker, and caching spike features.

Supported sources, mixed freely in one run:

* Speech Commands layout: one folder per word, ``<speaker>_nohash_<n>.wav``;
  words outside the vocabulary become ``_unknown_``; ``_silence_`` (or
  ``_background_noise_``) folders hold noise.
* FSDD layout: ``<digit>_<speaker>_<n>.wav`` in a folder (or its ``recordings/``).
* SHD/SSC-style HDF5 spike files (``.h5``): ``spikes/times``, ``spikes/units``,
  ``labels``, with label names in ``extra/keys`` (a key's last word, e.g.
  ``english-one`` -> ``one``, picks the vocabulary word; others are
  ``_unknown_``) and speakers in ``extra/speaker`` or, for ``spikeear encode``
  output, the source file names in ``extra/names``.

A folder holding a file named ``SYNTHETIC`` (see ``training/synthesize.py``) is
synthesized speech: it is used for training only and never for validation.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from models.vocabulary import DIGITS, SILENCE, UNKNOWN

NOISE_FOLDERS = {SILENCE, "_background_noise_"}
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
SC_NAME = re.compile(r"^([0-9a-f]+)_nohash_(\d+)\.wav$")
VALIDATION_FRACTION = 0.15
SYNTHETIC_MARKER = "SYNTHETIC"


class DataError(ValueError):
    """A data source that cannot be used; the message is for the user."""


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str  # a vocabulary entry
    speaker: str  # "<source>:<speaker id>"
    source: str  # e.g. "speech_commands", "fsdd"
    spoken: str  # the word actually spoken (or "noise")
    synthetic: bool = False
    index: int = -1  # the sample within an HDF5 spike file (-1: an audio file)


def is_spike_file(root: str | Path) -> bool:
    return Path(root).suffix.lower() in (".h5", ".hdf5")


def discover(root: str | Path, vocabulary: tuple[str, ...]) -> list[Clip]:
    root = Path(root)
    if is_spike_file(root) and root.is_file():
        return _spike_file_clips(root, vocabulary)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    if (root / "recordings").is_dir():
        root = root / "recordings"
    wavs = sorted(root.rglob("*.wav"))
    if any(FSDD_NAME.match(p.name) for p in wavs[:50]) and all(p.parent == root for p in wavs[:50]):
        clips = [_fsdd_clip(p, vocabulary) for p in wavs if FSDD_NAME.match(p.name)]
    else:
        clips = [_speech_commands_clip(p, root, vocabulary) for p in wavs]
    clips = [c for c in clips if c is not None]
    if (root / SYNTHETIC_MARKER).exists():
        clips = [replace(c, synthetic=True) for c in clips]
    if not clips:
        raise DataError(f"{root}: no usable clips (expected Speech Commands or FSDD layout)")
    return clips


def _spike_file_clips(path: Path, vocabulary: tuple[str, ...]) -> list[Clip]:
    import h5py

    try:
        with h5py.File(path, "r") as file:
            n_samples = len(file["spikes/times"])
            labels = np.asarray(file["labels"]) if "labels" in file else None
            keys = [_text(k) for k in file["extra/keys"]] if "extra/keys" in file else None
            speakers = (
                [str(s) for s in np.asarray(file["extra/speaker"])]
                if "extra/speaker" in file
                else [_speaker_of_name(_text(n)) for n in file["extra/names"]]
                if "extra/names" in file
                else None
            )
    except (OSError, KeyError) as error:
        raise DataError(f"{path}: not an SHD-layout spike file ({error})") from None
    if labels is None or keys is None:
        raise DataError(f"{path}: needs labels and their names (extra/keys)")
    if speakers is None:
        raise DataError(f"{path}: no speakers (extra/speaker or extra/names): cannot split")
    clips = []
    for i in range(n_samples):
        spoken = re.split(r"[-_ ]", keys[int(labels[i])].lower())[-1]
        label = spoken if spoken in vocabulary else SILENCE if spoken == "noise" else UNKNOWN
        clips.append(Clip(path, label, f"{path.stem}:{speakers[i]}", path.stem, spoken, index=i))
    if not clips:
        raise DataError(f"{path}: no samples")
    return clips


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _speaker_of_name(name: str) -> str:
    """The speaker in a Speech Commands or FSDD file name, else the name itself."""
    base = Path(name).name
    match = SC_NAME.match(base) or FSDD_NAME.match(base)
    if match is None:
        return base
    return match.group(1) if SC_NAME.match(base) else match.group(2)


def _fsdd_clip(path: Path, vocabulary: tuple[str, ...]) -> Clip | None:
    digit, speaker, _ = FSDD_NAME.match(path.name).groups()
    word = DIGITS[int(digit)]
    label = word if word in vocabulary else UNKNOWN
    return Clip(path, label, f"fsdd:{speaker}", "fsdd", word)


def _speech_commands_clip(path: Path, root: Path, vocabulary: tuple[str, ...]) -> Clip | None:
    folder = path.parent.name
    source = root.name or "speech_commands"
    if folder in NOISE_FOLDERS:
        return Clip(path, SILENCE, f"{source}:noise-{path.stem}", source, "noise")
    match = SC_NAME.match(path.name)
    if match is None:
        return None
    label = folder if folder in vocabulary else UNKNOWN
    return Clip(path, label, f"{source}:{match.group(1)}", source, folder)


def speaker_hash(speaker: str) -> float:
    digest = hashlib.sha1(speaker.encode()).hexdigest()
    return int(digest[:8], 16) / 0xFFFFFFFF


def split_by_speaker(
    clips: list[Clip], fraction: float = VALIDATION_FRACTION
) -> tuple[list[Clip], list[Clip]]:
    """Speaker-disjoint split, stable across runs and machines.

    A speaker goes to validation when the hash of its id falls below
    ``fraction``; every source with speech keeps at least one validation speaker
    (FSDD has only six).  Synthetic clips always go to training.
    """
    real = [c for c in clips if not c.synthetic]
    validation_speakers = {c.speaker for c in real if speaker_hash(c.speaker) < fraction}
    for source in {c.source for c in real}:
        speakers = {c.speaker for c in real if c.source == source and c.spoken != "noise"}
        if speakers and not speakers & validation_speakers and len(speakers) > 1:
            validation_speakers.add(min(speakers, key=speaker_hash))
    train = [c for c in clips if c.speaker not in validation_speakers]
    validation = [c for c in clips if c.speaker in validation_speakers]
    return train, validation


def validation_clips(roots: list[str], vocabulary: tuple[str, ...]) -> list[Clip]:
    """The recorded clips of the held-out speakers of ``roots`` (what benchmarks score)."""
    clips = [c for root in roots for c in discover(root, vocabulary)]
    return [c for c in split_by_speaker(clips)[1] if not c.synthetic]


def describe(clips: list[Clip]) -> dict:
    """Clip and speaker counts per source, for the model card."""
    summary = {}
    for source in sorted({c.source for c in clips}):
        mine = [c for c in clips if c.source == source]
        summary[source] = {
            "clips": len(mine),
            "speakers": len({c.speaker for c in mine if c.spoken != "noise"}),
            "synthetic": any(c.synthetic for c in mine),
            "labels": dict(sorted(Counter(c.label for c in mine).items())),
        }
    return summary
