"""Recognizer output to the public message and response shapes of :mod:`app.schemas`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.schemas import FinalMessage, PartialMessage, TranscribeStats, Transcription, Word

if TYPE_CHECKING:
    from models.decoding import WordEvent
    from models.recognizer import Transcript


def word_message(event: WordEvent) -> PartialMessage | FinalMessage:
    """A word event as the ``/v1/stream`` message every transport sends for it."""
    if event.kind == "partial":
        return PartialMessage(
            word=event.word, confidence=round(event.confidence, 4), time=round(event.time, 3)
        )
    return FinalMessage(
        word=event.word,
        start=round(event.start, 3),
        end=round(event.end, 3),
        confidence=round(event.confidence, 4),
    )


def transcription(transcript: Transcript, compute_seconds: float) -> Transcription:
    duration = transcript.duration
    return Transcription(
        text=" ".join(w.word for w in transcript.words),
        words=[
            Word(
                word=w.word,
                start=round(w.start, 3),
                end=round(w.end, 3),
                confidence=round(w.confidence, 4),
            )
            for w in transcript.words
        ],
        duration=round(duration, 3),
        stats=TranscribeStats(
            **transcript.stats,
            real_time_factor=round(compute_seconds / duration, 5) if duration else 0.0,
        ),
    )


def transcript_json(transcript: Transcript, compute_seconds: float) -> dict:
    """The ``POST /v1/transcribe`` body (also ``spikeear transcribe --json``)."""
    return transcription(transcript, compute_seconds).model_dump()
