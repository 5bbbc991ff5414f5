"""Software cochlea: PCM audio in, auditory-nerve-like spike events out.

The public interface is small: a :class:`CochleaConfig`, a :class:`Cochlea`
built from it, a per-stream :class:`CochleaState` (``Cochlea.new_state``), and
``Cochlea.process(chunk, state)``, which returns the chunk's spike events and
advances the state in place (``process_many`` does several streams in one call;
``process_many_binned`` counts their spikes straight into time bins instead).
Chunking never changes the result.
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
