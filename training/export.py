"""Export a trained classifier as a NIR graph (Neuromorphic Intermediate Representation).

``export_nir(bundle_or_network, path)`` writes the network with ``nir.write``;
``to_nir`` builds the :class:`nir.NIRGraph` without writing it.  The graph has one
Input (the cochlear channels, spike counts per bin), the hidden layers, and one
Output (the readout's class evidence).  The graph's metadata holds ``dt`` (the bin
width in seconds), ``discretization``, ``neurons`` and, for a model bundle, the
vocabulary and front-end settings as JSON.  All arrays are float64 so that the
folded and derived values round-trip.

Time constants
    Our per-bin decay ``alpha`` is the exact solution of NIR's
    ``tau dv/dt = (v_leak - v) + r I`` over one bin with the input held:
    ``v_t = alpha v_{t-1} + (1 - alpha)(v_leak + r I_t)`` with
    ``alpha = exp(-dt / tau)``.  So ``tau = -dt / ln(alpha)``, ``r = 1`` and
    ``v_leak = 0`` reproduce ``u_t = alpha u_{t-1} + (1 - alpha) I_t`` exactly for
    a simulator that integrates exactly (``discretization="zoh"``, the default).
    For simulators that take forward-Euler steps (snnTorch, Norse) export with
    ``discretization="euler"``: ``tau = dt / (1 - alpha)`` gives the same update
    there.

What maps, layer by layer
    * Input projection and BatchNorm: BatchNorm in eval mode is a per-neuron affine
      map, folded into the input weights and a bias (one Affine node).  Exact.
    * Input delay line (``input_delays``): each delay ``d`` is a Delay node of
      ``d * dt`` seconds on the input followed by that delay's weights (Linear; the
      first delay's weights carry the bias as the Affine above).  Exact on the grid.
    * Recurrence ``W_rec s_{t-1}``: a Linear node on a cycle from the layer's
      spikes back to its membrane.  A simulator steps NIR graphs on a time grid and
      gives each cycle a one-step delay, which is exactly our ``s_{t-1}``.
    * Readout: Affine (weights and bias) into an LI node with ``tau`` from
      ``readout_alpha`` and ``r = 1``.  Exact.
    * Neurons, ``neurons="adlif"`` (the default): NIR has no adaptive neuron and
      its LIF resets *to* ``v_reset``; ours resets by subtraction and adapts.  The
      adLIF neuron is therefore exported as a composite of primitives that is exact
      on the time grid:

      - membrane ``u``: LI node (``tau`` from ``alpha``, ``r = 1``, ``v_leak = 0``);
      - spikes: Threshold node (threshold 1) on the membrane;
      - reset by subtraction: Scale ``-alpha / (1 - alpha)`` from the spikes back
        into the membrane, since ``alpha (u - s) + (1 - alpha) I`` equals
        ``alpha u + (1 - alpha)(I - alpha / (1 - alpha) s)``;
      - adaptation ``w``: LI node with ``tau`` from ``beta`` and
        ``r = 1 / (1 - beta)`` fed by Scale ``a`` from the membrane and Scale ``b``
        from the spikes, and Scale ``-1`` from it back into the membrane.  Within a
        step the adaptation node updates after the membrane, so it holds
        ``w_{t+1} = beta w_t + a u_t + b s_t`` and the membrane reads it one step
        later over the cycle: exactly ``w_t`` of our update.

      Every cycle passes through the membrane node, so any simulator that delays
      cycle-closing edges by one step cuts the cycles in the same places.
    * Neurons, ``neurons="lif"``: one LIF node per layer (``v_threshold = 1``,
      ``v_reset = 0``) for targets that only map LIF primitives.  This is an
      approximation: (1) after a spike the membrane restarts from 0 instead of
      ``u - 1`` (reset to zero, not by subtraction); (2) the subthreshold coupling
      ``a u`` is dropped, because a LIF node outputs only its spikes and no edge can
      carry ``u``; the spike-triggered adaptation ``b s`` is kept exactly (LI node
      and subtractive edge as above).

What does not map
    * NIR's Threshold and LIF fire on ``v > threshold``; ours fires on
      ``u >= 1``.  They differ only when ``u`` is exactly 1.0.
    * The adLIF composite is a discrete-time construction: read in continuous time
      (spikes as Dirac pulses) a Threshold node outputs a level, not pulses, so the
      composite means what it means here only on a time grid of step ``dt``, which
      is how NIR graphs are simulated and mapped to hardware.  Tools that recognise
      only LIF/CubaLIF nodes will not map the composite; use ``neurons="lif"``.
    * Training-only parts (dropout, surrogate gradients, BatchNorm statistics
      updates, parameter clamping) are not part of the graph.
    * Only ``kind="spiking"`` networks are exported (analog and binary baselines are
      not spiking networks).

Nothing is lost: every membrane node (LI or LIF) carries the exact adLIF
parameters ``alpha``, ``beta``, ``a``, ``b`` and the update equations in its
metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import nir
import numpy as np
import torch

from models.model_file import ModelBundle, ModelFileError, load_model
from models.network import Classifier
from models.neurons import THRESHOLD

NEURONS = ("adlif", "lif")
DISCRETIZATIONS = ("zoh", "euler")
DEFAULT_BIN_MS = 10.0

ADLIF_EQUATIONS = (
    "w_t = beta*w_{t-1} + a*u_{t-1} + b*s_{t-1}; "
    "u_t = alpha*(u_{t-1} - s_{t-1}) + (1 - alpha)*(I_t - w_t); "
    "s_t = [u_t >= 1]; one step per dt"
)


class ExportError(ModelFileError):
    """A model that cannot be exported; the message is for the user."""


def to_nir(
    model: ModelBundle | Classifier,
    *,
    neurons: str = "adlif",
    discretization: str = "zoh",
    bin_ms: float | None = None,
) -> nir.NIRGraph:
    """The NIR graph of a bundle's (or a bare network's) classifier."""
    if neurons not in NEURONS:
        raise ValueError(f"unknown neurons {neurons!r} (choose from {', '.join(NEURONS)})")
    if discretization not in DISCRETIZATIONS:
        raise ValueError(
            f"unknown discretization {discretization!r} (choose from {', '.join(DISCRETIZATIONS)})"
        )
    bundle = model if isinstance(model, ModelBundle) else None
    network = bundle.network if bundle is not None else model
    if not isinstance(network, Classifier):
        raise TypeError(f"expected a ModelBundle or Classifier, not {type(network).__name__}")
    if network.config.kind != "spiking":
        raise ExportError(
            f"only spiking networks export to NIR (this one is {network.config.kind!r})"
        )
    if bin_ms is None:
        bin_ms = bundle.bin_ms if bundle is not None else DEFAULT_BIN_MS
    dt = float(bin_ms) / 1000.0

    def tau(decay: np.ndarray, what: str) -> np.ndarray:
        if np.any(decay <= 0) or np.any(decay >= 1):
            raise ExportError(f"{what} must lie strictly between 0 and 1 to export")
        return -dt / np.log(decay) if discretization == "zoh" else dt / (1.0 - decay)

    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(np.array([network.config.n_inputs]))}
    edges: list[tuple[str, str]] = []
    source = "input"
    for index, layer in enumerate(network.layers):
        p = f"layer{index}_"
        n = layer.n_out
        weight, bias = _fold_batchnorm(layer)
        alpha, beta, a, b = (
            _array(t).reshape(n) for t in (layer.alpha, layer.beta, layer.a, layer.b)
        )
        zeros, ones = np.zeros(n), np.ones(n)
        metadata = {
            "neuron_model": "adLIF",
            "equations": ADLIF_EQUATIONS,
            "alpha": alpha,
            "beta": beta,
            "a": a,
            "b": b,
            "threshold": float(THRESHOLD),
            "reset": "subtract",
        }
        if index == 0:
            edges += _delay_line(nodes, network, weight, bias, dt, p)
        else:
            nodes[p + "input"] = nir.Affine(weight=weight, bias=bias)
            edges += [(source, p + "input"), (p + "input", p + "membrane")]
        if neurons == "adlif":
            nodes[p + "membrane"] = nir.LI(
                tau=tau(alpha, "alpha"), r=ones, v_leak=zeros, metadata=metadata
            )
            nodes[p + "spikes"] = nir.Threshold(threshold=np.full(n, float(THRESHOLD)))
            nodes[p + "reset"] = nir.Scale(scale=-alpha / (1.0 - alpha))
            edges += [
                (p + "membrane", p + "spikes"),
                (p + "spikes", p + "reset"),
                (p + "reset", p + "membrane"),
            ]
            spikes = p + "spikes"
        else:
            metadata["approximation"] = (
                "LIF resets to 0 instead of subtracting the threshold; "
                "the subthreshold adaptation coupling a*u is dropped"
            )
            nodes[p + "membrane"] = nir.LIF(
                tau=tau(alpha, "alpha"),
                r=ones,
                v_leak=zeros,
                v_threshold=np.full(n, float(THRESHOLD)),
                v_reset=zeros,
                metadata=metadata,
            )
            spikes = p + "membrane"
        if layer.recurrent is not None:
            nodes[p + "recurrent"] = nir.Linear(weight=_array(layer.recurrent.weight))
            edges += [(spikes, p + "recurrent"), (p + "recurrent", p + "membrane")]
        couple_u = neurons == "adlif" and np.any(a != 0)
        if couple_u or np.any(b != 0):
            nodes[p + "adaptation"] = nir.LI(
                tau=tau(beta, "beta"), r=1.0 / (1.0 - beta), v_leak=zeros
            )
            nodes[p + "adaptation_current"] = nir.Scale(scale=-ones)
            if couple_u:
                nodes[p + "adaptation_from_u"] = nir.Scale(scale=a)
                edges += [
                    (p + "membrane", p + "adaptation_from_u"),
                    (p + "adaptation_from_u", p + "adaptation"),
                ]
            if np.any(b != 0):
                nodes[p + "adaptation_from_s"] = nir.Scale(scale=b)
                edges += [
                    (spikes, p + "adaptation_from_s"),
                    (p + "adaptation_from_s", p + "adaptation"),
                ]
            edges += [
                (p + "adaptation", p + "adaptation_current"),
                (p + "adaptation_current", p + "membrane"),
            ]
        source = spikes

    readout_alpha = float(network.readout_alpha)
    k = network.config.n_classes
    nodes["readout"] = nir.Affine(
        weight=_array(network.readout.weight), bias=_array(network.readout.bias)
    )
    nodes["readout_integrator"] = nir.LI(
        tau=tau(np.full(k, readout_alpha), "readout_alpha"),
        r=np.ones(k),
        v_leak=np.zeros(k),
        metadata={"alpha": readout_alpha, "equations": "u_t = alpha*u_{t-1} + (1 - alpha)*I_t"},
    )
    nodes["output"] = nir.Output(np.array([k]))
    edges += [
        (source, "readout"),
        ("readout", "readout_integrator"),
        ("readout_integrator", "output"),
    ]

    metadata = {
        "producer": "spikeear",
        "dt": dt,
        "bin_ms": float(bin_ms),
        "discretization": discretization,
        "neurons": neurons,
        "input": "spike counts per cochlear channel per bin",
        "output": "class evidence (leaky-integrated readout)",
        "hidden": json.dumps([layer.n_out for layer in network.layers]),
    }
    if bundle is not None:
        metadata["vocabulary"] = json.dumps(list(bundle.vocabulary))
        metadata["frontend"] = json.dumps(bundle.frontend.to_dict())
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def export_nir(
    model: ModelBundle | Classifier,
    path: str | Path,
    *,
    neurons: str = "adlif",
    discretization: str = "zoh",
    bin_ms: float | None = None,
) -> nir.NIRGraph:
    """Write ``model`` to ``path`` as a NIR (HDF5) file and return the graph."""
    graph = to_nir(model, neurons=neurons, discretization=discretization, bin_ms=bin_ms)
    nir.write(str(path), graph)
    return graph


def export_nir_command(model_path: str | None, out: str) -> str:
    """``spikeear export-nir [--model MODEL] --out MODEL.nir``: a one-line summary."""
    bundle = load_model(model_path)
    graph = export_nir(bundle, out)
    hidden = ", ".join(str(layer.n_out) for layer in bundle.network.layers)
    return (
        f"{out}: NIR graph with {len(graph.nodes)} nodes and {len(graph.edges)} edges "
        f"(adLIF layers of {hidden} neurons, {len(bundle.vocabulary)} classes, "
        f"dt = {bundle.bin_ms:g} ms)"
    )


def _delay_line(
    nodes: dict, network: Classifier, weight: np.ndarray, bias: np.ndarray, dt: float, p: str
) -> list[tuple[str, str]]:
    """Nodes from the graph input to the first membrane: one weight block per delay
    (the first as ``<p>input`` with the bias), each behind a Delay node unless 0."""
    n_inputs = network.config.n_inputs
    edges = []
    for k, delay in enumerate(network.config.input_delays):
        block = weight[:, k * n_inputs : (k + 1) * n_inputs]
        name = p + "input" if k == 0 else f"{p}input_delay{k}"
        nodes[name] = nir.Affine(weight=block, bias=bias) if k == 0 else nir.Linear(weight=block)
        source = "input"
        if delay:
            source = f"{p}delay{k}"
            nodes[source] = nir.Delay(delay=np.full(n_inputs, delay * dt))
            edges.append(("input", source))
        edges += [(source, name), (name, p + "membrane")]
    return edges


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float64).numpy().copy()


def _fold_batchnorm(layer) -> tuple[np.ndarray, np.ndarray]:
    """Input weights and bias of ``BN(W x)`` with BN in eval mode (running stats)."""
    norm = layer.norm
    weight = _array(layer.input.weight)
    mean, var = _array(norm.running_mean), _array(norm.running_var)
    gain = 1.0 / np.sqrt(var + norm.eps)
    shift = -mean * gain
    if norm.affine:
        gain, shift = gain * _array(norm.weight), shift * _array(norm.weight) + _array(norm.bias)
    return gain[:, None] * weight, shift
