"""Public message and response shapes (they also make up the OpenAPI document)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StreamConfig(BaseModel):
    """Body of the optional first text message ``{"config": {...}}`` on ``/v1/stream``."""

    model_config = ConfigDict(extra="forbid")
    sample_rate: int = Field(16000, description="audio sample rate in Hz (8000-48000)")
    format: Literal["s16le", "f32le"] = "s16le"
    partials: bool = True
    vocabulary: list[str] | None = Field(None, description="restrict to these model words")
    unknown: bool = Field(False, description="report out-of-vocabulary words as _unknown_")
    input: Literal["audio", "spikes"] = Field(
        "audio", description="'spikes': binary frames of (uint32 time_us, uint16 channel) records"
    )
    channels: int | None = Field(None, description="spike input: the sender's channel count")
    activity: bool = Field(
        False,
        description="also send {'type': 'activity', 'time', 'bins', 'input', 'output'} messages "
        "(input spikes per channel and class probabilities, at most one per 50 ms of audio)",
    )


class VoskConfig(BaseModel):
    """The options of the Vosk server protocol that spikeear honours."""

    model_config = ConfigDict(extra="allow")
    sample_rate: float = 16000
    words: bool = True
    max_alternatives: int = Field(0, ge=0, le=20)
    phrase_list: list[str] | None = None


class Word(BaseModel):
    word: str
    start: float
    end: float
    confidence: float


class TranscribeStats(BaseModel):
    spikes: int
    input_spikes: int
    hidden_spikes: int
    synaptic_ops: int
    dense_macs: int
    energy_pj: dict[str, float]
    real_time_factor: float


class Transcription(BaseModel):
    text: str
    words: list[Word]
    duration: float
    stats: TranscribeStats


class ErrorBody(BaseModel):
    error: str
