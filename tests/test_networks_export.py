"""The HDKD student exports as bundles need: TorchScript (script and trace) and ONNX (onnxruntime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from pipeline.networks import build_network


@pytest.fixture(scope="module")
def hdkd() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("hdkd", "demo").eval()


@pytest.mark.parametrize("role", ["teacher", "baseline", "hdkd"])
def test_torchscript_script_keeps_logits_features_and_input_checks(role: str) -> None:
    network = build_network(role, "demo").eval()
    scripted = torch.jit.script(network)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), network(x))
        out, reference = scripted(x, True), network(x, return_features=True)
    torch.testing.assert_close(out.features[2], reference.features[2])
    torch.testing.assert_close(out.cls_logits, reference.cls_logits)
    assert (out.distill_logits is None) == (role != "hdkd")
    with pytest.raises(Exception, match="expected 1 input channels, got 3"):
        scripted(torch.rand(2, 3, 64, 64))


def test_torchscript_trace(hdkd: torch.nn.Module, tmp_path: Path) -> None:
    x = torch.rand(2, 1, 64, 64)
    traced = torch.jit.trace(hdkd, x)
    traced.save(tmp_path / "hdkd.ts")
    loaded = torch.jit.load(tmp_path / "hdkd.ts")
    y = torch.rand(5, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(y), hdkd(y))


def test_onnx_export_with_dynamic_batch_matches_torch(hdkd: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "hdkd.onnx"
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        hdkd,
        (torch.rand(2, 1, 64, 64),),
        path,
        dynamo=True,
        dynamic_shapes={"x": {0: batch}},
        input_names=["image"],
        output_names=["logits"],
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = torch.rand(3, 1, 64, 64)
    (logits,) = session.run(None, {"image": y.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, hdkd(y).numpy(), rtol=1e-4, atol=1e-4)
