"""The batched step of many streams: the state pool's rows, and stepping as the server
does (each stream's ready bins per call, up to MAX_STEP_BINS) against each stream alone."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from app.scheduler import MAX_STEP_BINS
from models.model_file import load_model
from models.network import Classifier, NetworkConfig, StatePool
from models.recognizer import Recognizer, Stream, StreamOptions
from tests.conftest import fixture_path


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer(load_model())


@pytest.fixture(scope="module")
def recording() -> np.ndarray:
    """int16 at 16 kHz: words with pauses, some long enough to rest the network."""
    parts = []
    for word, pause_s in (("yes", 1.2), ("no", 0.3)):
        audio, rate = sf.read(fixture_path(word), dtype="int16")
        assert rate == 16000
        parts += [audio, np.zeros(round(pause_s * rate), np.int16)]
    return np.concatenate(parts)


def small_network() -> Classifier:
    config = NetworkConfig(n_inputs=4, n_classes=3, hidden=(6, 5), input_delays=(0, 2))
    return Classifier(config).eval()


def test_pool_rows_are_independent_and_survive_growth():
    network = small_network()
    pool = StatePool(network, capacity=2)
    rows = [pool.allocate() for _ in range(2)]
    assert StatePool.REST not in rows
    states = [network.initial_state(1) for _ in rows]
    for k, state in enumerate(states):
        for tensor in state.tensors():
            tensor.fill_(k + 1.0)
        pool.scatter([rows[k]], state)
    more = [pool.allocate() for _ in range(3)]  # grows the pool
    assert len(set(rows + more)) == 5 and StatePool.REST not in more
    gathered = pool.gather([rows[1], StatePool.REST, more[0], rows[0]])
    for tensor in gathered.tensors():
        assert (tensor[0] == 2.0).all() and (tensor[1:3] == 0.0).all() and (tensor[3] == 1.0).all()
    pool.reset_many([rows[1]])
    assert all((t == 0.0).all() for t in pool.gather([rows[1]]).tensors())
    assert all((t == 1.0).all() for t in pool.gather([rows[0]]).tensors())


def test_scatter_keeps_only_the_rows_asked_for():
    network = small_network()
    pool = StatePool(network, capacity=4)
    rows = [pool.allocate() for _ in range(3)]
    state = network.initial_state(3)
    for k, tensor in enumerate(state.tensors()):
        tensor.copy_(torch.arange(3.0).reshape(3, *[1] * (tensor.dim() - 1)) + 10 * k)
    pool.scatter([rows[2], rows[0]], state, keep=[2, 0])
    got = pool.gather(rows)
    for k, (tensor, expected) in enumerate(zip(got.tensors(), state.tensors(), strict=True)):
        assert torch.equal(tensor[0], expected[0]) and torch.equal(tensor[2], expected[2])
        assert (tensor[1] == 0.0).all(), k


def step_like_the_server(
    recognizer: Recognizer, audio: list[np.ndarray], chunk: int
) -> tuple[list[Stream], list[list]]:
    """Each stream's audio in ``chunk``-sample pieces, all streams' pieces fed together
    and stepped as ``app.scheduler`` does; returns the (open) streams and their events."""
    options = StreamOptions(activity=True, emit_unknown=True)
    streams = [recognizer.open_stream(options) for _ in audio]
    events: list[list] = [[] for _ in streams]
    index = {id(stream): k for k, stream in enumerate(streams)}
    for start in range(0, max(map(len, audio)), chunk):
        recognizer.feed_audio_many(
            [
                (stream, samples[start : start + chunk], start + chunk >= len(samples))
                for stream, samples in zip(streams, audio, strict=True)
                if not stream.finished
            ]
        )
        while ready := [s for s in streams if s.ready]:
            for stream, found in zip(ready, recognizer.step(ready, MAX_STEP_BINS), strict=True):
                events[index[id(stream)]] += found
    return streams, events


@pytest.mark.slow
def test_streams_stepped_together_spike_as_each_alone_and_find_its_words(recognizer, recording):
    """18 streams (more than the pool's first rows), out of phase and of different
    lengths, some in chunks of several bins (catching up, their rests inside a call):
    the hidden layers spike exactly as in each recording transcribed alone, and the
    words are the same."""
    audio = [np.roll(recording, -811 * k)[: len(recording) - 997 * (k % 4)] for k in range(18)]
    for chunk in (1600, 16000):  # one bin per stream per call; several
        streams, events = step_like_the_server(recognizer, audio, chunk)
        for stream, found, samples in zip(streams, events, audio, strict=True):
            alone = recognizer.transcribe([samples], 16000, StreamOptions(emit_unknown=True))
            assert recognizer.stats(stream) == alone.stats
            finals = [(e.word, e.start, e.end) for e in found if e.kind == "final"]
            assert finals == [(e.word, e.start, e.end) for e in alone.words]
            recognizer.close_stream(stream)


@pytest.mark.slow
def test_which_pool_rows_the_streams_hold_changes_nothing(recording):
    """The same streams stepped in the same batches from other rows of the pool (and
    a pool that had to grow) give bit-identical probabilities and events."""
    audio = [np.roll(recording, -1601 * k) for k in range(4)]
    runs = []
    for taken in (0, 13):  # rows held by other streams: the second pool grows
        recognizer = Recognizer(load_model())
        held = [recognizer.pool.allocate() for _ in range(taken)]
        streams, events = step_like_the_server(recognizer, audio, 1600)
        snapshots = [(s.activity.last_output.tobytes(), recognizer.stats(s)) for s in streams]
        runs.append((events, snapshots, sorted(s.row for s in streams)))
        for row in held:
            recognizer.pool.release(row)
    assert runs[0][2] != runs[1][2]
    assert runs[0][:2] == runs[1][:2]
