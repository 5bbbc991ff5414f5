"""Spikes per second of the default cochlea for silence, background noise and speech.

Rerun: ``python -m benchmarks.spike_rates [--data ../shared/data/speech_commands]``.
Noise: every ``_silence_`` clip, as recorded and scaled to -70, -60 and -50 dBFS RMS;
speech: up to 20 clips per word of the 20 vocabulary words.  Falls back to the test
fixtures when the data folder is absent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from audio_frontend import Cochlea, load_audio
from benchmarks.common import DEFAULT_DATA, FIXTURES, WORDS


def rate(cochlea: Cochlea, audio: np.ndarray, sample_rate: int) -> float:
    return len(cochlea.encode(audio, sample_rate)) / (len(audio) / sample_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    args = parser.parse_args()
    data = Path(args.data)
    if data.is_dir():
        noise_paths = sorted((data / "_silence_").glob("*.wav"))
        speech_paths = [p for w in WORDS for p in sorted((data / w).glob("*.wav"))[:20]]
    else:
        noise_paths = sorted(FIXTURES.glob("noise_*.wav"))
        speech_paths = sorted(FIXTURES.glob("*_nohash_*.wav"))
    cochlea = Cochlea()
    rows = {"digital silence": [rate(cochlea, np.zeros(16000, np.float32), 16000)]}
    levels = (-70, -60, -50)
    recorded, scaled = [], {level: [] for level in levels}
    for path in noise_paths:
        audio, sample_rate = load_audio(path)
        recorded.append(rate(cochlea, audio, sample_rate))
        rms = float(np.sqrt(np.mean(audio**2))) + 1e-12
        for level in levels:
            scaled[level].append(rate(cochlea, audio * (10 ** (level / 20) / rms), sample_rate))
    rows["background noise, as recorded"] = recorded
    for level in levels:
        rows[f"background noise at {level} dBFS RMS"] = scaled[level]
    rows["speech (1 s clips)"] = [rate(cochlea, *load_audio(p)) for p in speech_paths]
    table = Table(title="cochlea output, 64 channels")
    for column in ("input", "clips", "median spikes/s", "10th-90th percentile"):
        table.add_column(column)
    for name, values in rows.items():
        low, mid, high = np.percentile(values, [10, 50, 90])
        table.add_row(name, str(len(values)), f"{mid:,.0f}", f"{low:,.0f} - {high:,.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
