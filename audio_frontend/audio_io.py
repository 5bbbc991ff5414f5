"""Reading and validating audio: files and raw PCM buffers, to float32 mono."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
MAX_INPUT_CHANNELS = 32
PCM_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


class AudioError(ValueError):
    """Audio that cannot be used; the message is meant for the user as is."""


def check_sample_rate(sample_rate: int) -> int:
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool):
        raise AudioError(f"sample rate must be an integer, got {sample_rate!r}")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"unsupported sample rate {sample_rate} Hz "
            f"(supported: {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)"
        )
    return int(sample_rate)


def to_mono_float(samples: np.ndarray) -> np.ndarray:
    """Convert int16/float PCM, mono ``[n]`` or multichannel ``[n, ch]``, to float32 mono."""
    if samples.dtype == np.int16 and samples.ndim == 1:  # the streaming case, first
        return samples.astype(np.float32) / 32768.0
    if samples.ndim == 2:
        if not 1 <= samples.shape[1] <= MAX_INPUT_CHANNELS:
            raise AudioError(
                f"unsupported channel count {samples.shape[1]} (at most {MAX_INPUT_CHANNELS})"
            )
    elif samples.ndim != 1:
        raise AudioError("audio must be a 1-D (mono) or 2-D (samples x channels) array")
    if samples.dtype == np.int16:
        audio = samples.astype(np.float32) / 32768.0
    elif np.issubdtype(samples.dtype, np.floating):
        audio = samples.astype(np.float32, copy=False)
        if not np.all(np.isfinite(audio)):
            raise AudioError("audio contains NaN or infinite samples")
    else:
        raise AudioError(f"unsupported sample type {samples.dtype} (use int16 or float32)")
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32)
    return audio


def decode_s16le(data: bytes) -> np.ndarray:
    """Mono s16le bytes as int16 samples (not yet scaled: :func:`to_mono_float` and the
    cochlea take int16 as it is, so a stream's chunks are converted in one go)."""
    if len(data) % 2:
        raise AudioError(
            f"audio message of {len(data)} bytes is not a whole number of s16le frames"
        )
    samples = np.frombuffer(data, "<i2")
    return samples if samples.dtype == np.int16 else samples.astype(np.int16)


def decode_pcm(data: bytes, fmt: str, n_channels: int = 1) -> np.ndarray:
    """Decode interleaved little-endian PCM bytes into float32 mono."""
    if fmt not in PCM_FORMATS:
        raise AudioError(f"unsupported format {fmt!r} (supported: {', '.join(PCM_FORMATS)})")
    dtype = PCM_FORMATS[fmt]
    frame = dtype.itemsize * n_channels
    if len(data) % frame:
        raise AudioError(
            f"audio message of {len(data)} bytes is not a whole number of {fmt} frames"
        )
    samples = np.frombuffer(data, dtype=dtype)
    if n_channels > 1:
        samples = samples.reshape(-1, n_channels)
    return to_mono_float(samples.astype(dtype.newbyteorder("=")))


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file (wav, flac, ogg, mp3 where libsndfile can) as float32 mono."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    try:
        samples, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{path}: not a readable audio file ({error})") from None
    return check_audio(samples, sample_rate, str(path)), sample_rate


def check_audio(samples: np.ndarray, sample_rate: int, name: str = "audio") -> np.ndarray:
    """Validate decoded audio and return it as float32 mono."""
    try:
        check_sample_rate(int(sample_rate))
        audio = to_mono_float(samples)
    except AudioError as error:
        raise AudioError(f"{name}: {error}") from None
    if audio.size == 0:
        raise AudioError(f"{name}: contains no audio samples")
    return audio


def audio_blocks(path: str | Path, seconds: float = 10.0):
    """Open an audio file for reading in blocks; returns ``(sample_rate, duration, blocks)``.

    ``blocks`` yields float32 mono arrays of at most ``seconds``, so long files
    never sit whole in memory.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{path}: not a readable audio file ({error})") from None
    check_sample_rate(handle.samplerate)
    if handle.frames == 0:
        handle.close()
        raise AudioError(f"{path}: contains no audio samples")
    if handle.channels > MAX_INPUT_CHANNELS:
        handle.close()
        raise AudioError(f"{path}: unsupported channel count {handle.channels}")

    def blocks():
        with handle:
            block = max(1, int(seconds * handle.samplerate))
            try:
                for data in handle.blocks(blocksize=block, dtype="float32", always_2d=True):
                    yield check_audio(data, handle.samplerate, str(path))
            except sf.LibsndfileError as error:  # a file that opens can still fail later
                raise AudioError(f"{path}: damaged audio data ({error})") from None

    return handle.samplerate, handle.frames / handle.samplerate, blocks()
