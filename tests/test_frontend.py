import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from audio_frontend import AudioError, Cochlea, CochleaConfig, SpikeEvents, bin_events
from audio_frontend.audio_io import decode_pcm, load_audio

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
