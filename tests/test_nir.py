"""NIR export: write, read back with ``nir.read``, simulate independently, compare.

The independent reader is ``training.nir_sim`` (written from the NIR
specification; it sees only the graph).  Where nirtorch is installed its graph
executor is a second, third-party check of the wiring and cycle handling.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import nir
import numpy as np
import pytest
import torch

from audio_frontend.cochlea import CochleaConfig
from models.model_file import ModelBundle
from models.network import Classifier, NetworkConfig, NetworkState
from models.neurons import AdLIFState
from training.export import ExportError, export_nir, export_nir_command, to_nir
from training.nir_sim import NIRSimulator, simulate

CONFIG = NetworkConfig(n_inputs=64, n_classes=6, hidden=(32, 24))
BATCH, STEPS = 4, 100


def _network(seed: int = 0, config: NetworkConfig = CONFIG) -> Classifier:
    """A random classifier in eval mode with non-trivial BatchNorm and busy neurons."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    network = Classifier(config)
    network.train()
    with torch.no_grad():  # running statistics from a few batches
        for _ in range(5):
            network(torch.poisson(torch.full((8, 30, 64), 0.5), generator=generator))
        for layer in network.layers:  # a strong, uneven per-neuron affine map
            n = layer.n_out
            layer.norm.weight.copy_(20 * (0.5 + torch.rand(n, generator=generator)))
            layer.norm.bias.copy_(3 * torch.rand(n, generator=generator))
        network.readout.weight.mul_(3)
    return network.eval()


def _without_adaptation(network: Classifier) -> Classifier:
    plain = copy.deepcopy(network)
    with torch.no_grad():
        for layer in plain.layers:
            layer.a.zero_()
            layer.b.zero_()
    return plain


def _run_torch(network: Classifier, x: torch.Tensor, dtype=torch.float64):
    network = copy.deepcopy(network).to(dtype)
    state = network.initial_state(x.shape[0])
    state = NetworkState(
        tuple(AdLIFState(*(t.to(dtype) for t in s)) for s in state.layers),
        state.readout.to(dtype),
        state.history.to(dtype),
    )
    with torch.no_grad():
        evidence, _, activity = network(x.to(dtype), state)
    return evidence.numpy(), [a.numpy() for a in activity]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def network() -> Classifier:
    return _network()


@pytest.fixture(scope="module")
def spikes() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.poisson(torch.full((BATCH, STEPS, 64), 0.5), generator=generator)


def _round_trip(model, path, **options) -> nir.NIRGraph:
    export_nir(model, path, **options)
    return nir.read(path)


def _spike_nodes(graph: nir.NIRGraph) -> list[str]:
    names = [k for k, n in graph.nodes.items() if isinstance(n, nir.Threshold | nir.LIF)]
    return sorted(names)


def test_graph_structure_and_metadata(network, tmp_path):
    graph = _round_trip(network, tmp_path / "model.nir")
    assert float(graph.metadata["dt"]) == pytest.approx(0.010)
    assert graph.metadata["discretization"] == "zoh"
    assert set(graph.inputs) == {"input"} and set(graph.outputs) == {"output"}
    edges = set(graph.edges)
    for i, layer in enumerate(network.layers):
        p = f"layer{i}_"
        membrane = graph.nodes[p + "membrane"]
        assert isinstance(membrane, nir.LI)
        assert isinstance(graph.nodes[p + "spikes"], nir.Threshold)
        # recurrence and reset as cycles through the membrane
        assert {(p + "spikes", p + "recurrent"), (p + "recurrent", p + "membrane")} <= edges
        assert (p + "reset", p + "membrane") in edges
        assert (p + "adaptation_current", p + "membrane") in edges
        # alpha = exp(-dt / tau) and the exact adLIF parameters travel along
        alpha = layer.alpha.detach().double().numpy()
        np.testing.assert_allclose(np.exp(-0.010 / membrane.tau), alpha, rtol=1e-12)
        for name in ("alpha", "beta", "a", "b"):
            expected = getattr(layer, name).detach().double().numpy()
            np.testing.assert_array_equal(membrane.metadata[name], expected)
        # BatchNorm folded into the input affine map
        x = torch.randn(7, layer.input.in_features, dtype=torch.float64)
        reference = copy.deepcopy(layer).double().eval()
        with torch.no_grad():
            expected = reference.project(x[None])[0].numpy()
        affine = graph.nodes[p + "input"]
        np.testing.assert_allclose(x.numpy() @ affine.weight.T + affine.bias, expected, atol=1e-10)
    readout = graph.nodes["readout_integrator"]
    np.testing.assert_allclose(np.exp(-0.010 / readout.tau), float(network.readout_alpha))


def _assert_graph_reproduces(graph, network: Classifier, spikes: torch.Tensor) -> None:
    evidence, activity = _run_torch(network, spikes)
    out = simulate(graph, spikes.numpy(), record=_spike_nodes(graph))
    for layer_spikes, name in zip(activity, _spike_nodes(graph), strict=True):
        assert 0.02 < layer_spikes.mean() < 0.5, "fixture neurons should spike"
        np.testing.assert_array_equal(out[name], layer_spikes)
    assert np.abs(evidence).max() > 0.1
    np.testing.assert_allclose(out["output"], evidence, rtol=0, atol=1e-12)


def test_simulated_graph_reproduces_network_exactly(network, spikes, tmp_path):
    _assert_graph_reproduces(_round_trip(network, tmp_path / "model.nir"), network, spikes)


def test_delay_line_exports_as_delay_nodes_exactly(spikes, tmp_path):
    network = _network(config=dataclasses.replace(CONFIG, input_delays=(0, 2, 5)))
    graph = _round_trip(network, tmp_path / "delays.nir")
    delays = sorted(float(n.delay[0]) for n in graph.nodes.values() if isinstance(n, nir.Delay))
    assert delays == pytest.approx([0.02, 0.05])  # 2 and 5 bins of the default 10 ms
    _assert_graph_reproduces(graph, network, spikes)


def test_frequency_shared_first_layer_exports_exactly(spikes, tmp_path):
    config = dataclasses.replace(CONFIG, input_delays=(0, 2), input_conv=(2, 5, 4))
    network = _network(config=config)
    _assert_graph_reproduces(_round_trip(network, tmp_path / "conv.nir"), network, spikes)


def test_float32_network_matches_too(network, spikes, tmp_path):
    graph = _round_trip(network, tmp_path / "model.nir")
    evidence, activity = _run_torch(network, spikes, torch.float32)
    out = simulate(graph, spikes.numpy(), record=_spike_nodes(graph))
    for layer_spikes, name in zip(activity, _spike_nodes(graph), strict=True):
        np.testing.assert_array_equal(out[name], layer_spikes)
    np.testing.assert_allclose(out["output"], evidence, rtol=0, atol=1e-5)


def test_without_adaptation_exact_and_smaller(network, spikes, tmp_path):
    plain = _without_adaptation(network)
    graph = _round_trip(plain, tmp_path / "plain.nir")
    assert not any("adaptation" in name for name in graph.nodes)
    evidence, activity = _run_torch(plain, spikes)
    out = simulate(graph, spikes.numpy(), record=_spike_nodes(graph))
    for layer_spikes, name in zip(activity, _spike_nodes(graph), strict=True):
        np.testing.assert_array_equal(out[name], layer_spikes)
    np.testing.assert_allclose(out["output"], evidence, rtol=0, atol=1e-12)


def test_euler_discretization_is_exact_under_euler_steps(network, spikes, tmp_path):
    graph = _round_trip(network, tmp_path / "euler.nir", discretization="euler")
    assert graph.metadata["discretization"] == "euler"
    evidence, _ = _run_torch(network, spikes)
    out = NIRSimulator(graph).run(spikes.numpy())  # method read from the metadata
    np.testing.assert_allclose(out["output"], evidence, rtol=0, atol=1e-12)
    # read with the other method, the time constants are wrong
    wrong = NIRSimulator(graph, method="zoh").run(spikes.numpy())
    assert np.abs(wrong["output"] - evidence).max() > 1e-3


def test_lif_mode_is_an_approximation(network, spikes, tmp_path):
    graph = _round_trip(network, tmp_path / "lif.nir", neurons="lif")
    names = _spike_nodes(graph)
    assert all(isinstance(graph.nodes[name], nir.LIF) for name in names)
    assert "approximation" in graph.nodes[names[0]].metadata
    assert not any(isinstance(n, nir.Threshold) for n in graph.nodes.values())
    evidence, activity = _run_torch(network, spikes)
    out = simulate(graph, spikes.numpy(), record=names)
    agreement = [np.mean(out[n] == a) for n, a in zip(names, activity, strict=True)]
    # reset to zero and the missing a*u coupling change spikes, but not wholesale
    assert all(0.75 < value < 1.0 for value in agreement)
    assert np.abs(out["output"] - evidence).max() > 1e-3


def test_nirtorch_executes_the_graph_the_same_way(network, spikes, tmp_path):
    """A third-party graph executor (nirtorch) with spec-level node modules."""
    nirtorch = pytest.importorskip("nirtorch")
    path = tmp_path / "model.nir"
    export_nir(network, path)
    graph = nir.read(path)
    dt = float(graph.metadata["dt"])

    class LI(torch.nn.Module):
        def __init__(self, node):
            super().__init__()
            self.decay = torch.exp(-dt / torch.from_numpy(node.tau))
            self.r, self.v_leak = torch.from_numpy(node.r), torch.from_numpy(node.v_leak)

        def forward(self, x, state=None):
            v = torch.zeros_like(x) if state is None else state
            v = self.decay * v + (1 - self.decay) * (self.v_leak + self.r * x)
            return v, v

    class Threshold(torch.nn.Module):
        def __init__(self, node):
            super().__init__()
            self.threshold = torch.from_numpy(node.threshold)

        def forward(self, x):
            return (x > self.threshold).to(x.dtype)

    class Scale(torch.nn.Module):
        def __init__(self, node):
            super().__init__()
            self.scale = torch.from_numpy(node.scale)

        def forward(self, x):
            return x * self.scale

    def affine(node):
        module = torch.nn.Linear(node.weight.shape[1], node.weight.shape[0])
        module.weight.data = torch.from_numpy(node.weight)
        module.bias.data = torch.from_numpy(node.bias)
        return module

    node_map = {nir.LI: LI, nir.Threshold: Threshold, nir.Scale: Scale, nir.Affine: affine}
    module = nirtorch.nir_to_torch(graph, node_map, dtype=torch.float64)
    state, steps = None, []
    with torch.no_grad():
        for t in range(STEPS):
            output, state = module(spikes[:, t].double(), state)
            steps.append(output)
    evidence, _ = _run_torch(network, spikes)
    np.testing.assert_allclose(torch.stack(steps, 1).numpy(), evidence, rtol=0, atol=1e-12)


def test_simulator_follows_the_lif_equations():
    """Hand-built graph: one LIF neuron with a recurrent self-inhibition."""
    dt, tau, drive = 0.001, 0.004, 3.0
    graph = nir.NIRGraph(
        nodes={
            "input": nir.Input(np.array([1])),
            "lif": nir.LIF(
                tau=np.array([tau]),
                r=np.array([2.0]),
                v_leak=np.array([0.1]),
                v_threshold=np.array([1.0]),
                v_reset=np.array([-0.2]),
            ),
            "inhibit": nir.Linear(weight=np.array([[-0.5]])),
            "output": nir.Output(np.array([1])),
        },
        edges=[("input", "lif"), ("lif", "inhibit"), ("inhibit", "lif"), ("lif", "output")],
        metadata={"dt": dt},
    )
    out = simulate(graph, np.full((1, 30, 1), drive))["output"][0, :, 0]
    d, v, z, expected = np.exp(-dt / tau), 0.0, 0.0, []
    for _ in range(30):
        v = d * v + (1 - d) * (0.1 + 2.0 * (drive - 0.5 * z))  # last step's spike
        z = float(v > 1.0)
        v = -0.2 if z else v
        expected.append(z)
    assert 0 < sum(expected) < 30
    np.testing.assert_array_equal(out, expected)


def test_export_command_writes_a_readable_file(network, tmp_path):
    vocabulary = ("yes", "no", "up", "down", "left", "right")
    model_path = tmp_path / "model.pt"
    ModelBundle(network, CochleaConfig(), vocabulary, 10.0).save(model_path)
    out = tmp_path / "model.nir"
    summary = export_nir_command(str(model_path), str(out))
    assert summary.startswith(str(out)) and "\n" not in summary
    assert "32, 24" in summary and "6 classes" in summary
    graph = nir.read(out)
    assert json.loads(graph.metadata["vocabulary"]) == list(vocabulary)
    assert json.loads(graph.metadata["frontend"])["channels"] == 64


def test_only_spiking_networks_export():
    analog = Classifier(NetworkConfig(n_inputs=8, n_classes=3, hidden=(4,), kind="analog"))
    with pytest.raises(ExportError, match="only spiking"):
        to_nir(analog.eval())
