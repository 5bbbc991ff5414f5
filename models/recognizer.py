"""The one recognizer behind every transport: audio or spike events in, words out.

A :class:`Stream` owns all per-stream state (cochlea, binning, endpointer,
network row, decoder), so chunked input gives the same words as a whole file.
There is one path from bins to words, :meth:`Recognizer.step`: it advances any
set of streams together, by one bin each (live streaming) or by many (a stream
that fell behind, or a whole file: batch transcription is streaming with all
the input available).

The endpointer decides each bin's word boundary as soon as the bin is counted,
from the input alone.  So before the network runs, every bin after which it goes
back to rest is known, and the bins between rests are independent sequences:
they go through the network side by side as one batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import torch

from audio_frontend.audio_io import check_sample_rate
from audio_frontend.cochlea import Cochlea, CochleaState
from audio_frontend.events import SpikeBinner, SpikeEvents
from models.costs import NetworkCosts, energy_pj
from models.custom_words import EMBEDDING_LAYERS, CustomWords
from models.decoding import (
    Boundary,
    Decoder,
    DecoderConfig,
    DecoderState,
    Endpointer,
    EndpointerState,
    WordEvent,
    log_evidence,
    speech_activity,
)
from models.model_file import ModelBundle
from models.network import NetworkState, StatePool
from models.vocabulary import SILENCE, UNKNOWN

DRAIN_BINS = 3000  # transcription runs the network over about this many bins at once (60 s)
# How far one chunk of live spike input may reach past the time the stream has binned:
# every bin up to its last event is allocated and stepped, so a single record at
# 2**32 us would cost 430,000 bins.  60 s is more than a 1 MiB message of audio holds.
MAX_SPIKE_LOOKAHEAD_S = 60.0


@dataclass(frozen=True)
class StreamOptions:
    sample_rate: int = 16000
    input: Literal["audio", "spikes"] = "audio"
    vocabulary: tuple[str, ...] | None = None  # restrict to these words
    emit_unknown: bool = False  # report out-of-vocabulary words as "_unknown_"
    min_confidence: float | None = None  # a final less sure than this is unknown (None: default)
    activity: bool = True  # keep ``Stream.activity`` up to date (live displays)
    describe_words: bool = False  # keep each final's hidden spike rates (enrollment)


class StreamActivity(NamedTuple):
    """What a stream's network has done so far, for live displays.

    Replaced as a whole after every network call, so a reader in another
    thread always sees a consistent snapshot; readers that aggregate over
    several calls difference ``input_counts`` between two snapshots.
    """

    bins_done: int  # bins through the network so far
    input_counts: np.ndarray  # float64 [channels]: input spikes per channel, since the start
    last_input: np.ndarray  # float32 [channels]: input spikes per channel of the last call's bins
    last_output: np.ndarray  # float32 [classes]: class probabilities after the last bin


class ReadyBin(NamedTuple):
    """A counted bin waiting for the network, with its word boundary already decided."""

    counts: np.ndarray  # float32 [channels]: input spikes per channel
    boundary: Boundary


@dataclass
class Stream:
    options: StreamOptions
    cochlea: CochleaState | None
    binner: SpikeBinner
    endpointer: EndpointerState
    row: int  # this stream's row in the recognizer's StatePool
    decoder: DecoderState
    layer_spikes: np.ndarray  # float64 [layers]: hidden spikes so far
    ready: list[ReadyBin] = field(default_factory=list)  # counted, not yet through the network
    input_spikes: int = 0  # spike events received
    stepped_input_spikes: float = 0.0  # ... of them, in bins through the network
    bins_done: int = 0
    finished: bool = False
    last_spike_time: float = 0.0
    activity: StreamActivity | None = None  # set after each network call


@dataclass(frozen=True)
class Transcript:
    words: list[WordEvent]
    duration: float
    stats: dict


class _Segment(NamedTuple):
    """Consecutive ready bins of one stream that one network call runs as a sequence:
    from the stream's state (``first``) or from rest, up to a rest or the window's end."""

    stream: int  # index into the stepped streams
    start: int  # first bin, index into the stream's window
    end: int
    first: bool  # continues from the stream's network state
    keeps_state: bool  # the stream's state after it (no rest at its end)


class _WindowOutput(NamedTuple):
    """What the network did with a stream's window of bins."""

    probabilities: np.ndarray  # float32 [bins, classes]
    evidence: np.ndarray  # float32 [bins, classes]: their log_evidence
    word_spikes: np.ndarray | None  # float32 [bins, D]: the spikes that describe a word
    input_counts: np.ndarray  # float32 [channels]: input spikes per channel, all bins
    layer_spikes: np.ndarray  # float64 [layers]: hidden spikes, all bins


def longest_word(described: list[tuple[WordEvent, np.ndarray]]) -> np.ndarray | None:
    """The hidden spike rates of the longest of :meth:`Recognizer.describe`'s words (what
    a recording of one word enrolls), or None when it found none."""
    if not described:
        return None
    return max(described, key=lambda pair: pair[0].end - pair[0].start)[1]


class Recognizer:
    def __init__(self, bundle: ModelBundle, decoder: DecoderConfig | None = None) -> None:
        self.bundle = bundle
        self.network = bundle.network.eval()
        self.pool = StatePool(self.network)
        self.cochlea = Cochlea(bundle.frontend)
        self.vocabulary = bundle.vocabulary
        self.bin_s = bundle.bin_ms / 1000
        config = decoder or DecoderConfig()
        self.endpointer = Endpointer(self.bin_s, config)
        self.decoder = Decoder(self.vocabulary, self.bin_s, config)
        self.bin_samples = round(self.bin_s * bundle.frontend.sample_rate)
        self.n_channels = bundle.frontend.channels
        self.costs = NetworkCosts.of(self.network)
        # Replaced whole (never changed in place) when words are enrolled or removed.
        self.custom_words = CustomWords(bundle.enrollment)
        self.word_layers = bundle.enrollment.layers if bundle.enrollment else EMBEDDING_LAYERS

    @property
    def known_words(self) -> tuple[str, ...]:
        """What a stream's ``vocabulary`` may list: the model's words and the custom ones."""
        return (*self.vocabulary, *self.custom_words.names)

    # ----- opening and feeding streams -------------------------------------------------
    def open_stream(self, options: StreamOptions | None = None) -> Stream:
        options = options or StreamOptions()
        cochlea_state = None
        if options.input == "audio":
            cochlea_state = self.cochlea.new_state(check_sample_rate(options.sample_rate))
        words = list(options.vocabulary) if options.vocabulary is not None else None
        return Stream(
            options=options,
            cochlea=cochlea_state,
            binner=SpikeBinner(self.n_channels, self.bin_samples, self.bundle.frontend.sample_rate),
            endpointer=self.endpointer.new_state(),
            row=self.pool.allocate(),
            decoder=self.decoder.new_state(
                words, options.min_confidence, self.custom_words.names, options.describe_words
            ),
            layer_spikes=np.zeros(len(self.network.config.hidden)),
        )

    def close_stream(self, stream: Stream) -> None:
        """Give the stream's network row back (idempotent)."""
        if stream.row >= 0:
            self.pool.release(stream.row)
            stream.row = -1

    @contextlib.contextmanager
    def opened(self, options: StreamOptions | None = None) -> Iterator[Stream]:
        stream = self.open_stream(options)
        try:
            yield stream
        finally:
            self.close_stream(stream)

    def feed_audio(self, stream: Stream, samples: np.ndarray, final: bool = False) -> int:
        """Run the cochlea on a chunk; returns how many bins are now ready."""
        self.feed_audio_many([(stream, samples, final)])
        return len(stream.ready)

    def feed_audio_many(self, chunks: list[tuple[Stream, np.ndarray, bool]]) -> None:
        """Chunks of several streams (one each) through one cochlea kernel call."""
        for stream, _, _ in chunks:
            if stream.finished:
                raise ValueError("stream already finished")
        all_counts = self.cochlea.process_many_binned(
            [(samples, stream.cochlea, final) for stream, samples, final in chunks],
            self.bin_samples,
        )
        counted = []
        for (stream, _, final), (first_bin, counts, spikes) in zip(chunks, all_counts, strict=True):
            stream.input_spikes += spikes
            bins = stream.binner.add_counts(counts, first_bin, stream.cochlea.samples_done)
            counted.append((stream, bins, final))
        self._queue(counted)

    def feed_spikes(
        self,
        stream: Stream,
        events: SpikeEvents,
        final: bool = False,
        max_ahead_s: float | None = MAX_SPIKE_LOOKAHEAD_S,
    ) -> int:
        """Spike events from an external cochlea; times must not go back, nor jump more
        than ``max_ahead_s`` past the stream's binned time (ValueError, nothing fed)."""
        if stream.finished:
            raise ValueError("stream already finished")
        if events.n_channels != self.n_channels:
            events = SpikeEvents(events.times, events.channels, self.n_channels)
        events.validate()
        if len(events) and events.times[0] < stream.last_spike_time:
            raise ValueError("spike events are not in time order")
        last_time = float(events.times[-1]) if len(events) else stream.last_spike_time
        until = round(last_time * self.bundle.frontend.sample_rate)
        max_ahead = None if max_ahead_s is None else round(max_ahead_s / self.bin_s)
        bins = stream.binner.add(events, until, max_ahead)  # first: it may refuse the chunk
        stream.last_spike_time = last_time
        stream.input_spikes += len(events)
        self._queue([(stream, bins, final)])
        return len(stream.ready)

    def _queue(self, counted: list[tuple[Stream, np.ndarray, bool]]) -> None:
        """Queue each stream's newly complete bins with their word boundaries."""
        all_bins = []
        for stream, bins, final in counted:
            if final:
                # The end of a stream is the speaker falling silent: as many bins of
                # silence as close a word by quiet follow the audio, so that a word at
                # the very end is decided as it would be live, after the network's
                # evidence has settled (its leaky readout lags the input).  Always,
                # whatever the audio's length, so that the words do not depend on how
                # the input was chunked.
                silence = np.zeros((self.endpointer.hangover_bins, self.n_channels), np.float32)
                bins = np.concatenate([bins, stream.binner.flush(), silence])
                stream.finished = True
            all_bins.append(bins)
        activity = speech_activity(np.concatenate(all_bins)).tolist()  # one call for all
        done = 0
        for (stream, _, final), bins in zip(counted, all_bins, strict=True):
            last = len(bins) - 1 if final else -1
            for t in range(len(bins)):
                boundary = self.endpointer.step(stream.endpointer, activity[done + t], t == last)
                stream.ready.append(ReadyBin(bins[t], boundary))
            done += len(bins)

    # ----- stepping ---------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, streams: list[Stream], max_bins: int = 1) -> list[list[WordEvent]]:
        """Advance each stream by its ready bins, up to ``max_bins`` of them; returns
        each stream's word events.

        All streams' bins go through the network together: one bin per stream is one
        network call for all of them, a few bins each (a 20 ms message holds two 10 ms
        bins) or a stream that has fallen behind cost less per bin, and a whole
        recording advances in long calls.  A window's bins are cut at the rests the
        endpointer decided, and all the pieces of all the streams run as a few batched
        sequences; the words do not depend on how the bins were grouped.
        """
        custom = self.custom_words  # one set for the whole step
        windows = []
        for stream in streams:
            windows.append(stream.ready[:max_bins])
            del stream.ready[:max_bins]
        describe = bool(custom) or any(s.options.describe_words for s in streams)
        results = []
        for stream, window, output in zip(
            streams, windows, self._run_network(streams, windows, describe), strict=True
        ):
            if not window:
                results.append([])
                continue
            events: list[WordEvent] = []
            word_spikes = (
                output.word_spikes if output.word_spikes is not None else [None] * len(window)
            )
            for ready, probabilities, evidence, spikes in zip(
                window, output.probabilities, output.evidence, word_spikes, strict=True
            ):
                events += self.decoder.step(
                    stream.decoder, probabilities, ready.boundary, custom, spikes, evidence
                )
            stream.bins_done += len(window)
            stream.stepped_input_spikes += float(output.input_counts.sum())
            stream.layer_spikes += output.layer_spikes
            if stream.options.activity:
                self._note_activity(stream, output.input_counts, output.probabilities[-1])
            results.append(self._visible(stream, events))
        return results

    def _run_network(
        self, streams: list[Stream], windows: list[list[ReadyBin]], describe: bool
    ) -> list[_WindowOutput]:
        """Each stream's window of bins through the network.

        Segments that end in a rest go through one zero-padded batch (padding only
        follows a segment's own bins, so it changes nothing that is kept); segments
        whose final state the stream keeps run grouped by length, so that their
        state is exact.  Every state is read before any is written back.
        """
        segments: list[_Segment] = []
        for i, window in enumerate(windows):
            start = 0
            for t, ready in enumerate(window):
                if ready.boundary.rest or t == len(window) - 1:
                    segments.append(_Segment(i, start, t + 1, start == 0, not ready.boundary.rest))
                    start = t + 1
        calls: dict[int, list[_Segment]] = {}
        for segment in segments:
            if segment.keeps_state:
                calls.setdefault(segment.end - segment.start, []).append(segment)
        closed = [s for s in segments if not s.keeps_state]
        if closed:
            calls.setdefault(max(s.end - s.start for s in closed), []).extend(closed)

        pieces: list[list[tuple[int, _WindowOutput]]] = [[] for _ in windows]
        kept: list[tuple[list[int], NetworkState, list[int] | None]] = []
        with self.pool.lock:
            for length, members in calls.items():
                x = self._inputs(windows, members, length)
                evidence, state, activity = self.network(x, self._start_state(streams, members))
                keeping = [k for k, s in enumerate(members) if s.keeps_state]
                if keeping:
                    rows = [streams[members[k].stream].row for k in keeping]
                    kept.append((rows, state, keeping if len(keeping) < len(members) else None))
                p = evidence.softmax(-1).numpy()
                logs = log_evidence(p)  # for all bins at once, not in each decoder step
                word = None
                if describe:
                    word = torch.cat([activity[i] for i in self.word_layers], -1).numpy()
                # Sums over each segment's bins at once (the counts are whole numbers,
                # which sum exactly in any order).  Padding has no input, but the network
                # may still spike there: those spikes are no stream's.
                inputs = x.sum(dim=1).numpy()
                spikes = torch.stack([a.sum(dim=-1) for a in activity], dim=-1)
                lengths = [s.end - s.start for s in members]
                if min(lengths) < length:
                    within = torch.arange(length) < torch.tensor(lengths)[:, None]
                    spikes = spikes * within[..., None]
                spikes = spikes.sum(dim=1, dtype=torch.float64).numpy()
                for k, (s, n) in enumerate(zip(members, lengths, strict=True)):
                    piece = _WindowOutput(
                        p[k, :n],
                        logs[k, :n],
                        None if word is None else word[k, :n],
                        inputs[k],
                        spikes[k],
                    )
                    pieces[s.stream].append((s.start, piece))
            for rows, state, keep in kept:
                self.pool.scatter(rows, state, keep)
            self.pool.reset_many(
                [streams[i].row for i, w in enumerate(windows) if w and w[-1].boundary.rest]
            )
        outputs = []
        for stream_pieces in pieces:
            if len(stream_pieces) == 1:  # the usual case: no copy
                outputs.append(stream_pieces[0][1])
            else:
                ordered = [piece for _, piece in sorted(stream_pieces, key=lambda p: p[0])]
                words = [piece.word_spikes for piece in ordered]
                outputs.append(
                    _WindowOutput(
                        np.concatenate([piece.probabilities for piece in ordered]),
                        np.concatenate([piece.evidence for piece in ordered]),
                        None if words[0] is None else np.concatenate(words),
                        np.sum([piece.input_counts for piece in ordered], axis=0),
                        np.sum([piece.layer_spikes for piece in ordered], axis=0),
                    )
                )
        return outputs

    def _inputs(
        self, windows: list[list[ReadyBin]], members: list[_Segment], length: int
    ) -> torch.Tensor:
        """The segments' bins as one batch ``[segments, length, channels]``, zero-padded."""
        counts = [b.counts for s in members for b in windows[s.stream][s.start : s.end]]
        if len(counts) == len(members) * length:  # no padding
            return torch.from_numpy(np.stack(counts).reshape(len(members), length, -1))
        x = np.zeros((len(members), length, self.n_channels), np.float32)
        for k, s in enumerate(members):
            x[k, : s.end - s.start] = np.stack(
                [b.counts for b in windows[s.stream][s.start : s.end]]
            )
        return torch.from_numpy(x)

    def _start_state(self, streams: list[Stream], members: list[_Segment]) -> NetworkState:
        """The network state each segment starts from: its stream's, or rest."""
        rows = [streams[s.stream].row if s.first else StatePool.REST for s in members]
        return self.pool.gather(rows)

    def drain(self, stream: Stream) -> list[WordEvent]:
        """All of the stream's ready bins in one step (batch work)."""
        return self.step([stream], max_bins=len(stream.ready))[0]

    @staticmethod
    def _note_activity(stream: Stream, input_counts: np.ndarray, output: np.ndarray) -> None:
        """A new activity snapshot: ``input_counts`` per channel of the bins just done."""
        previous = (
            stream.activity.input_counts
            if stream.activity is not None
            else np.zeros(len(input_counts))
        )
        stream.activity = StreamActivity(
            stream.bins_done, previous + input_counts, input_counts, output.copy()
        )

    def _visible(self, stream: Stream, events: list[WordEvent]) -> list[WordEvent]:
        keep = []
        for event in events:
            if event.word == SILENCE and event.kind == "final":
                continue
            if event.word == UNKNOWN and not stream.options.emit_unknown:
                continue
            keep.append(event)
        return keep

    def warm_up(self) -> None:
        """Run a short tone through every stage, so that the first client does not wait
        for numba to compile (or load from its cache) the cochlea and binning kernels."""
        t = np.arange(self.bundle.frontend.sample_rate // 10) / self.bundle.frontend.sample_rate
        tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        with self.opened(StreamOptions(activity=False)) as stream:
            self.feed_audio(stream, tone)
            self.feed_audio(stream, tone, final=True)
            self.step([stream])
            self.drain(stream)

    # ----- whole recordings -----------------------------------------------------------------
    def transcribe(
        self, chunks: Iterable[np.ndarray], sample_rate: int, options: StreamOptions | None = None
    ) -> Transcript:
        """A whole recording, given as consecutive chunks (bounded memory), through one stream."""
        words: list[WordEvent] = []
        samples = 0
        with self.opened(options or StreamOptions(sample_rate=sample_rate)) as stream:
            for chunk in chunks:
                samples += len(chunk)
                if self.feed_audio(stream, chunk) >= DRAIN_BINS:
                    words += self.drain(stream)
            self.feed_audio(stream, np.zeros(0, np.float32), final=True)
            words += self.drain(stream)
        return Transcript(
            [w for w in words if w.kind == "final"], samples / sample_rate, self.stats(stream)
        )

    def transcribe_spikes(
        self, events: SpikeEvents, options: StreamOptions | None = None
    ) -> Transcript:
        with self.opened(options or StreamOptions(input="spikes")) as stream:
            # A whole recording at once: its length is bounded by the caller (upload limits).
            self.feed_spikes(stream, events, final=True, max_ahead_s=None)
            words = self.drain(stream)
        return Transcript(
            [w for w in words if w.kind == "final"],
            stream.bins_done * self.bin_s,
            self.stats(stream),
        )

    def describe(self, audio: np.ndarray, sample_rate: int) -> list[tuple[WordEvent, np.ndarray]]:
        """Each word of a recording with its hidden spike rates ``[D]``: what a custom
        word is enrolled from (and its enrollment space fitted on)."""
        options = StreamOptions(
            sample_rate=sample_rate, emit_unknown=True, activity=False, describe_words=True
        )
        with self.opened(options) as stream:
            self.feed_audio(stream, audio, final=True)
            finals = [w for w in self.drain(stream) if w.kind == "final"]
            return list(zip(finals, stream.decoder.described, strict=True))

    # ----- accounting -----------------------------------------------------------------------
    def stats(self, stream: Stream) -> dict:
        hidden_spikes = round(float(stream.layer_spikes.sum()))
        synaptic_ops = round(
            float(self.costs.synaptic_ops(stream.stepped_input_spikes, stream.layer_spikes))
        )
        dense = self.costs.dense_macs(stream.bins_done)
        return {
            "spikes": stream.input_spikes + hidden_spikes,
            "input_spikes": stream.input_spikes,
            "hidden_spikes": hidden_spikes,
            "synaptic_ops": synaptic_ops,
            "dense_macs": dense,
            "energy_pj": energy_pj(synaptic_ops, dense),
        }
