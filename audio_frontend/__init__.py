"""Software cochlea: PCM audio in, auditory-nerve-like spike events out.

The public interface is small: a :class:`CochleaConfig`, a per-stream
:class:`CochleaState`, and :func:`process_chunk` which maps (chunk, state) to
(events, state).  Chunking never changes the result.
"""

from audio_frontend.audio_io import AudioError, decode_pcm, load_audio
from audio_frontend.cochlea import Cochlea, CochleaConfig, CochleaState
from audio_frontend.events import SpikeEvents, bin_events

__all__ = [
    "AudioError",
    "Cochlea",
    "CochleaConfig",
    "CochleaState",
    "SpikeEvents",
    "bin_events",
    "decode_pcm",
    "load_audio",
]
