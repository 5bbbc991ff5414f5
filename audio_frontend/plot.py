"""Waveform, cochleagram and spike raster of one recording on a shared time axis."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import scipy.signal
import soxr

from audio_frontend.cochlea import Cochlea
from audio_frontend.events import SpikeEvents, bin_events


def plot_recording(
    audio: np.ndarray, sample_rate: int, cochlea: Cochlea, out: str | Path, title: str = ""
) -> SpikeEvents:
    """Write a PNG with three stacked panels; returns the events it plotted."""
    events = cochlea.encode(audio, sample_rate)
    config = cochlea.config
    duration = len(audio) / sample_rate
    centres = config.centre_frequencies()
    fig, (wave_ax, gram_ax, raster_ax) = plt.subplots(
        3, 1, figsize=(10, 8), sharex=True, gridspec_kw={"height_ratios": [1, 2, 2]}
    )
    wave_ax.plot(np.arange(len(audio)) / sample_rate, audio, lw=0.5, color="k")
    wave_ax.set_ylabel("amplitude")
    wave_ax.set_title(title or "waveform")

    # Cochleagram: the filterbank's rectified output energy per 5 ms, in dB.
    internal = (
        audio
        if sample_rate == config.sample_rate
        else soxr.resample(audio, sample_rate, config.sample_rate)
    )
    bins = bin_events(events, 0.005, n_bins=int(np.ceil(duration / 0.005)))
    gram = 10 * np.log10(_band_energy(internal, cochlea, 0.005) + 1e-10)
    gram_ax.imshow(
        gram.T,
        origin="lower",
        aspect="auto",
        extent=(0, duration, 0, config.channels),
        cmap="magma",
        vmin=gram.max() - 70,
    )
    _label_channels(gram_ax, centres)
    gram_ax.set_title("cochleagram (band energy, dB)")

    raster_ax.plot(events.times, events.channels + 0.5, "|", color="k", ms=1.5, mew=0.3, alpha=0.5)
    raster_ax.set_ylim(0, config.channels)
    _label_channels(raster_ax, centres)
    raster_ax.set_title(
        f"spike raster ({len(events)} spikes, {bins.sum() / max(duration, 1e-9):.0f}/s)"
    )
    raster_ax.set_xlabel("time (s)")
    raster_ax.set_xlim(0, duration)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return events


def _band_energy(audio: np.ndarray, cochlea: Cochlea, bin_s: float) -> np.ndarray:
    rate = cochlea.config.sample_rate
    hop = int(bin_s * rate)
    n_bins = max(1, len(audio) // hop)
    energy = np.zeros((n_bins, cochlea.config.channels))
    for c, f in enumerate(cochlea.config.centre_frequencies()):
        sos = scipy.signal.tf2sos(*scipy.signal.gammatone(f, "iir", fs=rate))
        band = scipy.signal.sosfilt(sos, audio)
        energy[:, c] = (band[: n_bins * hop] ** 2).reshape(n_bins, hop).mean(axis=1)
    return energy


def _label_channels(ax: plt.Axes, centres: np.ndarray) -> None:
    ticks = [f for f in (100, 250, 500, 1000, 2000, 4000, 7800) if centres[0] <= f <= centres[-1]]
    ax.set_yticks([np.interp(f, centres, np.arange(len(centres))) for f in ticks])
    ax.set_yticklabels([f"{f:g}" for f in ticks])
    ax.set_ylabel("frequency (Hz)")
