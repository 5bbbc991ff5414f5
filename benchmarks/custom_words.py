"""Custom words: enroll a word the model never learned, then find it in other speakers.

Some of the Speech Commands words outside the vocabulary are held out (``--words``):
the enrollment space is fitted without them (``training.enrollment``), and for each
one a custom word is enrolled from k recordings of some speakers (k = 1, 3, 5, 10,
``--repeats`` draws each) or from synthesized speech alone, then tested on the
recordings of every other speaker:

* detection: the share of the word's test recordings with a final of the custom word;
* false accepts: the share of recordings of the other held-out words, of the 20
  built-in words (validation speakers) and of background-noise windows that get one;
* what the built-in words lose: their accuracy on the validation speakers with the
  held-out words all enrolled (``--k-builtin`` recordings each) against none.

Finals are decided exactly as the recognizer decides them (``CustomWords.takes_over``
on each word's network decision and hidden spike rates, which custom words do not
change); ``--check`` streams some recordings through the recognizer with the words
enrolled and confirms the same finals.  For a base network that never heard the held-out
words at all, train one with ``spikeear train --exclude-words ...`` and pass ``--model``.

    python -m benchmarks.custom_words --data ../shared/data/speech_commands \\
        --data ../shared/data/fsdd --json benchmarks/custom_words/custom_words.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

from app.words import Recording, WordSet, synthesized
from audio_frontend.audio_io import load_audio
from benchmarks.common import console, read_audio
from models.custom_words import CustomWord, CustomWords
from models.decoding import WordEvent
from models.model_file import load_model
from models.recognizer import Recognizer, StreamOptions, longest_word
from models.vocabulary import SILENCE, UNKNOWN
from training.data import Clip, discover, split_by_speaker
from training.enrollment import CLIPS_PER_WORD, fit_space, training_clips

HELD_OUT = ("happy", "sheila", "forward", "wow", "marvin")  # the most recorded ones
SHOTS = (1, 3, 5, 10)
NOISE_WINDOW_S = 10.0


@dataclass
class Spoken:
    """One recording's finals with their hidden rates (``Recognizer.describe``)."""

    words: list[tuple[WordEvent, np.ndarray]]

    def longest(self) -> np.ndarray | None:
        """The rates of the word enrollment takes from the recording."""
        return longest_word(self.words)


def describe(recognizer: Recognizer, audio: np.ndarray, rate: int) -> Spoken:
    return Spoken(recognizer.describe(audio, rate))


def finals(custom: CustomWords, spoken: Spoken) -> list[str]:
    """What the recognizer reports for the recording with ``custom`` words enrolled."""
    out = []
    for event, rates in spoken.words:
        match = custom.takes_over(event.word, rates, None)
        out.append(match.word if match is not None else event.word)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True, help="data folders")
    parser.add_argument("--model", help="base model (default: the bundled one)")
    parser.add_argument("--words", nargs="+", default=list(HELD_OUT))
    parser.add_argument("--repeats", type=int, default=10, help="enrollment draws per k")
    parser.add_argument("--k-builtin", type=int, default=5)
    parser.add_argument("--noise-minutes", type=float, default=10.0)
    parser.add_argument("--no-synthesis", action="store_true")
    parser.add_argument("--check", type=int, default=20, help="recordings streamed to check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = console()
    held = set(args.words)

    bundle = load_model(args.model)
    space_clips = training_clips(args.data, bundle, held, CLIPS_PER_WORD, args.seed)
    bundle.enrollment, space_counts = fit_space(bundle, space_clips)
    recognizer = Recognizer(bundle)

    clips = [c for root in args.data for c in discover(root, bundle.vocabulary)]
    _, validation = split_by_speaker(clips)
    test: dict[str, list[Clip]] = {w: [c for c in clips if c.spoken == w] for w in args.words}
    builtin = [c for c in validation if c.label not in (UNKNOWN, SILENCE)]
    noise_files = [c for c in clips if c.spoken == "noise"]

    spoken: dict[Path, Spoken] = {}
    for clip in track([*[c for w in args.words for c in test[w]], *builtin], "recordings"):
        audio, rate = load_audio(clip.path)
        spoken[clip.path] = describe(recognizer, audio, rate)
    # The noise recordings (1 s each in Speech Commands) end to end, heard in 10 s windows.
    noise_audio = np.concatenate([read_audio(c.path) for c in noise_files] or [np.zeros(0)])
    noise_audio = noise_audio[: int(args.noise_minutes * 60 * 16000)]
    window = int(NOISE_WINDOW_S * 16000)
    noise = [
        describe(recognizer, noise_audio[start : start + window], 16000)
        for start in range(0, len(noise_audio) - window + 1, window)
    ]
    noise_hours = len(noise) * NOISE_WINDOW_S / 3600

    def enroll(word: str, examples: list[Clip]) -> CustomWord | None:
        longest = [r for r in (spoken[c.path].longest() for c in examples) if r is not None]
        if not longest:
            return None
        sources = tuple(c.path.name for c in examples)
        return CustomWord.enroll(bundle.enrollment, word, np.stack(longest), sources)

    def score(custom_word: CustomWord, positives: list[Clip]) -> dict:
        custom = CustomWords(bundle.enrollment, (custom_word,))
        word = custom_word.word

        def hit(s: Spoken) -> bool:
            return word in finals(custom, s)

        others = [c for w in args.words if w != word for c in test[w]]
        return {
            "detected": sum(hit(spoken[c.path]) for c in positives),
            "positives": len(positives),
            "fa_held_out": sum(hit(spoken[c.path]) for c in others),
            "held_out_others": len(others),
            "fa_builtin": sum(hit(spoken[c.path]) for c in builtin),
            "builtin": len(builtin),
            "fa_noise": sum(hit(s) for s in noise),
            "draws": 1,
        }

    rng = np.random.default_rng(args.seed)
    per_word: dict[str, dict] = defaultdict(dict)
    for word in args.words:
        speakers = sorted({c.speaker for c in test[word]})
        for k in SHOTS:
            if len(speakers) < k + 2:
                continue
            tallies = []
            for _ in range(args.repeats):
                chosen = set(rng.choice(speakers, k, replace=False))
                examples = [next(c for c in test[word] if c.speaker == s) for s in chosen]
                positives = [c for c in test[word] if c.speaker not in chosen]
                enrolled = enroll(word, examples)
                if enrolled is not None:
                    tallies.append(score(enrolled, positives))
            per_word[word][f"k{k}"] = _sum(tallies)
        if not args.no_synthesis:
            voices = synthesized(word, seed=args.seed)
            rates = []
            for voice in voices:
                described = describe(recognizer, voice.audio, voice.sample_rate).longest()
                if described is not None:
                    rates.append(described)
            if rates:
                enrolled = CustomWord.enroll(
                    bundle.enrollment, word, np.stack(rates), tuple(v.name for v in voices)
                )
                per_word[word]["synthesized"] = score(enrolled, test[word])

    # What the built-in words lose with every held-out word enrolled at once.
    enrolled_all, enrollment_clips = [], set()
    for word in args.words:
        by_speaker = {c.speaker: c for c in test[word]}
        chosen = [by_speaker[s] for s in sorted(by_speaker)[: args.k_builtin]]
        enrollment_clips |= {c.path for c in chosen}
        made = enroll(word, chosen)
        if made is not None:
            enrolled_all.append(made)
    all_words = CustomWords(bundle.enrollment, tuple(enrolled_all))
    together = _all_enrolled(all_words, test, enrollment_clips, spoken)
    none = CustomWords(bundle.enrollment)

    def accuracy(custom: CustomWords) -> float:
        right = sum(c.label in finals(custom, spoken[c.path]) for c in builtin)
        return right / max(len(builtin), 1)

    checked = _check(recognizer, all_words, builtin[: args.check], spoken)
    timing = _enrollment_seconds(bundle, test[args.words[0]][: args.k_builtin], args.no_synthesis)
    report = {
        "model": args.model or "bundled",
        "held_out": args.words,
        "space": space_counts,
        "noise_hours": noise_hours,
        "per_word": per_word,
        "average": _average(per_word, noise_hours),
        "builtin_accuracy": {"without": accuracy(none), "with": accuracy(all_words)},
        "builtin_enrolled": [w.word for w in enrolled_all],
        "all_enrolled": together,
        "streamed_equal_offline": checked,
        "enroll_seconds": timing,
        "command": "python -m benchmarks.custom_words " + " ".join(argv or []),
    }
    _show(out, report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if checked["differing"] == 0 else 1


def _check(recognizer: Recognizer, custom: CustomWords, clips: list[Clip], spoken: dict) -> dict:
    """Stream ``clips`` through the recognizer with ``custom`` enrolled: the finals must
    be the ones :func:`finals` reads offline."""
    recognizer.custom_words = custom
    differing = 0
    try:
        for clip in clips:
            audio, rate = load_audio(clip.path)
            options = StreamOptions(sample_rate=rate, emit_unknown=True)
            streamed = [w.word for w in recognizer.transcribe([audio], rate, options).words]
            differing += streamed != finals(custom, spoken[clip.path])
    finally:
        recognizer.custom_words = CustomWords(custom.space)
    return {"recordings": len(clips), "differing": differing}


def _all_enrolled(
    custom: CustomWords, test: dict[str, list[Clip]], enrollment: set[Path], spoken: dict
) -> dict:
    """With every held-out word enrolled at once: how often each one's other recordings
    come out as the word itself, and as another of the enrolled words."""
    own = other = total = 0
    for word, clips in test.items():
        for clip in clips:
            if clip.path in enrollment:
                continue
            heard = finals(custom, spoken[clip.path])
            total += 1
            own += word in heard
            other += any(w != word and w in custom.names for w in heard)
    return {
        "recordings": total,
        "detected": own / max(total, 1),
        "as_another": other / max(total, 1),
    }


def _enrollment_seconds(bundle, clips: list[Clip], no_synthesis: bool) -> dict:
    """Wall time of ``spikeear enroll``'s work (``WordSet.enroll``: reading, the
    recognizer, the prototype) for one word from recordings, and from synthesis."""
    timing = {}
    words = WordSet(Recognizer(bundle))
    started = time.perf_counter()
    words.enroll("recorded", [Recording(c.path.name, *load_audio(c.path)) for c in clips])
    timing[f"recordings_{len(clips)}"] = time.perf_counter() - started
    if not no_synthesis:
        started = time.perf_counter()
        words.enroll("synthesized", synthesized("synthesized"))
        timing["synthesized"] = time.perf_counter() - started
    return timing


def _sum(tallies: list[dict]) -> dict:
    return {key: sum(t[key] for t in tallies) for key in tallies[0]} if tallies else {}


def _average(per_word: dict, noise_hours: float) -> dict:
    """Rates over all words (pooled counts) per enrollment kind."""
    kinds = sorted({kind for word in per_word.values() for kind in word})
    average = {}
    for kind in kinds:
        t = _sum([word[kind] for word in per_word.values() if kind in word])
        average[kind] = {
            "detection": t["detected"] / max(t["positives"], 1),
            "fa_held_out": t["fa_held_out"] / max(t["held_out_others"], 1),
            "fa_builtin": t["fa_builtin"] / max(t["builtin"], 1),
            "fa_noise_per_hour": t["fa_noise"] / max(noise_hours * t["draws"], 1e-9),
            "words": sum(kind in word for word in per_word.values()),
            "draws": t["draws"],
        }
    return average


def _show(out, report: dict) -> None:
    from rich.table import Table

    table = Table(title="custom words: detection / false accepts (other held-out, built-in)")
    table.add_column("word")
    kinds = sorted({k for w in report["per_word"].values() for k in w})
    for kind in kinds:
        table.add_column(kind)
    for word, rows in report["per_word"].items():
        cells = []
        for kind in kinds:
            t = rows.get(kind)
            cells.append(
                "-"
                if not t
                else f"{t['detected'] / t['positives']:.0%} / "
                f"{t['fa_held_out'] / max(t['held_out_others'], 1):.1%}, "
                f"{t['fa_builtin'] / max(t['builtin'], 1):.1%}"
            )
        table.add_row(word, *cells)
    out.print(table)
    out.print(json.dumps(report["average"], indent=1))
    out.print(f"built-in accuracy {report['builtin_accuracy']}; {report['streamed_equal_offline']}")
    out.print(f"all held-out words enrolled at once: {report['all_enrolled']}")


if __name__ == "__main__":
    raise SystemExit(main())
