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
    shutdown_grace_s: float = 10.0  # on SIGTERM, time for open streams to send their last words
    # Network access (see the README, "Running it on a network").  0 turns a limit off.
    api_keys: tuple[str, ...] = ()  # none: anyone who reaches the port may use it
    allow_origins: tuple[str, ...] = ()  # other origins whose pages may call the API
    max_streams: int = 500  # open streams per server, all worker processes together
    idle_timeout_s: float = 60.0  # a stream that sends nothing this long is closed
    max_stream_s: float = 7200.0  # audio seconds in one stream
    max_audio_s: float = 1800.0  # audio seconds in one upload
    max_batch_jobs: int = 2  # concurrent uploads per server (CPU left for live streams)
    shared_dir: str | None = None  # where worker processes count streams and uploads together
    words_path: str | None = None  # the custom word set file (None: kept in memory)

    @property
    def transport_max_message_bytes(self) -> int:
        """uvicorn's own WebSocket message limit.  Above ``max_message_bytes``, so that a
        message over it reaches the app, which answers with an error message and 1009
        (uvicorn's own refusal is a bare 1009); 4x bounds what one message makes us buffer."""
        return 4 * self.max_message_bytes

    def to_environment(self) -> None:
        os.environ[ENVIRONMENT_KEY] = json.dumps(asdict(self))

    @classmethod
    def from_environment(cls) -> Settings:
        values = json.loads(os.environ.get(ENVIRONMENT_KEY, "{}"))
        # JSON has no tuples: the lists it gives back become tuples again (frozen, hashable).
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
