"""Spike events: the currency between the cochlea, spike files and the classifier."""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


@dataclass(frozen=True)
class SpikeEvents:
    """Time-ordered spike events.

    ``times`` are in seconds from the start of the stream; ``channels`` index the
    cochlear channel (0 = lowest frequency).  Several events may share a time.
    """

    times: np.ndarray  # float64 [n]
    channels: np.ndarray  # int32 [n]
    n_channels: int

    def __post_init__(self) -> None:
        if self.times.shape != self.channels.shape:
            raise ValueError("times and channels must have the same length")

    def __len__(self) -> int:
        return int(self.times.size)

    @classmethod
    def empty(cls, n_channels: int) -> SpikeEvents:
        return cls(np.zeros(0, np.float64), np.zeros(0, np.int32), n_channels)

    @classmethod
    def concatenate(cls, parts: list[SpikeEvents], n_channels: int) -> SpikeEvents:
        if not parts:
            return cls.empty(n_channels)
        return cls(
            np.concatenate([p.times for p in parts]),
            np.concatenate([p.channels for p in parts]).astype(np.int32),
            n_channels,
        )

    def validate(self) -> None:
        """Raise ValueError for events a classifier cannot consume."""
        if self.times.size and np.any(np.diff(self.times) < 0):
            raise ValueError("spike events are not in time order")
        if self.times.size and self.times[0] < 0:
            raise ValueError("spike times must be non-negative")
        if self.channels.size and (
            self.channels.min() < 0 or self.channels.max() >= self.n_channels
        ):
            raise ValueError(
                f"spike channel {int(self.channels.max())} is outside the model's "
                f"{self.n_channels} input channels"
            )


def bin_events(
    events: SpikeEvents, bin_s: float, n_bins: int | None = None, start_s: float = 0.0
) -> np.ndarray:
    """Count events into a dense raster ``[time_bins, channels]`` (float32).

    Bin ``k`` covers ``[start_s + k*bin_s, start_s + (k+1)*bin_s)``.  Without
    ``n_bins`` the raster ends with the bin holding the last event.
    """
    index = np.floor((events.times - start_s) / bin_s + 1e-9).astype(np.int64)
    if n_bins is None:
        n_bins = int(index.max()) + 1 if index.size else 0
    keep = (index >= 0) & (index < n_bins)
    return count_cells(index[keep], events.channels[keep], n_bins, events.n_channels)


def count_cells(rows: np.ndarray, columns: np.ndarray, n_rows: int, n_columns: int) -> np.ndarray:
    """How often each (row, column) pair occurs, as float32 ``[n_rows, n_columns]``.

    ``np.bincount`` over flat indices: far faster than ``np.add.at`` on the hot path.
    """
    flat = rows.astype(np.int64) * n_columns + columns
    counts = np.bincount(flat, minlength=n_rows * n_columns)
    return counts.reshape(n_rows, n_columns).astype(np.float32)


class SpikeBinner:
    """Streaming version of :func:`bin_events`: emits each bin once it is complete.

    Bins are ``bin_samples`` samples of the ``sample_rate`` clock wide (integer
    arithmetic, so streaming and whole-file binning agree exactly).
    """

    def __init__(self, n_channels: int, bin_samples: int, sample_rate: int) -> None:
        self.n_channels = n_channels
        self.bin_samples = bin_samples
        self.sample_rate = sample_rate
        self.next_bin = 0  # index of the first bin not yet emitted
        self._pending = np.zeros((0, n_channels), np.float32)  # bins next_bin, next_bin+1, ...

    def add(
        self, events: SpikeEvents, complete_until_sample: int, max_ahead_bins: int | None = None
    ) -> np.ndarray:
        """Count ``events`` and return the bins that end at or before the given sample.

        With ``max_ahead_bins``, input reaching further than that many bins past the
        first bin not yet emitted raises ValueError before anything is counted: every
        bin up to it would be allocated (one event at 2**32 us is 430,000 bins).
        """
        complete = complete_until_sample // self.bin_samples - self.next_bin
        if max_ahead_bins is not None:
            last = float(events.times.max()) if len(events) else 0.0
            reach = max(complete_until_sample, round(last * self.sample_rate))
            if reach // self.bin_samples - self.next_bin > max_ahead_bins:
                bin_s = self.bin_samples / self.sample_rate
                raise ValueError(
                    f"spike time {reach / self.sample_rate:.3f} s jumps more than "
                    f"{max_ahead_bins * bin_s:g} s past the stream's "
                    f"{self.next_bin * bin_s:.3f} s"
                )
        if len(events):
            if complete > len(self._pending):  # rows about to be taken anyway: one call
                self._grow(complete)
            args = (events.times, events.channels, self.sample_rate, self.bin_samples)
            needed = _count_into(*args, self.next_bin, self._pending)
            if needed < 0:
                raise ValueError("spike events arrived for a time that has already been binned")
            if needed > len(self._pending):  # grow, then count (nothing was counted yet)
                self._grow(needed)
                _count_into(*args, self.next_bin, self._pending)
        return self._take(max(0, complete))

    def add_counts(
        self, counts: np.ndarray, first_bin: int, complete_until_sample: int
    ) -> np.ndarray:
        """:meth:`add` for events already counted: ``counts`` (float32 ``[bins,
        channels]``) holds bins ``first_bin, first_bin + 1, ...``.  The binner may keep
        ``counts`` as its own and change it in place."""
        row = first_bin - self.next_bin
        if row < 0:
            raise ValueError("spike counts arrived for a time that has already been binned")
        complete = complete_until_sample // self.bin_samples - self.next_bin
        # As with events, a bin not yet complete is held (and flushed) only once it has
        # a spike: a chunk ending in a silent part of a bin leaves no row for it.
        keep = len(counts)
        while (
            keep and row + keep > max(complete, len(self._pending)) and not counts[keep - 1].any()
        ):
            keep -= 1
        if row == 0 and not len(self._pending):  # the usual chunk: no copy, no sum
            self._pending = counts[:keep]
        elif keep:
            if row + keep > len(self._pending):
                self._grow(row + keep)
            self._pending[row : row + keep] += counts[:keep]
        return self._take(max(0, complete))

    def flush(self) -> np.ndarray:
        """All bins holding counted events, the last possibly partial."""
        return self._take(len(self._pending))

    def _grow(self, n: int) -> None:
        grown = np.zeros((n, self.n_channels), np.float32)
        grown[: len(self._pending)] = self._pending
        self._pending = grown

    def _take(self, n: int) -> np.ndarray:
        if n > len(self._pending):
            self._grow(n)
        done, self._pending = self._pending[:n], self._pending[n:]
        self.next_bin += n
        return done


@numba.njit(cache=True, nogil=True)
def _count_into(times, channels, sample_rate, bin_samples, first_bin, pending):
    """Count events into ``pending`` (row 0 = bin ``first_bin``), as
    ``count_cells`` on ``rint(times * sample_rate) // bin_samples`` would, in one
    pass without temporary arrays (a streaming chunk holds only a few events).

    Returns the rows the events need; -1 (nothing counted) when an event falls
    before ``first_bin``, and nothing is counted either when ``pending`` is too
    short for them: the caller grows it and calls again.
    """
    needed = 0
    for k in range(times.shape[0]):
        row = np.int64(np.rint(times[k] * sample_rate)) // bin_samples - first_bin
        if row < 0:
            return -1
        needed = max(needed, row + 1)
    if needed > pending.shape[0]:
        return needed
    for k in range(times.shape[0]):
        row = np.int64(np.rint(times[k] * sample_rate)) // bin_samples - first_bin
        pending[row, channels[k]] += 1.0
    return needed
