"""Finding labelled clips, splitting them by speaker, and caching spike features.

Supported sources, mixed freely in one run:

* Speech Commands layout: one folder per word, ``<speaker>_nohash_<n>.wav``;
  words outside the vocabulary become ``_unknown_``; ``_silence_`` (or
  ``_background_noise_``) folders hold noise.
* FSDD layout: ``<digit>_<speaker>_<n>.wav`` in a folder (or its ``recordings/``).

A folder holding a file named ``SYNTHETIC`` (see ``training/synthesize.py``) is
synthesized speech: it is used for training only and never for validation.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

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


def discover(root: str | Path, vocabulary: tuple[str, ...]) -> list[Clip]:
    root = Path(root)
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
