"""The one recognizer behind every transport: audio or spike events in, words out.

A :class:`Stream` owns all per-stream state (cochlea, binning, network, decoder),
so chunked input gives the same words as a whole file, and :meth:`Recognizer.step`
advances any set of streams together, stacking their network states into one
batch.  Batch transcription is the same path with a single stream.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import torch

from audio_frontend.audio_io import check_sample_rate
from audio_frontend.cochlea import Cochlea, CochleaState
from audio_frontend.events import SpikeBinner, SpikeEvents
from models.decoding import Decoder, DecoderConfig, DecoderState, WordEvent, speech_activity
from models.model_file import ModelBundle
from models.network import NetworkState, StatePool
from models.vocabulary import SILENCE, UNKNOWN

PICOJOULES_PER_AC = 0.9  # 45 nm accumulate (Horowitz 2014)
PICOJOULES_PER_MAC = 4.6  # 45 nm multiply-accumulate
DRAIN_BINS = 3000  # transcription batches the network over about this many bins (60 s)


@dataclass(frozen=True)
class StreamOptions:
    sample_rate: int = 16000
    input: Literal["audio", "spikes"] = "audio"
    vocabulary: tuple[str, ...] | None = None  # restrict to these words
    emit_unknown: bool = False  # report out-of-vocabulary words as "_unknown_"
    activity: bool = True  # keep ``Stream.activity`` up to date (live displays)


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


@dataclass
class Stream:
    options: StreamOptions
    cochlea: CochleaState | None
    binner: SpikeBinner
    row: int  # this stream's row in the recognizer's StatePool
    decoder: DecoderState
    ready: list[np.ndarray] = field(default_factory=list)  # complete bins not yet stepped
    input_spikes: int = 0
    hidden_spikes: int = 0
    synaptic_ops: int = 0
    bins_done: int = 0
    idle_bins: int = 0  # bins since the last word ended
    finished: bool = False
    last_spike_time: float = 0.0
    activity: StreamActivity | None = None  # set after each network call


@dataclass(frozen=True)
class Transcript:
    words: list[WordEvent]
    duration: float
    stats: dict


class Recognizer:
    def __init__(self, bundle: ModelBundle, decoder: DecoderConfig | None = None) -> None:
        self.bundle = bundle
        self.network = bundle.network.eval()
        self.pool = StatePool(self.network)
        self.cochlea = Cochlea(bundle.frontend)
        self.vocabulary = bundle.vocabulary
        self.bin_s = bundle.bin_ms / 1000
        self.decoder = Decoder(self.vocabulary, self.bin_s, decoder or DecoderConfig())
        self.bin_samples = round(self.bin_s * bundle.frontend.sample_rate)
        self.n_channels = bundle.frontend.channels
        self._fan_out = self._synaptic_fan_out()
        self._dense_macs_per_bin = self._dense_macs()
        self._reset_after_bins = round(1.0 / self.bin_s)

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
            row=self.pool.allocate(),
            decoder=self.decoder.new_state(words),
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
        all_events = self.cochlea.process_many(
            [(samples, stream.cochlea, final) for stream, samples, final in chunks]
        )
        for (stream, _, final), events in zip(chunks, all_events, strict=True):
            stream.input_spikes += len(events)
            stream.ready.extend(stream.binner.add(events, stream.cochlea.samples_done))
            if final:
                self._finish(stream)

    def feed_spikes(self, stream: Stream, events: SpikeEvents, final: bool = False) -> int:
        """Spike events from an external cochlea; times must not go back."""
        if stream.finished:
            raise ValueError("stream already finished")
        if events.n_channels != self.n_channels:
            events = SpikeEvents(events.times, events.channels, self.n_channels)
        events.validate()
        if len(events) and events.times[0] < stream.last_spike_time:
            raise ValueError("spike events are not in time order")
        if len(events):
            stream.last_spike_time = float(events.times[-1])
        stream.input_spikes += len(events)
        until = round(stream.last_spike_time * self.bundle.frontend.sample_rate)
        stream.ready.extend(stream.binner.add(events, until))
        if final:
            self._finish(stream)
        return len(stream.ready)

    def _finish(self, stream: Stream) -> None:
        # The end of a stream is the speaker falling silent: as many bins of silence
        # as close a word by quiet follow the audio, so that a word at the very end
        # is decided as it would be live, after the network's evidence has settled
        # (its leaky readout lags the input).  Always, whatever the audio's length,
        # so that the words do not depend on how the input was chunked.
        silence = np.zeros(self.n_channels, np.float32)
        stream.ready.extend([*stream.binner.flush(), *[silence] * self.decoder.hangover_bins])
        stream.finished = True

    # ----- stepping ---------------------------------------------------------------------
    @torch.inference_mode()
    def step(
        self, streams: list[Stream], max_bins: int = 1, catch_up: int = 0
    ) -> list[list[WordEvent]]:
        """Advance each stream by its next ready bin, or, for a stream holding more than
        ``catch_up`` ready bins, by up to ``max_bins`` of them (step mode).

        Streams advancing by the same number of bins go through the network as one
        batch: with one bin per stream (the default), one call for all of them.  A
        stream that has fallen behind advances by several bins in one call, instead
        of one call per bin (less work per bin, but a longer call), up to
        and including the next bin after which its network rests (found ahead
        from the input activity, as :meth:`drain` does), so that each call starts
        from the state the stream would have when stepped bin by bin.
        """
        groups: dict[int, list[int]] = {}
        for i, stream in enumerate(streams):
            behind = max_bins > 1 and len(stream.ready) > catch_up
            n = self._window(stream, max_bins) if behind else 1
            groups.setdefault(n, []).append(i)
        results: list[list[WordEvent]] = [[] for _ in streams]
        rests: list[int] = []  # rows going back to rest after their last bin
        for n, members in groups.items():
            group = [streams[i] for i in members]
            events = self._step_group(group, n, rests)
            for i, stream_events in zip(members, events, strict=True):
                results[i] = stream_events
        if rests:
            with self.pool.lock:
                self.pool.reset_many(rests)
        return results

    def _window(self, stream: Stream, max_bins: int) -> int:
        """How many of the stream's ready bins (at most ``max_bins``) one network call
        may take: up to and including the first one after which the network rests."""
        n = min(max_bins, len(stream.ready))
        if n <= 1:
            return n
        activity = speech_activity(np.stack(stream.ready[:n])).tolist()
        rests, _ = self._look_ahead(stream, activity, first_only=True)
        return rests[0] + 1 if rests else n

    def _step_group(self, streams: list[Stream], n: int, rests: list[int]) -> list[list[WordEvent]]:
        """``n`` bins of each stream through one network call, then the decoder."""
        if n == 1:
            bins = np.stack([s.ready[0] for s in streams])[:, None]
        else:
            bins = np.stack([np.stack(s.ready[:n]) for s in streams])
        rows = torch.tensor([s.row for s in streams])
        with self.pool.lock:
            evidence, state, activity = self.network(torch.from_numpy(bins), self.pool.gather(rows))
            self.pool.scatter(rows, state)
        probabilities = evidence.softmax(-1).numpy()  # [streams, n, classes]
        # Per-stream accounting for all streams at once.
        layer_spikes = np.stack([a.sum(-1).numpy() for a in activity], axis=-1)  # [s, n, layers]
        input_spikes = bins.sum(axis=2)  # [streams, n]
        hidden_spikes = layer_spikes.sum(axis=(1, 2)).tolist()
        synaptic_ops = (
            (input_spikes * self._fan_out[0] + layer_spikes @ self._fan_out[1:])
            .sum(axis=1)
            .tolist()
        )
        speech = speech_activity(bins).tolist()  # what the decoder reads, [streams][n]
        decoder = self.decoder
        results = []
        for i, stream in enumerate(streams):
            del stream.ready[:n]
            events: list[WordEvent] = []
            for t in range(n):
                # Decoding a bin also tells where the word ends: the network rests after
                # the bin that closes a word (``_window`` ends the call there).
                bin_events, boundary = decoder.advance(
                    stream.decoder, probabilities[i, t], speech[i][t]
                )
                events += bin_events
                stream.idle_bins = 0 if stream.decoder.in_word else stream.idle_bins + 1
                if boundary.closed or stream.idle_bins >= self._reset_after_bins:
                    stream.idle_bins = 0
                    if t < n - 1:  # _window and the decoder disagree: cannot happen
                        raise RuntimeError("network rest inside a stepped window")
                    rests.append(stream.row)
            stream.bins_done += n
            if stream.options.activity:
                self._note_activity(stream, bins[i].sum(axis=0), probabilities[i, -1])
            if stream.finished and not stream.ready:
                events += decoder.flush(stream.decoder)
            stream.hidden_spikes += int(hidden_spikes[i])
            stream.synaptic_ops += int(synaptic_ops[i])
            results.append(self._visible(stream, events) if events else events)
        return results

    @torch.inference_mode()
    def drain(self, stream: Stream) -> list[WordEvent]:
        """Run one stream through all its ready bins (sequence mode, for batch work).

        Gives the same events as stepping bin by bin.  The network goes back to
        rest after every word and long pause, at bins known from the input
        activity alone, so the segments between them are independent sequences:
        they go through the network side by side as one batch, which takes far
        fewer (and fuller) steps than one long sequence.
        """
        if not stream.ready:
            return []
        bins = np.stack(stream.ready)
        stream.ready.clear()
        activity = speech_activity(bins)
        rests = self._rests(stream, activity)
        probabilities, layer_spikes = self._segments(stream, bins, rests)
        events = self._decode(stream, activity, probabilities, bins.sum(axis=0))
        stream.hidden_spikes += int(layer_spikes.sum())
        stream.synaptic_ops += int(bins.sum() * self._fan_out[0])
        stream.synaptic_ops += int((layer_spikes @ self._fan_out[1:]).sum())
        return events

    def _segments(
        self, stream: Stream, bins: np.ndarray, rests: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities ``[bins, classes]`` and hidden spikes ``[bins, layers]`` of
        consecutive bins, the network resting after each bin in ``rests``.

        The first segment continues from the stream's network state; the last one,
        unless it ends in a rest, leaves its state there.  Segments ending in a rest
        run together as one zero-padded batch (padding only follows a segment's own
        bins, so it changes nothing that is kept); an open last segment runs on its
        own, so that its final state is exact.
        """
        edges = [0, *(r + 1 for r in rests)]
        if edges[-1] < len(bins):
            edges.append(len(bins))
        closed = [(a, b) for a, b in itertools.pairwise(edges) if b - 1 in rests]
        open_tail = [] if edges[-1] - 1 in rests else [(edges[-2], edges[-1])]
        rows = torch.tensor([stream.row])
        probabilities = np.empty((len(bins), self.network.config.n_classes), np.float32)
        layer_spikes = np.empty((len(bins), len(self.network.config.hidden)), np.float32)
        for group in (closed, open_tail):
            if not group:
                continue
            x = np.zeros((len(group), max(b - a for a, b in group), bins.shape[1]), np.float32)
            for k, (a, b) in enumerate(group):
                x[k, : b - a] = bins[a:b]
            with self.pool.lock:
                state = self.network.initial_state(len(group))
                if group[0][0] == 0:  # the stream's own state carries into its first segment
                    state = NetworkState.from_tensors(
                        [
                            torch.cat([carried, rest[1:]])
                            for carried, rest in zip(
                                self.pool.gather(rows).tensors(), state.tensors(), strict=True
                            )
                        ]
                    )
                evidence, state, activity = self.network(torch.from_numpy(x), state)
                if group is open_tail:
                    self.pool.scatter(rows, state)
                else:
                    self.pool.reset(stream.row)
            group_probabilities = evidence.softmax(-1).numpy()
            group_spikes = np.stack([a.sum(-1).numpy() for a in activity], axis=-1)
            for k, (a, b) in enumerate(group):
                probabilities[a:b] = group_probabilities[k, : b - a]
                layer_spikes[a:b] = group_spikes[k, : b - a]
        return probabilities, layer_spikes

    def _rests(self, stream: Stream, activity: np.ndarray) -> list[int]:
        """Indices of the bins after which the network goes back to rest.

        Training clips start from rest: so does the network after each word and
        after a long pause, and no word's state leaks into the next.  Word ends
        depend on the input activity alone: a copy of the decoder's state finds
        them ahead of the network (the decoder itself then steps the same way).
        """
        rests, stream.idle_bins = self._look_ahead(stream, activity.tolist())
        return rests

    def _look_ahead(
        self, stream: Stream, activity: list[float], first_only: bool = False
    ) -> tuple[list[int], int]:
        """The rests among the next bins (or the first of them) and the stream's idle
        count after them, found on a copy of the decoder's state."""
        decoder = stream.decoder.copy()  # endpoint() only rebinds its scalar fields
        idle = stream.idle_bins
        rests = []
        for t, spikes in enumerate(activity):
            word_ended = self.decoder.endpoint(decoder, spikes).closed
            idle = 0 if decoder.in_word else idle + 1
            if word_ended or idle >= self._reset_after_bins:
                idle = 0
                rests.append(t)
                if first_only:
                    break
        return rests, idle

    def _decode(
        self,
        stream: Stream,
        activity: np.ndarray,
        probabilities: np.ndarray,
        input_counts: np.ndarray,
    ) -> list[WordEvent]:
        """Decoding of consecutive bins after the network: ``activity`` is their
        speech activity per bin, ``input_counts`` the spikes per channel, summed over
        the bins."""
        events: list[WordEvent] = []
        for t, spikes in enumerate(activity.tolist()):
            events += self.decoder.step(stream.decoder, probabilities[t], spikes)
        stream.bins_done += len(activity)
        self._note_activity(stream, input_counts, probabilities[-1])
        if stream.finished and not stream.ready:
            events += self.decoder.flush(stream.decoder)
        return self._visible(stream, events)

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
            self.feed_spikes(stream, events, final=True)
            words = self.drain(stream)
        return Transcript(
            [w for w in words if w.kind == "final"],
            stream.bins_done * self.bin_s,
            self.stats(stream),
        )

    # ----- accounting -----------------------------------------------------------------------
    def _synaptic_fan_out(self) -> np.ndarray:
        """Targets reached by one spike of: the input (at every delay; averaged over
        channels, which a frequency-shared layer reaches unevenly at its edges), then
        each hidden layer."""
        config = self.network.config
        layers = len(config.hidden)
        onward = [self.network.input_synapses(i) for i in range(layers)]
        onward.append(config.hidden[-1] * config.n_classes)  # the readout
        recurrent = list(config.hidden) if config.recurrent else [0] * layers
        return np.array(
            [onward[0] / config.n_inputs]
            + [onward[i + 1] / config.hidden[i] + recurrent[i] for i in range(layers)]
        )

    def _dense_macs(self) -> int:
        config = self.network.config
        macs = sum(self.network.input_synapses(i) for i in range(len(config.hidden)))
        macs += config.hidden[-1] * config.n_classes
        if config.recurrent:
            macs += sum(h * h for h in config.hidden)
        return macs

    def stats(self, stream: Stream) -> dict:
        dense = self._dense_macs_per_bin * stream.bins_done
        return {
            "spikes": stream.input_spikes + stream.hidden_spikes,
            "input_spikes": stream.input_spikes,
            "hidden_spikes": stream.hidden_spikes,
            "synaptic_ops": stream.synaptic_ops,
            "dense_macs": dense,
            "energy_pj": {
                "snn_synaptic_ops": round(stream.synaptic_ops * PICOJOULES_PER_AC, 1),
                "dense_equivalent_macs": round(dense * PICOJOULES_PER_MAC, 1),
            },
        }
