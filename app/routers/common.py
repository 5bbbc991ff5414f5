"""WebSocket helpers shared by the streaming routers."""

from __future__ import annotations

import json

import numpy as np
from fastapi import WebSocket
from starlette.websockets import WebSocketState

from app.schemas import ErrorMessage, message_json
from audio_frontend.events import SpikeEvents

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003  # text where audio is expected, and similar
CLOSE_INVALID = 1007  # malformed JSON, bad config, undecodable audio
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
SPIKE_RECORD = np.dtype([("time_us", "<u4"), ("channel", "<u2")])


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse_json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ProtocolError(CLOSE_INVALID, f"malformed JSON: {error.msg}") from None
    if not isinstance(value, dict):
        raise ProtocolError(CLOSE_INVALID, "control messages must be JSON objects")
    return value


def decode_spike_records(data: bytes, sender_channels: int | None) -> SpikeEvents:
    """Binary frames of little-endian (uint32 time in microseconds, uint16 channel)."""
    if len(data) % SPIKE_RECORD.itemsize:
        raise ProtocolError(
            CLOSE_INVALID,
            f"truncated spike record: {len(data)} bytes is not a multiple of "
            f"{SPIKE_RECORD.itemsize}",
        )
    records = np.frombuffer(data, SPIKE_RECORD)
    channels = records["channel"].astype(np.int32)
    if sender_channels is not None and channels.size and channels.max() >= sender_channels:
        raise ProtocolError(CLOSE_INVALID, f"spike channel {channels.max()} >= declared channels")
    return SpikeEvents(records["time_us"].astype(np.float64) / 1e6, channels, 0)


async def close_with_error(
    websocket: WebSocket, error: ProtocolError, send_json: bool = True
) -> None:
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    try:
        if send_json:
            await websocket.send_json(message_json(ErrorMessage(message=error.reason)))
        # A close reason may hold at most 123 bytes.
        await websocket.close(
            code=error.code, reason=error.reason.encode()[:123].decode(errors="ignore")
        )
    except RuntimeError:
        pass  # the client is already gone
