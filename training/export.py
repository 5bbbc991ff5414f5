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
    * Neurons of a ``neuron="lif"`` network (:mod:`models.neurons`): one LIF node per
      layer (``v_threshold = 1``, ``v_reset = 0``, ``v_leak = 0``, ``r = 1``), which is
      that neuron exactly, in either mode.  Toolchains that map only NIR's neuron
      primitives run these networks as they are.
    * Neurons of an adLIF network, ``neurons="exact"`` (the default; ``"adlif"`` is its
      former name): NIR has no adaptive neuron and
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
    * Neurons of an adLIF network, ``neurons="lif"``: one LIF node per layer (``v_threshold = 1``,
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

Targets (:data:`TARGETS`, ``spikeear export-nir --target``)
    The same network written the way one importer reads graphs, each form exact for
    a LIF network under that importer's reading: ``nir`` as above; ``norse`` with
    forward-Euler time constants and no LI node (Norse maps none and drops it
    silently), so the graph ends at the readout's drive and the host integrates it
    (:func:`graph_evidence`); ``snntorch`` as ``norse``, at snnTorch's fixed
    ``dt = 0.1 ms``, with ``r = tau / dt`` (the input gain ``1 - alpha`` moved into
    the weights) and each recurrent matrix followed by an identity Linear node.  A
    target that maps only LIF nodes refuses the adLIF composite and Delay nodes
    (:func:`export_nir_command` names them, and the measured error of the plain-LIF
    approximation).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import nir
import numpy as np
import torch

from models.model_file import ModelBundle, ModelFileError, load_model
from models.network import Classifier
from models.neurons import THRESHOLD

MODES = ("exact", "lif")  # what ``spikeear export-nir --neurons`` offers
NEURONS = (*MODES, "adlif")  # "adlif": the former name of "exact"
DISCRETIZATIONS = ("zoh", "euler")
# The graph's last stage: the leaky integrator (an LI node: the class evidence), or the
# readout's Affine output (its drive) for importers that map no LI node; the evidence
# is then ``e_t = alpha e_{t-1} + (1 - alpha) y_t`` on the host (``alpha`` in metadata).
READOUTS = ("integrator", "drive")
# Where a LIF membrane's input gain ``1 - alpha`` sits: in ``r`` (``r = 1``), or in the
# weights into the membrane with ``r = 1 / (1 - alpha)`` (with ``discretization="euler"``
# that is ``r = tau / dt``, the only form snnTorch imports).  The same dynamics.
GAINS = ("r", "weights")
# A recurrent weight matrix as a Linear node on a two-node cycle with the membrane, or
# followed by an identity Linear ("hop": exact, n * n more weights), for snnTorch, whose
# importer wraps two-node LIF cycles in a subgraph that it then fails to build.
RECURRENCES = ("cycle", "hop")


@dataclass(frozen=True)
class Target:
    """How one reader of NIR graphs wants them written: the export settings, and the node
    types it maps (None: all of them)."""

    description: str
    settings: dict
    maps: tuple[type, ...] | None = None


_LIF_ONLY = (nir.Input, nir.Output, nir.Affine, nir.Linear, nir.LIF)
# Measured with the importers of the nir-import extra (tests/test_nir_importers.py).
TARGETS = {
    "nir": Target("the NIR specification (zero-order hold, LI readout)", {}),
    "norse": Target(
        "Norse from_nir(graph, dt=<bin in s>): forward Euler, no LI node",
        {"discretization": "euler", "readout": "drive", "spike_adaptation": False},
        _LIF_ONLY,
    ),
    "snntorch": Target(
        "snnTorch import_from_nir: forward Euler at its fixed dt = 0.1 ms, r = tau/dt, "
        "no LI node, recurrence through an identity hop",
        {
            "discretization": "euler",
            "readout": "drive",
            "gain": "weights",
            "dt_ms": 0.1,
            "recurrence": "hop",
            "spike_adaptation": False,
        },
        _LIF_ONLY,
    ),
}
DEFAULT_BIN_MS = 10.0

ADLIF_EQUATIONS = (
    "w_t = beta*w_{t-1} + a*u_{t-1} + b*s_{t-1}; "
    "u_t = alpha*(u_{t-1} - s_{t-1}) + (1 - alpha)*(I_t - w_t); "
    "s_t = [u_t >= 1]; one step per dt"
)
LIF_EQUATIONS = (
    "u_t = alpha*u_{t-1}*(1 - s_{t-1}) + (1 - alpha)*I_t; s_t = [u_t > 1]; one step per dt"
)
# What the hidden layers of a non-spiking network compute, which no NIR node expresses.
NON_SPIKING = {
    "analog": "real-valued ReLU outputs of leaky layers",
    "binary": "binary activations without membrane memory",
}
# The inputs an approximation's error is measured on (no audio at hand when exporting):
# word-like bursts of Poisson spike counts, each channel at its own peak rate (uniform up
# to 600/s; the bundled model's clips average ~290/s per channel: 18530 spikes per 1 s
# clip over 64 channels) under a Hann envelope of 0.3-0.8 s at a random onset.
PROBE_CLIPS, PROBE_SECONDS, PROBE_MAX_RATE_PER_S, PROBE_SEED = 32, 1.0, 600.0, 0


class ExportError(ModelFileError):
    """A model that cannot be exported; the message is for the user."""


def to_nir(
    model: ModelBundle | Classifier,
    *,
    neurons: str = "exact",
    discretization: str = "zoh",
    bin_ms: float | None = None,
    readout: str = "integrator",
    gain: str = "r",
    recurrence: str = "cycle",
    spike_adaptation: bool = True,
    dt_ms: float | None = None,
) -> nir.NIRGraph:
    """The NIR graph of a bundle's (or a bare network's) classifier, one step per bin
    of ``bin_ms`` (default: the bundle's); ``dt_ms`` sets the step ``dt`` the time
    constants are written for (default: the bin, as a simulator should step);
    ``spike_adaptation=False`` drops the spike-triggered adaptation that
    ``neurons="lif"`` otherwise keeps (as LI and Scale nodes) from adLIF neurons."""
    if readout not in READOUTS or gain not in GAINS or recurrence not in RECURRENCES:
        raise ValueError(
            f"readout must be one of {READOUTS}, gain one of {GAINS}, "
            f"recurrence one of {RECURRENCES}"
        )
    if neurons not in NEURONS:
        raise ValueError(f"unknown neurons {neurons!r} (choose from {', '.join(MODES)})")
    if discretization not in DISCRETIZATIONS:
        raise ValueError(
            f"unknown discretization {discretization!r} (choose from {', '.join(DISCRETIZATIONS)})"
        )
    bundle = model if isinstance(model, ModelBundle) else None
    network = bundle.network if bundle is not None else model
    if not isinstance(network, Classifier):
        raise TypeError(f"expected a ModelBundle or Classifier, not {type(network).__name__}")
    if network.config.kind != "spiking":
        construct = NON_SPIKING[network.config.kind]
        raise ExportError(
            f"only spiking networks export to NIR: this one is {network.config.kind!r}, whose "
            f"{construct} no NIR node expresses (neither --neurons exact nor --neurons lif)"
        )
    primitive = network.config.neuron == "lif"  # NIR's LIF node exactly
    if bin_ms is None:
        bin_ms = bundle.bin_ms if bundle is not None else DEFAULT_BIN_MS
    dt = float(dt_ms if dt_ms is not None else bin_ms) / 1000.0

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
        lif_node = primitive or neurons == "lif"
        # into the membrane: every incoming weight times ``into``, LIF ``r`` = ``r_lif``
        into, r_lif = ones, ones
        if lif_node and gain == "weights":
            into, r_lif = 1.0 - alpha, 1.0 / (1.0 - alpha)
            weight, bias = into[:, None] * weight, into * bias
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
        if primitive:
            metadata = {
                "neuron_model": "LIF",
                "equations": LIF_EQUATIONS,
                "alpha": alpha,
                "threshold": float(THRESHOLD),
                "reset": "zero",
            }
        if index == 0:
            edges += _delay_line(nodes, network, weight, bias, dt, p)
        else:
            nodes[p + "input"] = nir.Affine(weight=weight, bias=bias)
            edges += [(source, p + "input"), (p + "input", p + "membrane")]
        if not lif_node:
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
            if not primitive:
                metadata["approximation"] = (
                    "LIF resets to 0 instead of subtracting the threshold; "
                    "the subthreshold adaptation coupling a*u is dropped"
                    + ("" if spike_adaptation else ", and so is the spike-triggered b*s")
                )
            nodes[p + "membrane"] = nir.LIF(
                tau=tau(alpha, "alpha"),
                r=r_lif,
                v_leak=zeros,
                v_threshold=np.full(n, float(THRESHOLD)),
                v_reset=zeros,
                metadata=metadata,
            )
            spikes = p + "membrane"
        if layer.recurrent is not None:
            nodes[p + "recurrent"] = nir.Linear(
                weight=into[:, None] * _array(layer.recurrent.weight)
            )
            edges.append((spikes, p + "recurrent"))
            if recurrence == "hop":
                nodes[p + "recurrent_hop"] = nir.Linear(weight=np.eye(n))
                edges += [
                    (p + "recurrent", p + "recurrent_hop"),
                    (p + "recurrent_hop", p + "membrane"),
                ]
            else:
                edges.append((p + "recurrent", p + "membrane"))
        couple_u = neurons != "lif" and np.any(a != 0)
        couple_s = np.any(b != 0) and (neurons != "lif" or spike_adaptation)
        if couple_u or couple_s:
            nodes[p + "adaptation"] = nir.LI(
                tau=tau(beta, "beta"), r=1.0 / (1.0 - beta), v_leak=zeros
            )
            nodes[p + "adaptation_current"] = nir.Scale(scale=-into)
            if couple_u:
                nodes[p + "adaptation_from_u"] = nir.Scale(scale=a)
                edges += [
                    (p + "membrane", p + "adaptation_from_u"),
                    (p + "adaptation_from_u", p + "adaptation"),
                ]
            if couple_s:
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
    nodes["output"] = nir.Output(np.array([k]))
    edges.append((source, "readout"))
    if readout == "integrator":
        nodes["readout_integrator"] = nir.LI(
            tau=tau(np.full(k, readout_alpha), "readout_alpha"),
            r=np.ones(k),
            v_leak=np.zeros(k),
            metadata={
                "alpha": readout_alpha,
                "equations": "u_t = alpha*u_{t-1} + (1 - alpha)*I_t",
            },
        )
        edges += [("readout", "readout_integrator"), ("readout_integrator", "output")]
    else:
        edges.append(("readout", "output"))

    metadata = {
        "producer": "spikeear",
        "dt": dt,
        "bin_ms": float(bin_ms),
        "discretization": discretization,
        "neurons": "exact" if neurons == "adlif" else neurons,
        "neuron_model": "LIF" if primitive else "adLIF",
        "input": "spike counts per cochlear channel per bin",
        "output": "class evidence (leaky-integrated readout)"
        if readout == "integrator"
        else "readout drive y_t; class evidence e_t = alpha*e_{t-1} + (1 - alpha)*y_t",
        "readout": readout,
        "readout_alpha": readout_alpha,
        "gain": gain,
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
    neurons: str = "exact",
    discretization: str = "zoh",
    bin_ms: float | None = None,
    readout: str = "integrator",
    gain: str = "r",
    recurrence: str = "cycle",
    spike_adaptation: bool = True,
    dt_ms: float | None = None,
) -> nir.NIRGraph:
    """Write ``model`` to ``path`` as a NIR (HDF5) file and return the graph."""
    graph = to_nir(
        model,
        neurons=neurons,
        discretization=discretization,
        bin_ms=bin_ms,
        readout=readout,
        gain=gain,
        recurrence=recurrence,
        spike_adaptation=spike_adaptation,
        dt_ms=dt_ms,
    )
    nir.write(str(path), graph)
    return graph


def probe_inputs(n_inputs: int, bin_ms: float, clips: int = PROBE_CLIPS) -> np.ndarray:
    """Deterministic word-like spike counts ``[clips, bins, n_inputs]`` (see PROBE_*)."""
    rng = np.random.default_rng(PROBE_SEED)
    bins = round(PROBE_SECONDS * 1000.0 / bin_ms)
    rates = rng.uniform(0.0, PROBE_MAX_RATE_PER_S, (clips, 1, n_inputs))
    envelope = np.zeros((clips, bins, 1))
    for clip in range(clips):
        length = max(2, round(rng.uniform(0.3, 0.8) * bins))
        onset = rng.integers(0, bins - length + 1)
        envelope[clip, onset : onset + length, 0] = np.hanning(length)
    return rng.poisson(rates * envelope * bin_ms / 1000.0).astype(np.float64)


def approximation_error(
    model: ModelBundle | Classifier, graph: nir.NIRGraph, x: np.ndarray | None = None
) -> dict[str, float]:
    """How far ``graph`` (read by :mod:`training.nir_sim`) is from the network on the
    spike counts ``x`` (default: :func:`probe_inputs`), both in float64: the share of
    hidden neuron-steps whose spike differs, and the share of clips whose class decision
    (:func:`models.decoding.clip_decisions`) agrees."""
    from models.decoding import clip_decisions
    from models.network import NetworkState
    from models.neurons import AdLIFState
    from training.nir_sim import simulate

    network = model.network if isinstance(model, ModelBundle) else model
    if x is None:
        bin_ms = model.bin_ms if isinstance(model, ModelBundle) else DEFAULT_BIN_MS
        x = probe_inputs(network.config.n_inputs, bin_ms)
    reference = copy.deepcopy(network).double().eval()
    state = reference.initial_state(x.shape[0])
    state = NetworkState(
        tuple(AdLIFState(*(t.double() for t in layer)) for layer in state.layers),
        state.readout.double(),
        state.history.double(),
    )
    with torch.no_grad():
        evidence, _, activity = reference(torch.from_numpy(x), state)
    spike_nodes = [
        f"layer{i}_{'spikes' if f'layer{i}_spikes' in graph.nodes else 'membrane'}"
        for i in range(len(activity))
    ]
    out = simulate(graph, x, record=spike_nodes)
    out["output"] = graph_evidence(graph, out["output"])
    flipped = np.mean(
        [
            np.mean(out[name] != layer.numpy())
            for name, layer in zip(spike_nodes, activity, strict=True)
        ]
    )
    ours = clip_decisions(torch.softmax(evidence, -1).numpy())
    theirs = clip_decisions(torch.softmax(torch.from_numpy(out["output"]), -1).numpy())
    return {"flipped": float(flipped), "agreement": float(np.mean(ours == theirs)), "clips": len(x)}


def graph_evidence(graph: nir.NIRGraph, output: np.ndarray) -> np.ndarray:
    """The class evidence ``[batch, time, classes]`` from a graph's output: itself, or
    for a graph that ends at the readout's drive, its leaky integral (on the host)."""
    if _as_str(graph.metadata.get("readout", "integrator")) == "integrator":
        return output
    alpha = float(graph.metadata["readout_alpha"])
    evidence = np.zeros_like(output)
    level = np.zeros_like(output[:, 0])
    for t in range(output.shape[1]):
        level = alpha * level + (1.0 - alpha) * output[:, t]
        evidence[:, t] = level
    return evidence


def _as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def describe_error(error: dict[str, float]) -> str:
    return (
        f"{error['flipped']:.1%} of hidden neuron-steps flipped and "
        f"{error['agreement']:.1%} of class decisions kept on {error['clips']} random "
        "word-like spike inputs"
    )


def unmapped_constructs(graph: nir.NIRGraph, target: Target) -> list[str]:
    """The constructs of ``graph`` written with node types ``target`` does not map, each
    named with the node types it needs."""
    if target.maps is None:
        return []
    missing: dict[str, set[str]] = {}
    for name, node in graph.nodes.items():
        if isinstance(node, target.maps):
            continue
        if "delay" in name:
            construct = "the input delay line"
        elif name.startswith("layer") and graph.metadata.get("neuron_model") == "adLIF":
            construct = "adLIF neurons (adaptation, reset by subtraction)"
        else:
            construct = name
        missing.setdefault(construct, set()).add(type(node).__name__)
    return [f"{what} ({', '.join(sorted(types))} nodes)" for what, types in missing.items()]


def export_nir_command(
    model_path: str | None, out: str, neurons: str = "exact", target: str = "nir"
) -> str:
    """``spikeear export-nir [--model MODEL] [--neurons exact|lif] [--target T] --out
    MODEL.nir``: a one-line summary; for an approximation, with its error measured
    against the network.
    Raises :class:`ExportError`, writing nothing, where ``target`` maps no node for a
    construct of the model (the message names it and, for adLIF neurons, the measured
    error of ``--neurons lif``)."""
    bundle = load_model(model_path)
    chosen = TARGETS[target]
    graph = to_nir(bundle, neurons=neurons, **chosen.settings)
    primitive = bundle.network.config.neuron == "lif"
    approximate = neurons == "lif" and not primitive
    error = None
    if approximate:
        error = approximation_error(bundle, graph)
    unmapped = unmapped_constructs(graph, chosen)
    if unmapped:
        message = f"{target} cannot run this model: it maps no node for " + "; ".join(unmapped)
        if any(c.startswith("adLIF") for c in unmapped):
            lif = to_nir(bundle, neurons="lif", **chosen.settings)
            message += (
                ". --neurons lif writes plain LIF nodes instead, an approximation: "
                + describe_error(approximation_error(bundle, lif))
            )
            if unmapped_constructs(lif, chosen):
                message += " (" + "; ".join(unmapped_constructs(lif, chosen)) + " remain)"
        if any(c.startswith("the input delay line") for c in unmapped):
            message += ". A model trained without --delays has no delay line"
        raise ExportError(message)
    nir.write(str(out), graph)
    hidden = ", ".join(str(layer.n_out) for layer in bundle.network.layers)
    if primitive:
        form = "LIF layers (NIR's LIF node exactly)"
    elif approximate:
        form = "plain LIF layers approximating adLIF"
    else:
        form = "adLIF layers as exact composites of LI, Threshold and Scale nodes"
    summary = (
        f"{out}: NIR graph for {chosen.description}, {len(graph.nodes)} nodes and "
        f"{len(graph.edges)} edges ({form} of {hidden} neurons, {len(bundle.vocabulary)} "
        f"classes, one step per {bundle.bin_ms:g} ms bin)"
    )
    if error is not None:
        summary += f"; approximation: {describe_error(error)}"
    return summary


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
