"""Operation and energy counts of a network: the one place they are computed.

A spiking network does work only where spikes arrive: each spike reaches its
synaptic targets (its fan-out) and costs one accumulate per target.  A dense
network of the same shape does every multiply-accumulate every bin.  Energy is
estimated from the per-operation figures of Horowitz (ISSCC 2014) for 45 nm,
32-bit float; memory access is ignored, so these are lower bounds to compare
the two, not a hardware measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.network import Classifier

PICOJOULES_PER_AC = 0.9  # 45 nm accumulate
PICOJOULES_PER_MAC = 4.6  # 45 nm multiply-accumulate


@dataclass(frozen=True)
class NetworkCosts:
    """What one spike and one bin of a given network cost."""

    # Targets reached by one spike of: the input (at every delay; averaged over
    # channels, which a frequency-shared layer reaches unevenly at its edges),
    # then of each hidden layer (next layer or readout, plus recurrent targets).
    fan_out: np.ndarray  # float64 [1 + layers]
    dense_macs_per_bin: int  # every synapse once

    @classmethod
    def of(cls, network: Classifier) -> NetworkCosts:
        config = network.config
        layers = len(config.hidden)
        onward = [network.input_synapses(i) for i in range(layers)]
        onward.append(config.hidden[-1] * config.n_classes)  # the readout
        recurrent = list(config.hidden) if config.recurrent else [0] * layers
        fan_out = np.array(
            [onward[0] / config.n_inputs]
            + [onward[i + 1] / config.hidden[i] + recurrent[i] for i in range(layers)],
            np.float64,
        )
        dense = sum(onward) + sum(h * h for h in config.hidden if config.recurrent)
        return cls(fan_out, int(dense))

    def synaptic_ops(self, input_spikes: np.ndarray, layer_spikes: np.ndarray) -> np.ndarray:
        """Accumulates caused by ``input_spikes`` ``[...]`` and hidden ``layer_spikes``
        ``[..., layers]`` (any leading shape: per bin, per clip, per stream)."""
        return (
            np.asarray(input_spikes, np.float64) * self.fan_out[0]
            + np.asarray(layer_spikes, np.float64) @ self.fan_out[1:]
        )

    def dense_macs(self, bins: int) -> int:
        return self.dense_macs_per_bin * bins


def energy_pj(synaptic_ops: float, dense_macs: float) -> dict[str, float]:
    """Estimated energy of the spiking network's accumulates and of the dense
    equivalent's multiply-accumulates, in picojoules."""
    return {
        "snn_synaptic_ops": round(synaptic_ops * PICOJOULES_PER_AC, 1),
        "dense_equivalent_macs": round(dense_macs * PICOJOULES_PER_MAC, 1),
    }
