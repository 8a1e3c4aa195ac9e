"""ONNX / TorchScript export of a real (demo-profile) HDKD student through `python -m pipeline export`,
the network rebuilt from the settings its checkpoint carries."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from bundle_testing import CLASSES, save_checkpoint

from pipeline.export import main, verify_onnx, verify_torchscript
from pipeline.networks import NetworkSettings


def test_cli_export_matches_torch_with_a_dynamic_batch(tmp_path):
    # one test, because the ONNX export takes seconds and xdist would repeat a shared fixture per worker
    torch.manual_seed(0)
    settings = NetworkSettings("hdkd", "demo", image_size=64, in_channels=1, class_names=CLASSES[:3])
    network = settings.build().eval()
    checkpoint = save_checkpoint(network, settings, tmp_path, "checkpoint.pt")
    # no --role / --profile / classes: the checkpoint's settings build the network
    argv = ["--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"), "--name", "student"]
    assert main(argv) == 0
    out = tmp_path / "out"

    # ONNX: dynamic batch axis; ONNX Runtime reproduces torch at batch 1 and 3
    model = onnx.load(str(out / "student.onnx"))
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value
    session = onnxruntime.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.rand(batch, 1, 64, 64, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = network(x).numpy()
        (got,) = session.run(["logits"], {"image": x.numpy()})
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    # TorchScript round trip
    loaded = torch.jit.load(str(out / "student.ts"))
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), network(x), atol=1e-5, rtol=0)
    assert verify_torchscript(network, out / "student.ts", image_size=64, in_channels=1) <= 1e-4

    # the export record
    record = json.loads((out / "student.export.json").read_text())
    assert (record["role"], record["profile"], record["class_names"]) == ("hdkd", "demo", list(CLASSES[:3]))
    assert (record["num_classes"], record["image_size"], record["in_channels"]) == (3, 64, 1)
    assert record["parameters"] == sum(p.numel() for p in network.parameters())
    assert 0 <= record["onnx"]["max_abs_diff"] <= 1e-4 and 0 <= record["torchscript"]["max_abs_diff"] <= 1e-4
    assert record["verified_batch_sizes"] == [1, 3] and len(record["onnx"]["sha256"]) == 64
    # the record states the opset the file declares
    (declared,) = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    assert record["onnx"]["opset"] == declared

    # verification fails loudly for a network that the file does not reproduce
    assert verify_onnx(network, out / "student.onnx", batch_sizes=(2,)) <= 1e-4
    other = copy.deepcopy(network)
    with torch.no_grad():
        other.head_cls.bias.add_(0.01)  # the HDKD prediction averages two heads: logits move by 0.005
    with pytest.raises(ValueError, match=r"max abs logit difference 0.005 vs PyTorch exceeds 0.0001"):
        verify_onnx(other, out / "student.onnx")


def test_cli_errors_name_the_file_and_the_problem(tmp_path, capsys):
    settings = NetworkSettings("teacher", "demo", image_size=64, in_channels=1, class_names=CLASSES)
    teacher = save_checkpoint(settings.build(), settings, tmp_path, "teacher.pt")
    out = ["--output", str(tmp_path / "out")]

    def error_line() -> str:
        (line,) = capsys.readouterr().err.splitlines()
        return line

    # an explicit setting that contradicts the checkpoint names both values
    assert main(["--checkpoint", str(teacher), "--role", "hdkd", *out]) == 2
    assert "teacher.pt holds a network with role 'teacher', but role 'hdkd' was given" in error_line()
    assert main(["--checkpoint", str(teacher), "--profile", "published", *out]) == 2
    assert "profile 'demo', but profile 'published' was given" in error_line()
    assert main(["--checkpoint", str(teacher), "--class-names", "a,b", *out]) == 2
    assert "but class_names ['a', 'b'] was given" in error_line()
    assert main(["--checkpoint", str(tmp_path / "absent.pt"), *out]) == 2
    assert "absent.pt" in error_line()
    # weights that do not fit the recorded network: the strict load lists the keys
    torch.save({"network": NetworkSettings("hdkd", "demo", 64, 1, CLASSES).build().state_dict(),
                "network_settings": settings.state_dict()}, tmp_path / "mixed.pt")  # fmt: skip
    assert main(["--checkpoint", str(tmp_path / "mixed.pt"), *out]) == 2
    assert "mixed.pt" in (line := error_line()) and "unexpected keys" in line
    # a checkpoint from before checkpoints carried their settings
    torch.save(settings.build().state_dict(), tmp_path / "old.pt")
    assert main(["--checkpoint", str(tmp_path / "old.pt"), "--profile", "demo", *out]) == 2
    assert "old.pt records no network settings" in error_line()
    assert not (tmp_path / "out").exists()
