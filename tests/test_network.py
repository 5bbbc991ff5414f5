import dataclasses

import numpy as np
import pytest
import torch

from audio_frontend.cochlea import CochleaConfig
from models import kernels
from models.model_file import FORMAT_VERSION, ModelBundle, ModelFileError, load_model
from models.network import Classifier, FrequencyConv, NetworkConfig, NetworkState, StatePool
from models.neurons import AdLIFState
from models.vocabulary import DEFAULT_VOCABULARY

CONV = (3, 5, 4)  # filters, taps, stride: 3 * 16 first-layer neurons on 64 channels
SECOND_CONV = (4, 3, 2)  # over the first layer's 16 positions: 4 * 8 second-layer neurons
SECOND_AND_THIRD = (*SECOND_CONV, 6, 3, 2)  # and over its 8 positions: 6 * 4 third-layer neurons


def trained_like(
    kind: str = "spiking",
    seed: int = 0,
    input_delays: tuple[int, ...] = (0,),
    input_conv: tuple[int, int, int] | None = None,
    hidden_conv: tuple[int, ...] | None = None,
) -> Classifier:
    """A random network whose batch norms have seen data, so its layers spike."""
    torch.manual_seed(seed)
    layers = max(2, 1 + len(hidden_conv or ()) // 3)  # a layer for each shared one, two at least
    network = Classifier(
        NetworkConfig(
            hidden=(48, 32, 24)[:layers],
            kind=kind,
            input_delays=input_delays,
            input_conv=input_conv,
            hidden_conv=hidden_conv,
        )
    )
    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    for norm in norms:
        norm.momentum = None  # running statistics: the plain mean over the passes below
    network.train()
    with torch.no_grad():
        for _ in range(3):
            network(torch.poisson(torch.rand(8, 30, 64) * 4))
        for norm in norms:
            norm.weight.fill_(3.0)  # normalised currents this strong make every layer fire
    return network.eval()


def inputs(batch: int = 3, time: int = 40) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.poisson(torch.rand(batch, time, 64) * 4)


@pytest.mark.parametrize(
    ("kind", "input_delays", "input_conv", "hidden_conv"),
    [
        ("spiking", (0,), None, None),
        ("analog", (0,), None, None),
        ("binary", (0,), None, None),
        ("spiking", (0, 2, 5), None, None),
        ("spiking", (0, 1, 2), CONV, None),
        ("analog", (0,), CONV, None),
        ("spiking", (0, 1, 2), CONV, SECOND_CONV),
        ("spiking", (0, 1, 2), CONV, SECOND_AND_THIRD),
    ],
)
def test_step_mode_equals_sequence_mode(kind, input_delays, input_conv, hidden_conv):
    network = trained_like(
        kind, input_delays=input_delays, input_conv=input_conv, hidden_conv=hidden_conv
    )
    x = inputs()
    with torch.no_grad():
        sequence, final_state, activity = network(x)
        state = network.initial_state(3)
        steps = []
        for t in range(x.shape[1]):
            out, state, _ = network.step(x[:, t], state)
            steps.append(out)
    assert torch.allclose(torch.stack(steps, 1), sequence, atol=1e-5)
    assert torch.allclose(state.readout, final_state.readout, atol=1e-5)
    if kind == "spiking":
        assert all(0 < a.mean() < 0.5 for a in activity)  # only meaningful if neurons fire


@pytest.mark.parametrize(
    ("kind", "input_delays", "input_conv", "hidden_conv"),
    [
        ("spiking", (0,), None, None),
        ("analog", (0,), None, None),
        ("binary", (0,), None, None),
        ("spiking", (0, 1, 2), CONV, None),
        ("spiking", (0,), CONV, SECOND_CONV),
        ("spiking", (0, 2), CONV, SECOND_AND_THIRD),
    ],
)
def test_event_driven_inference_equals_dense_torch(kind, input_delays, input_conv, hidden_conv):
    """The CPU inference kernels compute what torch's dense operations compute, under
    inference mode as the service runs them."""
    network = trained_like(
        kind, input_delays=input_delays, input_conv=input_conv, hidden_conv=hidden_conv
    )
    x = inputs()
    with torch.inference_mode():
        evidence, _, activity = network(x)
        layer = network.layers[0]
        taps, _ = network.delay_line(x, network.initial_state(len(x)).history)
        projected = layer.project(taps)
        with kernels.disabled():
            dense_evidence, _, dense_activity = network(x)
            dense_projected = layer.project(taps)
    # Counts (not only spikes) are accumulated: the first layer's input.
    torch.testing.assert_close(projected, dense_projected, rtol=1e-5, atol=1e-5)
    for events, dense in zip(activity, dense_activity, strict=True):
        if kind != "analog":
            assert (events != dense).float().mean() < 1e-3  # rounding may tip a rare spike
        else:
            torch.testing.assert_close(events, dense, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(evidence, dense_evidence, rtol=1e-3, atol=1e-3)
    if kind == "spiking":
        assert all(0 < a.mean() < 0.5 for a in activity)


def test_event_driven_layer_follows_the_neuron_step():
    """One recurrent adLIF layer by the kernel, against torch's step, from a state
    that is not at rest; the caller's state is left as it was."""
    layer = trained_like().layers[1]
    torch.manual_seed(2)
    currents = torch.randn(4, 25, 32) * 2
    start = (torch.rand(4, 32), torch.rand(4, 32), (torch.rand(4, 32) < 0.3).float())
    saved = [t.clone() for t in start]
    with torch.no_grad():
        spikes, final = kernels.adlif_layer(
            currents, layer.recurrent.weight, layer.alpha, layer.beta, layer.a, layer.b, *start
        )
        weights, state, expected = layer.step_weights(), AdLIFState(*start), []
        for t in range(currents.shape[1]):
            out, state = layer.advance(currents[:, t], state, weights)
            expected.append(out)
    assert torch.equal(spikes, torch.stack(expected, 1))
    assert 0 < spikes.mean() < 0.5
    for got, want in zip(final, state, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(t, s) for t, s in zip(start, saved, strict=True))


def test_event_driven_weights_follow_weight_updates():
    """The kernels keep a transposed copy of each weight; changing the weight in
    place (an optimizer step, loading a checkpoint) must not leave it stale."""
    weight = torch.randn(5, 3)
    x = torch.tensor([[1.0, 0.0, 2.0]])
    before = x @ weight.t()
    norm = torch.nn.BatchNorm1d(5).eval()
    with torch.no_grad():
        torch.testing.assert_close(kernels.normalized_projection(x, weight, norm), norm(before))
        weight.mul_(-3.0)
        torch.testing.assert_close(
            kernels.normalized_projection(x, weight, norm), norm(-3.0 * before)
        )


def test_delay_line_delivers_each_input_at_each_delay():
    network = Classifier(NetworkConfig(n_inputs=2, hidden=(4,), input_delays=(0, 1, 3)))
    x = torch.arange(1.0, 11.0).reshape(1, 5, 2)  # bins (1,2), (3,4), ...
    taps, history = network.delay_line(x, network.initial_state(1).history)
    assert taps[0, 3].tolist() == [7.0, 8.0, 5.0, 6.0, 1.0, 2.0]  # bins 3, 2 and 0
    assert taps[0, 1].tolist() == [3.0, 4.0, 1.0, 2.0, 0.0, 0.0]  # before the start: silence
    assert history[0].tolist() == [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]
    # Chunked: the history carries the past into the next call.
    first, carried = network.delay_line(x[:, :2], network.initial_state(1).history)
    second, _ = network.delay_line(x[:, 2:], carried)
    assert torch.equal(torch.cat([first, second], 1), taps)


def test_negative_delays_are_refused():
    with pytest.raises(ValueError, match="delays"):
        NetworkConfig(input_delays=(0, -1))


@pytest.mark.parametrize("input_delays", [(0,), (0, 3)])
def test_streams_stepped_together_equal_streams_stepped_alone(input_delays):
    network = trained_like(input_delays=input_delays)
    x = inputs(batch=3, time=20)
    with torch.no_grad():
        alone = []
        for i in range(3):
            state = network.initial_state(1)
            for t in range(20):
                out, state, _ = network.step(x[i : i + 1, t], state)
            alone.append(out)
        pool = StatePool(network, capacity=2)  # grows while allocating
        rows = torch.tensor([pool.allocate() for _ in range(3)])
        for t in range(20):
            out, joint, _ = network.step(x[:, t], pool.gather(rows))
            pool.scatter(rows, joint)
    assert torch.allclose(torch.cat(alone), out, atol=1e-5)


def test_frequency_conv_shares_one_kernel_across_channels():
    conv = FrequencyConv(n_inputs=16, depth=2, filters=3, taps=5, stride=2)
    assert conv.weight.shape == (8 * 3, 2 * 16)
    x = torch.zeros(2 * 16)
    x[6] = x[16 + 7] = 1.0  # a small pattern over two delays
    moved = torch.roll(x.reshape(2, 16), 2, dims=1).flatten()  # one stride higher
    currents = (conv.weight @ x).reshape(8, 3)
    assert currents.abs().sum() > 0
    # Away from the edges, moving the input by a stride moves the output by a position.
    assert torch.equal((conv.weight @ moved).reshape(8, 3)[1:], currents[:-1])
    # Each row holds each kernel entry once (or drops it at the edges), nothing else.
    assert conv.synapses == int((conv.weight != 0).sum())
    assert conv.synapses <= 8 * 3 * 2 * 5
    # Learning moves the kernel, not 768 independent weights.
    (conv.weight @ x).sum().backward()
    assert conv.kernel.grad is not None and conv.kernel.grad.shape == (3, 2, 5)


def test_frequency_conv_expands_its_kernel_once_per_change_for_inference():
    conv = FrequencyConv(n_inputs=16, depth=2, filters=3, taps=5, stride=2)
    with torch.inference_mode():
        first = conv.weight
        assert conv.weight is first and not first.is_inference()  # kept for the kernels
    with torch.no_grad():
        conv.kernel.mul_(-2.0)  # as an optimizer step or loading weights changes it
        torch.testing.assert_close(conv.weight, -2.0 * first)
    assert conv.weight.requires_grad  # training expands it afresh, in the graph


def test_second_layer_convolution_slides_over_the_first_layers_positions():
    """Layer-1 neurons are laid out position-major ([position, filter]); the second
    convolution reads all their filters as depth and slides along the positions."""
    conv = FrequencyConv(n_inputs=16, depth=3, filters=4, taps=3, stride=2, depth_major=False)
    assert conv.weight.shape == (8 * 4, 16 * 3)
    x = torch.zeros(16, 3)
    x[5, 0] = x[6, 2] = 1.0  # a pattern over two positions and two first-layer filters
    moved = torch.roll(x, 2, dims=0)  # one stride higher
    currents = (conv.weight @ x.flatten()).reshape(8, 4)
    assert currents.abs().sum() > 0
    assert torch.equal((conv.weight @ moved.flatten()).reshape(8, 4)[1:], currents[:-1])
    assert conv.synapses == int((conv.weight != 0).sum())


def test_frequency_conv_needs_a_matching_first_layer():
    with pytest.raises(ValueError, match="48 first-layer neurons"):
        NetworkConfig(hidden=(64, 32), input_conv=CONV)
    with pytest.raises(ValueError, match="spiking and analog"):
        NetworkConfig(hidden=(48, 32), input_conv=CONV, kind="binary")
    with pytest.raises(ValueError, match="needs input_conv"):
        NetworkConfig(hidden=(48, 32), hidden_conv=SECOND_CONV)
    with pytest.raises(ValueError, match="32 second-layer neurons, but hidden"):
        NetworkConfig(hidden=(48, 40), input_conv=CONV, hidden_conv=SECOND_CONV)
    with pytest.raises(ValueError, match="24 third-layer neurons, but hidden"):
        NetworkConfig(hidden=(48, 32, 20), input_conv=CONV, hidden_conv=SECOND_AND_THIRD)
    with pytest.raises(ValueError, match="only 1"):
        NetworkConfig(hidden=(48, 32), input_conv=CONV, hidden_conv=SECOND_AND_THIRD)
    with pytest.raises(ValueError, match="for each shared layer"):
        NetworkConfig(hidden=(48, 32, 24), input_conv=CONV, hidden_conv=(*SECOND_CONV, 6))


def test_third_layer_convolution_reads_the_second_layers_positions():
    network = Classifier(
        NetworkConfig(hidden=(48, 32, 24), input_conv=CONV, hidden_conv=SECOND_AND_THIRD)
    )
    third = network.layers[2].input
    assert isinstance(third, FrequencyConv)
    assert third.weight.shape == (4 * 6, 8 * 4)  # 4 positions x 6 filters, 8 positions x 4
    assert third.kernel.shape == (6, 4, 3)  # the second layer's filters as depth


def test_model_file_round_trip(tmp_path):
    network = trained_like(input_delays=(0, 4), input_conv=CONV)
    bundle = ModelBundle(network, CochleaConfig(), DEFAULT_VOCABULARY, 10.0, {"name": "t"})
    bundle.save(tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.vocabulary == DEFAULT_VOCABULARY and loaded.card["name"] == "t"
    assert loaded.network.config.input_delays == (0, 4)
    assert loaded.network.config.input_conv == CONV
    x = inputs()
    with torch.no_grad():
        assert torch.equal(network(x)[0], loaded.network(x)[0])


def test_bad_model_files(tmp_path):
    bundle = ModelBundle(trained_like(), CochleaConfig(), DEFAULT_VOCABULARY, 10.0, {})
    bundle.save(tmp_path / "m.pt")
    data = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**data, "format_version": FORMAT_VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(ModelFileError, match="format version"):
        load_model(tmp_path / "future.pt")
    torch.save({**data, "vocabulary": ["yes", "no"]}, tmp_path / "vocab.pt")
    with pytest.raises(ModelFileError, match="vocabulary"):
        load_model(tmp_path / "vocab.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ModelFileError, match="not a spikeear model"):
        load_model(tmp_path / "text.pt")
    with pytest.raises(ModelFileError, match="no such"):
        load_model(tmp_path / "missing.pt")


def test_a_few_training_steps_reduce_the_loss():
    from training.train import clip_loss, rate_penalty

    torch.manual_seed(0)
    network = Classifier(NetworkConfig(hidden=(64,)))
    y = torch.arange(16) % 4
    rates = torch.full((16, 30, 64), 0.5)
    for i, label in enumerate(y):  # each class excites its own band of channels
        rates[i, 5:25, 16 * label : 16 * label + 16] = 6.0
    x = torch.poisson(rates)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        evidence, _, activity = network(x)
        loss = clip_loss(evidence, y) + 0.5 * rate_penalty(activity)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        network.clamp_()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    assert (evidence.softmax(-1).mean(1).argmax(-1) == y).all()
    assert np.isfinite(losses).all()


@pytest.mark.parametrize("recurrent", [True, False])
def test_fused_backpropagation_equals_autograd(recurrent):
    """The hand-written BPTT of spiking layers gives autograd's gradients, for every
    parameter and for the input, including through a carried-in state."""
    from training.train import clip_loss, rate_penalty

    config = NetworkConfig(n_inputs=16, n_classes=5, hidden=(24, 20), recurrent=recurrent)
    torch.manual_seed(3)
    network = Classifier(dataclasses.replace(config, dropout=0.0)).double()
    with torch.no_grad():  # adaptation on, and busy neurons, so every term matters
        for layer in network.layers:
            layer.a.uniform_(-0.5, 0.5)
            layer.b.uniform_(0.2, 1.5)
            layer.norm.weight.fill_(6.0)
            layer.norm.bias.fill_(1.0)
    x = torch.poisson(torch.full((6, 30, 16), 2.0, dtype=torch.float64))
    start = network.initial_state(6)
    start = NetworkState.from_tensors([torch.rand_like(t) * 0.5 for t in start.tensors()])
    grads = []
    for fused in (True, False):
        network.fused = fused
        inputs = x.clone().requires_grad_()
        network.zero_grad()
        evidence, final, activity = network(inputs, start)
        labels = torch.arange(6) % 5
        loss = clip_loss(evidence, labels) + rate_penalty(activity)
        loss = loss + final.layers[0].u.square().mean() + final.layers[1].w.mean()
        loss.backward()
        assert 0.02 < activity[0].mean() < 0.6  # spiking, so the surrogate is exercised
        grads.append([inputs.grad] + [p.grad for p in network.parameters() if p.requires_grad])
    for fused_grad, autograd_grad in zip(*grads, strict=True):
        torch.testing.assert_close(fused_grad, autograd_grad, rtol=1e-9, atol=1e-12)
