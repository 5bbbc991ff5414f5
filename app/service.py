"""Shared pieces of the transports: turning recognizer output into response shapes."""

from __future__ import annotations

from models.decoding import WordEvent
from models.recognizer import Transcript


def word_json(event: WordEvent) -> dict:
    return {
        "word": event.word,
        "start": round(event.start, 3),
        "end": round(event.end, 3),
        "confidence": round(event.confidence, 4),
    }


def transcript_json(transcript: Transcript, compute_seconds: float) -> dict:
    duration = transcript.duration
    return {
        "text": " ".join(w.word for w in transcript.words),
        "words": [word_json(w) for w in transcript.words],
        "duration": round(duration, 3),
        "stats": {
            **transcript.stats,
            "real_time_factor": round(compute_seconds / duration, 5) if duration else 0.0,
        },
    }
