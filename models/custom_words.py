"""Custom words: a new command enrolled from a few recordings, matched in the same
streaming step as the built-in words.

A word is described by what the network's upper hidden layers do while it is spoken:
each neuron's spike rate over the word's span (:data:`EMBEDDING_LAYERS`).  The model
file carries an :class:`EnrollmentSpace`, fitted once on the training clips of the
built-in classes: a centre and a whitening that shrinks the directions in which
recordings of one word vary (speakers, levels) so that the directions in which words
differ count, and the embeddings of those training clips, the negatives every custom
word's threshold is set against.  Enrolling a word averages its recordings'
embeddings into a prototype; a word in a stream matches it when the cosine
similarity of its embedding would reject all but :data:`FALSE_ACCEPT_RATE` of the
negatives and is higher than its similarity to the prototype of the built-in word the
network decided on.  Measured in ``benchmarks/custom_words.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

EMBEDDING_LAYERS = (1, 2)  # hidden layers (0-based) whose spikes describe a word
WHITENING_SHRINKAGE = 0.3  # of the within-word covariance towards its mean variance
FALSE_ACCEPT_RATE = 0.01  # of the built-in words' training clips a custom word may match
MIN_EXAMPLES = 1
MAX_EXAMPLES = 20
WORD_PATTERN = re.compile(r"^[a-z][a-z'-]{0,31}$")
WORDS_FORMAT = "spikeear-words"
WORDS_VERSION = 1


class CustomWordError(ValueError):
    """A custom word or word set that cannot be used; the message is for the user."""


def check_word(word: str) -> str:
    """The word as it is stored (lower case), or CustomWordError."""
    normalized = word.strip().lower()
    if not WORD_PATTERN.match(normalized):
        raise CustomWordError(
            f"{word!r} cannot be a word: use one word of letters (a-z, an apostrophe or a "
            "hyphen inside), at most 32 characters"
        )
    return normalized


@dataclass(frozen=True)
class EnrollmentSpace:
    """Where word embeddings live: see the module docstring."""

    layers: tuple[int, ...]
    centre: np.ndarray  # float32 [D], of the square-rooted rates
    whitening: np.ndarray  # float32 [D, D]
    negatives: np.ndarray  # float32 [N, D]: unit embeddings of the built-in classes' clips
    words: tuple[str, ...] = ()  # the built-in words, and the mean of their clips' embeddings:
    word_prototypes: np.ndarray | None = None  # a custom word must be nearer than the network's

    @property
    def fingerprint(self) -> str:
        """Names the space (and so the model) a word set was enrolled in."""
        digest = hashlib.sha1(self.centre.tobytes() + self.whitening.tobytes())
        return digest.hexdigest()[:16]

    def embed(self, rates: np.ndarray) -> np.ndarray:
        """Unit embeddings ``[..., D]`` of mean spikes per bin ``[..., D]``; the square
        root evens out neurons that fire far more often than others."""
        x = (np.sqrt(np.maximum(rates, 0.0)) - self.centre) @ self.whitening
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)

    @classmethod
    def fit(
        cls, rates: np.ndarray, labels: np.ndarray, negative: np.ndarray, layers: tuple[int, ...]
    ) -> EnrollmentSpace:
        """From the pooled rates ``[clips, D]`` of training clips of many words
        (``labels``); those marked ``negative`` (the built-in words) become the negatives
        and their words' prototypes."""
        roots = np.sqrt(np.maximum(rates, 0.0)).astype(np.float64)
        centre = roots.mean(axis=0)
        within = np.zeros((roots.shape[1], roots.shape[1]))
        for label in np.unique(labels):
            members = roots[labels == label]
            deviations = members - members.mean(axis=0)
            within += deviations.T @ deviations
        within /= len(roots)
        mean_variance = np.trace(within) / len(within)
        within = (1 - WHITENING_SHRINKAGE) * within + WHITENING_SHRINKAGE * mean_variance * np.eye(
            len(within)
        )
        values, vectors = np.linalg.eigh(within)
        # Rounded as the model file stores it, so that a fitted space equals a loaded one.
        whitening = ((vectors / np.sqrt(values)) @ vectors.T).astype(np.float16)
        space = cls(layers, centre.astype(np.float32), whitening.astype(np.float32), np.empty(0))
        negatives = space.embed(rates[negative].astype(np.float32)).astype(np.float32)
        builtin = labels[negative]
        words = tuple(sorted({str(word) for word in builtin}))
        prototypes = np.stack([_unit(negatives[builtin == word].mean(axis=0)) for word in words])
        return cls(layers, space.centre, space.whitening, negatives, words, prototypes)

    def to_dict(self) -> dict:
        return {
            "layers": list(self.layers),
            "centre": torch.from_numpy(self.centre),
            "whitening": torch.from_numpy(self.whitening.astype(np.float16)),
            "negatives": torch.from_numpy(self.negatives.astype(np.float16)),
            "words": list(self.words),
            "word_prototypes": torch.from_numpy(
                self.word_prototypes if self.word_prototypes is not None else np.zeros((0, 0))
            ),
        }

    @classmethod
    def from_dict(cls, values: dict) -> EnrollmentSpace:
        prototypes = values.get("word_prototypes")
        return cls(
            tuple(values["layers"]),
            values["centre"].numpy(),
            values["whitening"].float().numpy(),
            values["negatives"].float().numpy(),
            tuple(values.get("words", ())),
            prototypes.float().numpy() if prototypes is not None and prototypes.numel() else None,
        )

    def similarity_to_word(self, word: str, embedding: np.ndarray) -> float | None:
        """How like a built-in word's training clips an embedding is (None: not one)."""
        if self.word_prototypes is None or word not in self.words:
            return None
        return float(self.word_prototypes[self.words.index(word)] @ embedding)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-9)


@dataclass(frozen=True)
class CustomWord:
    word: str
    rates: np.ndarray  # float32 [examples, D]: the enrollment recordings' pooled rates
    sources: tuple[str, ...]  # what each example was (file name or synthetic voice)
    prototype: np.ndarray  # unit [D]
    negative_scores: np.ndarray  # sorted similarities of the space's negatives

    @classmethod
    def enroll(
        cls, space: EnrollmentSpace, word: str, rates: np.ndarray, sources: tuple[str, ...]
    ) -> CustomWord:
        mean = space.embed(rates).mean(axis=0)
        prototype = mean / max(float(np.linalg.norm(mean)), 1e-9)
        return cls(word, rates, sources, prototype, np.sort(space.negatives @ prototype))

    @property
    def examples(self) -> int:
        return len(self.rates)

    def confidence(self, similarity: float) -> float:
        """The share of the built-in negatives less similar than ``similarity``."""
        below = np.searchsorted(self.negative_scores, similarity)
        return float(below) / max(len(self.negative_scores), 1)


@dataclass(frozen=True)
class CustomMatch:
    word: str
    confidence: float


@dataclass(frozen=True)
class CustomWords:
    """An immutable set of custom words: the recognizer swaps in a new set whole, so a
    step in progress always sees one consistent set."""

    space: EnrollmentSpace | None
    words: tuple[CustomWord, ...] = ()
    _prototypes: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        dims = self.space.centre.shape[0] if self.space is not None else 0
        prototypes = np.stack([w.prototype for w in self.words]) if self.words else None
        object.__setattr__(
            self, "_prototypes", prototypes if prototypes is not None else np.zeros((0, dims))
        )

    def __bool__(self) -> bool:
        return bool(self.words)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(w.word for w in self.words)

    def get(self, word: str) -> CustomWord | None:
        return next((w for w in self.words if w.word == word), None)

    def with_word(self, word: CustomWord) -> CustomWords:
        return CustomWords(self.space, (*[w for w in self.words if w.word != word.word], word))

    def without(self, word: str) -> CustomWords:
        return CustomWords(self.space, tuple(w for w in self.words if w.word != word))

    def match(
        self, rates: np.ndarray, allowed: frozenset[str] | None, rival: str | None = None
    ) -> CustomMatch | None:
        """The custom word a spoken word's hidden spike ``rates`` (mean spikes per bin
        over the word) match, if any passes its threshold and is more like it than the
        built-in word ``rival`` is; ``allowed`` limits the candidates."""
        if not self.words or self.space is None:
            return None
        embedding = self.space.embed(rates)
        similarities = self._prototypes @ embedding
        floor = self.space.similarity_to_word(rival, embedding) if rival else None
        best: CustomMatch | None = None
        for word, similarity in zip(self.words, similarities, strict=True):
            if allowed is not None and word.word not in allowed:
                continue
            if floor is not None and similarity <= floor:
                continue
            confidence = word.confidence(float(similarity))
            if confidence >= 1.0 - FALSE_ACCEPT_RATE and (
                best is None or confidence > best.confidence
            ):
                best = CustomMatch(word.word, confidence)
        return best

    def takes_over(
        self, builtin: str, rates: np.ndarray, allowed: frozenset[str] | None
    ) -> CustomMatch | None:
        """The custom word a spoken word is instead of the network's ``builtin`` word:
        one that matches and is nearer to it than the built-in word's own prototype, so
        that a custom word takes no word that sounds like the built-in one the network
        heard (not the network's confidence, which is high for many words it never
        learned to call unknown)."""
        return self.match(rates, allowed, rival=builtin)


# ----- the word set file ------------------------------------------------------------------
def load_word_set(path: str | Path, space: EnrollmentSpace | None) -> CustomWords:
    """The words of a word set file, or an empty set when it does not exist yet."""
    path = Path(path)
    if space is None:
        raise CustomWordError("this model has no enrollment space: it cannot learn custom words")
    if not path.exists():
        return CustomWords(space)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CustomWordError(f"{path}: not a word set file ({error})") from None
    if not isinstance(data, dict) or data.get("format") != WORDS_FORMAT:
        raise CustomWordError(f'{path}: not a word set file (no "format": "{WORDS_FORMAT}")')
    if data.get("version") != WORDS_VERSION:
        raise CustomWordError(
            f"{path}: word set version {data.get('version')} is not supported "
            f"(this spikeear reads version {WORDS_VERSION})"
        )
    if data.get("space") != space.fingerprint:
        raise CustomWordError(
            f"{path}: its words were enrolled with another model: enroll them again"
        )
    words = CustomWords(space)
    try:
        for entry in data["words"]:
            rates = np.asarray(entry["rates"], dtype=np.float32)
            if rates.ndim != 2 or rates.shape[1] != space.centre.shape[0]:
                raise ValueError("examples of the wrong size")
            word = check_word(entry["word"])
            words = words.with_word(
                CustomWord.enroll(space, word, rates, tuple(entry.get("sources", ())))
            )
    except (KeyError, TypeError, ValueError) as error:
        raise CustomWordError(f"{path}: damaged word set ({error})") from None
    return words


def save_word_set(path: str | Path, words: CustomWords) -> None:
    """Write the set atomically (a reader never sees half a file)."""
    assert words.space is not None
    path = Path(path)
    data = {
        "format": WORDS_FORMAT,
        "version": WORDS_VERSION,
        "space": words.space.fingerprint,
        "words": [
            {
                "word": w.word,
                "examples": w.examples,
                "sources": list(w.sources),
                "rates": np.round(w.rates, 5).tolist(),
            }
            for w in words.words
        ],
    }
    handle, temporary = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(data, file)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
