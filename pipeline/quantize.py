"""Int8 ONNX models for fast CPU inference: static quantization calibrated on training slices.

ONNX Runtime's static quantization (QDQ format, per-channel int8 weights, uint8 activations with
min/max ranges read from calibration images) turns the convolutions and matrix products into integer
kernels, which CPUs with AVX-512 VNNI or AVX-VNNI run several times faster than float32. The int8
model is not bit-equal to the float one, so :func:`compare_predictions` measures what matters to a
user, on images that were not used for calibration: how often the predicted class agrees and how far
the class probabilities move, and the export fails below a minimum agreement.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime
from monai.data import Dataset
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from pipeline.data.datasets import load_split
from pipeline.data.transforms import eval_transforms


class _ImageBatches(CalibrationDataReader):
    """Feeds ``images`` to the calibrator one batch at a time under the model's input name."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int = 8) -> None:
        self._batches = iter(
            [{input_name: images[i : i + batch_size]} for i in range(0, len(images), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def split_images(
    split_csv: str | Path,
    split: str,
    class_names: Sequence[str],
    image_size: int,
    in_channels: int,
    count: int,
    seed: int = 0,
) -> np.ndarray:
    """``count`` slices (or all, if fewer) drawn at random from one split, through the evaluation
    transforms: float32 [count, in_channels, image_size, image_size]."""
    if count < 1:
        raise ValueError(f"the number of images must be at least 1, got {count}")
    items = load_split(split_csv, split, class_names)
    chosen = np.random.default_rng(seed).permutation(len(items))[:count]
    dataset = Dataset([items[i] for i in sorted(chosen)], eval_transforms(image_size, in_channels))
    return np.stack([np.asarray(dataset[i]["image"], dtype=np.float32) for i in range(len(dataset))])


def input_name(onnx_path: str | Path) -> str:
    """The name of the ONNX model's single input."""
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    return model_input.name


def quantize_int8(onnx_path: str | Path, output: str | Path, calibration: np.ndarray) -> Path:
    """Write an int8 (QDQ, per-channel) copy of the float ONNX model at ``onnx_path`` to ``output``,
    with activation ranges calibrated on ``calibration`` ([N, C, H, W] float32)."""
    onnx_path, output = Path(onnx_path), Path(output)
    if output.resolve() == onnx_path.resolve():
        raise ValueError(f"{output}: the int8 model must not overwrite the float model it is made from")
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(f"calibration images must be a non-empty [N, C, H, W] array: {calibration.shape}")
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Symbolic shape inference cannot follow the dynamo exporter's dynamic batch; ONNX's own
        # shape inference and graph optimisation still run.
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(output),
            _ImageBatches(input_name(onnx_path), calibration.astype(np.float32)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return output


def _probabilities(onnx_path: Path, images: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def compare_predictions(
    float_path: str | Path, int8_path: str | Path, images: np.ndarray
) -> dict[str, float | int]:
    """Top-1 agreement and largest class-probability change of the int8 model against the float model
    on ``images`` (the caller decides whether that is enough to ship it)."""
    reference = _probabilities(Path(float_path), images)
    quantized = _probabilities(Path(int8_path), images)
    agreement = float((reference.argmax(axis=1) == quantized.argmax(axis=1)).mean())
    return {
        "images": len(images),
        "top1_agreement": agreement,
        "max_abs_probability_diff": float(np.abs(reference - quantized).max()),
    }
