"""A server's (or ``spikeear enroll``'s) custom words: enrolled from recordings or
synthesized speech, kept in a word set file, and handed to the recognizer whole."""

from __future__ import annotations

import contextlib
import fcntl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from models.custom_words import (
    MAX_EXAMPLES,
    CustomWord,
    CustomWordError,
    CustomWords,
    check_word,
    load_word_set,
    save_word_set,
)
from models.recognizer import Recognizer, longest_word

MIN_RECORDING_S = 0.2
MAX_RECORDING_S = 5.0  # one word, with some silence around it
SYNTHETIC_VOICES = 10  # voices (engine, voice, pitch, speed) a word is synthesized with
PADDING_S = 0.2  # silence around a synthesized word, as a recording has


class WordExistsError(CustomWordError):
    """The word is already enrolled (or built in)."""


class Recording:
    """One enrollment example: its name (for messages and the word set) and audio."""

    def __init__(self, name: str, audio: np.ndarray, sample_rate: int) -> None:
        self.name, self.audio, self.sample_rate = name, audio, sample_rate


def synthesized(word: str, voices: int = SYNTHETIC_VOICES, seed: int = 0) -> list[Recording]:
    """``word`` said by offline synthetic voices (training/synthesize.py: espeak-ng, flite,
    nanotts, whichever are installed)."""
    try:
        from training.synthesize import (
            SAMPLE_RATE,
            SynthesisError,
            available_engines,
            make_voices,
            render,
            trim,
        )
    except ImportError:
        raise CustomWordError(
            "synthesized enrollment needs the full install (the training package)"
        ) from None
    engines = [engine for engine, why_not in available_engines().items() if why_not is None]
    if not engines:
        raise CustomWordError("no speech synthesizer is installed (espeak-ng, flite or nanotts)")
    pool = [voice for engine in engines for voice in make_voices(engine, 2, seed)]
    rng = np.random.default_rng(seed)
    chosen = [pool[i] for i in sorted(rng.choice(len(pool), min(voices, len(pool)), False))]
    padding = np.zeros(round(PADDING_S * SAMPLE_RATE), np.float32)
    recordings = []
    with tempfile.TemporaryDirectory() as workdir:
        for voice in chosen:
            try:
                audio = trim(render(voice, word, Path(workdir)))
            except SynthesisError:
                continue  # one voice failing is not the word failing
            recordings.append(
                Recording(voice.identity, np.concatenate([padding, audio, padding]), SAMPLE_RATE)
            )
    if not recordings:
        raise CustomWordError(f"no synthesizer could say {word!r}")
    return recordings


class WordSet:
    """The custom words, in the recognizer and (with ``path``) in a word set file that
    several server processes may share: every change re-reads the file under a lock."""

    def __init__(self, recognizer: Recognizer, path: str | Path | None = None) -> None:
        self.recognizer = recognizer
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._seen: int | None = None  # the file's mtime when last read
        if self.path is not None:
            with self._locked():
                self._read()

    @property
    def words(self) -> CustomWords:
        return self.recognizer.custom_words

    def refresh(self) -> None:
        """Take up changes another process made to the file."""
        if self.path is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_mtime_ns != self._seen:
                with self._locked():
                    self._read()

    def new_word(self, word: str) -> str:
        """``word`` as it would be enrolled, or CustomWordError (checked before any
        audio is read, and again when the word is added)."""
        if self.recognizer.bundle.enrollment is None:
            raise CustomWordError("this model cannot learn custom words (no enrollment space)")
        word = check_word(word)
        if word in self.recognizer.vocabulary:
            raise WordExistsError(f"{word!r} is a built-in word")
        self.refresh()
        if self.words.get(word) is not None:
            raise WordExistsError(f"{word!r} is already enrolled: delete it first")
        return word

    def enroll(self, word: str, recordings: list[Recording]) -> CustomWord:
        word = self.new_word(word)
        if not recordings:
            raise CustomWordError("give at least one recording (or synthesize)")
        if len(recordings) > MAX_EXAMPLES:
            raise CustomWordError(f"at most {MAX_EXAMPLES} recordings per word")
        rates = np.stack([self._rates(recording) for recording in recordings])
        with self._locked():
            self._read()
            if self.words.get(word) is not None:  # enrolled meanwhile by another process
                raise WordExistsError(f"{word!r} is already enrolled: delete it first")
            space = self.words.space
            assert space is not None  # new_word checked
            enrolled = CustomWord.enroll(space, word, rates, tuple(r.name for r in recordings))
            self._write(self.words.with_word(enrolled))
        return enrolled

    def remove(self, word: str) -> bool:
        with self._locked():
            self._read()
            if self.words.get(word) is None:
                return False
            self._write(self.words.without(word))
        return True

    def _rates(self, recording: Recording) -> np.ndarray:
        seconds = len(recording.audio) / recording.sample_rate
        if seconds < MIN_RECORDING_S:
            raise CustomWordError(
                f"{recording.name}: {seconds:.2f} s is too short (at least {MIN_RECORDING_S} s)"
            )
        if seconds > MAX_RECORDING_S:
            raise CustomWordError(
                f"{recording.name}: {seconds:.1f} s is too long: one word per recording, "
                f"at most {MAX_RECORDING_S:g} s"
            )
        rates = longest_word(self.recognizer.describe(recording.audio, recording.sample_rate))
        if rates is None:
            raise CustomWordError(f"{recording.name}: no speech found")
        return rates

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self.path is None:
                yield
                return
            with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield

    def _read(self) -> None:
        if self.path is None:  # the recognizer's words are the only copy
            return
        words = load_word_set(self.path, self.recognizer.bundle.enrollment)
        self._seen = self.path.stat().st_mtime_ns if self.path.exists() else None
        self.recognizer.custom_words = words

    def _write(self, words: CustomWords) -> None:
        if self.path is not None:
            save_word_set(self.path, words)
            self._seen = self.path.stat().st_mtime_ns
        self.recognizer.custom_words = words


def word_summary(word: CustomWord) -> dict:
    return {"word": word.word, "examples": word.examples, "sources": list(word.sources)}
