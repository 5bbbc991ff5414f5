"""Service settings (command-line flags map onto these)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

ENVIRONMENT_KEY = "SPIKEEAR_SETTINGS"  # hands the settings to worker processes


@dataclass(frozen=True)
class Settings:
    model_path: str | None = None  # None: the bundled model
    max_upload_bytes: int = 50 * 1024 * 1024
    max_message_bytes: int = 1024 * 1024  # one WebSocket message
    max_pending_seconds: float = 5.0  # audio a stream may have queued before it must wait
    torch_threads: int = 1  # for worker processes, which start with torch's default

    def to_environment(self) -> None:
        os.environ[ENVIRONMENT_KEY] = json.dumps(asdict(self))

    @classmethod
    def from_environment(cls) -> Settings:
        return cls(**json.loads(os.environ.get(ENVIRONMENT_KEY, "{}")))
