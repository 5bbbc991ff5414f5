"""Shared fixtures: recorded clips, and a recognizer whose words are known in advance.

Protocol tests run on the *controlled* model (:func:`controlled_bundle`): whenever the
cochlea's activity opens a word (which depends on the audio and the decoder, not on
any weights), its readout ranks the words in :data:`RANKING` first, in that order, and
every other word after them with one shared score.  So the words a stream reports are
known exactly, whatever the bundled model would hear, and a test that expects no word
can tell "filtered out" from "nothing heard".  End-to-end tests use the bundled model
and say so in their names.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import soundfile as sf

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from models.model_file import ModelBundle

FIXTURES = Path(__file__).parent / "fixtures"
# The controlled model's order of preference: the first leads wherever there is speech,
# the next ones win where a stream's vocabulary leaves the earlier ones out.  None of them
# is "yes", the word of the `speech` clip, so its reports cannot come from hearing it.
RANKING = ("go", "stop", "no")
RANK_STEP = 3.0  # readout bias between neighbours in RANKING (the rest: 0, silence below)
# Limits small enough for the upload and message size tests to reach cheaply.
TEST_SETTINGS = {"max_upload_bytes": 400_000, "max_message_bytes": 200_000}


def fixture_path(word: str) -> Path:
    return next(FIXTURES.glob(f"{word}_*.wav"))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """For modules of many tiny tensor ops: extra threads only contend (and slow down a
    busy machine)."""
    import torch  # imported when used, as in the other fixtures here

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def speech() -> tuple[np.ndarray, int]:
    audio, rate = sf.read(fixture_path("yes"), dtype="float32")
    return audio, rate


@pytest.fixture(scope="session")
def noise() -> tuple[np.ndarray, int]:
    audio, rate = sf.read(fixture_path("noise"), dtype="float32")
    return audio, rate


def controlled_bundle(ranking: tuple[str, ...] = RANKING) -> ModelBundle:
    """A model with the bundled front end and vocabulary whose readout ignores the
    hidden layers (zero weights) and has a fixed bias: ``ranking`` first, in order, the
    other words tied at 0, silence below all.  Its class evidence is then the same in
    every bin of every word, so the decoder's choices are known exactly; words tied at
    0 give a confidence of 1/n among n allowed ones, below the decoder's threshold for
    n >= 3, so a vocabulary of those reports ``_unknown_``."""
    import torch

    from audio_frontend.cochlea import CochleaConfig
    from models.model_file import ModelBundle
    from models.network import Classifier, NetworkConfig
    from models.vocabulary import DEFAULT_VOCABULARY, SILENCE

    torch.manual_seed(0)
    network = Classifier(
        NetworkConfig(n_classes=len(DEFAULT_VOCABULARY), hidden=(8,), recurrent=False, dropout=0)
    )
    bias = torch.zeros(len(DEFAULT_VOCABULARY))
    for rank, word in enumerate(ranking):
        bias[DEFAULT_VOCABULARY.index(word)] = RANK_STEP * (len(ranking) - rank)
    bias[DEFAULT_VOCABULARY.index(SILENCE)] = -RANK_STEP  # never outweighs a word
    with torch.no_grad():
        network.readout.weight.zero_()
        network.readout.bias.copy_(bias)
    return ModelBundle(
        network.eval(), CochleaConfig(), DEFAULT_VOCABULARY, 10.0, {"name": "controlled"}
    )


@pytest.fixture(scope="session")
def controlled_model() -> ModelBundle:
    return controlled_bundle()


@pytest.fixture(scope="session")
def controlled_model_file(controlled_model, tmp_path_factory) -> str:
    """The controlled model as a model file, for commands and servers that take a path."""
    path = tmp_path_factory.mktemp("controlled") / "controlled.pt"
    controlled_model.save(path)
    return str(path)


@pytest.fixture(scope="session")
def controlled_client(controlled_model) -> Iterator[TestClient]:
    """The real app (``create_app``) serving the controlled model."""
    from fastapi.testclient import TestClient

    from app.server import create_app
    from app.settings import Settings

    with TestClient(create_app(Settings(**TEST_SETTINGS), controlled_model)) as client:
        yield client
