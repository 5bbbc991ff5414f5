"""From input spike activity and per-bin class probabilities to words with times.

Two steps, one per bin, each with its own per-stream state:

1. :class:`Endpointer` decides where words are from the cochlea's own activity
   (it is quiet in silence): a word is where the input's speech activity
   (:func:`speech_activity`: the spikes above the bin's median over channels)
   rises clearly above the stream's background level (a running floor that falls
   fast and rises slowly), and it ends when activity has stayed low for
   ``hangover_bins``.  It needs no network output, so it runs as soon as a bin is
   counted: the recognizer knows every word end (where the network goes back to
   rest) before the network runs.
2. :class:`Decoder` reads the network's output over those boundaries: within a
   word it sums the classes' log-probabilities (:func:`log_evidence`), streams the
   leading hypothesis as a partial whenever it changes, and decides the word when
   the endpointer closes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np

from models.custom_words import CustomMatch, CustomWords
from models.vocabulary import SILENCE, UNKNOWN

CUSTOM_MATCH_EVERY_BINS = 5  # partials look for a custom word this often (a matrix product)


@dataclass(frozen=True)
class DecoderConfig:
    """Endpointing and decision settings, in seconds and spikes per second."""

    min_activity_rate: float = 6000.0  # speech activity (spikes/s) that can count as speech
    floor_ratio: float = 1.6  # ... and must exceed the background floor this many times
    soft_onset_s: float = 0.25  # a loud start that rises this soon was the word's own beginning
    floor_rise_per_s: float = 0.5  # the floor rises slowly; it falls at once to quieter levels
    onset_s: float = 0.03  # continuous activity that opens a word
    hangover_s: float = 0.25  # quiet time that closes it
    resume_s: float = 0.05  # activity that ends the quiet inside a word must last this long
    min_word_s: float = 0.08
    max_word_s: float = 1.5
    rest_after_s: float = 1.0  # without a word for this long, the network goes back to rest
    min_confidence: float = 0.35  # below this a final is reported as unknown (per stream too)

    def bins(self, seconds: float, bin_s: float) -> int:
        """A duration in whole bins (at least one)."""
        return max(1, round(seconds / bin_s))


class WordEvent(NamedTuple):
    kind: Literal["partial", "final"]
    word: str
    confidence: float
    time: float  # seconds: when the event was decided
    start: float  # seconds: word start
    end: float  # seconds: word end (for partials, the current time)
    alternatives: tuple[tuple[str, float], ...] = ()


class Boundary(NamedTuple):
    """What one bin did to the word boundaries."""

    opened: bool  # a word starts at ``start_bin`` (its onset bins included)
    active: bool  # speech activity inside a word, the opening bin included
    closed: bool  # the word ends with this bin
    rest: bool  # the network goes back to rest after this bin (a word ended, or a long pause)
    bin: int  # this bin's index in the stream
    start_bin: int  # the current (or just closed) word's first bin
    last_active_bin: int  # ... its last bin with speech activity so far
    end_bin: int  # ... and its last bin held by speech activity (its end, once closed)


@dataclass
class EndpointerState:
    floor: float = -1.0  # set by the first bin
    provisional_level: float = 0.0  # > 0 while the word opened by a loud first bin is unconfirmed
    bin_index: int = 0
    run: int = 0  # consecutive active bins (before a word opens, and inside it)
    quiet: int = 0  # quiet bins since the word's last active bin
    idle: int = 0  # bins since the last word ended or the network last rested
    in_word: bool = False
    start_bin: int = 0
    last_active_bin: int = 0
    end_bin: int = 0


class Endpointer:
    """Word boundaries from the input's speech activity alone, one bin at a time."""

    def __init__(self, bin_s: float, config: DecoderConfig) -> None:
        self.config = config
        self.min_activity = config.min_activity_rate * bin_s
        self.floor_rise = min(1.0, config.floor_rise_per_s * bin_s)
        self.onset_bins = config.bins(config.onset_s, bin_s)
        self.hangover_bins = config.bins(config.hangover_s, bin_s)
        self.resume_bins = config.bins(config.resume_s, bin_s)
        self.soft_onset_bins = config.bins(config.soft_onset_s, bin_s)
        self.max_word_bins = config.bins(config.max_word_s, bin_s)
        self.rest_after_bins = config.bins(config.rest_after_s, bin_s)

    def new_state(self) -> EndpointerState:
        return EndpointerState()

    def step(self, state: EndpointerState, activity: float, last: bool = False) -> Boundary:
        """Advance one bin of :func:`speech_activity` ``activity``; ``last``: the stream
        ends with this bin, which closes a word still open."""
        cfg = self.config
        first_bin = state.floor < 0
        if first_bin or activity < state.floor:
            state.floor = activity
        else:
            state.floor += self.floor_rise * (activity - state.floor)
        active = activity >= max(self.min_activity, cfg.floor_ratio * state.floor)
        opened = closed = False
        start = state.start_bin
        if first_bin and activity >= self.min_activity:
            # A loud start is either a word already under way (a trimmed recording)
            # or steady background noise: hold a provisional word from this bin.
            state.provisional_level = activity
            opened, start = True, state.bin_index
        elif state.provisional_level:
            if activity >= cfg.floor_ratio * state.provisional_level:
                # A clear rise above the opening level.  Soon after the start it is the
                # word itself gaining strength (a recording trimmed to the word): the
                # word stands, and its opening level says nothing about the background.
                # Later, that level was background, so a word starts here, without a
                # network rest.
                state.provisional_level = 0.0
                if state.bin_index - state.start_bin < self.soft_onset_bins:
                    state.floor = 0.0
                else:
                    opened, start = True, state.bin_index
            else:  # the provisional word lasts while the input stays near its level
                active = activity >= max(
                    self.min_activity, state.provisional_level / cfg.floor_ratio
                )
        elif not state.in_word:
            state.run = state.run + 1 if active else 0
            opened, start = state.run >= self.onset_bins, state.bin_index - self.onset_bins + 1
        if opened:
            active = state.in_word = True
            state.start_bin = start
            state.last_active_bin = state.end_bin = state.bin_index
            state.quiet = 0
        elif not state.in_word:
            active = False
        else:
            state.run = state.run + 1 if active else 0
            if active:
                state.last_active_bin = state.bin_index
            # Once a word has gone quiet, single bins of background noise above the
            # threshold must not hold it open (with steady noise 20-25 dB below the
            # speech they would, and the next word would be merged into it): only
            # sustained activity ends the quiet.  A provisional word (a loud start)
            # is held by any activity near its level, as before.
            if active and (
                state.quiet == 0 or state.run >= self.resume_bins or state.provisional_level
            ):
                state.end_bin = state.bin_index
                state.quiet = 0
            else:
                state.quiet += 1
            length = state.bin_index - state.start_bin + 1
            closed = state.quiet >= self.hangover_bins or length >= self.max_word_bins
        if last and state.in_word:
            closed = True
        if closed:
            state.in_word = False
            state.run = 0
            state.provisional_level = 0.0
        # Training clips start from rest: so does the network after each word and
        # after a long pause, and no word's state leaks into the next.
        state.idle = 0 if state.in_word else state.idle + 1
        rest = closed or state.idle >= self.rest_after_bins
        if rest:
            state.idle = 0
        boundary = Boundary(
            opened,
            active,
            closed,
            rest,
            state.bin_index,
            state.start_bin,
            state.last_active_bin,
            state.end_bin,
        )
        state.bin_index += 1
        return boundary


@dataclass
class DecoderState:
    reportable: np.ndarray  # bool [classes]: the speech classes this stream may report
    evidence: np.ndarray  # float [classes]: the word's summed log_evidence
    min_confidence: float  # a final below this confidence is reported as unknown
    evidence_bins: int = 0
    in_word: bool = False
    leader: str = ""  # the word last streamed as a partial
    onset_history: list[np.ndarray] = field(default_factory=list)  # evidence of the last bins
    # Custom words: which ones may be reported (None: all), and the word's hidden spikes.
    custom_allowed: frozenset[str] | None = None
    word_spikes: np.ndarray | None = None  # summed over the word's bins
    onset_spikes: list[np.ndarray] = field(default_factory=list)
    described: list[np.ndarray] | None = None  # each final's rates (mean spikes per bin)


class Decoder:
    """Words from the network's per-bin class probabilities over the endpointer's
    boundaries, one bin at a time."""

    def __init__(self, vocabulary: tuple[str, ...], bin_s: float, config: DecoderConfig) -> None:
        self.vocabulary = vocabulary
        self.bin_s = bin_s
        self.config = config
        self.onset_bins = config.bins(config.onset_s, bin_s)
        self.min_word_bins = config.bins(config.min_word_s, bin_s)
        self.filler = np.array([w in (UNKNOWN, SILENCE) for w in vocabulary])
        self.unknown = vocabulary.index(UNKNOWN) if UNKNOWN in vocabulary else -1
        self.silence = np.array([w == SILENCE for w in vocabulary])
        self.speech = ~self.silence
        self.has_silence = bool(self.silence.any())

    def new_state(
        self,
        words: list[str] | None = None,
        min_confidence: float | None = None,
        custom_words: tuple[str, ...] = (),
        describe_words: bool = False,
    ) -> DecoderState:
        """``words`` restricts what may be reported (the fillers always stay), built-in
        or among ``custom_words``; ``min_confidence`` replaces the configured rejection
        threshold of the built-in words."""
        if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        custom_allowed = None
        if words is None:
            allowed = np.ones(len(self.vocabulary), bool)
        else:
            unknown = sorted(set(words) - set(self.vocabulary) - set(custom_words))
            if unknown:
                raise ValueError(f"words not in the model's vocabulary: {', '.join(unknown)}")
            allowed = np.array([w in words for w in self.vocabulary]) | self.filler
            custom_allowed = frozenset(words) & frozenset(custom_words)
        return DecoderState(
            reportable=allowed & self.speech,
            evidence=np.zeros(len(self.vocabulary)),
            min_confidence=self.config.min_confidence if min_confidence is None else min_confidence,
            custom_allowed=custom_allowed,
            described=[] if describe_words else None,
        )

    def step(
        self,
        state: DecoderState,
        probabilities: np.ndarray,
        boundary: Boundary,
        custom: CustomWords | None = None,
        word_spikes: np.ndarray | None = None,
        evidence: np.ndarray | None = None,
    ) -> list[WordEvent]:
        """Advance one bin: ``probabilities`` of the classes (the network's softmax) and
        what the :class:`Endpointer` decided for the same bin; with ``custom`` words,
        ``word_spikes`` are the bin's spikes of the hidden layers that describe a word.
        ``evidence`` is ``log_evidence(probabilities)`` where the caller has it already
        (computed for many bins in one call)."""
        events: list[WordEvent] = []
        if evidence is None:
            evidence = log_evidence(probabilities)
        if not state.in_word:  # keep the last bins: a word's evidence starts at its onset
            state.onset_history = [*state.onset_history, evidence][-self.onset_bins :]
            if word_spikes is not None:
                state.onset_spikes = [*state.onset_spikes, word_spikes][-self.onset_bins :]
        else:
            state.evidence = state.evidence + evidence
            state.evidence_bins += 1
            if word_spikes is not None and state.word_spikes is not None:
                state.word_spikes = state.word_spikes + word_spikes
        if boundary.opened:
            # A word that takes over from a provisional one starts with this bin alone.
            if state.in_word:
                state.evidence, state.evidence_bins = evidence, 1
                state.word_spikes = word_spikes
            else:
                state.evidence = np.sum(state.onset_history, axis=0)
                state.evidence_bins = len(state.onset_history)
                state.word_spikes = (
                    np.sum(state.onset_spikes, axis=0) if state.onset_spikes else word_spikes
                )
            state.leader = ""
            state.in_word = True
        if boundary.active:
            events += self._partial(state, boundary, custom)
        if boundary.closed:
            events += self._final(state, boundary, custom)
            state.in_word = False
            state.onset_history = []
            state.onset_spikes = []
            state.word_spikes = None
        return events

    @staticmethod
    def _custom_match(
        state: DecoderState, custom: CustomWords | None, builtin: str
    ) -> CustomMatch | None:
        if not custom or state.word_spikes is None:
            return None
        rates = state.word_spikes / max(state.evidence_bins, 1)
        return custom.takes_over(builtin, rates, state.custom_allowed)

    def _speech_evidence(self, state: DecoderState) -> tuple[np.ndarray, int | None]:
        """The word's mean evidence of each speech class this stream may report (-inf for
        the others), and the leading one, or None where silence has more evidence than
        any of them.

        Silence is left out of the scores (:meth:`_scores`) so that the quiet bins of a
        segment do not dilute the word's confidence; it wins only by leading.
        """
        mean = state.evidence / max(state.evidence_bins, 1)
        speech = np.where(state.reportable, mean, -np.inf)
        best = int(speech.argmax())
        if self.has_silence and mean[self.silence].max() > speech[best]:
            return speech, None
        return speech, best

    @staticmethod
    def _scores(speech: np.ndarray) -> np.ndarray:
        """The word's probability of each class of :meth:`_speech_evidence`: the geometric
        mean of its bins' probabilities, normalised over those classes."""
        shares = np.exp(speech - speech.max())
        return shares / shares.sum()

    def _partial(
        self, state: DecoderState, boundary: Boundary, custom: CustomWords | None
    ) -> list[WordEvent]:
        speech, best = self._speech_evidence(state)
        if best is None:
            return []
        leader, confidence = self.vocabulary[best], None  # scored only when it is sent
        if custom and state.evidence_bins % CUSTOM_MATCH_EVERY_BINS == 0:
            match = self._custom_match(state, custom, leader)
            if match is not None:
                leader, confidence = match.word, match.confidence
        elif leader != state.leader and state.leader in (custom.names if custom else ()):
            return []  # a custom word leads until the next look says otherwise
        if leader == state.leader:
            return []
        state.leader = leader
        if leader in (UNKNOWN, SILENCE):
            return []
        if confidence is None:
            confidence = float(self._scores(speech)[best])
        now = (boundary.bin + 1) * self.bin_s  # the end of the bin just counted
        return [WordEvent("partial", leader, confidence, now, boundary.start_bin * self.bin_s, now)]

    def _final(
        self, state: DecoderState, boundary: Boundary, custom: CustomWords | None
    ) -> list[WordEvent]:
        """The word that closes with this bin."""
        if boundary.end_bin - boundary.start_bin + 1 < self.min_word_bins:
            return []
        speech, leader = self._speech_evidence(state)
        if leader is None:
            return []
        scores = self._scores(speech)
        order = np.argsort(scores)[::-1]
        best = int(order[0])
        confidence = float(scores[best])
        if confidence < state.min_confidence and self.unknown >= 0:
            best = self.unknown
        word = self.vocabulary[best]
        alternatives = tuple(
            (self.vocabulary[i], float(scores[i])) for i in order[:5] if scores[i] > 0
        )
        match = self._custom_match(state, custom, word)
        if match is not None:
            word, confidence = match.word, match.confidence
            alternatives = ((match.word, match.confidence), *alternatives[:4])
        if state.described is not None and state.word_spikes is not None:
            state.described.append(state.word_spikes / state.evidence_bins)
        return [
            WordEvent(
                "final",
                word,
                confidence,
                (boundary.bin + 1) * self.bin_s,
                boundary.start_bin * self.bin_s,
                (boundary.end_bin + 1) * self.bin_s,
                alternatives,
            )
        ]


def log_evidence(probabilities: np.ndarray) -> np.ndarray:
    """What one bin adds to each class's evidence: its log-probability.  Summed over
    bins it multiplies their probabilities, so a class that some bins rule out cannot
    win on the others, as it can with summed probabilities; that reads 1-2 points more
    words right from the same networks (``benchmarks/decision_rules.py``,
    ``benchmarks/word_accuracy.py``)."""
    return np.log(np.maximum(probabilities, 1e-12))


def clip_decisions(probabilities: np.ndarray) -> np.ndarray:
    """The class each clip of per-bin ``probabilities`` ``[clips, bins, classes]`` is read
    as: the most evidence over the whole clip."""
    return log_evidence(probabilities).sum(axis=1).argmax(axis=1)


def speech_activity(counts: np.ndarray) -> np.ndarray:
    """What the endpointer reads as a bin's activity, from its input spike counts
    ``[..., channels]``: the spikes above the bin's median over channels.

    Speech puts its spikes in a few formant bands; broadband noise spreads them
    evenly, and as the cochlea adapts to level their totals are alike.  The excess
    over the median (which the few formant bands do not move, as they would a mean)
    tells them apart where the total does not (``benchmarks/endpointing.py``), and
    digital silence still gives zero.
    """
    return np.maximum(counts - np.median(counts, axis=-1, keepdims=True), 0.0).sum(axis=-1)
