"""MONAI's bundle tools on both bundles: verify_metadata (schema kept in the repository),
verify_net_in_out, ckpt_export (TorchScript) and onnx_export (dynamic batch, ONNX Runtime within 1e-4
of torch). The functions are those the ``python -m monai.bundle`` CLI calls; one export goes through the
CLI itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from bundle_testing import CLASSES, ROOT, bundle_env, save_checkpoint
from monai import bundle

from pipeline.networks import NetworkSettings, load_weights

BUNDLES = {"hdkd_teacher": "teacher", "hdkd_student": "hdkd"}
SCHEMA = "bundles/common/meta_schema.json"
# the metadata describes the published 224 px RGB input; the tests use the small demo networks, which
# inference.json's network_def rebuilds from the checkpoint (--ckpt_path) without a --profile
DEMO = {
    "_meta_#network_data_format#inputs#image#num_channels": 1,
    "_meta_#network_data_format#inputs#image#spatial_shape": [64, 64],
}
ONNX_NAMES = {
    "input_names": ["image"],
    "output_names": ["pred"],
    "dynamic_axes": {"image": {0: "batch"}, "pred": {0: "batch"}},
}


def _paths(name: str) -> dict[str, str]:
    configs = f"bundles/{name}/configs"
    return {"meta_file": f"{configs}/metadata.json", "config_file": f"{configs}/inference.json"}


@pytest.fixture
def weights(tmp_path: Path) -> dict[str, Path]:
    """A demo checkpoint per bundle as training writes it (random weights: the export tools do not care
    how good they are)."""
    torch.manual_seed(0)
    files = {}
    for name, role in BUNDLES.items():
        settings = NetworkSettings(role, "demo", image_size=64, in_channels=1, class_names=CLASSES)
        files[name] = save_checkpoint(settings.build(), settings, tmp_path, f"{name}.pt")
    return files


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_verifies_against_the_schema_in_the_repository(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    bundle.verify_metadata(meta_file=_paths(name)["meta_file"], filepath=SCHEMA)


def test_metadata_schema_rejects_a_missing_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    meta = json.loads(Path(_paths("hdkd_student")["meta_file"]).read_text())
    del meta["network_data_format"]["outputs"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="outputs"):
        bundle.verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=SCHEMA)


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_network_in_out_and_exports(
    name: str, weights: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    demo = {**DEMO, "ckpt_path": str(weights[name])}
    bundle.verify_net_in_out(net_id="network_def", **_paths(name), **demo)
    settings = NetworkSettings(BUNDLES[name], "demo", 64, 1, CLASSES)
    network = load_weights(settings.build(), weights[name]).eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        expected = network(x)

    ts = tmp_path / "model.ts"
    bundle.ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(weights[name]),
        key_in_ckpt="network",
        use_trace=True,
        input_shape=[1, 1, 64, 64],
        **_paths(name),
        **demo,
    )
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(ts))(x), expected, rtol=0, atol=1e-5)

    onnx = tmp_path / "model.onnx"
    bundle.onnx_export(
        net_id="network_def",
        filepath=str(onnx),
        ckpt_file=str(weights[name]),
        key_in_ckpt="network",
        use_trace=True,
        input_shape=[1, 1, 64, 64],
        converter_kwargs=dict(ONNX_NAMES),
        **_paths(name),
        **demo,
    )
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    got = session.run(["pred"], {"image": x.numpy()})[0]  # batch 3 through a batch-1 trace: dynamic
    assert np.abs(got - expected.numpy()).max() < 1e-4


@pytest.mark.slow
def test_onnx_export_through_the_cli(weights: dict[str, Path], tmp_path: Path) -> None:
    onnx = tmp_path / "student.onnx"
    paths = _paths("hdkd_student")
    demo = {**DEMO, "ckpt_path": str(weights["hdkd_student"])}
    overrides = [part for key, value in demo.items() for part in (f"--{key}", str(value).replace(" ", ""))]
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "onnx_export",
        "network_def",
        "--meta_file",
        paths["meta_file"],
        "--config_file",
        paths["config_file"],
        "--filepath",
        str(onnx),
        "--ckpt_file",
        str(weights["hdkd_student"]),
        "--key_in_ckpt",
        "network",
        "--use_trace",
        "True",
        "--input_shape",
        "[1,1,64,64]",
        "--converter_kwargs",
        str(ONNX_NAMES).replace(" ", ""),
        *overrides,
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=bundle_env(tmp_path / "db.db"), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
