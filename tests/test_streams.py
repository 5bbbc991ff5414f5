"""Training streams: targets line up with the words, sequences start at the recognizer's
rests, and the same seed gives the same streams (tiny synthetic rasters and tones)."""

import itertools

import numpy as np
import pytest

from audio_frontend.cochlea import Cochlea, CochleaConfig
from models.decoding import DecoderConfig, Endpointer, speech_activity
from models.vocabulary import DEFAULT_VOCABULARY, SILENCE, UNKNOWN
from training.streams import (
    IGNORE,
    PlacedWord,
    StreamConfig,
    WordPiece,
    bin_targets,
    make_stream,
    plan_stream,
    rest_segments,
    speech_span_bins,
    synthesize,
)

BIN_S = 0.01
BLANK = DEFAULT_VOCABULARY.index(SILENCE)
RATE = 16000


def burst_raster(n_bins: int, words: list[tuple[int, int]], level: float = 40.0) -> np.ndarray:
    """Counts ``[bins, 8]``: quiet background, and formant-like activity (a few channels
    far above the rest) over each ``(first, end)`` stretch."""
    counts = np.ones((n_bins, 8), np.float32)
    for first, end in words:
        counts[first:end, 2:4] = level
    return counts


def tone_piece(label: int, frequency: float, seconds: float = 0.3) -> WordPiece:
    t = np.arange(round(seconds * RATE)) / RATE
    audio = (0.1 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    return WordPiece(label, "s", audio, 0, len(audio), float(np.sqrt(np.mean(audio**2))))


def test_speech_span_is_the_active_stretch():
    assert speech_span_bins(burst_raster(100, [(30, 62)])) == (30, 62)
    # A short gap inside a word is bridged; the stretch holding the peak is kept.
    raster = burst_raster(100, [(20, 30), (36, 50)])
    raster[40, 2:4] = 80
    assert speech_span_bins(raster) == (20, 50)
    assert speech_span_bins(np.zeros((10, 8), np.float32)) == (0, 10)


def test_targets_cover_each_word_with_its_tail_then_blank():
    words = [PlacedWord(3, 10, 20), PlacedWord(5, 40, 50)]
    targets = bin_targets(70, words, [], BLANK, tail_bins=4)
    assert (targets[:10] == BLANK).all()
    assert (targets[10:24] == 3).all()
    assert (targets[24:40] == BLANK).all()
    assert (targets[40:54] == 5).all()
    assert (targets[54:] == BLANK).all()
    assert IGNORE not in targets


def test_targets_hand_over_at_the_next_onset_and_fill_the_endpointer_word():
    # Touching words: the second takes over at its onset, even inside the first's tail.
    touching = bin_targets(60, [PlacedWord(3, 10, 20), PlacedWord(5, 22, 30)], [], BLANK, 5)
    assert (touching[10:22] == 3).all() and (touching[22:35] == 5).all()
    # The decoder sums evidence to the end of the endpointer's word: the word runs on.
    held = bin_targets(60, [PlacedWord(3, 10, 20)], [(9, 45)], BLANK, 2)
    assert (held[10:45] == 3).all() and (held[45:] == BLANK).all()


def test_segments_start_where_the_endpointer_rests():
    counts = burst_raster(240, [(20, 50), (120, 150)])
    segmentation = rest_segments(counts, BIN_S)
    endpointer = Endpointer(BIN_S, DecoderConfig())
    state = endpointer.new_state()
    activity = speech_activity(counts)
    rests = [
        t
        for t in range(len(counts))
        if endpointer.step(state, activity[t], t == len(counts) - 1).rest
    ]
    cuts = segmentation.cuts
    assert cuts[0][0] == 0 and cuts[-1][1] == len(counts)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(cuts))
    assert [end - 1 for _, end in cuts][: len(rests)] == rests
    assert len(segmentation.words) == 2
    assert segmentation.words[0][0] <= 20 < 50 <= segmentation.words[0][1]


@pytest.fixture(scope="module")
def cochlea():
    return Cochlea(CochleaConfig())


def test_streams_are_deterministic_from_a_seed_and_line_up(cochlea):
    vocabulary = DEFAULT_VOCABULARY
    pieces = [
        tone_piece(vocabulary.index("yes"), 700.0),
        tone_piece(vocabulary.index("no"), 1500.0),
        tone_piece(vocabulary.index(UNKNOWN), 3000.0),
    ]
    noise = [np.random.default_rng(0).normal(0, 0.01, RATE).astype(np.float32)]
    config = StreamConfig(words=(2, 3))
    first, stats = synthesize(pieces, vocabulary, noise, cochlea, 10.0, 3, seed=7, config=config)
    again, _ = synthesize(pieces, vocabulary, noise, cochlea, 10.0, 3, seed=7, config=config)
    other, _ = synthesize(pieces, vocabulary, noise, cochlea, 10.0, 3, seed=8, config=config)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.targets, other.targets)
    assert stats["streams"] == 3 and stats["words"] >= 6
    assert first.bounds[0, 0] == 0 and (first.bounds[1:, 0] == first.bounds[:-1, 1]).all()

    rng = np.random.default_rng(1)
    plan = plan_stream(rng, [0, 1], [2], 1, config)
    stream, segmentation = make_stream(pieces, plan, noise, cochlea, 10.0, BLANK, config)
    onsets = [w.onset for w in stream.words]
    for word, later in zip(stream.words, [*onsets[1:], len(stream.counts)], strict=True):
        # Each word's label from its onset until the next word's onset, at least its span.
        assert (stream.targets[word.onset : min(word.offset, later)] == word.label).all()
    assert stream.targets[0] == BLANK and stream.targets[-1] == BLANK
    assert segmentation.cuts[-1][1] == len(stream.counts)


def test_running_word_loss_reads_each_words_mean_evidence():
    import torch
    import torch.nn.functional as F

    from training.streams import running_word_loss, word_runs

    targets = np.array([[BLANK, 3, 3, 3, 5, 5, BLANK, IGNORE]])
    starts = word_runs(targets, BLANK)
    assert starts.tolist() == [[-1, 1, 1, 1, 4, 4, -1, -1]]
    evidence = torch.randn(1, 8, len(DEFAULT_VOCABULARY))
    log_p = evidence.log_softmax(-1)[0]
    means = [log_p[s : t + 1].mean(0) for t, s in enumerate(starts[0]) if s >= 0]
    labels = torch.tensor([3, 3, 3, 5, 5])
    expected = F.cross_entropy(torch.stack(means), labels)
    expected = expected + 0.5 * F.cross_entropy(log_p[[0, 6]], torch.tensor([BLANK, BLANK]))
    loss = running_word_loss(evidence, torch.from_numpy(targets), starts, BLANK, 0.5)
    torch.testing.assert_close(loss, expected)
