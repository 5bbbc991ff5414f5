"""Waveform augmentation for training: noise, speech level, speed, band-limiting, placement.

Every clip of every class is band-limited to 4 kHz at random, so that the FSDD
digits (recorded at 8 kHz) cannot be told apart from the 16 kHz command words by
bandwidth alone.  Level can betray the class too: two of the five FSDD training
speakers speak 16-22 dB below the Speech Commands median, and a model trained with
gains relative to each recording learned that quiet means digit
(``benchmarks/robustness.py``), so every variant gets a random absolute speech level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from training.config import DEFAULT_SPEECH_LEVEL_DBFS


@dataclass(frozen=True)
class AugmentConfig:
    noise_probability: float = 0.7
    snr_db: tuple[float, float] = (0.0, 25.0)
    # The variant's speech level (``active_level_dbfs``), drawn from this range.
    speech_level_dbfs: tuple[float, float] = DEFAULT_SPEECH_LEVEL_DBFS
    speed: tuple[float, float] = (0.85, 1.15)
    band_limit_probability: float = 0.4


def place(audio: np.ndarray, length: int, rng: np.random.Generator | None) -> np.ndarray:
    """Crop or zero-pad to ``length`` samples: centred, or at a random offset with ``rng``."""
    if len(audio) >= length:
        start = (
            (len(audio) - length) // 2 if rng is None else rng.integers(0, len(audio) - length + 1)
        )
        return audio[start : start + length]
    out = np.zeros(length, np.float32)
    start = (length - len(audio)) // 2 if rng is None else rng.integers(0, length - len(audio) + 1)
    out[start : start + len(audio)] = audio
    return out


def band_limit(audio: np.ndarray, rate: int, limit_rate: int = 8000) -> np.ndarray:
    """What a ``limit_rate`` recording of the same sound would contain."""
    if rate <= limit_rate:
        return audio
    return soxr.resample(soxr.resample(audio, rate, limit_rate), limit_rate, rate)[: len(audio)]


def active_level_dbfs(audio: np.ndarray, rate: int) -> float:
    """Speech level: the RMS of the loudest 30% of 20 ms frames, in dB full scale
    (the pauses around a word do not dilute it, as they would a plain RMS)."""
    frame = round(0.02 * rate)
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame)
    if not len(frames):
        return -120.0
    energies = np.sort(np.mean(frames.astype(np.float64) ** 2, axis=1))[::-1]
    loudest = energies[: max(1, round(0.3 * len(energies)))]
    return float(10 * np.log10(loudest.mean() + 1e-12))


def augment(
    audio: np.ndarray,
    rate: int,
    noises: list[np.ndarray],
    rng: np.random.Generator,
    config: AugmentConfig = AugmentConfig(),
) -> np.ndarray:
    """One random variant of a 16 kHz clip (length preserved)."""
    length = len(audio)
    speed = rng.uniform(*config.speed)
    audio = soxr.resample(audio, rate, int(rate / speed)).astype(np.float32)
    audio = place(audio, length, rng)
    if rng.random() < config.band_limit_probability:
        audio = band_limit(audio, rate)
    # Measured before the noise is added: the level set below is the speech's.
    speech_level = active_level_dbfs(audio, rate)
    if noises and rng.random() < config.noise_probability:
        noise = noises[rng.integers(len(noises))]
        noise = np.resize(np.roll(noise, rng.integers(len(noise))), length)
        signal_power = float(np.mean(audio**2)) + 1e-10
        noise_power = float(np.mean(noise**2)) + 1e-10
        snr = rng.uniform(*config.snr_db)
        audio = audio + noise * np.sqrt(signal_power / noise_power / 10 ** (snr / 10))
    gain = 10 ** ((rng.uniform(*config.speech_level_dbfs) - speech_level) / 20)
    peak = float(np.abs(audio).max()) + 1e-9
    gain = min(gain, 0.99 / peak)  # never clip
    return (audio * gain).astype(np.float32)
