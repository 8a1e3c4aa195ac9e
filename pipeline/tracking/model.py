"""The trained networks as MLflow models: a ``pyfunc`` flavour that maps a batch of slices to class
probabilities.

A logged model holds the checkpoint (``model.pt``, the state dict the training keeps) and the settings
that rebuild its network (``model_config``: pipeline.networks.NetworkSettings.state_dict(), the record
every training checkpoint carries: role, profile, image size, channels, class names). Its
signature takes a float32 batch ``[-1, C, S, S]`` shaped as the slice files are (values in [0, 1]) and
returns float32 probabilities ``[-1, classes]``; the class names are in the model's metadata. The
requirements are given explicitly (no slow inference of the environment at logging time).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import Schema, TensorSpec

MODEL_NAME = "model"
WEIGHTS = "weights"
# distributions the model needs at load time; the ``pipeline`` package (this project) must be installed too,
# so serve with ``--env-manager local`` from the project's environment (README: "Registered models")
REQUIREMENTS = ("torch", "monai", "numpy", "mlflow", "einops")


def signature(config: Mapping[str, Any]) -> ModelSignature:
    """Input: float32 ``[-1, C, S, S]`` slices; output: float32 ``[-1, classes]`` probabilities."""
    channels, size = config["in_channels"], config["image_size"]
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, channels, size, size))])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, len(config["class_names"])))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(config: Mapping[str, Any]) -> np.ndarray:
    """Two reproducible slices in [0, 1] (batch 2, so the example does not suggest a fixed batch of 1)."""
    shape = (2, config["in_channels"], config["image_size"], config["image_size"])
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def pip_requirements() -> list[str]:
    """The installed versions of :data:`REQUIREMENTS`, pinned."""
    return [f"{name}=={metadata.version(name)}" for name in REQUIREMENTS]


class ClassifierModel(PythonModel):
    """The pyfunc model: rebuilds the network from ``model_config`` (network settings), loads the
    checkpoint strictly and returns softmax probabilities (ImageNet normalisation applied for 3-channel
    input, as in training)."""

    def load_context(self, context: PythonModelContext) -> None:
        """Build the network and load the weights (CPU, eval mode)."""
        import torch

        from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD
        from pipeline.networks import NetworkSettings, load_weights

        settings = NetworkSettings.from_dict(context.model_config, "model_config")
        self.class_names = list(settings.class_names)
        self.network = load_weights(settings.build(), context.artifacts[WEIGHTS]).eval()
        self.normalisation = None
        if settings.in_channels == 3:
            self.normalisation = (
                torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
            )

    def predict(self, context: PythonModelContext, model_input, params: dict | None = None) -> np.ndarray:
        """Class probabilities ``[batch, classes]`` for a float32 batch ``[batch, C, S, S]``."""
        import torch

        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        if self.normalisation is not None:
            mean, std = self.normalisation
            images = (images - mean) / std
        with torch.inference_mode():
            return torch.softmax(self.network(images).float(), dim=1).numpy()


def log_classifier(
    checkpoint: str | Path,
    config: Mapping[str, Any],
    name: str = MODEL_NAME,
    extra_artifacts: Mapping[str, str | Path] | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log ``checkpoint`` as a pyfunc :class:`ClassifierModel` to the active run (artifact ``name``),
    with the signature, an input example and pinned requirements. ``extra_artifacts`` (e.g. ONNX files)
    are stored inside the model next to the weights."""
    artifacts = {
        WEIGHTS: str(checkpoint),
        **{key: str(path) for key, path in (extra_artifacts or {}).items()},
    }
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("served_model.py")),  # models from code: no pickle
        artifacts=artifacts,
        model_config=dict(config),
        signature=signature(config),
        input_example=input_example(config),
        pip_requirements=pip_requirements(),
        metadata={"class_names": list(config["class_names"]), "output": "class probabilities"},
    )
