"""Paired comparison of two models from the predictions.csv files of real MONAI evaluations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from test_evaluate_handler import NAMES, identity_network, items
from torch import nn

from pipeline.evaluate.handler import ClassificationReportHandler
from pipeline.evaluate.metrics import PAIRED
from pipeline.evaluate.paired import paired_difference_of_files, read_predictions
from pipeline.stages.report import paired_metrics


def always_first_class() -> nn.Module:
    """A network that predicts class 0 for every input."""
    network = nn.Linear(len(NAMES), len(NAMES))
    with torch.no_grad():
        network.weight.zero_()
        network.bias.copy_(torch.tensor([2.0, 0.0, 0.0, 0.0]))
    return network


def evaluate(network: nn.Module, folder: Path, data: list[dict]) -> dict:
    """Evaluate ``network`` on ``data`` with the report handler; returns its metrics.json."""
    handler = ClassificationReportHandler(folder, NAMES, n_bootstrap=0, figures=False)
    loader = DataLoader(Dataset(data), batch_size=5, shuffle=False, num_workers=0)
    SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=network, val_handlers=[handler]
    ).run()
    return json.loads((folder / "metrics.json").read_text())


def test_paired_metrics_of_two_evaluations_of_one_split(tmp_path: Path) -> None:
    good = evaluate(identity_network(), tmp_path / "hdkd", items())
    poor = evaluate(always_first_class(), tmp_path / "baseline", items())
    labels, probs, groups = read_predictions(tmp_path / "hdkd" / "predictions.csv", NAMES)
    assert probs.shape == (24, 4) and len(set(groups)) == 8 and labels[:3].tolist() == [0, 0, 0]
    paired = paired_metrics(tmp_path, "hdkd", "baseline", NAMES, n_bootstrap=200, seed=0)
    assert (
        paired["comparison"] == "hdkd - baseline" and paired["n_patients"] == 8 and paired["n_slices"] == 24
    )
    for name in PAIRED:
        entry = paired[name]
        assert entry["hdkd"] == pytest.approx(good[name], abs=1e-6), name
        assert entry["baseline"] == pytest.approx(poor[name], abs=1e-6), name
        assert entry["difference"] == pytest.approx(good[name] - poor[name], abs=1e-6), name
        assert entry["ci95"]["low"] <= entry["mean"] <= entry["ci95"]["high"], name
    # balanced accuracy 2/3 vs 1/4 on every resample that holds all classes
    assert paired["balanced_accuracy"]["ci95"]["low"] > 0.3
    json.dumps(paired, allow_nan=False)


def test_files_of_different_slices_are_not_paired(tmp_path: Path) -> None:
    evaluate(identity_network(), tmp_path / "a", items())
    evaluate(identity_network(), tmp_path / "b", items()[::-1])
    with pytest.raises(ValueError, match="do not list the same slices"):
        paired_difference_of_files(
            tmp_path / "a" / "predictions.csv", tmp_path / "b" / "predictions.csv", NAMES
        )
    with pytest.raises(ValueError, match="file not found"):
        paired_difference_of_files(
            tmp_path / "a" / "predictions.csv", tmp_path / "c" / "predictions.csv", NAMES
        )
    with pytest.raises(ValueError, match=r"columns \['prob_other'\] missing"):
        read_predictions(tmp_path / "a" / "predictions.csv", ["glioma", "meningioma", "pituitary", "other"])
