from collections.abc import Callable

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from audio_frontend import AudioError, Cochlea, CochleaConfig, CochleaState, SpikeEvents, bin_events
from audio_frontend.audio_io import decode_pcm, load_audio
from audio_frontend.events import SpikeBinner
from tests.conftest import FIXTURES

COCHLEA = Cochlea()


def run_chunked(cochlea: Cochlea, audio: np.ndarray, rate: int, sizes: list[int]) -> SpikeEvents:
    state = cochlea.new_state(rate)
    parts, start = [], 0
    for size in sizes:
        parts.append(cochlea.process(audio[start : start + size], state))
        start += size
    parts.append(cochlea.process(audio[start:], state, final=True))
    return SpikeEvents.concatenate(parts, cochlea.config.channels)


def assert_same(a: SpikeEvents, b: SpikeEvents) -> None:
    assert np.array_equal(a.times, b.times)
    assert np.array_equal(a.channels, b.channels)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 4000), min_size=1, max_size=12), resample=st.booleans())
def test_any_chunking_gives_the_whole_file_events(speech, sizes, resample):
    audio, rate = speech
    audio = audio[:6000]
    if resample:  # exercise the streaming resampler too
        audio, rate = soxr.resample(audio, rate, 22050).astype(np.float32), 22050
    whole = COCHLEA.encode(audio, rate)
    assert len(whole) > 100
    assert_same(run_chunked(COCHLEA, audio, rate, sizes), whole)


def test_single_sample_chunks_match(speech):
    audio, rate = speech
    audio = audio[4800:5600]
    assert_same(run_chunked(COCHLEA, audio, rate, [1] * len(audio)), COCHLEA.encode(audio, rate))


def test_events_are_time_ordered_and_in_range(speech):
    events = COCHLEA.encode(*speech)
    events.validate()
    assert np.all(np.diff(events.times) >= 0)
    assert events.channels.max() < 64 and events.channels.min() >= 0
    assert events.times.max() < 1.0


def test_digital_silence_gives_no_spikes():
    assert len(COCHLEA.encode(np.zeros(16000, np.float32), 16000)) == 0


def test_spike_rates_order_silence_background_speech(speech, noise):
    background = noise[0] / np.abs(noise[0]).max() * 0.003  # quiet room level
    rate_background = len(COCHLEA.encode(background, 16000))
    rate_speech = len(COCHLEA.encode(*speech))
    assert rate_background < rate_speech / 10


def test_louder_sound_recruits_more_fibres():
    t = np.arange(8000) / 16000
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    counts = [len(COCHLEA.encode(tone * 10 ** (db / 20), 16000)) for db in (-50, -30, -10)]
    assert counts[0] < counts[1] < counts[2]


def test_tone_excites_the_matching_channel():
    t = np.arange(16000) / 16000
    for freq in (300, 1000, 4000):
        tone = 0.1 * np.sin(2 * np.pi * freq * t).astype(np.float32)
        events = COCHLEA.encode(tone, 16000)
        busiest = np.bincount(events.channels, minlength=64).argmax()
        centre = COCHLEA.config.centre_frequencies()[busiest]
        assert abs(np.log2(centre / freq)) < 0.35


@pytest.mark.parametrize("channels", [13, 64])
def test_tones_at_the_edge_channels_are_found(channels):
    """The kernel reads spike counts 8 channels at a time: the first channel and the
    last one (in a partly used group of 8 when the count is not a multiple of 8) must
    give their events like any other."""
    cochlea = Cochlea(CochleaConfig(channels=channels))
    centres = cochlea.config.centre_frequencies()
    t = np.arange(8000) / 16000
    for channel in (0, channels - 1):
        tone = 0.001 * np.sin(2 * np.pi * centres[channel] * t).astype(np.float32)
        events = cochlea.encode(tone, 16000)
        assert np.bincount(events.channels, minlength=channels).argmax() == channel
        assert events.channels.max() < channels


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000])
def test_resampled_input_gives_similar_spikes(speech, rate):
    audio, native = speech
    resampled = soxr.resample(audio, native, rate).astype(np.float32)
    reference = bin_events(COCHLEA.encode(audio, native), 0.05, 20)
    other = bin_events(COCHLEA.encode(resampled, rate), 0.05, 20)
    if rate < 16000:  # the band above rate/2 is gone; compare what remains
        keep = COCHLEA.config.centre_frequencies() < rate / 2 * 0.8
        reference, other = reference[:, keep], other[:, keep]
    correlation = np.corrcoef(reference.ravel(), other.ravel())[0, 1]
    assert correlation > 0.9


def test_multichannel_is_downmixed(speech):
    audio, rate = speech
    stereo = np.stack([audio, audio], axis=1)
    assert_same(COCHLEA.encode(stereo, rate), COCHLEA.encode(audio, rate))
    int16 = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    assert len(COCHLEA.encode(int16, rate)) > 0


@pytest.mark.parametrize(
    "samples, rate, message",
    [
        (np.array([0.0, np.nan], np.float32), 16000, "NaN"),
        (np.array([0.0, np.inf], np.float32), 16000, "NaN or infinite"),
        (np.zeros(10, np.float32), 1000, "unsupported sample rate"),
        (np.zeros(10, np.float32), 400000, "unsupported sample rate"),
        (np.zeros((10, 64), np.float32), 16000, "channel count"),
        (np.zeros(10, np.int64), 16000, "sample type"),
    ],
)
def test_bad_audio_is_rejected(samples, rate, message):
    with pytest.raises(AudioError, match=message):
        COCHLEA.encode(samples, rate)


def test_pcm_decoding_formats():
    values = np.array([0, 16384, -32768], np.int16)
    assert np.allclose(decode_pcm(values.tobytes(), "s16le"), [0, 0.5, -1])
    floats = np.array([0.25, -0.5], np.float32)
    assert np.allclose(decode_pcm(floats.tobytes(), "f32le"), floats)
    with pytest.raises(AudioError, match="whole number"):
        decode_pcm(b"\x00\x01\x02", "s16le")
    with pytest.raises(AudioError, match="unsupported format"):
        decode_pcm(b"", "mp3")


def test_bad_files(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(text)
    import soundfile as sf

    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no audio"):
        load_audio(empty)


def test_binning_counts_every_event():
    events = SpikeEvents(np.array([0.0, 0.004, 0.011, 0.019]), np.array([0, 0, 1, 2], np.int32), 3)
    raster = bin_events(events, 0.01)
    assert raster.tolist() == [[2, 0, 0], [0, 1, 1]]
    assert bin_events(events, 0.01, n_bins=5).shape == (5, 3)


def test_config_limits():
    assert Cochlea(CochleaConfig(channels=700)).config.channels == 700
    with pytest.raises(ValueError, match="channels"):
        CochleaConfig(channels=701)


@pytest.fixture(scope="module")
def many_streams() -> list[tuple[np.ndarray, int]]:
    """18 streams of the recorded clips: int16, float32 and float32 at 22.05 kHz in turn."""
    clips = [load_audio(path)[0] for path in sorted(FIXTURES.glob("*.wav"))]
    streams = []
    for k in range(18):
        audio = clips[k % len(clips)]
        if k % 3 == 0:
            streams.append(((np.clip(audio, -1, 1) * 32767).astype(np.int16), 16000))
        elif k % 3 == 1:
            streams.append((audio, 16000))
        else:
            streams.append((soxr.resample(audio, 16000, 22050).astype(np.float32), 22050))
    return streams


def feed_batched(
    cochlea: Cochlea, streams: list[tuple[np.ndarray, int]], seed: int, feed: Callable
) -> list[CochleaState]:
    """Feed the streams together, ``feed(batch, indices)`` per call, in chunks of random
    odd sizes (0 and 1 sample too), each stream ending at its own call; the states."""
    rng = np.random.default_rng(seed)
    states = [cochlea.new_state(rate) for _, rate in streams]
    done = [0] * len(streams)
    while live := [k for k in range(len(streams)) if done[k] <= len(streams[k][0])]:
        batch = []
        for k in live:
            size = int(rng.choice([0, 1, 160, 320, int(rng.integers(2, 1500))]))
            final = done[k] + size >= len(streams[k][0])
            batch.append((streams[k][0][done[k] : done[k] + size], states[k], final))
            done[k] = len(streams[k][0]) + 1 if final else done[k] + size
        feed(batch, live)
    return states


def test_batched_streams_give_each_stream_s_whole_file_events(many_streams):
    parts: list[list[SpikeEvents]] = [[] for _ in many_streams]

    def feed(batch: list, indices: list[int]) -> None:
        for k, events in zip(indices, COCHLEA.process_many(batch), strict=True):
            parts[k].append(events)

    feed_batched(COCHLEA, many_streams, 0, feed)
    for (audio, rate), events in zip(many_streams, parts, strict=True):
        assert_same(SpikeEvents.concatenate(events, 64), COCHLEA.encode(audio, rate))


def bin_batched(
    cochlea: Cochlea, streams: list[tuple[np.ndarray, int]], bin_samples: int, fused: bool
) -> tuple[list[np.ndarray], list[int], list[CochleaState]]:
    """:func:`feed_batched`'s chunks binned per stream, from the events
    (``process_many`` and ``SpikeBinner.add``) or fused (``process_many_binned`` and
    ``SpikeBinner.add_counts``): each stream's bins, spike total and final state."""
    binners = [SpikeBinner(cochlea.config.channels, bin_samples, 16000) for _ in streams]
    bins: list[list[np.ndarray]] = [[] for _ in streams]
    spikes = [0] * len(streams)

    def feed(batch: list, indices: list[int]) -> None:
        if fused:
            binned = cochlea.process_many_binned(batch, bin_samples)
            for k, (_, state, _), (first_bin, counts, n) in zip(
                indices, batch, binned, strict=True
            ):
                bins[k].append(binners[k].add_counts(counts, first_bin, state.samples_done))
                spikes[k] += n
        else:
            all_events = cochlea.process_many(batch)
            for k, (_, state, _), events in zip(indices, batch, all_events, strict=True):
                bins[k].append(binners[k].add(events, state.samples_done))
                spikes[k] += len(events)

    states = feed_batched(cochlea, streams, 1, feed)
    rasters = [
        np.concatenate([*b, binner.flush()]) for b, binner in zip(bins, binners, strict=True)
    ]
    return rasters, spikes, states


@pytest.mark.parametrize("channels, bin_samples", [(64, 160), (64, 1), (13, 333)])
def test_binned_counts_are_the_binned_events(many_streams, channels, bin_samples):
    """The fused path gives every stream exactly the bins and spike totals of its
    events through SpikeBinner.add, fed the same chunks, and leaves the same states."""
    cochlea = Cochlea(CochleaConfig(channels=channels))
    streams = many_streams[:6] if bin_samples == 1 else many_streams
    events, spikes, states = bin_batched(cochlea, streams, bin_samples, fused=False)
    counts, spikes_too, states_too = bin_batched(cochlea, streams, bin_samples, fused=True)
    assert spikes_too == spikes and sum(spikes) > 10_000
    for raster, twin in zip(events, counts, strict=True):
        assert twin.dtype == raster.dtype == np.float32
        assert np.array_equal(twin, raster)
    for state, twin in zip(states, states_too, strict=True):
        assert np.array_equal(state.memory, twin.memory)
        assert state.samples_done == twin.samples_done


def test_per_sample_counts_are_the_events(speech):
    audio, rate = speech
    events = COCHLEA.encode(audio, rate)
    counts = COCHLEA.counts(audio, COCHLEA.new_state(rate))
    assert counts.dtype == np.uint8 and counts.shape == (len(audio), 64)
    expected = np.zeros_like(counts)
    np.add.at(expected, (np.rint(events.times * rate).astype(np.int64), events.channels), 1)
    assert np.array_equal(counts, expected)


def test_binner_takes_counts_at_any_offset():
    binner = SpikeBinner(2, 10, 1000)
    assert binner.add_counts(np.array([[1.0, 0.0]], np.float32), 1, 5).shape == (0, 2)
    done = binner.add_counts(np.array([[0.0, 2.0], [3.0, 0.0]], np.float32), 1, 25)
    assert done.tolist() == [[0, 0], [1, 2]]
    assert binner.flush().tolist() == [[3, 0]]
    # A partial bin without spikes is not held, as with events: nothing to flush.
    assert binner.add_counts(np.zeros((2, 2), np.float32), 3, 45).tolist() == [[0, 0]]
    assert binner.flush().shape == (0, 2)
    with pytest.raises(ValueError, match="already been binned"):
        binner.add_counts(np.zeros((1, 2), np.float32), 2, 60)
    with pytest.raises(ValueError, match="bin_samples"):
        COCHLEA.process_many_binned([(np.zeros(10, np.float32), COCHLEA.new_state(), False)], 0)
