from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_path(word: str) -> Path:
    return next(FIXTURES.glob(f"{word}_*.wav"))


@pytest.fixture(scope="session")
def speech() -> tuple[np.ndarray, int]:
    audio, rate = sf.read(fixture_path("yes"), dtype="float32")
    return audio, rate


@pytest.fixture(scope="session")
def noise() -> tuple[np.ndarray, int]:
    audio, rate = sf.read(fixture_path("noise"), dtype="float32")
    return audio, rate
