"""Service settings (command-line flags map onto these)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    model_path: str | None = None  # None: the bundled model
    max_upload_bytes: int = 50 * 1024 * 1024
    max_message_bytes: int = 1024 * 1024  # one WebSocket message
    max_pending_seconds: float = 5.0  # audio a stream may have queued before it must wait
