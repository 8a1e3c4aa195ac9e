"""ClassificationReportHandler on a real MONAI SupervisedEvaluator (files, numbers, MLflow, DDP)."""

from __future__ import annotations

import csv
import json
from typing import Any

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.handlers import MLFlowHandler
from torch import nn

from pipeline.evaluate.handler import ClassificationReportHandler

NAMES = ["glioma", "meningioma", "pituitary", "notumor"]
N_PATIENTS, SLICES = 8, 3


def items(patient_key: str | None = "patient") -> list[dict]:
    """24 slices of 8 patients whose "image" is the logit vector the network will return: every
    patient's first slice is misclassified as the next class, so accuracy is 16/24."""
    data = []
    for patient in range(N_PATIENTS):
        label = patient % len(NAMES)
        for index in range(SLICES):
            predicted = (label + 1) % len(NAMES) if index == 0 else label
            logits = torch.zeros(len(NAMES))
            logits[predicted] = 3.0
            item = {"image": MetaTensor(logits), "label": label}  # MONAI transforms give MetaTensors
            if patient_key:
                item[patient_key] = f"hash{patient:02d}"
            data.append(item)
    return data


def identity_network() -> nn.Module:
    """A linear layer with identity weights: its logits are exactly the input vector."""
    network = nn.Linear(len(NAMES), len(NAMES))
    with torch.no_grad():
        network.weight.copy_(torch.eye(len(NAMES)))
        network.bias.zero_()
    return network


def run_evaluator(
    handlers: ClassificationReportHandler | list[Any], data: list[dict], decollate: bool = True
) -> SupervisedEvaluator:
    """Run a SupervisedEvaluator (batch size 5) of ``identity_network`` with ``handlers`` over ``data``."""
    loader = DataLoader(Dataset(data), batch_size=5, shuffle=False, num_workers=0)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=identity_network(),
        decollate=decollate,
        val_handlers=handlers if isinstance(handlers, list) else [handlers],
    )
    evaluator.run()
    return evaluator


def expected_confusion() -> np.ndarray:
    cm = np.zeros((4, 4), dtype=int)
    for item in items():
        cm[item["label"], int(item["image"].argmax())] += 1
    return cm


@pytest.mark.parametrize("decollate", [True, False])
def test_handler_writes_the_report_of_a_supervised_evaluator(tmp_path, decollate):
    handler = ClassificationReportHandler(tmp_path / "eval", NAMES, n_bootstrap=200, model_name="hdkd")
    evaluator = run_evaluator(handler, items(), decollate=decollate)
    report = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert report["model"] == "hdkd" and report["n"] == 24 and report["n_groups"] == N_PATIENTS
    assert report["accuracy"] == pytest.approx(16 / 24)
    assert report["confusion_matrix"] == expected_confusion().tolist()
    assert report["bootstrap"]["unit"] == "group"
    # every patient has 2 of 3 slices right, so resampling whole patients never changes the accuracy
    # (resampling single slices would)
    low, high = report["ci"]["accuracy"]
    assert low == pytest.approx(16 / 24) and high == pytest.approx(16 / 24)
    assert evaluator.state.metrics["test_accuracy"] == pytest.approx(16 / 24)
    assert evaluator.state.metrics["test_accuracy_ci_low"] == pytest.approx(low)
    for name in ("confusion_matrix.png", "roc.png", "reliability.png", "plots/confusion.csv"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    with (tmp_path / "eval/predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and rows[0]["patient"] == "hash00" and rows[0]["predicted"] == "meningioma"
    assert float(rows[1]["prob_glioma"]) == pytest.approx(np.exp(3) / (np.exp(3) + 3), abs=1e-6)


def test_a_second_evaluation_run_starts_from_scratch_and_figures_can_be_skipped(tmp_path):
    handler = ClassificationReportHandler(tmp_path, NAMES, n_bootstrap=0, figures=False)
    evaluator = run_evaluator(handler, items())
    evaluator.run()
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] == 24
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.json", "predictions.csv"]


def test_missing_patient_metadata_is_an_error_unless_sample_bootstrap_is_asked_for(tmp_path):
    handler = ClassificationReportHandler(tmp_path / "a", NAMES, n_bootstrap=0)
    with pytest.raises(ValueError, match=r"no 'patient' key.*patient_key=None"):
        run_evaluator(handler, items(patient_key=None))
    handler = ClassificationReportHandler(
        tmp_path / "b", NAMES, n_bootstrap=50, patient_key=None, figures=False
    )
    run_evaluator(handler, items(patient_key=None))
    report = json.loads((tmp_path / "b/metrics.json").read_text())
    assert report["bootstrap"]["unit"] == "sample" and report["n_groups"] is None


def test_wrong_number_of_classes_is_reported(tmp_path):
    handler = ClassificationReportHandler(tmp_path, NAMES[:3], n_bootstrap=0)
    with pytest.raises(ValueError, match=r"must be \[batch, 3\]"):
        run_evaluator(handler, items())


def test_metrics_and_figures_go_to_the_active_mlflow_run(tmp_path, monkeypatch):
    import mlflow  # here, not at the top: the DDP test's worker processes import this module

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_name="evaluation") as run:
            run_evaluator(ClassificationReportHandler(tmp_path / "eval", NAMES, n_bootstrap=100), items())
        client = mlflow.MlflowClient(uri)
        metrics = client.get_run(run.info.run_id).data.metrics
        assert metrics["test_accuracy"] == pytest.approx(16 / 24)
        assert metrics["test_accuracy_ci_low"] <= metrics["test_accuracy"] <= metrics["test_accuracy_ci_high"]
        assert metrics["test_sensitivity_glioma"] == pytest.approx(4 / 6)
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "evaluation")}
        assert {"evaluation/metrics.json", "evaluation/roc.png", "evaluation/plots"} <= artifacts
        nested = {item.path for item in client.list_artifacts(run.info.run_id, "evaluation/plots/roc")}
        assert "evaluation/plots/roc/glioma.csv" in nested
        # no active run: MONAI's MLFlowHandler, attached after ours, logs the headline metrics
        monai_handler = MLFlowHandler(
            tracking_uri=uri, run_name="bundle-evaluate", iteration_log=False, close_on_complete=True
        )
        run_evaluator(
            [ClassificationReportHandler(tmp_path / "b", NAMES, n_bootstrap=0, figures=False), monai_handler],
            items(),
        )
        (bundle_run,) = client.search_runs(
            [run.info.experiment_id, monai_handler.experiment.experiment_id],
            filter_string="attributes.run_name = 'bundle-evaluate'",
        )
        assert bundle_run.data.metrics["test_accuracy"] == pytest.approx(16 / 24)
        assert "test_sensitivity_glioma" not in bundle_run.data.metrics
    finally:
        mlflow.set_tracking_uri(None)
