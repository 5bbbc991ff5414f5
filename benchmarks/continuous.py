"""Continuous speech: every word of a phrase, and nothing for words outside the vocabulary.

The clip-level figures (``benchmarks/word_accuracy.py``) score pre-cut 1 s clips,
which never have a neighbouring word.  This benchmark builds streams of connected
words from the validation speakers only (``training.data.validation_clips``; never a
training speaker) and runs them through the recognizer path behind the service
(``Recognizer.opened`` / ``feed_audio`` / ``drain``, which gives the same finals as
``transcribe`` and ``/v1/stream``, with the partials).

Streams (seeded: the same ``--seed`` gives the same audio and figures):

* each word is cut to its speech span (:func:`speech_span`) with 10 ms fades outside
  it, set to a speech RMS (over the span) drawn uniformly from -26 dBFS +- 5 dB, and
  placed so that the pause from one word's speech offset to the next one's onset is
  drawn from a pause range: 0.3-0.8 s, 0.1-0.3 s or 0-0.1 s (touching);
* 2-6 words of one held-out speaker ("one speaker", speakers with >= 2 vocabulary
  clips, chosen uniformly), or each word from another such speaker ("mixed").
  Speakers, not clips, are drawn uniformly, so FSDD's one validation speaker (500
  clips) gives about 1 word in 24 (the report's ``pool`` says how many);
* background noise: the validation ``_silence_`` recordings, each set to the same
  RMS and joined in a loop, from a random point, at 30, 20 and 10 dB SNR relative to
  the stream's mean speech power; 0.5 s of noise before the first and after the last
  word.  The same word sequences and levels are used in every pause range and SNR
  (a paired design), so conditions differ only by what they name.

Figures per condition (variant x pause range x SNR):

* word error rate from a Levenshtein alignment of the emitted finals with the spoken
  words (ties broken by time overlap): substitutions, deletions and insertions
  separately, and deletions + insertions as a share of the words.  ``_unknown_``
  finals are not vocabulary words: they count as nothing emitted;
* the clip-level error of the same word instances, each original clip run alone
  through the same path (the definition of ``benchmarks/word_accuracy.py``), so that
  WER minus it is what segmentation costs beyond recognition;
* word-time error of the finals: median |start - speech onset| and |end - speech
  offset| over correctly aligned words;
* when the streamed partials settled on each correct word: the time of the last
  partial switch to it before its final (or the final's time when the last partial was
  another word), as a share of the word's speech span (onset..offset); median.

Rejection: streams of out-of-vocabulary words only (the validation ``_unknown_`` clips,
each used equally often) with 0.3-0.8 s pauses at 20 dB SNR: vocabulary words emitted
per OOV word spoken; and the validation noise recordings looped (``--noise-minutes``)
as recorded and at the noise level of the 10 dB SNR streams: false accepts per hour.

``--min-confidence X ...``: the same figures for each rejection threshold.  A final's
word depends on the threshold only through its confidence (``Decoder._final``), so the
finals are re-decided from their confidence and top alternative; a
``Recognizer(bundle, DecoderConfig(min_confidence=X))`` rerun on a subset checks that
this equals running the decoder with that setting.

Streaming equals batch: one condition's streams are also sent through the service's
``/v1/stream`` WebSocket (the real app in a ``TestClient``) in 20 ms s16le chunks and
their finals (word, start, end) compared with batch.  pocketsphinx (if installed) runs
with a JSGF grammar of the 20 words, ``(yes | no | ...)*``, on the same audio.

Run from the repository root::

    python -m benchmarks.continuous --data ../shared/data/speech_commands \\
        --data ../shared/data/fsdd [--model M] [--sequences N] [--seed S] [--json OUT] \\
        [--min-confidence X ...] [--png PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from audio_frontend.audio_io import AudioError, load_audio
from benchmarks.word_accuracy import outcome, recognize
from models.decoding import DecoderConfig, WordEvent
from models.model_file import DEFAULT_MODEL_PATH, ModelBundle, load_model
from models.recognizer import Recognizer
from models.vocabulary import SILENCE, UNKNOWN, is_word
from training.data import Clip, validation_clips

RATE = 16000
FRAME_S = 0.01  # the speech-span envelope's frame
SPAN_TOP_DB = 30.0  # a frame is speech within this of the clip's loudest frame ...
SPAN_FLOOR_DB = 10.0  # ... and this far above its floor (5th percentile frame)
SPAN_BRIDGE_S = 0.15  # quieter stretches this short inside a word (stop closures) bridge
FADE_S = 0.01  # fades outside the speech span
SPEECH_DBFS = -26.0  # normal speech level (RMS over the speech span)
LEVEL_RANGE_DB = 10.0  # word levels spread uniformly over this range around it
EDGE_S = 0.5  # noise before the first word's onset and after the last word's offset
MIN_WORDS, MAX_WORDS = 2, 6
PAUSES: dict[str, tuple[float, float]] = {
    "0.3-0.8 s": (0.3, 0.8),
    "0.1-0.3 s": (0.1, 0.3),
    "0-0.1 s": (0.0, 0.1),
}
SNRS_DB = (30.0, 20.0, 10.0)
VARIANTS = ("one speaker", "mixed")
OOV_PAUSE, OOV_SNR_DB = "0.3-0.8 s", 20.0
CHECK_CONDITION = ("one speaker", "0.1-0.3 s", 20.0)  # streamed through /v1/stream
CHUNK_S = 0.02  # the WebSocket's audio chunks


# --------------------------------------------------------------------------- speech spans


def speech_span(audio: np.ndarray, rate: int = RATE) -> tuple[int, int]:
    """Where a clip's speech is, as (first sample, end sample).

    The rule: 10 ms frames; a frame is speech when its power is within
    ``SPAN_TOP_DB`` of the loudest frame and at least ``SPAN_FLOOR_DB`` above the clip's
    floor, its quietest moment (the 5th percentile frame: the background of a noisy
    recording, the faint edge of one cut close to the word, as FSDD's are; no more
    than 6 dB below the peak).  Speech frames less than ``SPAN_BRIDGE_S`` apart are
    one stretch, and the span is the stretch holding the loudest frame, so a click or
    a breath well away from the word is left out.
    """
    hop = max(1, round(FRAME_S * rate))
    n = max(1, -(-len(audio) // hop))
    frames = np.zeros(n * hop, np.float64)
    frames[: len(audio)] = audio
    power = 10 * np.log10((frames.reshape(n, hop) ** 2).mean(axis=1) + 1e-12)
    peak = float(power.max())
    floor = float(np.percentile(power, 5))
    threshold = max(peak - SPAN_TOP_DB, min(floor + SPAN_FLOOR_DB, peak - 6.0))
    active = np.flatnonzero(power >= threshold)
    loudest = int(power.argmax())
    bridge = max(1, round(SPAN_BRIDGE_S / FRAME_S))
    breaks = np.flatnonzero(np.diff(active) > bridge)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(active) - 1]])
    k = int(np.searchsorted(active[ends], loudest))
    first, last = int(active[starts[k]]), int(active[ends[k]])
    return first * hop, min(len(audio), (last + 1) * hop)


class Piece(NamedTuple):
    """One clip cut to its speech span, at 16 kHz."""

    label: str  # vocabulary word or _unknown_
    speaker: str
    path: str
    audio: np.ndarray  # float32: the span with FADE_S (faded) either side where the clip has it
    onset: int  # samples into ``audio`` where the speech span starts
    offset: int  # ... and ends
    rms: float  # RMS over the span


def cut_piece(audio: np.ndarray, label: str, speaker: str = "", path: str = "") -> Piece:
    """``audio`` (16 kHz) cut to its speech span, with raised-cosine fades outside it."""
    start, end = speech_span(audio)
    fade = round(FADE_S * RATE)
    a, b = max(0, start - fade), min(len(audio), end + fade)
    piece = audio[a:b].astype(np.float32)
    n = min(fade, len(piece) // 4)
    if n:
        ramp = (0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n))).astype(np.float32)
        piece[:n] *= ramp
        piece[-n:] *= ramp[::-1]
    span = audio[start:end].astype(np.float64)
    rms = float(np.sqrt(np.mean(span**2))) if len(span) else 0.0
    return Piece(label, speaker, path, piece, start - a, end - a, rms)


def read_16k(path: str | Path) -> tuple[np.ndarray, int]:
    """A file as float32 at 16 kHz (FSDD is 8 kHz), and its native rate."""
    import soxr

    audio, rate = load_audio(path)
    if rate != RATE:
        audio = soxr.resample(audio, rate, RATE).astype(np.float32)
    return audio, rate


# --------------------------------------------------------------------------- streams


class Truth(NamedTuple):
    word: str
    onset: float  # seconds: speech onset in the stream
    offset: float  # ... and offset
    path: str  # the clip it came from


@dataclass
class Stream:
    audio: np.ndarray  # float32, on the s16le grid (so that batch and WebSocket input agree)
    truth: list[Truth]

    @property
    def seconds(self) -> float:
        return len(self.audio) / RATE

    def s16le(self) -> np.ndarray:
        return np.round(self.audio * 32768).astype("<i2")


def to_s16_grid(audio: np.ndarray) -> np.ndarray:
    """Float audio rounded to what s16le can carry (clipped at full scale)."""
    return (np.round(np.clip(audio, -1.0, 32767 / 32768) * 32768) / 32768).astype(np.float32)


def noise_bank(recordings: Iterable[np.ndarray], crossfade_s: float = 0.01) -> np.ndarray:
    """Noise recordings set to unit RMS and joined with short crossfades, for looping."""
    pieces = [r.astype(np.float64) for r in recordings if len(r) and np.abs(r).max() > 0]
    if not pieces:
        raise ValueError("no background noise recordings")
    pieces = [p / np.sqrt(np.mean(p**2)) for p in pieces]
    n = round(crossfade_s * RATE)
    out = pieces[0]
    for p in pieces[1:]:
        k = min(n, len(out), len(p))
        ramp = np.linspace(0.0, 1.0, k)
        out = np.concatenate(
            [out[: len(out) - k], out[len(out) - k :] * (1 - ramp) + p[:k] * ramp, p[k:]]
        )
    return (out / np.sqrt(np.mean(out**2))).astype(np.float32)


def mix_stream(
    pieces: Sequence[Piece],
    pauses: Sequence[float],
    levels_dbfs: Sequence[float],
    noise: np.ndarray | None = None,
    noise_start: int = 0,
    snr_db: float | None = None,
    edge_s: float = EDGE_S,
) -> Stream:
    """Words at ``levels_dbfs`` (speech RMS), ``pauses`` seconds from one's speech offset
    to the next one's onset (overlapping fades add), over ``noise`` (unit RMS, looped
    from ``noise_start``) at ``snr_db`` below the mean speech power."""
    if len(pauses) != len(pieces) - 1 or len(levels_dbfs) != len(pieces):
        raise ValueError("need one pause between neighbours and one level per word")
    onsets = []
    t = round(edge_s * RATE)
    for i, piece in enumerate(pieces):
        onsets.append(t)
        t += piece.offset - piece.onset
        if i < len(pauses):
            t += round(pauses[i] * RATE)
    length = t + round(edge_s * RATE)
    audio = np.zeros(length, np.float64)
    truth = []
    for piece, onset, level in zip(pieces, onsets, levels_dbfs, strict=True):
        gain = 10 ** (level / 20) / max(piece.rms, 1e-9)
        a = onset - piece.onset
        lo = max(0, a)
        audio[lo : a + len(piece.audio)] += gain * piece.audio[lo - a :]
        span = piece.offset - piece.onset
        truth.append(Truth(piece.label, onset / RATE, (onset + span) / RATE, piece.path))
    if snr_db is not None:
        if noise is None:
            raise ValueError("snr_db needs noise")
        speech_power = float(np.mean(10 ** (np.asarray(levels_dbfs) / 10)))
        scale = np.sqrt(speech_power / 10 ** (snr_db / 10))
        audio += scale * np.take(noise, np.arange(noise_start, noise_start + length), mode="wrap")
    return Stream(to_s16_grid(audio), truth)


class Plan(NamedTuple):
    """One stream's words and levels, shared by every pause range and SNR."""

    pieces: list[int]  # indices into the piece pool
    levels: list[float]  # dBFS
    noise_start: int
    pause_draws: list[float]  # uniform [0, 1): the pause within whichever range


def draw_levels(rng: np.random.Generator, n: int) -> list[float]:
    half = LEVEL_RANGE_DB / 2
    return [float(x) for x in rng.uniform(SPEECH_DBFS - half, SPEECH_DBFS + half, n)]


def pauses_in(plan: Plan, pause_range: tuple[float, float]) -> list[float]:
    lo, hi = pause_range
    return [lo + u * (hi - lo) for u in plan.pause_draws]


def plan_sequences(
    rng: np.random.Generator,
    speakers: dict[str, list[int]],
    n: int,
    mixed: bool,
    noise_length: int,
) -> list[Plan]:
    """``n`` sequences of 2-6 words: one speaker each (chosen uniformly among
    ``speakers``, its clips without repeats), or each word from another speaker."""
    names = sorted(speakers)
    plans = []
    for _ in range(n):
        length = int(rng.integers(MIN_WORDS, MAX_WORDS + 1))
        if mixed:
            chosen: list[int] = []
            previous = None
            for _ in range(length):
                options = [s for s in names if s != previous] or names
                previous = options[int(rng.integers(len(options)))]
                pool = [i for i in speakers[previous] if i not in chosen] or speakers[previous]
                chosen.append(pool[int(rng.integers(len(pool)))])
        else:
            speaker = names[int(rng.integers(len(names)))]
            pool = speakers[speaker]
            length = min(length, len(pool))
            chosen = [pool[int(i)] for i in rng.permutation(len(pool))[:length]]
        plans.append(
            Plan(
                chosen,
                draw_levels(rng, len(chosen)),
                int(rng.integers(max(1, noise_length))),
                [float(u) for u in rng.random(len(chosen) - 1)],
            )
        )
    return plans


def plan_cycling(
    rng: np.random.Generator, n_pieces: int, passes: int, noise_length: int
) -> list[Plan]:
    """Sequences of 2-6 pieces that use each of ``n_pieces`` exactly ``passes`` times."""
    order = np.concatenate([rng.permutation(n_pieces) for _ in range(passes)]).tolist()
    plans = []
    while order:
        length = min(int(rng.integers(MIN_WORDS, MAX_WORDS + 1)), len(order))
        chosen, order = order[:length], order[length:]
        plans.append(
            Plan(
                chosen,
                draw_levels(rng, length),
                int(rng.integers(max(1, noise_length))),
                [float(u) for u in rng.random(length - 1)],
            )
        )
    return plans


# --------------------------------------------------------------------------- alignment


class Step(NamedTuple):
    op: str  # "ok", "sub", "del" (a spoken word not emitted), "ins" (an emitted word not spoken)
    ref: int | None
    hyp: int | None


def align(
    ref: Sequence[str],
    hyp: Sequence[str],
    overlap: Callable[[int, int], float] | None = None,
) -> list[Step]:
    """Levenshtein alignment of ``hyp`` against ``ref`` with the fewest edits; among
    those, the one pairing words that overlap most in time (``overlap(i, j)``, seconds),
    so that a repeated word is matched to the right instance."""
    n, m = len(ref), len(hyp)
    inf = (1 << 30, 0.0)
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    back: list[list[str]] = [[""] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = (0, 0.0)
    for i in range(n + 1):
        for j in range(m + 1):
            if i == j == 0:
                continue
            options = []
            if i and j:
                same = ref[i - 1] == hyp[j - 1]
                ov = overlap(i - 1, j - 1) if overlap is not None else 0.0
                e, o = cost[i - 1][j - 1]
                options.append(((e + (0 if same else 1), o - ov), "ok" if same else "sub"))
            if i:
                e, o = cost[i - 1][j]
                options.append(((e + 1, o), "del"))
            if j:
                e, o = cost[i][j - 1]
                options.append(((e + 1, o), "ins"))
            cost[i][j], back[i][j] = min(options, key=lambda x: x[0])
    steps = []
    i, j = n, m
    while i or j:
        op = back[i][j]
        if op in ("ok", "sub"):
            steps.append(Step(op, i - 1, j - 1))
            i, j = i - 1, j - 1
        elif op == "del":
            steps.append(Step(op, i - 1, None))
            i -= 1
        else:
            steps.append(Step(op, None, j - 1))
            j -= 1
    return steps[::-1]


def edit_counts(steps: Iterable[Step]) -> dict[str, int]:
    counts = {"ok": 0, "sub": 0, "del": 0, "ins": 0}
    for step in steps:
        counts[step.op] += 1
    return counts


# --------------------------------------------------------------------------- recognition


class Final(NamedTuple):
    top: str  # the best class (what the decoder reports when confident enough)
    confidence: float
    time: float
    start: float
    end: float


class Heard(NamedTuple):
    """What the recognizer did with one stream."""

    finals: list[Final]
    partials: list[tuple[str, float, float]]  # word, time, word start


def heard_from(events: list[WordEvent]) -> Heard:
    finals = [
        Final(
            e.alternatives[0][0] if e.alternatives else e.word, e.confidence, e.time, e.start, e.end
        )
        for e in events
        if e.kind == "final"
    ]
    partials = [(e.word, e.time, e.start) for e in events if e.kind == "partial"]
    return Heard(finals, partials)


def decided(final: Final, min_confidence: float) -> str:
    """The word the decoder reports for ``final`` at threshold ``min_confidence``."""
    return UNKNOWN if final.confidence < min_confidence else final.top


def emitted(heard: Heard, min_confidence: float) -> list[tuple[int, str]]:
    """(final index, word) of the vocabulary words emitted at ``min_confidence``."""
    words = [(k, decided(f, min_confidence)) for k, f in enumerate(heard.finals)]
    return [(k, w) for k, w in words if is_word(w)]


def settle_time(heard: Heard, final: Final, word: str) -> float:
    """When the partials settled on ``word``: the last partial of the final's segment if
    it names ``word``, else the final's own time."""
    partials = [p for p in heard.partials if p[2] == final.start and p[1] <= final.time]
    return partials[-1][1] if partials and partials[-1][0] == word else final.time


def overlap_s(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


@dataclass
class Tally:
    """Counts and samples one condition's figures rest on."""

    streams: int = 0
    words: int = 0
    seconds: float = 0.0
    ok: int = 0
    sub: int = 0
    dele: int = 0
    ins: int = 0
    start_err: list[float] = field(default_factory=list)
    end_err: list[float] = field(default_factory=list)
    settle: list[float] = field(default_factory=list)
    clip_errors: int = 0

    def add(self, truth: list[Truth], hyp: list[tuple[str, float, float]]) -> list[Step]:
        steps = align(
            [t.word for t in truth],
            [h[0] for h in hyp],
            lambda i, j: overlap_s((truth[i].onset, truth[i].offset), (hyp[j][1], hyp[j][2])),
        )
        counts = edit_counts(steps)
        self.streams += 1
        self.words += len(truth)
        self.ok += counts["ok"]
        self.sub += counts["sub"]
        self.dele += counts["del"]
        self.ins += counts["ins"]
        for step in steps:
            if step.op == "ok":
                t, h = truth[step.ref], hyp[step.hyp]
                self.start_err.append(abs(h[1] - t.onset))
                self.end_err.append(abs(h[2] - t.offset))
        return steps

    def summary(self) -> dict[str, Any]:
        w = max(self.words, 1)

        def median(values: list[float], scale: float = 1.0) -> float | None:
            return round(float(np.median(values)) * scale, 3) if values else None

        wer = (self.sub + self.dele + self.ins) / w
        clip = self.clip_errors / w
        return {
            "streams": self.streams,
            "words": self.words,
            "audio_s": round(self.seconds, 1),
            "wer": round(wer, 4),
            "substitutions": round(self.sub / w, 4),
            "deletions": round(self.dele / w, 4),
            "insertions": round(self.ins / w, 4),
            "deletions_plus_insertions": round((self.dele + self.ins) / w, 4),
            "recall": round(self.ok / w, 4),
            "counts": {"ok": self.ok, "sub": self.sub, "del": self.dele, "ins": self.ins},
            "clip_error": round(clip, 4),
            "wer_minus_clip_error": round(wer - clip, 4),
            "start_error_ms_median": median(self.start_err, 1000),
            "end_error_ms_median": median(self.end_err, 1000),
            "settle_share_median": median(self.settle),
            "settle_words": len(self.settle),
        }


class Result(NamedTuple):
    """What scoring needs of one stream (its audio is not kept)."""

    truth: list[Truth]
    seconds: float
    heard: Heard


def score(tally: Tally, result: Result, min_confidence: float) -> None:
    """Add one stream's finals (at ``min_confidence``) to ``tally``, with the settle
    share of each correctly aligned word."""
    heard = result.heard
    words = emitted(heard, min_confidence)
    hyp = [(w, heard.finals[k].start, heard.finals[k].end) for k, w in words]
    tally.seconds += result.seconds
    for step in tally.add(result.truth, hyp):
        if step.op == "ok":
            t = result.truth[step.ref]
            final = heard.finals[words[step.hyp][0]]
            share = (settle_time(heard, final, t.word) - t.onset) / max(t.offset - t.onset, 1e-9)
            tally.settle.append(share)


# --------------------------------------------------------------------------- pocketsphinx


class Sphinx:
    """pocketsphinx 5 with a JSGF grammar of the vocabulary words in any order."""

    def __init__(self, words: Sequence[str]) -> None:
        from pocketsphinx import Decoder

        self.words = set(words)
        # Narrower beams than the defaults (1e-48, 1e-48, 7e-29): on noise the default
        # search ran at about 0.4x real time on two cores; these keep it near 0.05x.
        self.decoder = Decoder(
            samprate=RATE, lm=None, loglevel="FATAL", beam=1e-20, wbeam=1e-15, pbeam=1e-20
        )
        grammar = "#JSGF V1.0;\ngrammar commands;\npublic <s> = ( " + " | ".join(words) + " )* ;\n"
        self.decoder.add_jsgf_string("commands", grammar)
        self.decoder.activate_search("commands")
        self.frame_s = 1 / self.decoder.config["frate"]

    def __call__(self, samples: np.ndarray) -> list[tuple[str, float, float]]:
        """Words with (start, end) seconds from s16le ``samples`` at 16 kHz."""
        d = self.decoder
        d.start_utt()
        d.process_raw(samples.astype("<i2").tobytes(), full_utt=True)
        d.end_utt()
        out = []
        for seg in d.seg() or ():  # None when the search found no path
            word = seg.word.split("(")[0]
            if word in self.words:
                out.append(
                    (word, seg.start_frame * self.frame_s, (seg.end_frame + 1) * self.frame_s)
                )
        return out


def make_sphinx(words: Sequence[str]) -> tuple[Sphinx | None, str]:
    try:
        return Sphinx(words), "pocketsphinx with a JSGF grammar (word)*"
    except ImportError:
        return None, "pocketsphinx not installed (pip install pocketsphinx)"
    except Exception as error:  # a broken install: leave it out, say why
        return None, f"pocketsphinx failed to start: {error}"


# --------------------------------------------------------------------------- service


def websocket_finals(
    bundle: ModelBundle, streams: Sequence[Stream]
) -> list[list[tuple[str, float, float]]]:
    """Each stream through the real app's ``/v1/stream`` in 20 ms s16le chunks: its
    finals as (word, start, end)."""
    from fastapi.testclient import TestClient

    from app.server import create_app
    from app.settings import Settings

    chunk = round(CHUNK_S * RATE)
    results = []
    with TestClient(create_app(Settings(), bundle=bundle)) as client:
        for stream in streams:
            samples = stream.s16le()
            finals = []
            with client.websocket_connect("/v1/stream") as ws:
                ws.send_text(json.dumps({"config": {"unknown": True, "partials": False}}))
                for a in range(0, len(samples), chunk):
                    ws.send_bytes(samples[a : a + chunk].tobytes())
                ws.send_text(json.dumps({"eof": 1}))
                while True:
                    message = ws.receive_json()
                    if message["type"] == "eof":
                        break
                    if message["type"] == "final":
                        finals.append((message["word"], message["start"], message["end"]))
            results.append(finals)
    return results


# --------------------------------------------------------------------------- the run


def condition_name(variant: str, pause: str, snr: float) -> str:
    return f"{variant} | {pause} | {snr:g} dB"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import Progress

    started = time.monotonic()
    torch.set_num_threads(1)
    bundle = load_model(args.model)
    default_threshold = DecoderConfig().min_confidence
    thresholds = sorted({default_threshold, *(args.min_confidence or [])})
    recognizer = Recognizer(bundle)
    recognizer.warm_up()
    clips = validation_clips(args.data, bundle.vocabulary)
    words = [c for c in clips if is_word(c.label)]
    oov = [c for c in clips if c.label == UNKNOWN]
    noise_clips = sorted((c for c in clips if c.label == SILENCE), key=lambda c: str(c.path))
    progress = Progress(console=Console(stderr=True), transient=True, disable=args.quiet)

    def pieces_of(selected: list[Clip]) -> list[Piece]:
        out = []
        for c in selected:
            try:
                audio, _ = read_16k(c.path)
            except AudioError:
                continue
            out.append(cut_piece(audio, c.label, c.speaker, str(c.path)))
        return out

    word_pieces = pieces_of(words)
    oov_pieces = pieces_of(oov)
    noise_audio = [read_16k(c.path)[0] for c in noise_clips]
    bank = noise_bank(noise_audio)
    by_speaker: dict[str, list[int]] = {}
    for i, p in enumerate(word_pieces):
        by_speaker.setdefault(p.speaker, []).append(i)
    speakers = {s: idx for s, idx in by_speaker.items() if len(idx) >= 2}

    sphinx, sphinx_note = (None, "left out (--no-pocketsphinx)")
    if not args.no_pocketsphinx:
        sphinx, sphinx_note = make_sphinx([w for w in bundle.vocabulary if is_word(w)])

    # Every stream's audio is built, heard and scored per condition, then dropped.
    root = np.random.SeedSequence(args.seed)
    plan_seeds = root.spawn(len(VARIANTS) + 1)
    plans = {
        v: plan_sequences(
            np.random.default_rng(plan_seeds[k]), speakers, args.sequences, v == "mixed", len(bank)
        )
        for k, v in enumerate(VARIANTS)
    }
    heard_all: dict[str, list[Result]] = {}
    sphinx_tallies: dict[str, Tally] = {}
    check_streams: list[Stream] = []
    clip_cache: dict[str, bool] = {}

    def clip_right(truth: Truth) -> bool:
        if truth.path not in clip_cache:
            audio, rate = load_audio(truth.path)
            events = recognize(recognizer, audio, rate)
            clip_cache[truth.path] = (
                outcome(truth.word, [e.word for e in events if e.kind == "final"]) == "right"
            )
        return clip_cache[truth.path]

    total = len(VARIANTS) * len(PAUSES) * len(SNRS_DB) * args.sequences
    with progress:
        task = progress.add_task("connected words", total=total)
        for variant in VARIANTS:
            for pause, pause_range in PAUSES.items():
                for snr in SNRS_DB:
                    name = condition_name(variant, pause, snr)
                    results = []
                    ps = sphinx_tallies[name] = Tally()
                    for plan in plans[variant]:
                        stream = mix_stream(
                            [word_pieces[i] for i in plan.pieces],
                            pauses_in(plan, pause_range),
                            plan.levels,
                            bank,
                            plan.noise_start,
                            snr,
                        )
                        heard = heard_from(recognize(recognizer, stream.audio, RATE))
                        results.append((stream, heard))
                        if sphinx is not None:
                            ps.seconds += stream.seconds
                            ps.add(stream.truth, sphinx(stream.s16le()))
                        if (variant, pause, snr) == CHECK_CONDITION:
                            check_streams.append(stream)
                        progress.advance(task)
                    heard_all[name] = [Result(s.truth, s.seconds, h) for s, h in results]

        # Out-of-vocabulary streams and background noise alone.
        oov_rng = np.random.default_rng(plan_seeds[-1])
        oov_plans = plan_cycling(oov_rng, len(oov_pieces), args.oov_passes, len(bank))
        oov_results = []
        task = progress.add_task("out-of-vocabulary streams", total=len(oov_plans))
        for plan in oov_plans:
            stream = mix_stream(
                [oov_pieces[i] for i in plan.pieces],
                pauses_in(plan, PAUSES[OOV_PAUSE]),
                plan.levels,
                bank,
                plan.noise_start,
                OOV_SNR_DB,
            )
            heard = heard_from(recognize(recognizer, stream.audio, RATE))
            ps_words = len(sphinx(stream.s16le())) if sphinx is not None else None
            oov_results.append((len(stream.truth), stream.seconds, heard, ps_words))
            progress.advance(task)

        noise_loops = {}
        recorded = np.concatenate(noise_audio)
        loop_n = round(args.noise_minutes * 60 * RATE)
        noise_level = 10 ** ((SPEECH_DBFS - min(SNRS_DB)) / 20)
        for label, source in (
            ("as recorded", recorded),
            (f"{SPEECH_DBFS - min(SNRS_DB):g} dBFS", bank * noise_level),
        ):
            audio = to_s16_grid(np.take(source, np.arange(loop_n), mode="wrap"))
            progress.add_task(f"noise alone ({label})", total=None)
            heard = heard_from(recognize(recognizer, audio, RATE))
            ps_words = None
            if sphinx is not None:
                ps_words = sum(
                    len(sphinx(np.round(audio[a : a + 60 * RATE] * 32768).astype("<i2")))
                    for a in range(0, len(audio), 60 * RATE)
                )
            noise_loops[label] = (len(audio) / RATE, heard, ps_words)

    # Figures at each threshold.
    def conditions_at(threshold: float) -> dict[str, Tally]:
        tallies = {}
        for name, results in heard_all.items():
            tally = tallies[name] = Tally()
            for result in results:
                score(tally, result, threshold)
                tally.clip_errors += sum(not clip_right(t) for t in result.truth)
        return tallies

    def oov_at(threshold: float) -> dict[str, Any]:
        spoken = sum(r[0] for r in oov_results)
        vocab = sum(len(emitted(r[2], threshold)) for r in oov_results)
        return {
            "oov_words": spoken,
            "vocabulary_words_emitted": vocab,
            "per_oov_word": round(vocab / max(spoken, 1), 4),
        }

    def noise_at(threshold: float) -> dict[str, Any]:
        out = {}
        for label, (seconds, heard, _) in noise_loops.items():
            n = len(emitted(heard, threshold))
            out[label] = {
                "seconds": round(seconds),
                "false_accepts": n,
                "per_hour": round(n * 3600 / seconds, 2),
            }
        return out

    default = {k: t.summary() for k, t in conditions_at(default_threshold).items()}
    curve = []
    for x in thresholds:
        tallies = conditions_at(x)
        pooled, matched = Tally(), Tally()
        for name, t in tallies.items():
            for target in (
                pooled,
                *((matched,) if f"| {OOV_PAUSE} | {OOV_SNR_DB:g} dB" in name else ()),
            ):
                target.words += t.words
                target.ok += t.ok
                target.sub += t.sub
                target.dele += t.dele
                target.ins += t.ins
        curve.append(
            {
                "min_confidence": x,
                "recall_all_conditions": round(pooled.ok / max(pooled.words, 1), 4),
                "wer_all_conditions": round(
                    (pooled.sub + pooled.dele + pooled.ins) / max(pooled.words, 1), 4
                ),
                f"recall_{OOV_PAUSE}_{OOV_SNR_DB:g}dB": round(
                    matched.ok / max(matched.words, 1), 4
                ),
                "oov_emitted_per_oov_word": oov_at(x)["per_oov_word"],
                "noise_false_accepts_per_hour": {k: v["per_hour"] for k, v in noise_at(x).items()},
            }
        )

    # The threshold rederived from confidences equals the decoder run with it, and
    # the service's WebSocket equals batch.
    check_heard = [r.heard for r in heard_all[condition_name(*CHECK_CONDITION)]]
    rerun_equal = {}
    for x in thresholds:
        other = Recognizer(bundle, DecoderConfig(min_confidence=x))
        same = True
        for stream, heard in zip(check_streams, check_heard, strict=True):
            events = recognize(other, stream.audio, RATE)
            direct = [(e.word, e.start, e.end) for e in events if e.kind == "final"]
            again = [(decided(f, x), f.start, f.end) for f in heard.finals]
            same &= direct == again
        rerun_equal[str(x)] = same
    service: dict[str, Any] = {"condition": condition_name(*CHECK_CONDITION)}
    if args.no_service:
        service["note"] = "left out (--no-service)"
    else:
        ws = websocket_finals(bundle, check_streams)
        mismatched = 0
        finals_n = 0
        for heard, got in zip(check_heard, ws, strict=True):
            batch = [
                (decided(f, default_threshold), round(f.start, 3), round(f.end, 3))
                for f in heard.finals
            ]
            finals_n += len(batch)
            mismatched += batch != [(w, round(s, 3), round(e, 3)) for w, s, e in got]
        service.update(
            streams=len(check_streams),
            finals=finals_n,
            streams_differing=mismatched,
            equal=mismatched == 0,
        )

    oov_speakers = len({p.speaker for p in oov_pieces})
    report: dict[str, Any] = {
        "model": bundle.card.get("name"),
        "seed": args.seed,
        "sequences_per_condition": args.sequences,
        "data": args.data,
        "pool": {
            "vocabulary_clips": len(word_pieces),
            "speakers_with_2_or_more": len(speakers),
            "words_from_fsdd_share": {
                v: round(
                    float(
                        np.mean(
                            [
                                word_pieces[i].path.find("fsdd") >= 0
                                for p in plans[v]
                                for i in p.pieces
                            ]
                        )
                    ),
                    3,
                )
                for v in VARIANTS
            },
            "noise_recordings": len(noise_audio),
            "noise_bank_s": round(len(bank) / RATE, 1),
        },
        "speech_span_rule": (
            f"{FRAME_S * 1000:g} ms frames within {SPAN_TOP_DB:g} dB of the loudest and "
            f"{SPAN_FLOOR_DB:g} dB above the 5th-percentile frame; gaps < {SPAN_BRIDGE_S:g} s "
            "bridged; the stretch holding the loudest frame"
        ),
        "min_confidence": default_threshold,
        "conditions": default,
        "oov": {
            "condition": f"{OOV_PAUSE} pauses, {OOV_SNR_DB:g} dB SNR",
            "oov_clips": len(oov_pieces),
            "oov_speakers": oov_speakers,
            "oov_words_by_spoken": _spoken_counts(oov),
            "passes": args.oov_passes,
            "streams": len(oov_results),
            **oov_at(default_threshold),
        },
        "noise_alone": noise_at(default_threshold),
        "threshold_curve": curve,
        "threshold_rederived_equals_decoder_rerun": {
            "condition": condition_name(*CHECK_CONDITION),
            **rerun_equal,
        },
        "streaming_equals_batch": service,
        "pocketsphinx": {"note": sphinx_note},
    }
    if sphinx is not None:
        oov_spoken = sum(r[0] for r in oov_results)
        oov_emitted = sum(r[3] for r in oov_results)
        report["pocketsphinx"].update(
            conditions={k: _sphinx_summary(t) for k, t in sphinx_tallies.items()},
            oov_emitted_per_oov_word=round(oov_emitted / max(oov_spoken, 1), 4),
            noise_false_accepts_per_hour={
                k: round(v[2] * 3600 / v[0], 1) for k, v in noise_loops.items()
            },
        )
    report["runtime_s"] = round(time.monotonic() - started, 1)
    return report


def _sphinx_summary(tally: Tally) -> dict[str, Any]:
    """A pocketsphinx condition's figures: no partials, no clip-level run."""
    summary = tally.summary()
    for key in ("clip_error", "wer_minus_clip_error", "settle_share_median", "settle_words"):
        summary.pop(key)
    return summary


def _spoken_counts(clips: list[Clip]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in clips:
        counts[c.spoken] = counts.get(c.spoken, 0) + 1
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------- output


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def show(report: dict[str, Any]) -> None:
    """The figures as tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    sphinx = report["pocketsphinx"].get("conditions")
    table = Table(
        title=f"Connected words: {report['model']}, min_confidence {report['min_confidence']}, "
        f"seed {report['seed']} (% of spoken words; times: medians)"
    )
    for column in (
        "speakers",
        "pause",
        "SNR",
        "words",
        "WER",
        "sub",
        "del",
        "ins",
        "del+ins",
        "clip err",
        "WER-clip",
        "|Δstart| ms",
        "|Δend| ms",
        "settle",
    ):
        table.add_column(column, justify="left" if column in ("speakers", "pause") else "right")
    if sphinx:
        table.add_column("sphinx WER", justify="right")
        table.add_column("sphinx del+ins", justify="right")
    for name, c in report["conditions"].items():
        variant, pause, snr = name.split(" | ")
        row = [
            variant,
            pause,
            snr,
            str(c["words"]),
            _pct(c["wer"]),
            _pct(c["substitutions"]),
            _pct(c["deletions"]),
            _pct(c["insertions"]),
            _pct(c["deletions_plus_insertions"]),
            _pct(c["clip_error"]),
            _pct(c["wer_minus_clip_error"]),
            f"{c['start_error_ms_median']:.0f}" if c["start_error_ms_median"] is not None else "-",
            f"{c['end_error_ms_median']:.0f}" if c["end_error_ms_median"] is not None else "-",
            f"{c['settle_share_median']:.2f}" if c["settle_share_median"] is not None else "-",
        ]
        if sphinx:
            row += [_pct(sphinx[name]["wer"]), _pct(sphinx[name]["deletions_plus_insertions"])]
        table.add_row(*row)
    console.print(table)
    oov = report["oov"]
    console.print(
        f"Out-of-vocabulary streams ({oov['condition']}): {oov['vocabulary_words_emitted']} "
        f"vocabulary words for {oov['oov_words']} OOV words spoken "
        f"({_pct(oov['per_oov_word'])}%); {oov['oov_clips']} OOV clips of "
        f"{oov['oov_speakers']} speakers, each used {oov['passes']} times"
    )
    for label, n in report["noise_alone"].items():
        console.print(
            f"Noise alone ({label}, {n['seconds']} s looped from "
            f"{report['pool']['noise_bank_s']} s of recordings): "
            f"{n['false_accepts']} false accepts = {n['per_hour']}/h"
        )
    curve = Table(title="Rejection threshold (min_confidence)")
    keys = list(report["threshold_curve"][0]) if report["threshold_curve"] else []
    for key in keys:
        curve.add_column(key, justify="right")
    for point in report["threshold_curve"]:
        curve.add_row(
            *(
                json.dumps(v)
                if isinstance(v, dict)
                else f"{v:g}"
                if isinstance(v, float)
                else str(v)
                for v in point.values()
            )
        )
    console.print(curve)
    console.print(
        "Threshold rederived from the finals' confidence equals the decoder rerun with it: "
        f"{report['threshold_rederived_equals_decoder_rerun']}"
    )
    console.print(
        f"Streaming (/v1/stream, 20 ms chunks) equals batch: {report['streaming_equals_batch']}"
    )
    ps = report["pocketsphinx"]
    if "conditions" in ps:
        console.print(
            f"pocketsphinx: {_pct(ps['oov_emitted_per_oov_word'])}% of OOV words emitted as a "
            f"vocabulary word; noise false accepts per hour {ps['noise_false_accepts_per_hour']}"
        )
    else:
        console.print(f"pocketsphinx: {ps['note']}")
    console.print(f"runtime {report['runtime_s']} s")


def plot(report: dict[str, Any], path: Path) -> None:
    """WER and deletions + insertions per pause range and SNR, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    pauses = list(PAUSES)
    width = 0.8 / (len(SNRS_DB) * len(VARIANTS))
    for ax, key, title in zip(
        axes,
        ("wer", "deletions_plus_insertions"),
        ("word error rate", "deletions + insertions"),
        strict=True,
    ):
        k = 0
        for variant in VARIANTS:
            for snr in SNRS_DB:
                values = [
                    100 * report["conditions"][condition_name(variant, p, snr)][key] for p in pauses
                ]
                x = np.arange(len(pauses)) - 0.4 + (k + 0.5) * width
                ax.bar(
                    x,
                    values,
                    width,
                    label=f"{variant}, {snr:g} dB",
                    hatch="//" if variant == "mixed" else None,
                    color=f"C{SNRS_DB.index(snr)}",
                    alpha=0.9 if variant == "mixed" else 1.0,
                )
                k += 1
        ax.set_xticks(np.arange(len(pauses)), [f"pauses {p}" for p in pauses])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("% of spoken words")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Continuous speech, validation speakers ({report['model']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append", required=True, metavar="DIR")
    parser.add_argument("--model", help="model file (default: the bundled model)")
    parser.add_argument(
        "--sequences", type=int, default=60, help="streams per condition (default 60)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="write all figures to this file")
    parser.add_argument(
        "--png",
        default=str(Path(__file__).parent / "continuous" / "continuous.png"),
        help="figure path ('' for none)",
    )
    parser.add_argument(
        "--min-confidence", type=float, nargs="+", metavar="X", help="rejection thresholds"
    )
    parser.add_argument(
        "--oov-passes", type=int, default=8, help="times each OOV clip is spoken (default 8)"
    )
    parser.add_argument("--noise-minutes", type=float, default=10.0)
    parser.add_argument("--no-pocketsphinx", action="store_true")
    parser.add_argument("--no-service", action="store_true", help="skip the WebSocket check")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--write-card",
        action="store_true",
        help="store the figures in the model file and rewrite its card (models/MODEL_CARD.md "
        "for the bundled model)",
    )
    args = parser.parse_args(argv)
    if args.sequences < 1 or args.oov_passes < 1 or args.noise_minutes <= 0:
        parser.error("--sequences, --oov-passes and --noise-minutes must be positive")
    if any(not 0 <= x <= 1 for x in args.min_confidence or []):
        parser.error("--min-confidence values must be within 0-1")
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.png:
        plot(report, Path(args.png))
    show(report)
    if args.write_card:
        write_card(args, report)
    return 0


def write_card(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """The card's connected-words section: the figures and the command behind them."""
    from training.evaluate import card_markdown

    path = Path(args.model) if args.model else DEFAULT_MODEL_PATH
    bundle = load_model(path)
    command = "python -m benchmarks.continuous " + " ".join(f"--data {d}" for d in args.data)
    if args.model:
        command += f" --model {args.model}"
    bundle.card["continuous"] = {
        "command": command,
        **{k: report[k] for k in ("conditions", "oov", "noise_alone", "streaming_equals_batch")},
    }
    bundle.save(path)
    card = path.with_name("MODEL_CARD.md" if args.model is None else path.stem + ".card.md")
    card.write_text(card_markdown(bundle))
    print(f"connected-word figures written to {path} and {card}")


if __name__ == "__main__":
    sys.exit(main())
