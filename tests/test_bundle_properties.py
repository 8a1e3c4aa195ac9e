"""Both bundles' train.json and inference.json have every property MONAI requires of a training and an
inference workflow (``ConfigWorkflow.check_properties()``), through MONAI's Python API; the inference
workflow then runs from that API. Each workflow runs in its own process (it sets process-wide state: the
excepthook, MONAI's meta tracking, an MLflow run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundle_testing import CLASSES, ROOT, STUDENT, TEACHER, bundle_env, make_split, save_checkpoint
from PIL import Image

from pipeline.networks import NetworkSettings

# initialize, check the properties, report them and the inferer in use; an inference workflow then runs
CHECK = r"""
import json, sys
from monai.bundle import ConfigWorkflow

config, workflow_type, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
workflow = ConfigWorkflow(config_file=config, workflow_type=workflow_type, **overrides)
workflow.initialize()
missing = workflow.check_properties()
if workflow_type == "train":
    inferer, used = workflow.train_inferer, workflow.trainer.inferer
else:
    inferer, used = workflow.inferer, workflow.evaluator.inferer
    workflow.run()
    workflow.finalize()
report = {"missing": missing, "inferer": type(inferer).__name__, "used": inferer is used}
print("PROPERTIES", json.dumps(report))
"""


def _check(config: str, workflow_type: str, store: Path, **overrides: object) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHECK, config, workflow_type, json.dumps(overrides)],
        cwd=ROOT,
        env=bundle_env(store),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("PROPERTIES ")]
    return json.loads(line.removeprefix("PROPERTIES "))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny split, demo checkpoints of the teacher and the HDKD student, and one PNG to classify."""
    root = tmp_path_factory.mktemp("properties")
    weights = {}
    for role in ("teacher", "hdkd"):
        settings = NetworkSettings(role, "demo", image_size=64, in_channels=1, class_names=CLASSES)
        (root / role).mkdir()
        weights[role] = save_checkpoint(settings.build(), settings, root / role)
    (root / "new").mkdir()
    image = (np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8)
    Image.fromarray(image).save(root / "new" / "scan.png")
    return {"root": root, "split": make_split(root / "data"), "input": root / "new", **weights}


@pytest.mark.slow
@pytest.mark.parametrize("configs", [TEACHER, STUDENT])
def test_train_workflow_has_the_required_properties(configs: str, project: dict, tmp_path: Path) -> None:
    overrides = {"profile": "demo", "batch_size": 8, "progress": False, "split_file": str(project["split"]),
                 "models_dir": str(tmp_path / "models"), "epochs": 1}
    if configs == STUDENT:
        overrides["teacher_ckpt"] = str(project["teacher"])
    report = _check(f"{configs}/train.json", "train", tmp_path / "mlflow.db", **overrides)
    assert report["missing"] == []  # a list: the train properties were checked, none is missing
    assert report["inferer"] == "SimpleInferer" and report["used"]  # train#inferer is the trainer's


@pytest.mark.slow
@pytest.mark.parametrize("configs", [TEACHER, STUDENT])
def test_inference_workflow_has_the_required_properties_and_runs(
    configs: str, project: dict, tmp_path: Path
) -> None:
    checkpoint = project["teacher" if configs == TEACHER else "hdkd"]
    out = tmp_path / "out"
    report = _check(f"{configs}/inference.json", "infer", tmp_path / "mlflow.db", ckpt_path=str(checkpoint),
                    input=str(project["input"]), output_dir=str(out), engine="torch-fp32")
    assert report["missing"] == []  # a list: the inference properties were checked, none is missing
    assert report["inferer"] == "EngineInferer" and report["used"]
    (item,) = json.loads((out / "predictions.json").read_text())["inputs"]
    assert item["input"] == "scan.png" and item["predicted"] in CLASSES
