"""The classifier: recurrent spiking layers and a leaky-integrator readout.

Sequence mode (``forward``, ``[batch, time, inputs]``) trains the network and
serves batch work; step mode (``step``, one time bin with an explicit
:class:`NetworkState`) serves streams.  Both run the same per-step functions, so
they agree; many streams are stepped together from a :class:`StatePool`.

``kind`` selects the neuron model of the hidden layers, for the comparisons in
the efficiency report:

* ``"spiking"``: recurrent adLIF neurons emitting binary spikes (the product).
* ``"analog"``: the same leaky recurrent layers with real-valued ReLU outputs
  (the non-spiking network of the same shape).
* ``"binary"``: binary weights (sign, scaled per neuron) and binary activations
  without membrane memory, a binary neural network of the same shape.

``neuron`` selects the spiking neuron: ``"adlif"`` (the product) or ``"lif"``, NIR's
plain LIF node exactly (reset to 0, no adaptation), for neuromorphic toolchains that
map only NIR's neuron primitives.
"""

from __future__ import annotations

import itertools
import math
import threading
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from models import kernels
from models.neurons import (
    NEURONS,
    AdLIFParameters,
    AdLIFSequence,
    AdLIFState,
    adlif_step,
    leaky_step,
    lif_step,
    spike,
)

KINDS = ("spiking", "analog", "binary")
# Settings that model files written before their removal still hold: read and ignored
# (``extra`` was a free-form dict that no network used).
_REMOVED_SETTINGS = ("extra",)


def _ordinal(n: int) -> str:
    return ("first", "second", "third", "fourth")[n - 1] if n <= 4 else f"{n}th"


@dataclass(frozen=True)
class NetworkConfig:
    n_inputs: int = 64
    n_classes: int = 22
    hidden: tuple[int, ...] = (256, 256)
    kind: str = "spiking"
    recurrent: bool = True
    dropout: float = 0.1
    readout_tau: float = 15.0  # time bins
    tau_u: tuple[float, float] = (5.0, 25.0)
    tau_w: tuple[float, float] = (30.0, 120.0)
    # Synaptic delays, in bins: every input reaches the first layer once per delay,
    # through its own weights (a delay line), so that layer sees a short window of
    # the past as a convolution would.  (0,) is no delay line.
    input_delays: tuple[int, ...] = (0,)
    # Input weights of the first layer shared across frequency, as (filters, taps,
    # stride): see FrequencyConv.  None is a dense first layer.
    input_conv: tuple[int, int, int] | None = None
    # Later layers' input weights shared the same way over the previous layer's
    # frequency positions, with all its filters as depth: one (filters, taps, stride)
    # triple per layer from the second on, flat, so (32, 5, 2) shares the second layer
    # (a two-layer spiking convolution along frequency) and (32, 5, 2, 64, 3, 2) the
    # third as well.  Needs input_conv.
    hidden_conv: tuple[int, ...] | None = None
    # The spiking neuron: "adlif", or "lif" (NIR's LIF node exactly; spiking kind only).
    neuron: str = "adlif"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown network kind {self.kind!r} (choose from {', '.join(KINDS)})")
        if self.neuron not in NEURONS:
            raise ValueError(f"unknown neuron {self.neuron!r} (choose from {', '.join(NEURONS)})")
        if self.neuron != "adlif" and self.kind != "spiking":
            raise ValueError(f"neuron {self.neuron!r} is for the spiking kind")
        if not self.input_delays or min(self.input_delays) < 0:
            raise ValueError(f"input delays must be bins >= 0, not {self.input_delays}")
        if self.input_conv is not None:
            if len(self.input_conv) != 3 or min(self.input_conv) < 1:
                raise ValueError(
                    f"input_conv needs filters, taps, stride >= 1, not {self.input_conv}"
                )
            if self.kind == "binary":
                raise ValueError("input_conv is for the spiking and analog kinds")
        if self.hidden_conv is not None:
            if self.input_conv is None or len(self.hidden) < 2:
                raise ValueError("hidden_conv needs input_conv and at least two layers")
            if not self.hidden_conv or len(self.hidden_conv) % 3 or min(self.hidden_conv) < 1:
                raise ValueError(
                    "hidden_conv needs filters, taps, stride >= 1 for each shared layer, "
                    f"not {self.hidden_conv}"
                )
            if len(self.hidden_conv) // 3 > len(self.hidden) - 1:
                raise ValueError(
                    f"hidden_conv {self.hidden_conv} shares {len(self.hidden_conv) // 3} layers "
                    f"after the first, but there are only {len(self.hidden) - 1}"
                )
        for layer, (positions, _, filters, taps, stride) in enumerate(self.shared_layers()):
            neurons = filters * math.ceil(positions / stride)
            if self.hidden[layer] != neurons:
                name, what = ("hidden_conv", "positions") if layer else ("input_conv", "inputs")
                raise ValueError(
                    f"{name} {(filters, taps, stride)} on {positions} {what} makes {neurons} "
                    f"{_ordinal(layer + 1)}-layer neurons, but hidden[{layer}] is "
                    f"{self.hidden[layer]}"
                )

    def shared_layers(self) -> list[tuple[int, int, int, int, int]]:
        """FrequencyConv's (positions, depth, filters, taps, stride) for each layer shared
        along frequency, first layer first: the first reads the channels at every delay,
        each later one the previous layer's positions with its filters as depth."""
        if self.input_conv is None:
            return []
        rest = self.hidden_conv or ()
        triples = [self.input_conv, *(rest[i : i + 3] for i in range(0, len(rest), 3))]
        layers, positions, depth = [], self.n_inputs, len(self.input_delays)
        for filters, taps, stride in triples:
            layers.append((positions, depth, filters, taps, stride))
            positions, depth = math.ceil(positions / stride), filters
        return layers

    def to_dict(self) -> dict:
        values = asdict(self)
        values["hidden"] = list(self.hidden)
        if self.neuron == "adlif":  # model files from before the choice stay as they were
            del values["neuron"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> NetworkConfig:
        values = {k: v for k, v in values.items() if k not in _REMOVED_SETTINGS}
        for key in ("hidden", "tau_u", "tau_w", "input_delays", "input_conv", "hidden_conv"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


class NetworkState(NamedTuple):
    layers: tuple[AdLIFState, ...]
    readout: torch.Tensor  # [batch, classes]
    history: torch.Tensor  # [batch, longest delay, inputs]: past input bins the delays still need

    def tensors(self) -> list[torch.Tensor]:
        return [t for layer in self.layers for t in layer] + [self.readout, self.history]

    @classmethod
    def from_tensors(cls, tensors: list[torch.Tensor]) -> NetworkState:
        layers = tuple(AdLIFState(*tensors[i : i + 3]) for i in range(0, len(tensors) - 2, 3))
        return cls(layers, tensors[-2], tensors[-1])


class StatePool:
    """The network states of many streams, kept as one batch: each stream owns a row.

    A row holds all of a stream's state tensors side by side (``[capacity, width]``),
    so stepping a set of streams is one gather of their rows, one batched step and
    one scatter of the result, whatever the number of streams or layers.  The rows
    are a numpy array: its indexed assignment copies rows three times faster than
    torch's ``index_copy_``.  The rest state is all zeros: a freed or reset row is
    zeroed, and row :attr:`REST` stays at rest for sequences that start from it.
    """

    REST = 0  # never allocated nor written

    def __init__(self, network: Classifier, capacity: int = 16) -> None:
        self._shapes = [t.shape[1:] for t in network.initial_state(1).tensors()]
        self._widths = [math.prod(shape) for shape in self._shapes]
        self._rows = np.zeros((capacity + 1, sum(self._widths)), np.float32)
        self._free = list(range(capacity, self.REST, -1))
        self.lock = threading.Lock()  # allocation may grow the pool while a step runs

    def allocate(self) -> int:
        with self.lock:
            if not self._free:
                capacity = len(self._rows) - 1
                self._rows = np.concatenate([self._rows, np.zeros_like(self._rows[1:])])
                self._free = list(range(2 * capacity, capacity, -1))
            return self._free.pop()

    def release(self, row: int) -> None:
        with self.lock:
            self.reset(row)
            self._free.append(row)

    def reset(self, row: int) -> None:
        self._rows[row] = 0.0

    def reset_many(self, rows: list[int]) -> None:
        """:meth:`reset` for several rows in one operation."""
        self._rows[rows] = 0.0

    def gather(self, rows: list[int] | torch.Tensor) -> NetworkState:
        """The states of ``rows`` (:attr:`REST` for the rest state), as views of one copy."""
        flat = torch.from_numpy(self._rows[np.asarray(rows)])
        tensors = flat.split(self._widths, dim=1)
        return NetworkState.from_tensors(
            [t.view(len(flat), *shape) for t, shape in zip(tensors, self._shapes, strict=True)]
        )

    def scatter(
        self, rows: list[int] | torch.Tensor, state: NetworkState, keep: list[int] | None = None
    ) -> None:
        """Write ``state`` to ``rows``; with ``keep``, only the state's rows it lists."""
        flat = torch.cat([t.reshape(len(t), -1) for t in state.tensors()], dim=1).numpy()
        self._rows[np.asarray(rows)] = flat if keep is None else flat[keep]


class BinarizeSTE(torch.autograd.Function):
    """sign() with a straight-through gradient clipped to |x| <= 1."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def effective_weight(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """The weights a layer computes with: binary layers use scaled signs."""
    if kind != "binary":
        return weight
    scale = weight.abs().mean(dim=1, keepdim=True)
    return BinarizeSTE.apply(weight) * scale


class FrequencyConv(nn.Module):
    """Input weights shared across frequency, as a convolution's: ``filters`` kernels,
    each spanning ``taps`` neighbouring channels at every depth (input delay, or a
    previous convolution's filter), placed every ``stride`` channels (zero padding at
    the edges).  On the cochlea's ERB-spaced channels a voice that is higher or lower
    moves its formants along the channel axis, so one kernel learns a pattern wherever
    it occurs, from few speakers.

    ``weight`` is the equivalent dense matrix ``[positions * filters, depth * channels]``
    with position-major rows, and columns depth-major (as the delay line lays out its
    inputs) or, with ``depth_major=False``, position-major (as a previous
    FrequencyConv lays out its neurons), so step mode, NIR export and operation counts
    treat it as any other input weight.
    """

    def __init__(
        self,
        n_inputs: int,
        depth: int,
        filters: int,
        taps: int,
        stride: int,
        depth_major: bool = True,
    ):
        super().__init__()
        positions = math.ceil(n_inputs / stride)
        self.in_features, self.out_features = n_inputs * depth, positions * filters
        bound = 1.0 / math.sqrt(depth * taps)
        self.kernel = nn.Parameter(torch.empty(filters, depth, taps).uniform_(-bound, bound))
        unused = self.kernel.numel()  # index of the zero appended to the flat kernel
        index = torch.full((positions, filters, depth, n_inputs), unused, dtype=torch.long)
        kernel_index = torch.arange(unused).reshape(filters, depth, taps)
        for position in range(positions):
            first = position * stride - (taps - stride) // 2
            for tap in range(taps):
                channel = first + tap
                if 0 <= channel < n_inputs:
                    index[position, :, :, channel] = kernel_index[:, :, tap]
        if not depth_major:
            index = index.transpose(2, 3)
        self.register_buffer("index", index.reshape(self.out_features, self.in_features))
        self.synapses = int((index != unused).sum())

    @property
    def weight(self) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self._expand(self.kernel)
        # Inference steps a stream a hundred times a second: expand the kernel once per
        # change of it, as an ordinary tensor so that the kernels keep their copy too.
        return kernels.cached(self, "_spikeear_dense", (self.kernel, self.index), self._expand_now)

    def _expand_now(self) -> torch.Tensor:
        with torch.inference_mode(False):
            return self._expand(self.kernel.detach())

    def _expand(self, kernel: torch.Tensor) -> torch.Tensor:
        flat = torch.cat([kernel.flatten(), kernel.new_zeros(1)])
        return flat[self.index]


class RecurrentLayer(nn.Module):
    def __init__(
        self, n_in: int, n_out: int, config: NetworkConfig, input: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.kind = config.kind
        self.neuron = config.neuron
        self.tau_u, self.tau_w = config.tau_u, config.tau_w
        self.input = input if input is not None else nn.Linear(n_in, n_out, bias=False)
        self.norm = nn.BatchNorm1d(n_out, momentum=0.05)
        self.recurrent = nn.Linear(n_out, n_out, bias=False) if config.recurrent else None
        if self.recurrent is not None:
            nn.init.orthogonal_(self.recurrent.weight, gain=0.5)
        self.dropout = nn.Dropout(config.dropout)
        self.alpha = nn.Parameter(_uniform_decay(n_out, *config.tau_u))
        self.beta = nn.Parameter(_uniform_decay(n_out, *config.tau_w))
        adaptive = config.kind == "spiking" and config.neuron == "adlif"
        self.a = nn.Parameter(torch.rand(n_out) * 0.5 if adaptive else torch.zeros(n_out))
        self.b = nn.Parameter(torch.rand(n_out) * 1.0 if adaptive else torch.zeros(n_out))
        if not adaptive:
            for p in (self.beta, self.a, self.b):
                p.requires_grad_(False)
        if config.kind == "binary":
            self.alpha.requires_grad_(False)

    @property
    def n_out(self) -> int:
        return self.input.out_features

    @torch.no_grad()
    def clamp_(self) -> None:
        self.alpha.clamp_(math.exp(-1 / self.tau_u[0]), math.exp(-1 / self.tau_u[1]))
        self.beta.clamp_(math.exp(-1 / self.tau_w[0]), math.exp(-1 / self.tau_w[1]))
        self.a.clamp_(-1.0, 1.0)
        self.b.clamp_(0.0, 2.0)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Feed-forward input current for ``[batch, time, n_in]``, batch-normalised."""
        weight = effective_weight(self.input.weight, self.kind)
        if not self.training and kernels.applies_to(x):
            return kernels.normalized_projection(x, weight, self.norm)
        current = x @ weight.t()
        batch, time, n = current.shape
        return self.norm(current.reshape(batch * time, n)).reshape(batch, time, n)

    def initial_state(self, batch: int) -> AdLIFState:
        zeros = self.alpha.new_zeros(batch, self.n_out)
        return AdLIFState(zeros, zeros.clone(), zeros.clone())

    def step_weights(self) -> LayerWeights:
        """What every step of a sequence uses: built once per sequence, not per step
        (the per-step loop is dominated by the number of small tensor operations)."""
        recurrent = None
        if self.recurrent is not None:
            # A transposed view, not a contiguous copy: the matmul then sums in the
            # same order as it always has, so outputs stay bit-identical.
            recurrent = effective_weight(self.recurrent.weight, self.kind).t()
        return LayerWeights(recurrent, AdLIFParameters.of(self.alpha, self.beta, self.a, self.b))

    def run(
        self, currents: torch.Tensor, state: AdLIFState, fused: bool = True
    ) -> tuple[torch.Tensor, AdLIFState]:
        """Outputs ``[batch, time, n]`` for the input currents of a sequence, and the
        final state.  Spiking layers that are being trained take the fused path
        (:class:`AdLIFSequence`, the same values with a much cheaper backward pass),
        in inference on the CPU the event-driven kernel (:mod:`models.kernels`);
        everything else steps through :meth:`advance`."""
        adlif = self.kind == "spiking" and self.neuron == "adlif"
        if adlif and not self.training and kernels.applies_to(currents):
            recurrent = self.recurrent.weight if self.recurrent is not None else None
            out, final = kernels.adlif_layer(
                currents, recurrent, self.alpha, self.beta, self.a, self.b, *state
            )
            return out, AdLIFState(*final)
        weights = self.step_weights()
        if fused and adlif and torch.is_grad_enabled():
            mask = None
            if self.training and self.dropout.p > 0:
                mask = self.dropout(torch.ones_like(currents))
            n = weights.neuron
            out, u, w, s = AdLIFSequence.apply(
                currents, weights.recurrent, n.alpha, n.beta, n.a, n.b, *state, mask
            )
            return out, AdLIFState(u, w, s)
        outputs = []
        for t in range(currents.shape[1]):
            out, state = self.advance(currents[:, t], state, weights)
            outputs.append(out)
        return torch.stack(outputs, dim=1), state

    def advance(
        self, current: torch.Tensor, state: AdLIFState, weights: LayerWeights
    ) -> tuple[torch.Tensor, AdLIFState]:
        if weights.recurrent is not None:
            current = current + state.s @ weights.recurrent
        if self.kind == "spiking":
            step = lif_step if self.neuron == "lif" else adlif_step
            out, new_state = step(current, state, weights.neuron)
        elif self.kind == "analog":
            u = leaky_step(current, state.u, weights.neuron.alpha, weights.neuron.gain)
            out = torch.relu(u)
            new_state = AdLIFState(u, state.w, out)
        else:  # binary: no membrane memory, {0, 1} activations
            out = spike(current + 1.0)
            new_state = AdLIFState(current, state.w, out)
        return (self.dropout(out) if self.training else out), new_state


class LayerWeights(NamedTuple):
    recurrent: torch.Tensor | None  # [n_out, n_out], transposed for ``spikes @ recurrent``
    neuron: AdLIFParameters


def _uniform_decay(n: int, tau_min: float, tau_max: float) -> torch.Tensor:
    tau = tau_min + torch.rand(n) * (tau_max - tau_min)
    return torch.exp(-1.0 / tau)


class Classifier(nn.Module):
    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.longest_delay = max(config.input_delays)
        sizes = (config.n_inputs * len(config.input_delays), *config.hidden)
        inputs: list[nn.Module | None] = [None] * len(config.hidden)
        for layer, shape in enumerate(config.shared_layers()):
            inputs[layer] = FrequencyConv(*shape, depth_major=layer == 0)
        self.layers = nn.ModuleList(
            RecurrentLayer(n_in, n_out, config, input)
            for (n_in, n_out), input in zip(itertools.pairwise(sizes), inputs, strict=True)
        )
        self.readout = nn.Linear(sizes[-1], config.n_classes)
        self.register_buffer("readout_alpha", torch.tensor(math.exp(-1.0 / config.readout_tau)))
        self.fused = True  # hand-written BPTT for spiking layers (False: autograd, for tests)

    @torch.no_grad()
    def clamp_(self) -> None:
        for layer in self.layers:
            layer.clamp_()

    def initial_state(self, batch: int = 1) -> NetworkState:
        weight = self.readout.weight
        return NetworkState(
            tuple(layer.initial_state(batch) for layer in self.layers),
            weight.new_zeros(batch, self.config.n_classes),
            weight.new_zeros(batch, self.longest_delay, self.config.n_inputs),
        )

    def delay_line(
        self, x: torch.Tensor, history: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each input bin at every delay, ``[batch, time, inputs * delays]`` (delay-major),
        and the history the next call needs."""
        if self.longest_delay == 0:
            return x, history
        heard = torch.cat([history, x], dim=1)
        time, end = x.shape[1], heard.shape[1]
        taps = [heard[:, end - time - d : end - d] for d in self.config.input_delays]
        return torch.cat(taps, dim=-1), heard[:, end - self.longest_delay :]

    def forward(
        self, x: torch.Tensor, state: NetworkState | None = None
    ) -> tuple[torch.Tensor, NetworkState, list[torch.Tensor]]:
        """Sequence mode.  Returns per-step class evidence ``[batch, time, classes]``,
        the final state and each hidden layer's activity ``[batch, time, neurons]``."""
        batch, time, _ = x.shape
        state = state or self.initial_state(batch)
        activity = []
        signal, history = self.delay_line(x, state.history)
        layer_states = []
        for layer, layer_state in zip(self.layers, state.layers, strict=True):
            signal, layer_state = layer.run(layer.project(signal), layer_state, self.fused)
            activity.append(signal)
            layer_states.append(layer_state)
        drive = self.readout(signal)
        readout = state.readout
        gain = 1.0 - self.readout_alpha
        evidence = []
        for t in range(time):
            readout = leaky_step(drive[:, t], readout, self.readout_alpha, gain)
            evidence.append(readout)
        return (
            torch.stack(evidence, dim=1),
            NetworkState(tuple(layer_states), readout, history),
            activity,
        )

    def step(
        self, x: torch.Tensor, state: NetworkState
    ) -> tuple[torch.Tensor, NetworkState, list[torch.Tensor]]:
        """Step mode: one bin ``[batch, inputs]`` for a batch of streams."""
        evidence, new_state, activity = self.forward(x[:, None, :], state)
        return evidence[:, 0], new_state, [a[:, 0] for a in activity]

    def input_synapses(self, layer: int = 0) -> int:
        """Connections into hidden layer ``layer`` from its inputs (the first layer's:
        the network inputs at every delay)."""
        weights = self.layers[layer].input
        return weights.synapses if isinstance(weights, FrequencyConv) else weights.weight.numel()

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
