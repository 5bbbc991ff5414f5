"""Public message and response shapes (they also make up the OpenAPI document)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.json_schema import JsonSchemaMode, SkipJsonSchema


class StreamConfig(BaseModel):
    """Body of the optional first text message ``{"config": {...}}`` on ``/v1/stream``."""

    model_config = ConfigDict(extra="forbid")
    sample_rate: int = Field(16000, description="audio sample rate in Hz (8000-48000)")
    format: Literal["s16le", "f32le"] = "s16le"
    partials: bool = True
    vocabulary: list[str] | None = Field(None, description="restrict to these model words")
    unknown: bool = Field(False, description="report out-of-vocabulary words as _unknown_")
    min_confidence: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="a final less confident than this is reported as unknown (default: the "
        "model's 0.35); higher trades missed commands for fewer false accepts",
    )
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
    sample_rate: float = Field(16000, allow_inf_nan=False)  # NaN would reach round()
    words: bool = True
    max_alternatives: int = Field(0, ge=0, le=20)
    phrase_list: list[str] | None = None
    min_confidence: float | None = Field(None, ge=0.0, le=1.0)


class Word(BaseModel):
    word: str
    start: float
    end: float
    confidence: float


class TranscribeStats(BaseModel):
    # The recognizer's counts pass through whole: one it adds later reaches clients as before.
    model_config = ConfigDict(extra="allow")
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


# ----- /v1/stream messages (server to client) ----------------------------------------------
# Every message carries its ``type`` first; the field order below is the order on the wire.
class _Sent(BaseModel):
    # Every field is always sent, ``type`` included, so the schema lists them all as required.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class PartialMessage(_Sent):
    """The leading hypothesis of the word in progress, sent whenever it changes."""

    type: Literal["partial"] = "partial"
    word: str
    confidence: float
    time: float = Field(description="seconds into the stream when it was decided")


class FinalMessage(_Sent):
    """A word that has ended, with its times in seconds from the start of the stream."""

    type: Literal["final"] = "final"
    word: str
    start: float
    end: float
    confidence: float


class ActivityMessage(_Sent):
    """What the network heard and concluded since the previous one (config ``activity``)."""

    type: Literal["activity"] = "activity"
    time: float = Field(description="seconds of input through the network so far")
    bins: int = Field(description="time bins since the previous activity message")
    input: list[int] = Field(description="input spikes per cochlear channel over those bins")
    output: list[float] = Field(description="class probabilities after the last of them")


class ErrorMessage(_Sent):
    """Sent just before the server closes the connection with a non-1000 code."""

    type: Literal["error"] = "error"
    message: str


class EofMessage(_Sent):
    """The reply to ``{"eof": 1}``, after the last final; a normal close follows."""

    type: Literal["eof"] = "eof"


StreamMessage = Annotated[
    PartialMessage | FinalMessage | ActivityMessage | ErrorMessage | EofMessage,
    Field(discriminator="type"),
]


# ----- /vosk messages (server to client), as alphacep/vosk-server sends them ---------------
def _absent_when_none(schema: dict) -> None:
    # None is never sent: the key is left out (see message_json), so the schema shows
    # neither a null type nor a null default.
    schema.pop("default", None)


class VoskWord(BaseModel):
    conf: float
    end: float
    start: float
    word: str


class VoskPartial(BaseModel):
    """The reply to an audio message that ends no word."""

    partial: str


class VoskResult(BaseModel):
    """The reply that ends words (``result`` only with config ``words`` and words found)."""

    result: SkipJsonSchema[None] | list[VoskWord] = Field(None, json_schema_extra=_absent_when_none)
    text: str


class VoskAlternativeWord(BaseModel):
    start: float
    end: float
    word: str


class VoskAlternative(BaseModel):
    confidence: float
    text: str
    result: SkipJsonSchema[None] | list[VoskAlternativeWord] = Field(
        None, json_schema_extra=_absent_when_none
    )


class VoskAlternatives(BaseModel):
    """A result with config ``max_alternatives`` > 0: the n best over the last word."""

    alternatives: list[VoskAlternative]


VoskMessage = VoskPartial | VoskResult | VoskAlternatives

# Named in the OpenAPI document's components although no HTTP route uses them: WebSocket
# routes do not appear in OpenAPI, and their messages are the API all the same.  Client
# messages are validated ("validation" schema: defaults optional), server messages are
# sent whole ("serialization" schema: every field present).
WEBSOCKET_SCHEMAS: dict[str, tuple[Any, JsonSchemaMode]] = {
    "StreamConfig": (StreamConfig, "validation"),
    "StreamMessage": (StreamMessage, "serialization"),
    "VoskConfig": (VoskConfig, "validation"),
    "VoskMessage": (VoskMessage, "serialization"),
}


def websocket_components(ref_template: str = "#/components/schemas/{model}") -> dict[str, dict]:
    """JSON schemas of :data:`WEBSOCKET_SCHEMAS` and of the models they refer to, by name."""
    components: dict[str, dict] = {}
    for name, (shape, mode) in WEBSOCKET_SCHEMAS.items():
        schema = TypeAdapter(shape).json_schema(ref_template=ref_template, mode=mode)
        components.update(schema.pop("$defs", {}))
        components[name] = {**schema, "title": name}
    return components


def message_json(message: BaseModel) -> dict:
    """A message as the JSON object sent on the wire: optional parts that are absent
    (``None``) are left out rather than sent as null."""
    return message.model_dump(exclude_none=True)
