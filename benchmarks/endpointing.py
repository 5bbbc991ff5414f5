"""Endpointing: word boundaries from cochlear spike activity vs off-the-shelf VADs.

spikeear finds words where the speech activity of its software cochlea's spikes
(``speech_activity``: per bin, the spikes above the bin's median over channels) rises
above the stream's running background floor (``models/decoding.py``).  This
benchmark runs exactly that logic (``Endpointer.step`` on the speech activity per
network bin of ``Cochlea``: only the activity decides boundaries; no trained model
needed; the bin is the model's with
``--model``, else ``--bin-ms``, else the training default) and compares it on the
same audio with:

* ``webrtcvad`` (package ``webrtcvad-wheels``; aggressiveness modes 0-3) on 10 ms
  frames, its per-frame decisions turned into segments by the decoder's own state
  machine and settings (``DecoderConfig``: a word opens after 30 ms of activity,
  closes after 250 ms of quiet, is kept when at least 80 ms long), so only the
  speech/non-speech decision differs;
* ``silero-vad`` when installed (its package ships the model; nothing is
  downloaded; it runs on one torch thread): once with its own post-processing
  (``get_speech_timestamps`` defaults: threshold 0.5, 250 ms minimum speech,
  100 ms minimum silence, 30 ms padding) and once with its per-32 ms
  probabilities > 0.5 fed to the shared state machine.

Audio: ``--sequences`` synthetic streams per condition, each 4-6 random
in-vocabulary words (Speech Commands clips trimmed to the word: frames within
35 dB of the clip's loudest 20 ms frame) separated by 0.4-0.8 s of silence, the
trimmed extent being the ground truth.  Background noise from ``_silence_`` clips
(crossfaded end to end) is mixed in at 20, 10 and 5 dB SNR (speech power = mean
power inside the ground-truth words); ``clean`` has digital silence between words.
Scoring per method and condition: a predicted segment matches a ground-truth word
when IoU >= 0.5 (one-to-one, best IoU first); precision, recall, F1; and over the
matches the mean absolute and mean signed (bias, + = late) start and end errors in
ms.  Also the CPU cost per audio second of each detector.

Run from the repository root::

    python -m benchmarks.endpointing
    python -m benchmarks.endpointing --sequences 10 --snr 20 5 --json
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable

import numpy as np

from benchmarks.common import (
    RATE,
    ClipLibrary,
    Sequence,
    build_sequence,
    console,
    data_folder,
    default_bin_ms,
    emit,
    endpointing_s,
    greedy_pairs,
)

VAD_FRAME_S = 0.01  # webrtcvad accepts 10, 20 or 30 ms frames
Segment = tuple[float, float]


# --------------------------------------------------------------------------- audio


def noise_bed(library: ClipLibrary, n: int, rng: random.Random, fade_s: float = 0.02) -> np.ndarray:
    """``n`` samples of background noise: random clips crossfaded end to end."""
    if not library.noise:
        raise SystemExit("no background-noise clips (_silence_ or tests/fixtures/noise_*.wav)")
    fade = round(fade_s * RATE)
    out = np.zeros(0, np.float32)
    ramp = np.linspace(0, 1, fade, dtype=np.float32)
    for _ in range(10_000):
        if len(out) >= n:
            break
        clip = rng.choice(library.noise).astype(np.float32)
        clip = clip - clip.mean()
        if len(out) >= fade and len(clip) > 2 * fade:
            out[-fade:] = out[-fade:] * ramp[::-1] + clip[:fade] * ramp
            clip = clip[fade:]
        out = np.concatenate([out, clip])
    return out[:n]


def mix(sequence: Sequence, noise: np.ndarray, snr_db: float) -> np.ndarray:
    inside = np.zeros(len(sequence.audio), bool)
    for _, start, end in sequence.words:
        inside[round(start * RATE) : round(end * RATE)] = True
    speech_power = float(np.mean(sequence.audio[inside].astype(np.float64) ** 2))
    noise_power = float(np.mean(noise.astype(np.float64) ** 2)) or 1e-12
    gain = np.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
    return np.clip(sequence.audio + gain * noise, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- detectors


def segments_from_active(active: np.ndarray, frame_s: float) -> list[Segment]:
    """The decoder's state machine, with its settings in seconds, on per-frame decisions."""
    timing = endpointing_s()
    onset, hangover, min_len, max_len = (
        max(1, round(timing[k] / frame_s)) for k in ("onset", "hangover", "min", "max")
    )
    out: list[Segment] = []
    in_word, run, start, last, quiet = False, 0, 0, 0, 0
    for i, a in enumerate(active):
        if not in_word:
            run = run + 1 if a else 0
            if run >= onset:
                in_word, start, last, quiet = True, i - onset + 1, i, 0
            continue
        if a:
            last, quiet = i, 0
        else:
            quiet += 1
        if quiet >= hangover or i - start + 1 >= max_len:
            in_word, run = False, 0
            if last - start + 1 >= min_len:
                out.append((start * frame_s, (last + 1) * frame_s))
    if in_word and last - start + 1 >= min_len:
        out.append((start * frame_s, (last + 1) * frame_s))
    return out


class SpikeActivity:
    """spikeear: ``Endpointer.step`` on the speech activity of the cochlea's spikes per bin."""

    def __init__(self, bin_s: float, frontend=None) -> None:
        from audio_frontend.cochlea import Cochlea, CochleaConfig
        from models.decoding import DecoderConfig, Endpointer

        self.cochlea = Cochlea(frontend or CochleaConfig())
        if self.cochlea.config.sample_rate != RATE:
            raise SystemExit("the benchmark audio is 16 kHz; the front end must be too")
        self.bin = round(bin_s * RATE)
        config = DecoderConfig()
        self.bin_s = bin_s
        self.endpointer = Endpointer(bin_s, config)
        self.min_word_bins = config.bins(config.min_word_s, bin_s)  # the decoder's rule

    def activity(self, audio: np.ndarray) -> np.ndarray:
        from models.decoding import speech_activity

        counts = self.cochlea.counts(audio.astype(np.float32), self.cochlea.new_state(RATE))
        n = -(-len(counts) // self.bin)
        padded = np.zeros((n * self.bin, counts.shape[1]), np.float32)
        padded[: len(counts)] = counts
        return speech_activity(padded.reshape(n, self.bin, -1).sum(axis=1))

    def __call__(self, audio: np.ndarray) -> list[Segment]:
        state = self.endpointer.new_state()
        activity = self.activity(audio).tolist()
        out: list[Segment] = []
        for t, value in enumerate(activity):
            b = self.endpointer.step(state, value, last=t == len(activity) - 1)
            if b.closed and b.last_active_bin - b.start_bin + 1 >= self.min_word_bins:
                out.append((b.start_bin * self.bin_s, (b.end_bin + 1) * self.bin_s))
        return out


class WebRtc:
    def __init__(self, mode: int) -> None:
        import webrtcvad

        self.vad = webrtcvad.Vad(mode)

    def __call__(self, audio: np.ndarray) -> list[Segment]:
        pcm = (np.clip(audio, -1, 32767 / 32768) * 32768).astype("<i2")
        frame = round(VAD_FRAME_S * RATE)
        n = len(pcm) // frame
        active = np.array(
            [self.vad.is_speech(pcm[i * frame : (i + 1) * frame].tobytes(), RATE) for i in range(n)]
        )
        return segments_from_active(active, VAD_FRAME_S)


class Silero:
    """Per-32 ms speech probabilities (each variant computes them, so CPU is comparable)."""

    WINDOW = 512

    def __init__(self) -> None:
        import torch
        from silero_vad import get_speech_timestamps_from_probs, load_silero_vad

        torch.set_num_threads(1)
        self.torch = torch
        self.model = load_silero_vad()
        self.from_probs = get_speech_timestamps_from_probs

    def probabilities(self, audio: np.ndarray) -> list[float]:
        self.model.reset_states()
        x = self.torch.from_numpy(audio.astype(np.float32))
        probs = []
        with self.torch.no_grad():
            for i in range(0, len(x), self.WINDOW):
                chunk = x[i : i + self.WINDOW]
                if len(chunk) < self.WINDOW:
                    chunk = self.torch.nn.functional.pad(chunk, (0, self.WINDOW - len(chunk)))
                probs.append(float(self.model(chunk, RATE)))
        return probs

    def own(self, audio: np.ndarray) -> list[Segment]:
        stamps = self.from_probs(
            self.probabilities(audio),
            sampling_rate=RATE,
            return_seconds=True,
            time_resolution=3,
            audio_length_samples=len(audio),
        )
        return [(s["start"], s["end"]) for s in stamps]

    def shared(self, audio: np.ndarray) -> list[Segment]:
        active = np.array(self.probabilities(audio)) > 0.5
        return segments_from_active(active, self.WINDOW / RATE)


def detectors(args: argparse.Namespace) -> tuple[dict[str, Callable], dict[str, str]]:
    found: dict[str, Callable] = {}
    skipped: dict[str, str] = {}
    frontend, bin_ms = None, args.bin_ms or default_bin_ms()
    if args.model:
        from models.model_file import load_model

        bundle = load_model(args.model)
        frontend, bin_ms = bundle.frontend, args.bin_ms or bundle.bin_ms
    args.bin_ms = bin_ms
    found[f"spikeear spike activity ({bin_ms:g} ms bins)"] = SpikeActivity(bin_ms / 1000, frontend)
    try:
        for mode in args.webrtc_modes:
            found[f"webrtcvad mode {mode}"] = WebRtc(mode)
    except ImportError as error:
        skipped["webrtcvad"] = f"not importable ({error}); pip install webrtcvad-wheels"
    if not args.no_silero:
        try:
            silero = Silero()
            found["silero-vad (own post-processing)"] = silero.own
            found["silero-vad p>0.5 + shared segmenter"] = silero.shared
        except Exception as error:  # ImportError, or a model that fails to load
            skipped["silero-vad"] = f"not usable ({type(error).__name__}: {error})"
    return found, skipped


# --------------------------------------------------------------------------- scoring


def score(truth: list[Segment], predicted: list[Segment], min_iou: float = 0.5) -> dict:
    ious = [
        ((min(te, pe) - max(ts, ps)) / (max(te, pe) - min(ts, ps)), i, j)
        for i, (ts, te) in enumerate(truth)
        for j, (ps, pe) in enumerate(predicted)
    ]
    matched = greedy_pairs([x for x in ious if x[0] >= min_iou])
    return {
        "truth": len(truth),
        "predicted": len(predicted),
        "matched": len(matched),
        "start_errors": [predicted[j][0] - truth[i][0] for i, j in matched],
        "end_errors": [predicted[j][1] - truth[i][1] for i, j in matched],
    }


def summarise(parts: list[dict], cpu_s: float, audio_s: float) -> dict:
    truth = sum(p["truth"] for p in parts)
    predicted = sum(p["predicted"] for p in parts)
    matched = sum(p["matched"] for p in parts)
    starts = np.array([x for p in parts for x in p["start_errors"]])
    ends = np.array([x for p in parts for x in p["end_errors"]])
    precision = matched / predicted if predicted else 0.0
    recall = matched / truth if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    def ms(values: np.ndarray, fn: Callable[[np.ndarray], float]) -> float | None:
        return float(fn(values) * 1000) if len(values) else None

    return {
        "truth": truth,
        "predicted": predicted,
        "matched": matched,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "start_abs_ms": ms(starts, lambda v: np.abs(v).mean()),
        "start_bias_ms": ms(starts, np.mean),
        "end_abs_ms": ms(ends, lambda v: np.abs(v).mean()),
        "end_bias_ms": ms(ends, np.mean),
        "cpu_s_per_audio_s": cpu_s / audio_s if audio_s else None,
    }


# --------------------------------------------------------------------------- main


def print_report(report: dict) -> None:
    from rich.table import Table

    out = console()
    meta = report["meta"]
    out.print(
        f"[bold]Audio[/]: {meta['sequences']} sequences per condition, "
        f"{meta['words']} words, {meta['audio_s']:.0f} s per condition; clips from "
        f"{meta['clip_source']} ({meta['clips']} clips, {meta['noise_clips']} noise clips)"
    )
    for name, why in report["skipped"].items():
        out.print(f"[yellow]{name} skipped[/]: {why}")
    table = Table(title="Word segments vs ground truth (match: IoU >= 0.5)")
    for name in ("condition", "method", "P", "R", "F1", "start |err| ms", "start bias ms",
                 "end |err| ms", "end bias ms", "CPU s / audio s"):  # fmt: skip
        table.add_column(name, justify="right" if name not in ("method",) else "left")

    def f(value: float | None, fmt: str = ".0f") -> str:
        return "-" if value is None else format(value, fmt)

    for condition, methods in report["results"].items():
        for i, (method, r) in enumerate(methods.items()):
            table.add_row(
                condition if i == 0 else "",
                method,
                f"{r['precision']:.2f}",
                f"{r['recall']:.2f}",
                f"{r['f1']:.2f}",
                f(r["start_abs_ms"]),
                f(r["start_bias_ms"], "+.0f"),
                f(r["end_abs_ms"]),
                f(r["end_bias_ms"], "+.0f"),
                f(r["cpu_s_per_audio_s"], ".4f"),
            )
        table.add_section()
    out.print(table)
    out.print(
        "Bias > 0: the detector starts/ends later than the ground truth.  CPU for spikeear "
        "includes running the cochlea (which the recognizer needs anyway)."
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="Speech Commands layout folder")
    p.add_argument("--sequences", type=int, default=30, help="per condition")
    p.add_argument("--snr", type=float, nargs="*", default=[20.0, 10.0, 5.0])
    p.add_argument("--no-clean", action="store_true", help="skip the noise-free condition")
    p.add_argument("--webrtc-modes", type=int, nargs="*", default=[0, 1, 2, 3])
    p.add_argument("--no-silero", action="store_true")
    p.add_argument("--model", help="take the cochlea and bin width from this model file")
    p.add_argument(
        "--bin-ms", type=float, help="decoder bin (default: the model's, else training's)"
    )
    p.add_argument("--clips-per-word", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.sequences <= 1000:
        p.error("--sequences must be 1-1000")
    if any(m not in (0, 1, 2, 3) for m in args.webrtc_modes):
        p.error("webrtcvad modes are 0-3")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    library = ClipLibrary(data_folder(args.data), per_word=args.clips_per_word, seed=args.seed)
    rng = random.Random(args.seed)
    sequences = [
        build_sequence(library, rng, n_words=rng.randint(4, 6)) for _ in range(args.sequences)
    ]
    noises = [noise_bed(library, len(s.audio), rng) for s in sequences]
    conditions: dict[str, list[np.ndarray]] = {}
    if not args.no_clean:
        conditions["clean"] = [s.audio for s in sequences]
    for snr in args.snr:
        conditions[f"{snr:g} dB SNR"] = [
            mix(s, n, snr) for s, n in zip(sequences, noises, strict=True)
        ]
    found, skipped = detectors(args)
    audio_s = sum(len(s.audio) for s in sequences) / RATE
    results: dict[str, dict] = {}
    for condition, audios in conditions.items():
        if not args.json:
            print(f"{condition} ...", file=sys.stderr)
        results[condition] = {}
        for method, detect in found.items():
            parts, cpu = [], 0.0
            for sequence, audio in zip(sequences, audios, strict=True):
                start = time.process_time()
                predicted = detect(audio)
                cpu += time.process_time() - start
                parts.append(score([(s, e) for _, s, e in sequence.words], predicted))
            results[condition][method] = summarise(parts, cpu, audio_s)
    report = {
        "meta": {
            "sequences": len(sequences),
            "words": sum(len(s.words) for s in sequences),
            "audio_s": audio_s,
            "clip_source": library.source,
            "clips": len(library.clips),
            "noise_clips": len(library.noise),
            "rejected_clips": library.rejected,
            "ground_truth": "frames within 35 dB of the clip's loudest 20 ms frame",
            "spikeear_bin_ms": args.bin_ms,
            "segmenter_s": endpointing_s(),
        },
        "skipped": skipped,
        "results": results,
    }
    return emit(report, args.json, print_report)


if __name__ == "__main__":
    sys.exit(main())
