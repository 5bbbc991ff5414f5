import numpy as np
import pytest

from models.decoding import Decoder, DecoderConfig, Endpointer
from models.vocabulary import DEFAULT_VOCABULARY

VOCAB = DEFAULT_VOCABULARY
YES, NO, SILENCE = VOCAB.index("yes"), VOCAB.index("no"), VOCAB.index("_silence_")


def onehot(index: int, strength: float = 0.9) -> np.ndarray:
    p = np.full(len(VOCAB), (1 - strength) / (len(VOCAB) - 1))
    p[index] = strength
    return p


def decode(decoder: Decoder, bins, words=None):
    """bins: (class probabilities, speech activity) per bin, the last one ending the stream."""
    endpointer = Endpointer(decoder.bin_s, decoder.config)
    boundaries, state = endpointer.new_state(), decoder.new_state(words)
    events = []
    for t, (probabilities, activity) in enumerate(bins):
        boundary = endpointer.step(boundaries, activity, last=t == len(bins) - 1)
        events += decoder.step(state, probabilities, boundary)
    return events


def run(decoder: Decoder, segments, words=None):
    """segments: list of (bins, class index, activity)."""
    bins = [(onehot(index), activity) for n, index, activity in segments for _ in range(n)]
    return decode(decoder, bins, words)


@pytest.fixture
def decoder():
    return Decoder(VOCAB, 0.01, DecoderConfig())


def test_quiet_input_gives_nothing(decoder):
    assert run(decoder, [(300, YES, 20.0)]) == []


def test_words_get_partials_then_finals_with_times(decoder):
    events = run(
        decoder,
        [(50, SILENCE, 10), (40, YES, 400), (60, SILENCE, 10), (30, NO, 400), (60, SILENCE, 10)],
    )
    finals = [e for e in events if e.kind == "final"]
    assert [e.word for e in finals] == ["yes", "no"]
    assert finals[0].start == pytest.approx(0.50, abs=0.011)
    assert finals[0].end == pytest.approx(0.90, abs=0.011)
    assert finals[1].start == pytest.approx(1.50, abs=0.011)
    partial = next(e for e in events if e.kind == "partial")
    assert partial.word == "yes" and partial.time < finals[0].end


def test_background_floor_adapts(decoder):
    # Steady loud noise is the new background; a word must rise above it.
    events = run(decoder, [(400, SILENCE, 150), (40, YES, 1500), (60, SILENCE, 150)])
    assert [e.word for e in events if e.kind == "final"][-1] == "yes"


def test_a_word_at_the_very_start_is_found(decoder):
    # Trimmed recordings start mid-word: the background is not the first bin's level.
    events = run(decoder, [(40, YES, 1500), (60, SILENCE, 10)])
    assert [e.word for e in events if e.kind == "final"] == ["yes"]


def test_loud_noise_from_the_start_is_background_not_a_word(decoder):
    assert run(decoder, [(300, SILENCE, 300)]) == []
    events = run(decoder, [(100, SILENCE, 300), (40, YES, 1500), (60, SILENCE, 300)])
    finals = [e for e in events if e.kind == "final"]
    assert [e.word for e in finals] == ["yes"]
    assert finals[0].start == pytest.approx(1.0, abs=0.011)


def test_noise_blips_in_a_pause_do_not_merge_two_words(decoder):
    # Background noise crossing the threshold in single bins between two words: only
    # sustained activity resumes a word that has gone quiet, so the pause is seen.
    blips = [(onehot(SILENCE), 100.0 if k % 4 == 0 else 20.0) for k in range(40)]
    bins = [(onehot(SILENCE), 20.0)] * 50 + [(onehot(YES), 400.0)] * 40 + blips
    bins += [(onehot(NO), 400.0)] * 40 + [(onehot(SILENCE), 20.0)] * 60
    finals = [e for e in decode(decoder, bins) if e.kind == "final"]
    assert [e.word for e in finals] == ["yes", "no"]
    assert finals[0].end == pytest.approx(0.9, abs=0.011)  # the blips do not extend it much


def test_restricted_vocabulary(decoder):
    strong_yes_then_no = np.full(len(VOCAB), 1e-3)
    strong_yes_then_no[[YES, NO]] = 0.7, 0.25
    bins = [(onehot(SILENCE), 0)] * 20 + [(strong_yes_then_no, 400)] * 40
    bins += [(onehot(SILENCE), 0)] * 60
    assert [e.word for e in decode(decoder, bins) if e.kind == "final"] == ["yes"]
    finals = [e.word for e in decode(decoder, bins, words=["no", "up"]) if e.kind == "final"]
    assert finals == ["no"]
    with pytest.raises(ValueError, match="not in the model"):
        decoder.new_state(["banana"])


def test_the_end_of_the_stream_finishes_a_word_in_progress(decoder):
    events = run(decoder, [(20, SILENCE, 0), (40, NO, 400)])
    assert events[-1].kind == "final" and events[-1].word == "no"
    assert events[-1].end == pytest.approx(0.6)


def test_the_network_rests_after_each_word_and_after_a_long_pause():
    endpointer = Endpointer(0.01, DecoderConfig())
    state = endpointer.new_state()
    activity = [10.0] * 150 + [400.0] * 40 + [10.0] * 250
    boundaries = [endpointer.step(state, a) for a in activity]
    rests = [b.bin for b in boundaries if b.rest]
    closed = [b.bin for b in boundaries if b.closed]
    assert closed == [189 + endpointer.hangover_bins]  # the word closes after its hangover
    # At rest after 1 s without a word (bin 99), at the word's end, then every second.
    assert rests == [99, closed[0], closed[0] + 100, closed[0] + 200]


@pytest.fixture(scope="module")
def recognizer():
    from models.model_file import load_model
    from models.recognizer import Recognizer

    return Recognizer(load_model())


def _words(recognizer, audio: np.ndarray, rate: int) -> list[str]:
    from models.recognizer import StreamOptions

    transcript = recognizer.transcribe([audio], rate, StreamOptions(sample_rate=rate))
    return [w.word for w in transcript.words]


def _yes() -> tuple[np.ndarray, int, int, int]:
    """The "yes" fixture with the first and last sample of its loud part."""
    import soundfile as sf

    from tests.conftest import fixture_path

    audio, rate = sf.read(fixture_path("yes"), dtype="float32")
    envelope = np.convolve(np.abs(audio), np.ones(320) / 320, "same")
    loud = np.flatnonzero(envelope > 0.1 * envelope.max())
    return audio, rate, int(loud[0]), int(loud[-1])


def _cut_late_in_the_word(recognizer) -> tuple[np.ndarray, int]:
    """The "yes" fixture cut three quarters into its loud part, on a bin boundary
    (cut at half, "ye" is honestly ambiguous: it comes out as unknown)."""
    audio, rate, start, end = _yes()
    bin_samples = round(recognizer.bin_s * rate)
    return audio[: (start + 3 * (end - start) // 4) // bin_samples * bin_samples], rate


def test_a_recording_that_ends_mid_word_on_a_bin_boundary_keeps_the_word(recognizer):
    assert _words(recognizer, *_cut_late_in_the_word(recognizer)) == ["yes"]


def test_a_recording_that_starts_mid_word_keeps_the_word(recognizer):
    audio, rate, start, _ = _yes()
    assert _words(recognizer, audio[start:], rate) == ["yes"]


def test_ending_with_the_last_chunk_or_after_it_gives_the_same_events(recognizer):
    from models.recognizer import StreamOptions

    audio, rate = _cut_late_in_the_word(recognizer)
    runs = []
    for chunks in ([(audio, True)], [(audio, False), (audio[:0], True)]):
        events = []
        with recognizer.opened(StreamOptions(sample_rate=rate)) as stream:
            for chunk, final in chunks:
                recognizer.feed_audio(stream, chunk, final=final)
                events += recognizer.drain(stream)
        runs.append(events)
    # Sequence lengths differ between the two, so allow float rounding in the scores.
    assert [e[:2] + e[3:6] for e in runs[0]] == [e[:2] + e[3:6] for e in runs[1]]
    assert [e.confidence for e in runs[0]] == pytest.approx([e.confidence for e in runs[1]])
    assert [e.word for e in runs[0] if e.kind == "final"] == ["yes"]


def test_stepping_several_bins_per_call_gives_the_words_of_the_whole_file(recognizer):
    """Streams holding many bins (large client chunks) advance by several bins per
    network call, stopping at each network rest: same words and times as offline,
    whatever the chunking, for streams stepped together and out of phase."""
    import soundfile as sf

    from models.recognizer import StreamOptions
    from tests.conftest import fixture_path

    parts = []
    for word in ("yes", "no", "yes"):
        audio, rate = sf.read(fixture_path(word), dtype="int16")
        parts += [audio, np.zeros(rate // 3, np.int16)]
    pcm = np.concatenate(parts)
    offline = recognizer.transcribe([pcm], rate, StreamOptions(sample_rate=rate))
    want = [(w.word, w.start, w.end) for w in offline.words]
    assert want
    for chunk, max_bins in ((320, 1), (4000, 13), (1700, 5), (4000, 1)):
        streams = [recognizer.open_stream(StreamOptions(sample_rate=rate)) for _ in range(3)]
        got: list[list] = [[] for _ in streams]
        fed = [k * 1000 for k in range(3)]  # out of phase
        for stream, n in zip(streams, fed, strict=True):
            recognizer.feed_audio(stream, pcm[:n])
        while not all(s.finished for s in streams):
            for k, stream in enumerate(streams):
                if not stream.finished:
                    n = fed[k]
                    recognizer.feed_audio(stream, pcm[n : n + chunk], final=n + chunk >= len(pcm))
                    fed[k] = n + chunk
            while ready := [s for s in streams if s.ready]:
                for stream, events in zip(ready, recognizer.step(ready, max_bins), strict=True):
                    got[[id(s) for s in streams].index(id(stream))] += events
        for stream, events in zip(streams, got, strict=True):
            finals = [(e.word, e.start, e.end) for e in events if e.kind == "final"]
            assert finals == want, (chunk, max_bins)
            recognizer.close_stream(stream)


def test_speech_activity_counts_the_spikes_above_the_spectral_median():
    from models.decoding import speech_activity

    flat = np.full(64, 20.0)  # broadband noise: as many spikes, no peaks
    formants = np.full(64, 2.0)
    formants[[10, 11, 30]] = [60.0, 40.0, 30.0]
    bins = np.stack([flat, formants, np.zeros(64)])
    assert speech_activity(bins).tolist() == [0.0, 58.0 + 38.0 + 28.0, 0.0]
    assert speech_activity(bins[None]).shape == (1, 3)  # any leading shape


def test_a_word_ruled_out_by_some_bins_loses_to_one_no_bin_rules_out(decoder):
    """Evidence multiplies over a word's bins (summed log-probabilities): "yes" leads
    most bins, but a fifth of them all but exclude it, while "no" is likely throughout.
    Summed probabilities would say "yes" (19.2 against 18.4)."""
    mostly_yes = np.full(len(VOCAB), 0.05 / (len(VOCAB) - 2))
    mostly_yes[[YES, NO]] = 0.6, 0.35
    not_yes = np.full(len(VOCAB), 0.099 / (len(VOCAB) - 2))
    not_yes[[YES, NO]] = 0.001, 0.9
    bins = [(onehot(SILENCE), 10)] * 10
    bins += [(not_yes if k % 5 == 4 else mostly_yes, 400) for k in range(40)]
    bins += [(onehot(SILENCE), 10)] * 60
    events = decode(decoder, bins)
    final = next(e for e in events if e.kind == "final")
    assert final.word == "no"
    # Its confidence is the normalised geometric mean of the word's bins.
    assert 0.3 < final.confidence < 1.0
    assert dict(final.alternatives)["yes"] < final.confidence
