"""Third-party NIR importers run the exported graph: class decisions against our own.

Each importer from PyPI (the ``nir-import`` extra) loads the graph that
``spikeear export-nir --target <importer>`` writes and runs it step by step on
validation-like spike inputs: the software cochlea of the fixture clips at three
levels and two onsets.  A network whose neurons are NIR primitives (``--neuron
lif``) must give the same class decisions (>= 99% of clips) in float64, where the
importer and our network compute the same numbers; in float32 their different
order of operations flips the odd spike of a neuron at its threshold, which a
recurrent network can carry into a decision (reported, not asserted).  Where an
importer cannot run a construct, the test pins the specific failure, which
docs/nir.md explains.  Run with ``-s`` to see the agreement per importer.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import nir
import numpy as np
import pytest
import soundfile as sf
import torch

from app.cli import main
from audio_frontend.cochlea import Cochlea, CochleaConfig
from audio_frontend.events import bin_events
from models.decoding import clip_decisions
from models.model_file import ModelBundle, load_model
from models.network import Classifier, NetworkConfig
from models.vocabulary import DEFAULT_VOCABULARY
from training.export import (
    TARGETS,
    ExportError,
    export_nir_command,
    graph_evidence,
    to_nir,
)
from training.nir_sim import simulate

FIXTURES = Path(__file__).parent / "fixtures"
SHIPPED_LIF_MODEL = Path(__file__).parents[1] / "models" / "spikeear-lif.pt"
BIN_MS = 20.0
CLIP_S = 1.2
LEVELS = (0.3, 1.0, 3.0)  # gain on the clip: -10 dB, as recorded, +10 dB
ONSETS_S = (0.0, 0.15)
MIN_AGREEMENT = 0.99


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trained_like_lif(seed: int = 0) -> Classifier:
    """A deterministic recurrent LIF network whose batch norms have seen cochlear input
    (so its layers spike at rates like a trained model's), in eval mode."""
    torch.manual_seed(seed)
    network = Classifier(
        NetworkConfig(
            n_inputs=64,
            n_classes=len(DEFAULT_VOCABULARY),
            hidden=(96, 64),
            neuron="lif",
            tau_u=(2.5, 12.5),  # 50-250 ms at 20 ms bins, the training default
            readout_tau=15.0,
        )
    )
    return network


def _rasters(frontend: CochleaConfig, bin_ms: float) -> np.ndarray:
    """Spike counts ``[clips, bins, channels]``: every fixture clip at each level and
    onset, through the software cochlea, binned as the network reads them."""
    cochlea = Cochlea(frontend)
    bins = round(CLIP_S * 1000 / bin_ms)
    rasters = []
    for path in sorted(FIXTURES.glob("*.wav")):
        audio, rate = sf.read(path, dtype="float32")
        for onset in ONSETS_S:
            padded = np.concatenate([np.zeros(round(onset * rate), np.float32), audio])
            for level in LEVELS:
                events = cochlea.encode(np.clip(level * padded, -1, 1), rate)
                rasters.append(np.minimum(bin_events(events, bin_ms / 1000, bins), 255))
    return np.stack(rasters).astype(np.float32)


def _bundle(network: Classifier, rasters: np.ndarray) -> ModelBundle:
    network.train()
    with torch.no_grad():  # batch-norm statistics from the inputs themselves
        for layer in network.layers:
            layer.norm.momentum = None
        network(torch.from_numpy(rasters))
    network.eval()
    return ModelBundle(network, CochleaConfig(), DEFAULT_VOCABULARY, BIN_MS)


@pytest.fixture(scope="module")
def random_lif() -> tuple[ModelBundle, np.ndarray]:
    rasters = _rasters(CochleaConfig(), BIN_MS)
    return _bundle(_trained_like_lif(), rasters), rasters


@pytest.fixture(scope="module")
def shipped_lif() -> tuple[ModelBundle, np.ndarray]:
    if not SHIPPED_LIF_MODEL.exists():
        pytest.skip(f"{SHIPPED_LIF_MODEL.name} is not shipped")
    bundle = load_model(SHIPPED_LIF_MODEL)
    return bundle, _rasters(bundle.frontend, bundle.bin_ms)


@pytest.fixture(params=["random_lif", "shipped_lif"])
def lif_model(request) -> tuple[ModelBundle, np.ndarray]:
    return request.getfixturevalue(request.param)


def _our_decisions(bundle: ModelBundle, rasters: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    network = copy.deepcopy(bundle.network).to(dtype)
    with torch.no_grad():
        evidence, _, activity = network(torch.from_numpy(rasters).to(dtype))
    assert 0.01 < float(activity[0].mean()) < 0.5, "the hidden neurons should spike"
    return clip_decisions(evidence.double().softmax(-1).numpy())


def _decisions(graph: nir.NIRGraph, output: np.ndarray) -> np.ndarray:
    evidence = graph_evidence(graph, output.astype(np.float64))
    return clip_decisions(torch.softmax(torch.from_numpy(evidence), -1).numpy())


def _step(module, rasters: np.ndarray, with_state: bool, dtype: torch.dtype) -> np.ndarray:
    """Run an imported module one bin at a time over the whole batch."""
    module = module.to(dtype)
    x = torch.from_numpy(rasters).to(dtype)
    state, outputs = None, []
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the importers make their initial states in it
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        for t in range(x.shape[1]):
            if with_state:
                out, state = module(x[:, t], state)
            else:
                out = module(x[:, t])
                out = out[0] if isinstance(out, tuple) else out
            outputs.append(out)
    torch.set_default_dtype(default)
    return torch.stack(outputs, 1).double().numpy()


def _agreement(
    importer: str,
    bundle: ModelBundle,
    rasters: np.ndarray,
    run,
    dtypes: tuple[torch.dtype, ...] = (torch.float64, torch.float32),
) -> float:
    """Share of clips where ``run(rasters, dtype)`` (the imported graph's output) gives
    our network's class decision, in each of ``dtypes`` (all printed; the first
    returned)."""
    shares = []
    for dtype in dtypes:
        graph, output = run(rasters, dtype)
        ours = _our_decisions(bundle, rasters, dtype)
        shares.append(float(np.mean(ours == _decisions(graph, output))))
    figures = ", ".join(f"{s:.1%} ({str(d)[6:]})" for s, d in zip(shares, dtypes, strict=True))
    print(f"\n{importer}: class decisions agree on {figures} of {len(rasters)} clips")
    return shares[0]


def test_norse_runs_lif_networks_exactly(lif_model):
    norse = pytest.importorskip("norse.torch", reason="norse: pip install -e '.[nir-import]'")
    bundle, rasters = lif_model
    graph = to_nir(bundle, **TARGETS["norse"].settings)

    def run(x: np.ndarray, dtype: torch.dtype):
        module = norse.from_nir(graph, dt=float(graph.metadata["dt"]))
        return graph, _step(module, x, with_state=True, dtype=dtype)

    assert _agreement("norse", bundle, rasters, run) >= MIN_AGREEMENT


def test_snntorch_runs_lif_networks_exactly(lif_model):
    pytest.importorskip("snntorch", reason="snntorch: pip install -e '.[nir-import]'")
    from snntorch.import_nir import import_from_nir

    bundle, rasters = lif_model
    graph = to_nir(bundle, **TARGETS["snntorch"].settings)

    def run(x: np.ndarray, dtype: torch.dtype):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints progress
            module = import_from_nir(graph)  # a fresh one: its neurons keep their state
        return graph, _step(module, x, with_state=True, dtype=dtype)

    # float32 only: its neurons emit float32 spikes whatever the parameters' type
    assert _agreement("snntorch", bundle, rasters, run, (torch.float32,)) >= MIN_AGREEMENT


def test_snntorch_fails_on_two_node_recurrent_cycles(random_lif):
    """snnTorch wraps an LIF <-> Linear cycle in a subgraph that its nirtorch wiring
    cannot build; the snntorch target routes the recurrence through an identity hop."""
    pytest.importorskip("snntorch", reason="snntorch: pip install -e '.[nir-import]'")
    from snntorch.import_nir import import_from_nir

    bundle, _ = random_lif
    settings = dict(TARGETS["snntorch"].settings, recurrence="cycle")
    with (
        pytest.raises(AttributeError, match="'GraphModule' object has no attribute 'items'"),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        import_from_nir(to_nir(bundle, **settings))


def test_norse_drops_the_li_readout_silently(random_lif):
    """Why the norse target ends at the readout's drive: Norse maps no LI node and
    leaves it out of the graph without a word, so the integrator would be lost."""
    norse = pytest.importorskip("norse.torch", reason="norse: pip install -e '.[nir-import]'")
    bundle, _ = random_lif
    settings = dict(TARGETS["norse"].settings, readout="integrator")
    module = norse.from_nir(to_nir(bundle, **settings), dt=BIN_MS / 1000)
    assert "readout_integrator" not in dict(module.named_children())


def test_sinabs_cannot_run_recurrent_layers(random_lif):
    sinabs = pytest.importorskip(
        "sinabs", reason="sinabs is in no extra (it pins nir<=1.0.4): pip install --no-deps sinabs"
    )
    bundle, _ = random_lif
    graph = to_nir(bundle, **TARGETS["norse"].settings)
    with pytest.raises(KeyError, match="layer0_recurrent"):
        sinabs.from_nir(graph, batch_size=1)


def test_rockpool_cannot_read_lif_nodes(random_lif):
    rockpool_nir = pytest.importorskip(
        "rockpool.nn.modules.torch.nir", reason="rockpool: pip install -e '.[nir-import]'"
    )
    bundle, _ = random_lif
    with pytest.raises(AttributeError, match="'LIF' object has no attribute 'tau_mem'"):
        rockpool_nir.from_nir(to_nir(bundle, **TARGETS["norse"].settings))


def test_adlif_model_for_a_lif_only_importer_names_the_construct(tmp_path):
    """The bad input: an adLIF model for an importer that maps only LIF nodes."""
    torch.manual_seed(0)
    network = Classifier(NetworkConfig(n_inputs=64, n_classes=4, hidden=(16,))).eval()
    model = tmp_path / "adlif.pt"
    ModelBundle(network, CochleaConfig(), ("yes", "no", "up", "down"), BIN_MS).save(model)
    out = tmp_path / "adlif.nir"
    with pytest.raises(ExportError) as raised:
        export_nir_command(str(model), str(out), "exact", "norse")
    message = str(raised.value)
    assert "adLIF neurons (adaptation, reset by subtraction)" in message
    assert "--neurons lif" in message and "flipped" in message
    assert not out.exists()
    summary = export_nir_command(str(model), str(out), "lif", "norse")
    assert "approximation:" in summary and out.exists()


def test_lif_network_exports_as_lif_nodes_exactly(random_lif):
    """Our own reader of the specification (zero-order hold, LI readout) reproduces a
    ``neuron="lif"`` network bit for bit in float64, in every export form."""
    bundle, rasters = random_lif
    x = rasters[:8].astype(np.float64)
    reference = copy.deepcopy(bundle.network).double()
    with torch.no_grad():
        evidence, _, activity = reference(torch.from_numpy(x))
    for target in TARGETS.values():
        graph = to_nir(bundle, **target.settings)
        layers = [n for n in graph.nodes if n.startswith("layer") and n.endswith("membrane")]
        assert all(isinstance(graph.nodes[n], nir.LIF) for n in layers)
        assert not any(isinstance(n, nir.Threshold | nir.Scale) for n in graph.nodes.values())
        out = simulate(graph, x, record=layers)
        for name, spikes in zip(layers, activity, strict=True):
            np.testing.assert_array_equal(out[name], spikes.numpy())
        np.testing.assert_allclose(
            graph_evidence(graph, out["output"]), evidence.numpy(), rtol=0, atol=1e-9
        )


def test_export_nir_cli_refuses_what_the_target_cannot_run(tmp_path, capsys):
    torch.manual_seed(0)
    network = Classifier(NetworkConfig(n_inputs=64, n_classes=4, hidden=(16,))).eval()
    model = tmp_path / "adlif.pt"
    ModelBundle(network, CochleaConfig(), ("yes", "no", "up", "down"), BIN_MS).save(model)
    out = tmp_path / "adlif.nir"
    command = ["export-nir", "--model", str(model), "--target", "snntorch", "--out", str(out)]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert "snntorch cannot run this model" in error and "--neurons lif" in error
    assert not out.exists()
    assert main([*command, "--neurons", "lif"]) == 0
    assert "approximation:" in capsys.readouterr().out and out.exists()


def test_rockpool_xylo_mapping_needs_samna():
    """Rockpool's Xylo mapping (its hardware check) imports SynSense's samna, which PyPI
    ships only as a stub that installs the real package from SynSense's own index on
    import; and a graph reaches the mapping only through from_nir, which fails on LIF
    nodes (above)."""
    pytest.importorskip("rockpool", reason="rockpool: pip install -e '.[nir-import]'")
    try:
        import rockpool.devices.xylo  # noqa: F401
    except ModuleNotFoundError as error:
        assert error.name == "samna"
    else:
        pytest.skip("samna is installed, but rockpool's from_nir reads no LIF node to map")


def test_lif_neuron_setting_trains_records_and_streams(random_lif):
    """``--neuron lif``: gradients reach the LIF parameters, a card's command records the
    flag, step mode equals sequence mode, and only spiking networks take it."""
    from dataclasses import asdict

    from training.config import TrainConfig, train_command

    bundle, rasters = random_lif
    network = copy.deepcopy(bundle.network).train()
    evidence, _, _ = network(torch.from_numpy(rasters[:4]))
    evidence.sum().backward()
    assert network.layers[0].alpha.grad.abs().sum() > 0
    assert network.layers[0].a.grad is None  # no adaptation to learn
    command = train_command(asdict(TrainConfig(data=["d"], out="m.pt", neuron="lif")))
    assert "--neuron lif" in command
    assert "--neuron" not in train_command(asdict(TrainConfig(data=["d"], out="m.pt")))
    network.eval()
    x = torch.from_numpy(rasters[:3])
    with torch.no_grad():
        whole, _, _ = network(x)
        state, steps = network.initial_state(3), []
        for t in range(x.shape[1]):
            out, state, _ = network.step(x[:, t], state)
            steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), whole, rtol=0, atol=0)
    with pytest.raises(ValueError, match="spiking kind"):
        NetworkConfig(kind="analog", neuron="lif")
