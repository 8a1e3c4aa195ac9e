"""Int8 ONNX export: static quantization calibrated on training slices, checked on validation slices."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

from pipeline.export import export_onnx, main
from pipeline.networks import NetworkSettings, build_network
from pipeline.quantize import compare_predictions, quantize_int8, split_images
from tests.bundle_testing import CLASSES, make_split, save_checkpoint

DEMO_HDKD = NetworkSettings("hdkd", "demo", image_size=64, in_channels=1, class_names=CLASSES)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_writes_a_checked_int8_model_beside_the_float_one(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(DEMO_HDKD.build().eval(), DEMO_HDKD, tmp_path)
    split = make_split(tmp_path / "data", per_class={"train": 6, "val": 2, "test": 1}, size=64)
    out = tmp_path / "out"
    # the classes of the split's labels come from the checkpoint
    argv = ["--checkpoint", str(tmp_path / "model.pt"), "--output", str(out), "--int8-split", str(split)]
    argv += ["--calibration-images", "12", "--min-agreement", "0.5"]
    assert main(argv) == 0

    # integer kernels: quantize/dequantize pairs and int8 weights, and much smaller than float32
    model = onnx.load(str(out / "hdkd.int8.onnx"))
    operators = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators
    assert any(tensor.data_type == onnx.TensorProto.INT8 for tensor in model.graph.initializer)
    assert (out / "hdkd.int8.onnx").stat().st_size < 0.6 * (out / "hdkd.onnx").stat().st_size

    record = json.loads((out / "hdkd.export.json").read_text())["onnx_int8"]
    assert record["file"] == "hdkd.int8.onnx" and record["sha256"] == _digest(out / "hdkd.int8.onnx")
    assert record["calibration"] == {"split": "train", "images": 12}
    # the check ran on all 8 validation slices (fewer than asked for), not on the calibration slices
    assert record["check_split"] == "val" and record["images"] == 8
    assert 0.5 <= record["top1_agreement"] <= 1 and 0 <= record["max_abs_probability_diff"] < 0.5
    assert record["shipped"] is True

    # an int8 model below the required agreement is measured, recorded and not shipped; the float stays
    float_before = _digest(out / "hdkd.onnx")
    argv[-1] = "1.01"  # no agreement can reach it
    assert main(argv) == 0
    record = json.loads((out / "hdkd.export.json").read_text())["onnx_int8"]
    assert record["shipped"] is False and record["file"] is None and "not shipped" in record["reason"]
    assert 0 <= record["top1_agreement"] <= 1 and not (out / "hdkd.int8.onnx").exists()
    assert _digest(out / "hdkd.onnx") == float_before


def test_quantization_never_overwrites_and_a_disagreeing_model_scores_no_agreement(tmp_path):
    torch.manual_seed(0)
    network = build_network("teacher", "demo").eval()
    float_path = export_onnx(network, tmp_path / "teacher.onnx", 64, 1)
    before = _digest(float_path)
    images = np.random.default_rng(0).random((8, 1, 64, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="must not overwrite"):
        quantize_int8(float_path, float_path, images)
    with pytest.raises(ValueError, match="non-empty"):
        quantize_int8(float_path, tmp_path / "empty.int8.onnx", images[:0])
    int8_path = quantize_int8(float_path, tmp_path / "teacher.int8.onnx", images)
    assert _digest(float_path) == before
    assert compare_predictions(float_path, int8_path, images)["images"] == 8

    # a model whose predicted class differs everywhere agrees on no image
    with torch.no_grad():
        predicted = network(torch.from_numpy(images)).argmax(1)
    other = copy.deepcopy(network)
    unused = next(k for k in range(len(CLASSES)) if not (predicted == k).all())
    with torch.no_grad():
        other.head[-1].bias[unused] += 1e3
    other_path = export_onnx(other, tmp_path / "other.onnx", 64, 1)
    facts = compare_predictions(float_path, other_path, images)
    assert facts["top1_agreement"] == 0.0 and facts["max_abs_probability_diff"] > 0.5


def test_split_images_and_cli_errors(tmp_path, capsys):
    split = make_split(tmp_path / "data", per_class={"train": 2, "val": 1, "test": 1}, size=32)
    images = split_images(split, "train", CLASSES, image_size=64, in_channels=1, count=5)
    assert images.shape == (5, 1, 64, 64) and images.dtype == np.float32
    assert len(split_images(split, "val", CLASSES, 64, 1, count=100)) == 4
    with pytest.raises(ValueError, match="at least 1"):
        split_images(split, "train", CLASSES, 64, 1, count=0)

    save_checkpoint(DEMO_HDKD.build().eval(), DEMO_HDKD, tmp_path)
    argv = ["--checkpoint", str(tmp_path / "model.pt"), "--output", str(tmp_path / "out"), "--role", "hdkd"]
    with pytest.raises(SystemExit):
        main([*argv, "--int8-split", str(split), "--register", "hdkd-student"])
    assert "--register needs --test-report" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
