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

from audio_frontend.audio_io import check_sample_rate, to_mono_float
from audio_frontend.cochlea import Cochlea, CochleaState
from audio_frontend.events import SpikeBinner, SpikeEvents
from models.decoding import Decoder, DecoderConfig, DecoderState, WordEvent
from models.model_file import ModelBundle
from models.network import StatePool
from models.vocabulary import SILENCE, UNKNOWN

PICOJOULES_PER_AC = 0.9  # 45 nm accumulate (Horowitz 2014)
PICOJOULES_PER_MAC = 4.6  # 45 nm multiply-accumulate
MAX_SEQUENCE_BINS = 25  # a reset part-way wastes at most this many bins of work


@dataclass(frozen=True)
class StreamOptions:
    sample_rate: int = 16000
    input: Literal["audio", "spikes"] = "audio"
    vocabulary: tuple[str, ...] | None = None  # restrict to these words
    emit_unknown: bool = False  # report out-of-vocabulary words as "_unknown_"


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
        if stream.finished:
            raise ValueError("stream already finished")
        events = self.cochlea.process(to_mono_float(samples), stream.cochlea, final=final)
        stream.input_spikes += len(events)
        stream.ready.extend(stream.binner.add(events, stream.cochlea.samples_done))
        if final:
            self._finish(stream)
        return len(stream.ready)

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
        tail = stream.binner.flush()
        if len(tail) == 0:
            # The decoder finalises an open word at the stream's last bin, which may
            # have been decoded already when the input ended on a bin boundary: the end
            # of such a stream counts as one more bin, of silence.  (Always, so that
            # the words do not depend on how the input was chunked.)
            tail = [np.zeros(self.n_channels, np.float32)]
        stream.ready.extend(tail)
        stream.finished = True

    # ----- stepping ---------------------------------------------------------------------
    @torch.no_grad()
    def step(self, streams: list[Stream]) -> list[list[WordEvent]]:
        """Advance each stream by one ready bin, all in one network batch (step mode)."""
        if not streams:
            return []
        bins = np.stack([s.ready[0] for s in streams])
        rows = torch.tensor([s.row for s in streams])
        with self.pool.lock:
            evidence, state, activity = self.network.step(
                torch.from_numpy(bins), self.pool.gather(rows)
            )
            self.pool.scatter(rows, state)
        probabilities = evidence.softmax(-1).numpy()
        layer_spikes = np.stack([a.sum(-1).numpy() for a in activity], axis=1)  # [streams, layers]
        results = []
        for i, stream in enumerate(streams):
            _, events = self._decode(
                stream, bins[i : i + 1], probabilities[i : i + 1], layer_spikes[i : i + 1]
            )
            del stream.ready[0]
            results.append(events)
        return results

    @torch.no_grad()
    def drain(self, stream: Stream) -> list[WordEvent]:
        """Run one stream through all its ready bins (sequence mode, for batch work).

        Gives the same events as stepping bin by bin: when the decoder resets the
        network part-way through a sequence, the bins after the reset are run again
        from rest.
        """
        events: list[WordEvent] = []
        while stream.ready:
            bins = np.stack(stream.ready[:MAX_SEQUENCE_BINS])
            rows = torch.tensor([stream.row])
            with self.pool.lock:
                evidence, state, activity = self.network(
                    torch.from_numpy(bins)[None], self.pool.gather(rows)
                )
                self.pool.scatter(rows, state)
            probabilities = evidence[0].softmax(-1).numpy()
            layer_spikes = np.stack([a[0].sum(-1).numpy() for a in activity], axis=1)
            used, new_events = self._decode(stream, bins, probabilities, layer_spikes)
            del stream.ready[:used]
            events += new_events
        return events

    def _decode(
        self, stream: Stream, bins: np.ndarray, probabilities: np.ndarray, layer_spikes: np.ndarray
    ) -> tuple[int, list[WordEvent]]:
        """Per-bin bookkeeping after the network: accounting, decoding, resets.

        Returns how many bins were used: all of them, or those up to a reset of the
        network (the rest must go through the network again, from rest).
        """
        events: list[WordEvent] = []
        activity = bins.sum(axis=1)
        used = len(bins)
        for t in range(len(bins)):
            word_was_open = stream.decoder.in_word
            events += self.decoder.step(stream.decoder, probabilities[t], float(activity[t]))
            stream.idle_bins = 0 if stream.decoder.in_word else stream.idle_bins + 1
            stream.bins_done += 1
            # Training clips start from rest: so does the network after each word and
            # after a long pause, and no word's state leaks into the next.
            if (word_was_open and not stream.decoder.in_word) or (
                stream.idle_bins >= self._reset_after_bins
            ):
                stream.idle_bins = 0
                with self.pool.lock:
                    self.pool.reset(stream.row)
                used = t + 1
                break
        stream.hidden_spikes += int(layer_spikes[:used].sum())
        stream.synaptic_ops += int(activity[:used].sum() * self._fan_out[0])
        stream.synaptic_ops += int((layer_spikes[:used] @ self._fan_out[1:]).sum())
        last_input = bins[:used].sum(axis=0)
        previous = (
            stream.activity.input_counts if stream.activity is not None else np.zeros(bins.shape[1])
        )
        stream.activity = StreamActivity(
            stream.bins_done, previous + last_input, last_input, probabilities[used - 1].copy()
        )
        if stream.finished and len(stream.ready) <= used:
            events += self.decoder.flush(stream.decoder)
        return used, self._visible(stream, events)

    def _visible(self, stream: Stream, events: list[WordEvent]) -> list[WordEvent]:
        keep = []
        for event in events:
            if event.word == SILENCE and event.kind == "final":
                continue
            if event.word == UNKNOWN and not stream.options.emit_unknown:
                continue
            keep.append(event)
        return keep

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
                self.feed_audio(stream, chunk)
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
        """Targets reached by one spike of: the input, then each hidden layer."""
        config = self.network.config
        sizes = [*config.hidden, config.n_classes]
        recurrent = list(config.hidden) if config.recurrent else [0] * len(config.hidden)
        return np.array(
            [sizes[0]] + [sizes[i + 1] + recurrent[i] for i in range(len(config.hidden))]
        )

    def _dense_macs(self) -> int:
        config = self.network.config
        sizes = [config.n_inputs, *config.hidden, config.n_classes]
        macs = sum(a * b for a, b in itertools.pairwise(sizes))
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
