"""End-to-end word accuracy: what the service says on clips of speakers it never heard.

``spikeear evaluate`` scores the network on 1 s clips (argmax of the mean class log-
probability).  A user hears something else: the words the recognizer emits after
its spike-activity endpointing and its decoder (``Recognizer.transcribe``, the path
behind ``/v1/stream``, ``/vosk`` and ``POST /v1/transcribe``).  This script runs
every validation clip through that path, once, and counts per clip:

* a vocabulary word: right when exactly that word is emitted; else a wrong word,
  nothing (missed), or several words;
* ``_unknown_`` (an out-of-vocabulary word): right when no vocabulary word is
  emitted (the stream asks for ``_unknown_`` finals, which count as right);
* ``_silence_`` (background noise): right when nothing is emitted.

For the words it got right it also reports when the streamed partials settled on
the final word, as a share of the word (audio time, not processing time).

Run from the repository root::

    python -m benchmarks.word_accuracy --data ../shared/data/speech_commands \\
        --data ../shared/data/fsdd [--model MODEL] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch
from rich.progress import track

from audio_frontend.audio_io import AudioError, load_audio
from models.decoding import WordEvent
from models.model_file import load_model
from models.recognizer import Recognizer, StreamOptions
from models.vocabulary import SILENCE, UNKNOWN
from training.data import validation_clips


def outcome(label: str, words: list[str]) -> str:
    """How one clip's emitted words compare with its label."""
    spoken = [w for w in words if w != UNKNOWN]
    if label == SILENCE:
        return "right" if not words else "false word"
    if label == UNKNOWN:
        return "right" if not spoken else "false word"
    if spoken == [label]:
        return "right"
    if not spoken:
        return "missed"
    return "several words" if len(spoken) > 1 else "wrong word"


def recognize(recognizer: Recognizer, audio: np.ndarray, rate: int) -> list[WordEvent]:
    """Partials and finals of one recording, as a stream would get them."""
    with recognizer.opened(StreamOptions(sample_rate=rate, emit_unknown=True)) as stream:
        recognizer.feed_audio(stream, audio, final=True)
        return recognizer.drain(stream)


def decision_share(events: list[WordEvent]) -> float:
    """When the streamed answer settled on the final word, as a share of the word's
    extent: the time of the word's last partial (each partial is a change of the
    leading word), or of the final itself when the last partial was another word."""
    final = next(e for e in events if e.kind == "final")
    partials = [e for e in events if e.kind == "partial" and e.start == final.start]
    settled = partials[-1].time if partials and partials[-1].word == final.word else final.time
    return (settled - final.start) / max(final.end - final.start, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append", required=True, metavar="DIR")
    parser.add_argument("--model", help="model file (default: the bundled model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle = load_model(args.model)
    recognizer = Recognizer(bundle)
    clips = validation_clips(args.data, bundle.vocabulary)
    counts: dict[str, Counter] = {"word": Counter(), UNKNOWN: Counter(), SILENCE: Counter()}
    per_source: dict[str, Counter] = {}
    unreadable = 0
    decided: list[float] = []
    for clip in track(clips, description="transcribing", disable=args.json):
        try:
            audio, rate = load_audio(clip.path)
        except AudioError:
            unreadable += 1
            continue
        events = recognize(recognizer, audio, rate)
        words = [e.word for e in events if e.kind == "final"]
        result = outcome(clip.label, words)
        if result == "right" and clip.label not in (UNKNOWN, SILENCE):
            decided.append(decision_share(events))
        group = clip.label if clip.label in (UNKNOWN, SILENCE) else "word"
        counts[group][result] += 1
        if group == "word":
            per_source.setdefault(clip.source, Counter())[result] += 1

    def share(counter: Counter) -> dict:
        total = sum(counter.values())
        return {"clips": total, **{k: round(v / total, 4) for k, v in sorted(counter.items())}}

    report = {
        "model": bundle.card.get("name"),
        "words": share(counts["word"]),
        "words_per_source": {s: share(c) for s, c in sorted(per_source.items())},
        "unknown": share(counts[UNKNOWN]),
        "silence": share(counts[SILENCE]),
        "unreadable": unreadable,
        "partial_decision": {
            "words": len(decided),
            "median_share_of_word": round(float(np.median(decided)), 3) if decided else None,
            "decided_before_word_end": round(float(np.mean(np.array(decided) < 1)), 3)
            if decided
            else None,
        },
    }
    if args.json:
        print(json.dumps(report))
        return
    for name in ("words", "unknown", "silence", "partial_decision"):
        print(f"{name:8s} {report[name]}")
    for source, figures in report["words_per_source"].items():
        print(f"  {source:16s} {figures}")


if __name__ == "__main__":
    main()
