"""The spiking classifier, its model files and the decoding of its output."""

from models.model_file import DEFAULT_MODEL_PATH, ModelBundle, ModelFileError, load_model
from models.network import Classifier, NetworkConfig, NetworkState

__all__ = [
    "DEFAULT_MODEL_PATH",
    "Classifier",
    "ModelBundle",
    "ModelFileError",
    "NetworkConfig",
    "NetworkState",
    "load_model",
]
