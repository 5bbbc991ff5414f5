"""Spike files in the layout of the Spiking Heidelberg Digits (SHD) data set.

``spikes/times`` and ``spikes/units`` are ragged arrays (one entry per sample) of
spike times in seconds and channel indices; ``labels`` holds one integer per
sample.  Our files add the front-end configuration as attributes of the root
group, and ``extra/keys`` (label names) and ``extra/names`` (source file names).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from audio_frontend.audio_io import AudioError
from audio_frontend.events import SpikeEvents

SHD_CHANNELS = 700  # the published SHD/SSC files use 700 cochlear channels


def write_spike_file(
    path: str | Path,
    samples: list[SpikeEvents],
    labels: list[int],
    attributes: dict | None = None,
    keys: list[str] | None = None,
    names: list[str] | None = None,
) -> None:
    vlen_float = h5py.vlen_dtype(np.float64)  # exact round trip of our times
    vlen_unit = h5py.vlen_dtype(np.uint16)
    with h5py.File(path, "w") as file:
        times = file.create_dataset("spikes/times", (len(samples),), dtype=vlen_float)
        units = file.create_dataset("spikes/units", (len(samples),), dtype=vlen_unit)
        for i, events in enumerate(samples):
            times[i] = events.times
            units[i] = events.channels.astype(np.uint16)
        file.create_dataset("labels", data=np.asarray(labels, np.uint16))
        if keys is not None:
            file.create_dataset("extra/keys", data=np.array(keys, dtype=h5py.string_dtype()))
        if names is not None:
            file.create_dataset("extra/names", data=np.array(names, dtype=h5py.string_dtype()))
        for key, value in (attributes or {}).items():
            file.attrs[key] = json.dumps(value) if isinstance(value, dict) else value
        file.attrs["n_channels"] = samples[0].n_channels if samples else SHD_CHANNELS


def read_spike_file(path: str | Path) -> tuple[list[SpikeEvents], np.ndarray, dict]:
    """Read our files and the published SHD/SSC files.

    Returns the events of each sample, the labels, and the root attributes
    (``keys`` is added when the file has label names).
    """
    path = Path(path)
    try:
        file = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as error:
        raise AudioError(f"{path}: not a readable HDF5 spike file ({error})") from None
    with file:
        if "spikes" not in file or "times" not in file["spikes"] or "units" not in file["spikes"]:
            raise AudioError(f"{path}: no spikes/times and spikes/units (not an SHD-layout file)")
        attributes = {
            key: json.loads(value) if isinstance(value, str) and value.startswith("{") else value
            for key, value in file.attrs.items()
        }
        n_channels = int(attributes.get("n_channels", SHD_CHANNELS))
        samples = []
        for times, units in zip(file["spikes/times"], file["spikes/units"], strict=True):
            order = np.argsort(times, kind="stable")
            samples.append(
                SpikeEvents(
                    np.asarray(times, np.float64)[order],
                    np.asarray(units, np.int32)[order],
                    n_channels,
                )
            )
        labels = np.asarray(file["labels"]) if "labels" in file else np.zeros(len(samples), int)
        if "extra/keys" in file:
            attributes["keys"] = [
                k.decode() if isinstance(k, bytes) else str(k) for k in file["extra/keys"]
            ]
    return samples, labels, attributes
