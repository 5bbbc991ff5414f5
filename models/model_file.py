"""One file per trained model: weights, front end, vocabulary and model card.

Loading needs neither the training code nor the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from audio_frontend.cochlea import CochleaConfig
from models.custom_words import EnrollmentSpace
from models.network import Classifier, NetworkConfig

FORMAT = "spikeear-model"
FORMAT_VERSION = 1
DEFAULT_MODEL_PATH = Path(__file__).with_name("spikeear-default.pt")


class ModelFileError(ValueError):
    """A model file that cannot be used; the message is for the user."""


@dataclass
class ModelBundle:
    network: Classifier
    frontend: CochleaConfig
    vocabulary: tuple[str, ...]
    bin_ms: float
    card: dict = field(default_factory=dict)
    enrollment: EnrollmentSpace | None = None  # lets the model learn custom words

    def save(self, path: str | Path) -> None:
        extra = {"enrollment": self.enrollment.to_dict()} if self.enrollment is not None else {}
        torch.save(
            {
                **extra,
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "network_config": self.network.config.to_dict(),
                "frontend": self.frontend.to_dict(),
                "vocabulary": list(self.vocabulary),
                "bin_ms": self.bin_ms,
                "card": self.card,
                "state_dict": self.network.state_dict(),
            },
            path,
        )


def load_model(path: str | Path | None = None) -> ModelBundle:
    path = Path(path) if path is not None else DEFAULT_MODEL_PATH
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for non-model files
        raise ModelFileError(
            f"{path}: not a spikeear model file ({type(error).__name__})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a spikeear model file")
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {data.get('format_version')} is not supported "
            f"(this spikeear reads version {FORMAT_VERSION})"
        )
    config = NetworkConfig.from_dict(data["network_config"])
    vocabulary = tuple(data["vocabulary"])
    if config.n_classes != len(vocabulary):
        raise ModelFileError(
            f"{path}: vocabulary has {len(vocabulary)} words "
            f"but the network {config.n_classes} outputs"
        )
    network = Classifier(config)
    network.load_state_dict(data["state_dict"])
    network.eval()
    enrollment = data.get("enrollment")
    return ModelBundle(
        network,
        CochleaConfig.from_dict(data["frontend"]),
        vocabulary,
        data["bin_ms"],
        data["card"],
        EnrollmentSpace.from_dict(enrollment) if enrollment is not None else None,
    )
