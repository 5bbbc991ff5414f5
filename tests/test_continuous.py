"""The pure parts of ``benchmarks/continuous.py``: alignment, speech spans, stream building."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import soundfile as sf

from benchmarks.continuous import (
    EDGE_S,
    LEVEL_RANGE_DB,
    MAX_WORDS,
    MIN_WORDS,
    PAUSES,
    RATE,
    SPEECH_DBFS,
    Final,
    Heard,
    Piece,
    Result,
    Tally,
    Truth,
    align,
    cut_piece,
    decided,
    edit_counts,
    emitted,
    mix_stream,
    noise_bank,
    pauses_in,
    plan_cycling,
    plan_sequences,
    score,
    settle_time,
    speech_span,
)
from tests.conftest import fixture_path


def counts(ref: str, hyp: str) -> dict[str, int]:
    return edit_counts(align(ref.split(), hyp.split()))


@pytest.mark.parametrize(
    ("ref", "hyp", "expected"),
    [
        ("one two three", "one two three", {"ok": 3, "sub": 0, "del": 0, "ins": 0}),
        ("one two three", "one six three", {"ok": 2, "sub": 1, "del": 0, "ins": 0}),
        ("one two three", "one three", {"ok": 2, "sub": 0, "del": 1, "ins": 0}),
        ("one two", "one two two", {"ok": 2, "sub": 0, "del": 0, "ins": 1}),
        ("four eight six eight on", "four on", {"ok": 2, "sub": 0, "del": 3, "ins": 0}),
        ("go five right off", "go right off up", {"ok": 3, "sub": 0, "del": 1, "ins": 1}),
        ("", "yes", {"ok": 0, "sub": 0, "del": 0, "ins": 1}),
        ("yes", "", {"ok": 0, "sub": 0, "del": 1, "ins": 0}),
        ("yes no", "no yes", {"ok": 0, "sub": 2, "del": 0, "ins": 0}),  # ties: substitutions
    ],
)
def test_alignment_counts_substitutions_deletions_insertions(ref, hyp, expected):
    assert counts(ref, hyp) == expected


def test_alignment_pairs_a_repeated_word_with_the_instance_it_overlaps():
    ref = ["one", "two", "one"]
    spans = [(0.5, 0.9), (1.2, 1.6), (2.0, 2.4)]
    hyp_span = (2.05, 2.4)
    steps = align(
        ref,
        ["one"],
        lambda i, j: max(0, min(spans[i][1], hyp_span[1]) - max(spans[i][0], hyp_span[0])),
    )
    assert [s.ref for s in steps if s.op == "ok"] == [2]
    assert edit_counts(steps) == {"ok": 1, "sub": 0, "del": 2, "ins": 0}


def burst(total_s: float, start_s: float, end_s: float, level: float = 0.1) -> np.ndarray:
    """A 500 Hz tone between ``start_s`` and ``end_s`` over faint white noise."""
    rng = np.random.default_rng(0)
    t = np.arange(round(total_s * RATE)) / RATE
    audio = 1e-4 * rng.standard_normal(len(t))
    inside = (t >= start_s) & (t < end_s)
    audio[inside] += level * np.sin(2 * np.pi * 500 * t[inside])
    return audio.astype(np.float32)


def test_speech_span_finds_the_burst_and_ignores_a_distant_click():
    audio = burst(1.0, 0.30, 0.62)
    audio[round(0.9 * RATE) : round(0.905 * RATE)] += 0.05  # a click well after the word
    start, end = speech_span(audio)
    assert abs(start / RATE - 0.30) <= 0.011
    assert abs(end / RATE - 0.62) <= 0.011


def test_speech_span_bridges_a_short_closure_inside_a_word():
    audio = burst(1.0, 0.2, 0.4) + burst(1.0, 0.48, 0.6)  # an 80 ms closure, as in "six"
    start, end = speech_span(audio)
    assert abs(start / RATE - 0.2) <= 0.011 and abs(end / RATE - 0.6) <= 0.011


@pytest.mark.parametrize("name", ["yes", "stop", "seven", "fsdd"])
def test_fixture_clips_have_a_plausible_speech_span(name):
    audio, rate = sf.read(fixture_path(name), dtype="float32")
    if rate != RATE:
        import soxr

        audio = soxr.resample(audio, rate, RATE).astype(np.float32)
    piece = cut_piece(audio, name)
    span_s = (piece.offset - piece.onset) / RATE
    assert 0.15 <= span_s <= 0.9
    assert piece.onset <= round(0.01 * RATE) and len(piece.audio) - piece.offset <= round(
        0.01 * RATE
    )
    assert abs(piece.audio[0]) < 1e-3 and abs(piece.audio[-1]) < 1e-3  # faded


def synthetic_piece(label: str, span_s: float, seed: int) -> Piece:
    rng = np.random.default_rng(seed)
    span = rng.standard_normal(round(span_s * RATE)).astype(np.float32) * 0.1
    fade = round(0.01 * RATE)
    audio = np.concatenate([np.zeros(fade, np.float32), span, np.zeros(fade, np.float32)])
    return Piece(label, "s", label, audio, fade, fade + len(span), float(np.sqrt(np.mean(span**2))))


def rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x.astype(np.float64) ** 2))


def test_mix_stream_places_words_at_the_pauses_and_levels_asked():
    pieces = [
        synthetic_piece(w, s, k)
        for k, (w, s) in enumerate([("yes", 0.3), ("no", 0.4), ("up", 0.25)])
    ]
    pauses, levels = [0.35, 0.05], [-21.0, -31.0, -26.0]
    stream = mix_stream(pieces, pauses, levels)
    truth = stream.truth
    assert truth[0].onset == pytest.approx(EDGE_S)
    for i, pause in enumerate(pauses):
        assert truth[i + 1].onset - truth[i].offset == pytest.approx(pause, abs=1 / RATE)
    assert stream.seconds == pytest.approx(truth[-1].offset + EDGE_S, abs=1 / RATE)
    for t, level in zip(truth, levels, strict=True):
        a, b = round(t.onset * RATE), round(t.offset * RATE)
        assert rms_db(stream.audio[a:b]) == pytest.approx(level, abs=0.1)
    assert np.all(stream.audio[: round(EDGE_S * RATE) - round(0.01 * RATE)] == 0)
    assert np.array_equal(stream.s16le().astype(np.float32) / 32768, stream.audio)  # s16le grid


def test_mix_stream_sets_the_noise_to_the_snr_below_the_speech():
    pieces = [synthetic_piece("yes", 0.3, 0), synthetic_piece("no", 0.3, 1)]
    bank = noise_bank([np.random.default_rng(2).standard_normal(RATE).astype(np.float32)])
    levels = [-21.0, -31.0]
    stream = mix_stream(pieces, [0.5], levels, bank, noise_start=123, snr_db=20.0)
    speech_db = 10 * np.log10(np.mean([10 ** (x / 10) for x in levels]))
    lead = stream.audio[: round((EDGE_S - 0.02) * RATE)]
    assert rms_db(lead) == pytest.approx(speech_db - 20.0, abs=0.5)
    with pytest.raises(ValueError):
        mix_stream(pieces, [0.5], levels, snr_db=20.0)


def test_noise_bank_is_unit_rms_and_joins_the_recordings():
    rng = np.random.default_rng(0)
    bank = noise_bank(
        [0.01 * rng.standard_normal(4000), 0.3 * rng.standard_normal(4000), np.zeros(10)]
    )
    assert len(bank) == 8000 - round(0.01 * RATE)
    assert rms_db(bank[:3000]) == pytest.approx(rms_db(bank[-3000:]), abs=0.5)
    assert rms_db(bank) == pytest.approx(0.0, abs=0.01)


def test_sequence_plans_are_deterministic_and_respect_the_ranges():
    speakers = {"a": [0, 1, 2], "b": [3, 4], "c": [5, 6, 7, 8, 9, 10, 11]}
    owner = {i: s for s, idx in speakers.items() for i in idx}
    for mixed in (False, True):
        plans = plan_sequences(np.random.default_rng(7), speakers, 200, mixed, 1000)
        again = plan_sequences(np.random.default_rng(7), speakers, 200, mixed, 1000)
        assert plans == again
        assert plans != plan_sequences(np.random.default_rng(8), speakers, 200, mixed, 1000)
        for plan in plans:
            assert len(plan.pieces) <= MAX_WORDS and len(plan.pieces) >= MIN_WORDS
            assert len(plan.levels) == len(plan.pieces) == len(plan.pause_draws) + 1
            half = LEVEL_RANGE_DB / 2
            assert all(SPEECH_DBFS - half <= x <= SPEECH_DBFS + half for x in plan.levels)
            assert 0 <= plan.noise_start < 1000
            who = [owner[i] for i in plan.pieces]
            if mixed:
                assert all(x != y for x, y in itertools.pairwise(who))
            else:
                assert len(set(who)) == 1 and len(set(plan.pieces)) == len(plan.pieces)
            for lo, hi in PAUSES.values():
                assert all(lo <= p <= hi for p in pauses_in(plan, (lo, hi)))
        lengths = {len(p.pieces) for p in plans}
        assert lengths == set(range(MIN_WORDS, MAX_WORDS + 1))


def test_cycling_plans_use_every_piece_equally():
    plans = plan_cycling(np.random.default_rng(0), 16, 3, 500)
    used = np.bincount([i for p in plans for i in p.pieces], minlength=16)
    assert used.tolist() == [3] * 16
    assert all(1 <= len(p.pieces) <= MAX_WORDS for p in plans)


def test_threshold_redecides_a_final_from_its_confidence():
    sure, unsure = Final("go", 0.9, 1.0, 0.5, 0.8), Final("five", 0.3, 2.0, 1.5, 1.8)
    oov = Final("_unknown_", 0.8, 3.0, 2.5, 2.8)
    heard = Heard([sure, unsure, oov], [])
    assert [decided(f, 0.35) for f in heard.finals] == ["go", "_unknown_", "_unknown_"]
    assert emitted(heard, 0.2) == [(0, "go"), (1, "five")]
    assert emitted(heard, 0.95) == []


def test_scoring_a_stream_counts_times_and_settle_share():
    truth = [Truth("go", 0.5, 0.9, ""), Truth("stop", 1.5, 1.9, "")]
    finals = [Final("go", 0.9, 1.2, 0.48, 0.92), Final("six", 0.9, 2.3, 1.5, 1.95)]
    partials = [("no", 0.6, 0.48), ("go", 0.7, 0.48), ("stop", 1.6, 1.5), ("six", 1.8, 1.5)]
    heard = Heard(finals, partials)
    assert settle_time(heard, finals[0], "go") == 0.7
    assert settle_time(heard, finals[1], "stop") == finals[1].time  # last partial was another word
    tally = Tally()
    score(tally, Result(truth, 2.4, heard), 0.35)
    summary = tally.summary()
    assert summary["counts"] == {"ok": 1, "sub": 1, "del": 0, "ins": 0}
    assert summary["start_error_ms_median"] == pytest.approx(20.0)
    assert summary["settle_share_median"] == pytest.approx((0.7 - 0.5) / 0.4)


def test_the_model_card_shows_the_connected_word_figures(controlled_model):
    from training.evaluate import card_markdown

    condition = {
        "wer": 0.25,
        "deletions_plus_insertions": 0.125,
        "clip_error": 0.1,
        "settle_share_median": 0.4,
        "settle_words": 3,
    }
    controlled_model.card["continuous"] = {
        "command": "python -m benchmarks.continuous --data D",
        "conditions": {f"one speaker | 0.3-0.8 s | {snr} dB": condition for snr in (30, 10)},
        "oov": {
            "condition": "0.3-0.8 s pauses, 20 dB SNR",
            "vocabulary_words_emitted": 2,
            "oov_words": 16,
            "per_oov_word": 0.125,
            "oov_clips": 16,
            "oov_speakers": 10,
        },
        "noise_alone": {"as recorded": {"per_hour": 0.0}},
        "streaming_equals_batch": {"equal": True, "streams": 5, "finals": 9, "condition": "c"},
    }
    try:
        card = card_markdown(controlled_model)
    finally:
        del controlled_model.card["continuous"]
    assert "## Connected words" in card and "python -m benchmarks.continuous --data D" in card
    assert "| one speaker | 0.3-0.8 s | 25.0 (12.5) | 25.0 (12.5) | 10.0 |" in card
    assert "2 vocabulary words for 16 spoken (12.5%" in card
    assert "equals batch: yes (5 streams, 9 finals, c)" in card
