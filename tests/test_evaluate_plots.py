"""Evaluation figures and DVC plot data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluate.metrics import ECE_BINS, classification_report
from pipeline.evaluate.plots import (
    plot_training_curves,
    save_evaluation_plots,
    write_dvc_plot_data,
)

NAMES = ["glioma", "meningioma", "pituitary", "no tumor"]


def problem(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(NAMES), n)
    logits = rng.normal(size=(n, len(NAMES)))
    logits[np.arange(n), labels] += 2
    probs = np.exp(logits)
    return labels, probs / probs.sum(1, keepdims=True)


def assert_png(path: Path, min_bytes: int = 10_000) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > min_bytes
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert width > 300 and height > 300
        # not a blank canvas: many distinct colours
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 20


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluation_figures_and_dvc_data_are_written(tmp_path):
    labels, probs = problem()
    report = classification_report(labels, probs, NAMES, n_bootstrap=0)
    written = save_evaluation_plots(labels, probs, report, tmp_path / "eval")
    names = {path.relative_to(tmp_path / "eval").as_posix() for path in written}
    assert {
        "confusion_matrix.png",
        "roc.png",
        "reliability.png",
        "plots/confusion.csv",
        "plots/calibration.csv",
        "plots/roc/no_tumor.csv",
    } <= names
    for png in ("confusion_matrix.png", "roc.png", "reliability.png"):
        assert_png(tmp_path / "eval" / png)

    confusion = read_csv(tmp_path / "eval/plots/confusion.csv")
    assert len(confusion) == len(labels)
    pairs = [(row["actual"], row["predicted"]) for row in confusion]
    assert pairs.count(("glioma", "glioma")) == report["confusion_matrix"][0][0]
    assert pairs.count(("pituitary", "glioma")) == report["confusion_matrix"][2][0]

    roc = read_csv(tmp_path / "eval/plots/roc/glioma.csv")
    fpr = np.array([float(row["fpr"]) for row in roc])
    tpr = np.array([float(row["tpr"]) for row in roc])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1) and np.all(np.diff(fpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(report["per_class"]["glioma"]["auc"], abs=1e-5)

    calibration = read_csv(tmp_path / "eval/plots/calibration.csv")
    assert len(calibration) == ECE_BINS
    assert sum(int(row["count"]) for row in calibration) == len(labels)
    assert calibration[0]["accuracy"] == ""  # no confidence below 1/15 with 4 classes


def test_roc_data_skips_a_class_without_positives(tmp_path):
    labels, probs = problem(seed=1)
    labels[labels == 3] = 0
    report = classification_report(labels, probs, NAMES, n_bootstrap=0)
    written = write_dvc_plot_data(labels, probs, NAMES, report["calibration"], tmp_path)
    assert not (tmp_path / "roc/no_tumor.csv").exists() and (tmp_path / "roc/glioma.csv") in written
    save_evaluation_plots(labels, probs, report, tmp_path / "figures")
    assert_png(tmp_path / "figures/roc.png")


def test_training_curves_from_rows_and_from_csv(tmp_path):
    rows = [
        {
            "epoch": e,
            "train_loss": 2 / e,
            "ce": 1 / e,
            "logit_kd": 0.5 / e,
            "feature_kd": 0.3 / e,
            "val_balanced_accuracy": 0.5 + 0.04 * e,
        }
        for e in range(1, 11)
    ]
    assert_png(plot_training_curves(rows, tmp_path / "from_rows.png"))
    csv_path = tmp_path / "history.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:-1])
        writer.writerow({**rows[-1], "val_balanced_accuracy": ""})  # a missing value leaves a gap
    assert_png(plot_training_curves(csv_path, tmp_path / "from_csv.png"))


def test_training_curves_need_an_epoch_column(tmp_path):
    with pytest.raises(ValueError, match="no 'epoch' column"):
        plot_training_curves([{"step": 1, "train_loss": 1.0}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no numeric columns"):
        plot_training_curves([{"epoch": 1, "note": "x"}], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
