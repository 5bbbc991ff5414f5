import numpy as np
import pytest

from models.decoding import Decoder, DecoderConfig
from models.vocabulary import DEFAULT_VOCABULARY

VOCAB = DEFAULT_VOCABULARY
YES, NO, SILENCE = VOCAB.index("yes"), VOCAB.index("no"), VOCAB.index("_silence_")


def onehot(index: int, strength: float = 0.9) -> np.ndarray:
    p = np.full(len(VOCAB), (1 - strength) / (len(VOCAB) - 1))
    p[index] = strength
    return p


def run(decoder: Decoder, segments, words=None):
    """segments: list of (bins, class index, activity)."""
    state = decoder.new_state(words)
    events = []
    for bins, index, activity in segments:
        for _ in range(bins):
            events += decoder.step(state, onehot(index), activity)
    return events + decoder.flush(state)


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


def test_restricted_vocabulary(decoder):
    events = run(decoder, [(20, SILENCE, 0), (40, YES, 400), (60, SILENCE, 0)], words=["no", "up"])
    assert all(e.word != "yes" for e in events)
    with pytest.raises(ValueError, match="not in the model"):
        decoder.new_state(["banana"])


def test_flush_finishes_a_word_in_progress(decoder):
    events = run(decoder, [(20, SILENCE, 0), (40, NO, 400)])
    assert events[-1].kind == "final" and events[-1].word == "no"
