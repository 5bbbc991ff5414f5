"""A streaming software cochlea.

Stages, all evaluated sample by sample at ``CochleaConfig.sample_rate``:

1. Gammatone filterbank: ``channels`` 4th-order gammatone band-passes (each four
   biquads) with centre frequencies evenly spaced on the ERB-rate scale.
2. Inner hair cell: half-wave rectification, saturating compression
   ``r / (1 + r / saturation)``, and fast adaptation that subtracts a fraction of a
   short running mean (onsets are emphasised, steady sounds fade).
3. Auditory nerve: ``fibres_per_channel`` leaky integrate-and-fire fibres per
   channel whose thresholds are staggered by ``fibre_step_db``; louder sounds
   recruit more fibres, as in the auditory nerve.  A fibre that fires is reset and
   silent for ``refractory_ms``.

Every stage keeps its memory in :class:`CochleaState`, so a stream may be fed in
chunks of any size and yields exactly the events of a single call on the whole
signal.  Digital silence yields no spikes at all: every stage maps zero to zero.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

import numba
import numpy as np
import scipy.signal
import soxr

from audio_frontend.audio_io import AudioError, check_sample_rate, to_mono_float
from audio_frontend.events import SpikeEvents

MAX_CHANNELS = 700
KERNEL_DTYPE = np.float32  # the kernel's arithmetic (see Cochlea.__init__)


@dataclass(frozen=True)
class CochleaConfig:
    """Front-end parameters; stored in model files and spike files."""

    sample_rate: int = 16000
    channels: int = 64
    f_min_hz: float = 50.0
    f_max_hz: float = 7800.0
    fibres_per_channel: int = 4
    threshold_dbfs: float = -66.0  # band level at which the most sensitive fibre starts firing
    fibre_step_db: float = 10.0
    saturation: float = 0.5
    adaptation_ms: float = 15.0
    adaptation_strength: float = 0.6
    membrane_ms: float = 1.5
    refractory_ms: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be between 1 and {MAX_CHANNELS}, got {self.channels}")
        if not 0 < self.f_min_hz < self.f_max_hz < self.sample_rate / 2:
            raise ValueError("need 0 < f_min_hz < f_max_hz < sample_rate / 2")
        if not 1 <= self.fibres_per_channel <= 16:
            raise ValueError("fibres_per_channel must be between 1 and 16")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CochleaConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def centre_frequencies(self) -> np.ndarray:
        """Centre frequencies in Hz, low to high, evenly spaced in ERB-rate."""

        def erb_rate(f: np.ndarray | float) -> np.ndarray:
            return 21.4 * np.log10(1.0 + 0.00437 * np.asarray(f))

        rates = np.linspace(erb_rate(self.f_min_hz), erb_rate(self.f_max_hz), self.channels)
        return (10.0 ** (rates / 21.4) - 1.0) / 0.00437


@dataclass
class CochleaState:
    """Everything one stream's cochlea remembers between chunks."""

    input_rate: int
    resampler: soxr.ResampleStream | None
    # float32, end to end: the biquad memories [sections, 2, channels], the adaptation
    # [channels], the fibres' membranes and refractory samples left [fibres, channels].
    # One array, so that a batch of streams is gathered in one copy each.
    memory: np.ndarray
    samples_done: int = 0  # at the internal rate
    finished: bool = field(default=False)


class SpikeCounts(NamedTuple):
    """One stream's spikes of one chunk, counted in bins (:meth:`Cochlea.process_many_binned`)."""

    first_bin: int  # the bin of the first row
    counts: np.ndarray  # float32 [bins, channels]: every bin the chunk reaches into
    spikes: int  # their sum


class _Output(NamedTuple):
    """What :meth:`Cochlea._run` found: events or bins, per stream ``k`` the slices
    ``spike_bounds[k]:spike_bounds[k + 1]`` and ``row_bounds[k]:row_bounds[k + 1]``."""

    sample: np.ndarray  # int64 [events]: the event's sample index in its stream
    channel: np.ndarray  # int32 [events]
    spike_bounds: np.ndarray  # int64 [streams + 1]; for bins, the running spike total
    counts: np.ndarray  # float32 [bins, channels]
    row_bounds: np.ndarray  # int64 [streams + 1]


class Cochlea:
    """Precomputed filters for one configuration; processes any number of streams."""

    def __init__(self, config: CochleaConfig | None = None) -> None:
        self.config = config = config or CochleaConfig()
        rate = config.sample_rate
        sos = np.stack(
            [
                scipy.signal.tf2sos(*scipy.signal.gammatone(f, "iir", fs=rate))
                for f in config.centre_frequencies()
            ]
        )  # [channels, sections, 6]
        # The kernel computes in float32: twice the SIMD lanes of float64, and on 10 s
        # of speech one spike in 168 thousand differs (the filters' poles are far
        # enough from the unit circle for 24-bit mantissas).
        self._b = np.ascontiguousarray(sos[:, :, :3].transpose(1, 2, 0), KERNEL_DTYPE)
        self._a = np.ascontiguousarray(sos[:, :, 4:].transpose(1, 2, 0), KERNEL_DTYPE)
        # Each fibre sees the rectified band scaled so that a sine at its threshold
        # level drives it to exactly 1 (the firing threshold) on average.
        mean_rectified_sine = 1.0 / np.pi
        levels_db = config.threshold_dbfs + config.fibre_step_db * np.arange(
            config.fibres_per_channel
        )
        amplitude = 10.0 ** (levels_db / 20.0)
        driven = mean_rectified_sine * amplitude
        driven = driven / (1.0 + driven / config.saturation)
        self._fibre_gain = (1.0 / (driven * (1.0 - config.adaptation_strength))).astype(
            KERNEL_DTYPE
        )
        # float32 scalars: a Python float would promote the kernel's arithmetic to float64
        self._constants = tuple(
            KERNEL_DTYPE(value)
            for value in (
                config.saturation,
                config.adaptation_strength,
                1.0 - np.exp(-1000.0 / (config.adaptation_ms * rate)),
                1.0 - np.exp(-1000.0 / (config.membrane_ms * rate)),
                max(1, round(config.refractory_ms * rate / 1000.0)),
            )
        )

    def new_state(self, input_rate: int | None = None) -> CochleaState:
        cfg = self.config
        input_rate = check_sample_rate(input_rate or cfg.sample_rate)
        resampler = None
        if input_rate != cfg.sample_rate:
            resampler = soxr.ResampleStream(input_rate, cfg.sample_rate, 1, dtype="float32")
        n_sections = self._b.shape[0]
        size = (2 * n_sections + 1 + 2 * cfg.fibres_per_channel) * cfg.channels
        return CochleaState(input_rate, resampler, np.zeros(size, KERNEL_DTYPE))

    def process(self, samples: np.ndarray, state: CochleaState, final: bool = False) -> SpikeEvents:
        """Feed one chunk of a stream (any size, int16 or float, mono or [n, ch]).

        ``final=True`` flushes the resampler; the stream accepts no more audio after it.
        """
        return self.process_many([(samples, state, final)])[0]

    def process_many(
        self, chunks: list[tuple[np.ndarray, CochleaState, bool]]
    ) -> list[SpikeEvents]:
        """:meth:`process` for chunks of several streams (one chunk per stream) in one
        kernel call: one release of the GIL for all of them, so a worker thread runs
        them alongside the event loop, and no per-call overhead per stream."""
        out = self._run(*self._internal_audio(chunks), bin_samples=0)
        times = out.sample / float(self.config.sample_rate)  # all streams in one operation
        bounds = out.spike_bounds.tolist()
        return [
            SpikeEvents(times[start:end], out.channel[start:end], self.config.channels)
            for start, end in itertools.pairwise(bounds)
        ]

    def process_many_binned(
        self, chunks: list[tuple[np.ndarray, CochleaState, bool]], bin_samples: int
    ) -> list[SpikeCounts]:
        """:meth:`process_many` with each stream's spikes counted straight into bins of
        ``bin_samples`` samples at the cochlea's rate (bin ``k`` holds the stream's
        samples ``k * bin_samples`` to ``(k + 1) * bin_samples - 1``): the counts
        :class:`~audio_frontend.events.SpikeBinner` makes of the events, without them."""
        if bin_samples < 1:
            raise ValueError(f"bin_samples must be at least 1, got {bin_samples}")
        audio, states = self._internal_audio(chunks)
        first_bins = [state.samples_done // bin_samples for state in states]
        out = self._run(audio, states, bin_samples)
        spikes = np.diff(out.spike_bounds).tolist()
        rows = out.row_bounds.tolist()
        return [
            SpikeCounts(first_bins[k], out.counts[rows[k] : rows[k + 1]], spikes[k])
            for k in range(len(states))
        ]

    def counts(self, audio: np.ndarray, state: CochleaState) -> np.ndarray:
        """Run internal-rate audio through the cochlea; spikes per sample ``[n, channels]``."""
        return self._run([audio], [state], bin_samples=1).counts.astype(np.uint8)

    def _internal_audio(
        self, chunks: list[tuple[np.ndarray, CochleaState, bool]]
    ) -> tuple[list[np.ndarray], list[CochleaState]]:
        """Each chunk as mono samples at the cochlea's rate (int16 ones left as they are:
        :func:`_samples` scales them all at once), and its state."""
        audio, states = [], []
        for samples, state, final in chunks:
            if state.finished:
                raise AudioError("this stream has already been finished")
            x = np.asarray(samples)
            if state.resampler is not None or x.dtype != np.int16 or x.ndim != 1:
                x = to_mono_float(x)
                if state.resampler is not None:
                    x = state.resampler.resample_chunk(x, last=final)
            state.finished = final
            audio.append(x)
            states.append(state)
        return audio, states

    def _run(
        self, audio: list[np.ndarray], states: list[CochleaState], bin_samples: int
    ) -> _Output:
        """Run each stream's internal-rate audio through the kernel from its state, and
        advance the states.  ``bin_samples == 0``: the spikes as events; else counted
        in bins of that many samples, from the bin of each stream's first sample to
        that of its last."""
        cfg = self.config
        x = _samples(audio)
        lengths = np.array([len(a) for a in audio], np.int64)
        x_bounds = np.zeros(len(audio) + 1, np.int64)
        np.cumsum(lengths, out=x_bounds[1:])
        firsts = np.array([state.samples_done for state in states], np.int64)
        # One row of the batch per stream; a single stream's memory is used in place.
        memory = (
            states[0].memory[None] if len(states) == 1 else np.stack([s.memory for s in states])
        )
        row_bounds = np.zeros(len(states) + 1, np.int64)
        if bin_samples:
            last = firsts + lengths - 1
            rows = np.where(lengths > 0, last // bin_samples - firsts // bin_samples + 1, 0)
            np.cumsum(rows, out=row_bounds[1:])
            capacity = 0
        else:
            # Room for a typical spike rate; when the kernel could run out it stops
            # early, and resumes there with twice the room.
            capacity = (
                len(states) * cfg.channels * cfg.fibres_per_channel + len(x) * cfg.channels // 16
            )
        counts = np.zeros((row_bounds[-1], cfg.channels), np.float32)
        sample = np.empty(capacity, np.int64)
        channel = np.empty(capacity, np.int32)
        spike_bounds = np.zeros(len(states) + 1, np.int64)
        stream, done, n_events = 0, 0, 0
        while stream < len(states):
            stream, done, n_events = _cochlea_streams_kernel(
                x,
                x_bounds,
                firsts,
                stream,
                done,
                self._b,
                self._a,
                memory,
                self._fibre_gain,
                *self._constants,
                sample,
                channel,
                n_events,
                spike_bounds,
                bin_samples,
                counts,
                row_bounds,
            )
            if stream < len(states):
                sample = np.concatenate([sample[:n_events], np.empty(len(sample), np.int64)])
                channel = np.concatenate([channel[:n_events], np.empty(len(channel), np.int32)])
        for k, state in enumerate(states):
            state.memory = memory[k]  # a view of the batch, no copy back: gathered next call
            state.samples_done += len(audio[k])
        if not bin_samples:  # copies, so that the events hold no spare room
            sample, channel = sample[:n_events].copy(), channel[:n_events].copy()
        return _Output(sample, channel, spike_bounds, counts, row_bounds)

    def encode(self, samples: np.ndarray, sample_rate: int) -> SpikeEvents:
        """Whole-signal convenience: a fresh stream fed once and finished."""
        return self.process(samples, self.new_state(sample_rate), final=True)


def _samples(audio: list[np.ndarray]) -> np.ndarray:
    """The float32 samples of several chunks, float or int16 PCM, end to end.  int16
    is scaled as :func:`to_mono_float` scales it (``/ 32768`` is exact), all chunks
    in one operation."""
    if not audio:
        return np.zeros(0, KERNEL_DTYPE)
    if all(a.dtype == np.int16 for a in audio):
        x = np.concatenate(audio, dtype=KERNEL_DTYPE)
        x *= KERNEL_DTYPE(1.0 / 32768.0)
        return x
    return np.concatenate(
        [to_mono_float(a) if a.dtype == np.int16 else a for a in audio], dtype=KERNEL_DTYPE
    )


@numba.njit(cache=True, nogil=True)
def _cochlea_streams_kernel(
    x,
    x_bounds,
    firsts,
    stream,
    start,
    b,
    a,
    memory,
    fibre_gain,
    saturation,
    adaptation_strength,
    adaptation_alpha,
    membrane_alpha,
    refractory_samples,
    event_sample,
    event_channel,
    n_events,
    spike_bounds,
    bin_samples,
    counts,
    row_bounds,
):
    """:func:`_cochlea_kernel` for streams ``stream, stream + 1, ...`` in turn, stream
    ``k`` running ``x[x_bounds[k]:x_bounds[k + 1]]`` from sample ``start`` (0 after
    the first) with the state ``memory[k]`` (:class:`CochleaState`'s layout), its
    first sample being sample ``firsts[k]`` of the stream.  Stream ``k``'s events
    end at ``spike_bounds[k + 1]`` (with bins: its running spike total), its bins
    are ``counts[row_bounds[k]:row_bounds[k + 1]]``.  Stops where the event arrays
    could run out and returns ``(stream, next sample, n_events)`` to resume from;
    the stream count when done.
    """
    n_streams = x_bounds.shape[0] - 1
    n_sections, n_channels = b.shape[0], b.shape[2]
    n_fibres = fibre_gain.shape[0]
    filters_end = 2 * n_sections * n_channels
    adaptation_end = filters_end + n_channels
    membranes_end = adaptation_end + n_fibres * n_channels
    while stream < n_streams:
        chunk = x[x_bounds[stream] : x_bounds[stream + 1]]
        state = memory[stream]
        start, n_events = _cochlea_kernel(
            chunk,
            start,
            firsts[stream],
            b,
            a,
            state[:filters_end].reshape((n_sections, 2, n_channels)),
            state[filters_end:adaptation_end],
            state[adaptation_end:membranes_end].reshape((n_fibres, n_channels)),
            state[membranes_end:].reshape((n_fibres, n_channels)),
            fibre_gain,
            saturation,
            adaptation_strength,
            adaptation_alpha,
            membrane_alpha,
            refractory_samples,
            event_sample,
            event_channel,
            n_events,
            bin_samples,
            counts[row_bounds[stream] : row_bounds[stream + 1]],
        )
        if start < chunk.shape[0]:
            return stream, start, n_events
        spike_bounds[stream + 1] = n_events
        stream += 1
        start = 0
    return stream, 0, n_events


@numba.njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def _cochlea_kernel(
    x,
    start,
    first,
    b,
    a,
    z,
    adaptation,
    membranes,
    refractory,
    fibre_gain,
    saturation,
    adaptation_strength,
    adaptation_alpha,
    membrane_alpha,
    refractory_samples,
    event_sample,
    event_channel,
    n_events,
    bin_samples,
    counts,
):
    """Run ``x[start:]`` (``x[0]`` being the stream's sample ``first``) through the
    cochlea, appending spikes to the event arrays, or with ``bin_samples > 0``
    adding them to ``counts``.

    Events go to ``event_sample[n_events:]`` / ``event_channel[n_events:]`` in
    (sample, channel) order, one entry per spike, the sample counted from the
    stream's start.  Stops early, before a sample whose spikes might not fit;
    returns ``(next sample, n_events)`` so that the caller can grow the arrays and
    resume.  Bins: row ``k`` of ``counts`` is the stream's bin ``first //
    bin_samples + k``; n_events grows by the spikes counted, and nothing stops early.
    """
    # Time is the outer loop and channels the inner one, written branch-free on
    # row views, so that all channels' recursions advance together in SIMD lanes.
    # Details that keep LLVM's vectorised loops in use (none changes an operation
    # on the numbers, so the events are bit-identical to the plain form):
    # - each section's two memories live in separate arrays (z_first, z_second):
    #   the runtime alias checks of a channel loop are widened over all sections,
    #   and with the state's [sections, 2, channels] layout they always reported
    #   an overlap, so the filters ran in the scalar fallback loop (3x slower);
    # - the numpy error model drops the per-element division-by-zero branch, which
    #   kept the hair cells scalar (with saturation > 0 the divisor 1 + r /
    #   saturation is >= 1; saturation == 0 still raises, just below);
    # - the fibres use & and selects rather than `and`, which compiled to masked
    #   stores, and count spikes in a float row rather than a uint8 matrix;
    # - the event arrays are never reallocated in the loop (that alone made the
    #   kernel ~3x slower): the caller grows them and resumes instead.
    # - most samples have a spike in only a few channels: the events are found by
    #   testing 8 channels' counts at once as one 64-bit word rather than each
    #   channel's (a third of the kernel's time before).
    # Bins sum the spikes of their samples in the same float row (exact: counts stay
    # far below 2**24) and add it to their row once, at the bin's or the chunk's end.
    if saturation == 0.0:
        raise ZeroDivisionError("division by zero")  # as the Python error model did
    n_sections = b.shape[0]
    n_channels = b.shape[2]
    n_fibres = membranes.shape[0]
    zero, one = np.float32(0.0), np.float32(1.0)  # float literals would be float64
    z_first = np.empty((n_sections, n_channels), np.float32)
    z_second = np.empty((n_sections, n_channels), np.float32)
    z_first[:] = z[:, 0]
    z_second[:] = z[:, 1]
    band = np.empty(n_channels, np.float32)
    spikes = np.zeros(n_channels, np.float32)  # spikes of the current sample, per channel
    # The same counts as bytes, read 8 channels at a time as one 64-bit word.
    spike_bytes = np.zeros(-(-n_channels // 8) * 8, np.uint8)
    spike_words = spike_bytes.view(np.uint64)
    counting = bin_samples > 0
    last_safe = event_sample.shape[0] - n_channels * n_fibres
    i = start
    if counting:
        row = (first + i) // bin_samples - first // bin_samples
        left_in_bin = bin_samples - (first + i) % bin_samples
    while i < x.shape[0] and (counting or n_events <= last_safe):
        band[:] = x[i]
        for s in range(n_sections):
            b0, b1, b2 = b[s, 0], b[s, 1], b[s, 2]
            a1, a2 = a[s, 0], a[s, 1]
            z0, z1 = z_first[s], z_second[s]
            for c in range(n_channels):
                u = band[c]
                y = b0[c] * u + z0[c]
                z0[c] = b1[c] * u - a1[c] * y + z1[c]
                z1[c] = b2[c] * u - a2[c] * y
                band[c] = y
        for c in range(n_channels):
            r = max(band[c], zero)
            r = r / (one + r / saturation)
            adaptation[c] += adaptation_alpha * (r - adaptation[c])
            band[c] = r - adaptation_strength * adaptation[c]
        for f in range(n_fibres):
            gain = fibre_gain[f]
            v = membranes[f]
            rest = refractory[f]
            for c in range(n_channels):
                left = rest[c]
                before = v[c]
                active = left <= zero
                potential = before + membrane_alpha * (gain * band[c] - before)
                fired = active & (potential >= one)
                charging = active & (not fired)
                spikes[c] += one if fired else zero
                v[c] = potential if charging else zero
                rest[c] = refractory_samples if fired else left - one
        if counting:
            left_in_bin -= 1
            if left_in_bin == 0 or i + 1 == x.shape[0]:
                total = zero
                for c in range(n_channels):
                    counts[row, c] += spikes[c]
                    total += spikes[c]
                    spikes[c] = zero
                n_events += np.int64(total)
                if left_in_bin == 0:
                    row += 1
                    left_in_bin = bin_samples
        else:
            for c in range(n_channels):
                spike_bytes[c] = np.uint8(spikes[c])
                spikes[c] = zero
            for k in range(spike_words.shape[0]):
                if spike_words[k] != 0:
                    for c in range(8 * k, 8 * k + 8):
                        for _ in range(spike_bytes[c]):
                            event_sample[n_events] = first + i
                            event_channel[n_events] = c
                            n_events += 1
                    spike_words[k] = 0
        i += 1
    z[:, 0] = z_first
    z[:, 1] = z_second
    return i, n_events
