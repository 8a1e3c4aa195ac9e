"""The export stage's Model Registry entry against a real SQLite store: registration with the ONNX files
and tags, no new version for the same files, `mlflow models serve` of the version, and the store errors
(incompatible name, unreachable or read-only store) raised before anything is written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from bundle_testing import CLASSES, complete_training_run, make_split, save_checkpoint
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.export import main
from pipeline.networks import NetworkSettings
from pipeline.tracking.registry import CONTENT_TAG, INTERFACE_TAG

NAME = "hdkd-student"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A demo HDKD checkpoint with its training run id, a split for the int8 calibration, a test report
    and a private SQLite store."""
    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    split = make_split(tmp_path / "data", per_class={"train": 4, "val": 2, "test": 2}, size=64)
    torch.manual_seed(0)
    models = tmp_path / "models"
    models.mkdir()
    settings = NetworkSettings("hdkd", "demo", image_size=64, in_channels=1, class_names=CLASSES)
    checkpoint = save_checkpoint(settings.build(), settings, models)
    training_run = tracking.start_run("hdkd", "hdkd", models_dir=models)
    complete_training_run(training_run, checkpoint)  # tags the run with the checkpoint's SHA-256
    report = tmp_path / "metrics.json"
    report.write_text(
        json.dumps(
            {"accuracy": 0.5, "balanced_accuracy": 0.25, "macro_f1": 0.2, "macro_auc": 0.6, "ece": 0.1}
        )
    )
    argv = ["--checkpoint", str(models / "model.pt"), "--role", "hdkd", "--profile", "demo"]
    argv += ["--int8-split", str(split), "--class-names", ",".join(CLASSES), "--calibration-images", "8"]
    argv += ["--min-agreement", "0", "--test-report", str(report)]
    return {"root": tmp_path, "store": store, "argv": argv, "training_run": training_run}


def _error_line(capsys: pytest.CaptureFixture) -> str:
    """The export's error: exactly one line (other stderr lines are MLflow's own log records)."""
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("export: error:")]
    return line


def _export(trained: dict, output: str, name: str = NAME) -> int:
    return main([*trained["argv"], "--output", str(trained["root"] / output), "--register", name])


def test_export_registers_a_version_once_and_it_serves(trained: dict, capsys: pytest.CaptureFixture) -> None:
    assert _export(trained, "export") == 0
    client = MlflowClient(trained["store"])
    (version,) = client.search_model_versions(f"name = '{NAME}'")
    assert f"models:/{NAME}/1" in capsys.readouterr().out
    # tags: training run, test metrics, content digest; the model carries the ONNX files
    assert version.tags[tracking.TRAINING_RUN_TAG] == trained["training_run"]
    assert float(version.tags["test_balanced_accuracy"]) == 0.25 and len(version.tags[CONTENT_TAG]) == 64
    assert json.loads(client.get_registered_model(NAME).tags[INTERFACE_TAG])["input"] == [-1, 1, 64, 64]
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(trained["root"] / "dl"))
    )
    attached = {path.name for path in local.rglob("*.onnx")}
    assert attached == {"hdkd.onnx", "hdkd.int8.onnx"}
    export_run = client.get_run(version.run_id)
    assert export_run.data.tags[tracking.TRAINING_RUN_TAG] == trained["training_run"]
    assert export_run.data.metrics["test_macro_f1"] == 0.2

    # the same files again (a forced re-run of the stage): no new version
    assert _export(trained, "export") == 0
    assert "already registered" in capsys.readouterr().out
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1

    # `mlflow models serve` of the registered version on 127.0.0.1, queried like the README's curl
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained["store"]}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{NAME}/1",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--env-manager",
            "local",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(server.stderr.read().decode()[-2000:]) from None
                time.sleep(1)
        batch = np.random.default_rng(0).random((3, 1, 64, 64), dtype=np.float32)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": batch.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            probabilities = np.asarray(json.loads(answer.read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert probabilities.shape == (3, len(CLASSES))
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)


def test_store_and_registry_errors_come_before_any_output(
    trained: dict, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a registered model of another interface under the name
    client = MlflowClient(tracking.configure_mlflow(trained["store"]))
    client.create_registered_model("taken", tags={INTERFACE_TAG: json.dumps({"role": "teacher"})})
    client.create_registered_model("foreign")
    for name in ("taken", "foreign"):
        assert _export(trained, f"out_{name}", name) == 2
        line = _error_line(capsys)
        assert f"registered model '{name}'" in line and "export.registered_model" in line
        assert trained["store"] in line
        assert not (trained["root"] / f"out_{name}").exists()
    # a store that does not take writes (immutable: read-only even for root)
    database = trained["root"] / "mlflow.db"
    subprocess.run(["chattr", "+i", str(database)], check=True)
    try:
        assert _export(trained, "out_read_only") == 2
    finally:
        subprocess.run(["chattr", "-i", str(database)], check=True)
    line = _error_line(capsys)
    assert "does not take writes" in line and trained["store"] in line and "MLFLOW_TRACKING_URI" in line
    assert not (trained["root"] / "out_read_only").exists()
    # an unreachable tracking server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    started = time.monotonic()
    assert _export(trained, "out_unreachable") == 2
    line = _error_line(capsys)
    assert "unreachable" in line and "MLFLOW_TRACKING_URI" in line
    assert time.monotonic() - started < 60
    assert not (trained["root"] / "out_unreachable").exists()
