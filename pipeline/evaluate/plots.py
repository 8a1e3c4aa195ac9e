"""Evaluation figures (PNG) and the data files DVC's `plots` renders.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas (no pyplot state, no
display needed) and saved as PNG, which any viewer opens offline. DVC plot data are CSV files:

- ``confusion.csv``: one row per sample, columns ``actual,predicted`` (class names): DVC template
  ``confusion`` with ``x: actual, y: predicted``.
- ``roc/<class>.csv``: columns ``fpr,tpr`` of the one-vs-rest ROC curve of each class: template
  ``simple`` (or ``linear``) with ``x: fpr, y: tpr``; list the class files to overlay them.
- ``calibration.csv``: one row per ECE bin, columns ``bin_lower,bin_upper,confidence,accuracy,count``
  (empty confidence/accuracy for an empty bin): ``x: confidence, y: accuracy``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_curve

from pipeline.atomic import atomic_path, write_csv

DPI = 120


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)  # constrained layout already fits every label
    return path


def safe_name(name: str) -> str:
    """``name`` reduced to letters, digits, '-', '_' and '.' (for file names and MLflow metric keys)."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "class"


def plot_confusion_matrix(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path) -> Path:
    """Counts and row-normalised (per true class) confusion matrices side by side."""
    counts = np.asarray(cm, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = counts / counts.sum(1, keepdims=True)
    k = len(class_names)
    figure = Figure(figsize=(4.5 * 2 + 1, 0.5 * k + 3.5), layout="constrained")
    for ax, values, title, fmt in zip(
        figure.subplots(1, 2),
        (counts, rows),
        ("counts", "row-normalised (recall)"),
        ("{:.0f}", "{:.2f}"),
        strict=True,
    ):
        image = ax.imshow(np.nan_to_num(values), cmap="Blues", vmin=0)
        figure.colorbar(image, ax=ax, shrink=0.8)
        top = np.nanmax(values) if np.isfinite(values).any() else 0
        for i in range(k):
            for j in range(k):
                text = "-" if np.isnan(values[i, j]) else fmt.format(values[i, j])
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    color="white" if values[i, j] > 0.6 * top else "black",
                    fontsize=9,
                )
        ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=title)
        ax.set_xticklabels(class_names, rotation=45, ha="right")
        ax.set_yticklabels(class_names)
    return _save(figure, path)


def roc_curves(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One-vs-rest ROC curve (fpr, tpr) per class; a class with no positive or no negative sample has none."""
    labels = np.asarray(labels)
    curves = {}
    for k, name in enumerate(class_names):
        positive = labels == k
        if 0 < positive.sum() < len(labels):
            fpr, tpr, _ = roc_curve(positive, probs[:, k])
            curves[name] = (fpr, tpr)
    return curves


def plot_roc_curves(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | Path
) -> Path:
    """One-vs-rest ROC curve per class with its AUC in the legend, and the chance diagonal."""
    figure = Figure(figsize=(6, 5.5), layout="constrained")
    ax = figure.subplots()
    curves = roc_curves(labels, np.asarray(probs), class_names)
    for name in class_names:
        if name in curves:
            fpr, tpr = curves[name]
            ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        else:
            ax.plot([], [], label=f"{name} (AUC undefined: one class only)")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate (1 - specificity)",
        ylabel="true positive rate (sensitivity)",
        title="ROC, one class vs rest",
    )
    ax.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def plot_reliability(
    calibration: Mapping[str, Sequence[Any]], path: str | Path, ece: float | None = None
) -> Path:
    """Reliability diagram (accuracy vs mean confidence per bin, over the identity) and bin counts, from
    the ``calibration`` table of ``classification_report``."""
    lower = np.asarray(calibration["bin_lower"], dtype=float)
    upper = np.asarray(calibration["bin_upper"], dtype=float)
    accuracy = np.array([np.nan if v is None else v for v in calibration["accuracy"]], dtype=float)
    confidence = np.array([np.nan if v is None else v for v in calibration["confidence"]], dtype=float)
    counts = np.asarray(calibration["count"], dtype=float)
    figure = Figure(figsize=(5.5, 6.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    centres, widths = (lower + upper) / 2, upper - lower
    top.bar(centres, np.nan_to_num(accuracy), width=widths, edgecolor="black", alpha=0.7, label="accuracy")
    top.plot(confidence, accuracy, "o", color="tab:red", ms=4, label="bin (mean confidence, accuracy)")
    top.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    title = "reliability diagram" + ("" if ece is None else f" (ECE {ece:.3f})")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, counts, width=widths, edgecolor="black", color="tab:grey")
    bottom.set(xlabel="confidence (max probability)", ylabel="samples")
    return _save(figure, path)


def plot_training_curves(
    history: Sequence[Mapping[str, Any]] | str | Path, path: str | Path, metric_prefix: str = "val_"
) -> Path:
    """Training curves from per-epoch rows (a list of dicts or a CSV file) with an ``epoch`` column: every
    other numeric column starting with ``metric_prefix`` goes to the validation panel, the rest (train_loss
    and its terms) to the loss panel. Missing values leave gaps."""
    table = pd.read_csv(history) if isinstance(history, (str, Path)) else pd.DataFrame(list(history))
    if "epoch" not in table.columns:
        raise ValueError(
            f"training history {history if isinstance(history, (str, Path)) else 'rows'} "
            f"has no 'epoch' column (columns: {list(table.columns)})"
        )
    numeric = [c for c in table.columns if c != "epoch" and pd.api.types.is_numeric_dtype(table[c])]
    panels = [
        ("validation metrics", "metric", [c for c in numeric if c.startswith(metric_prefix)]),
        ("training losses", "loss", [c for c in numeric if not c.startswith(metric_prefix)]),
    ]
    panels = [panel for panel in panels if panel[2]]
    if not panels:
        raise ValueError(f"training history has no numeric columns besides 'epoch': {list(table.columns)}")
    figure = Figure(figsize=(6.5, 3.2 * len(panels)), layout="constrained")
    axes = np.atleast_1d(figure.subplots(len(panels), 1, sharex=True))
    for ax, (title, ylabel, columns) in zip(axes, panels, strict=True):
        for column in columns:
            ax.plot(table["epoch"], table[column], marker="o", ms=3, label=column)
        ax.set(title=title, ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[-1].set_xlabel("epoch")
    return _save(figure, path)


def _write_csv(path: Path, header: Sequence[str], rows: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, header, rows)
    return path


def write_dvc_plot_data(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    calibration: Mapping[str, Sequence[Any]],
    directory: str | Path,
) -> list[Path]:
    """Write confusion.csv, roc/<class>.csv and calibration.csv (see the module docstring) into
    ``directory``; returns the files written."""
    directory = Path(directory)
    labels, probs = np.asarray(labels), np.asarray(probs)
    names = np.asarray(class_names, dtype=object)
    written = [
        _write_csv(
            directory / "confusion.csv",
            ("actual", "predicted"),
            zip(names[labels], names[probs.argmax(1)], strict=True),
        )
    ]
    for name, (fpr, tpr) in roc_curves(labels, probs, class_names).items():
        written.append(
            _write_csv(
                directory / "roc" / f"{safe_name(name)}.csv",
                ("fpr", "tpr"),
                zip(fpr.round(6), tpr.round(6), strict=True),
            )
        )
    columns = ("bin_lower", "bin_upper", "confidence", "accuracy", "count")
    rows = zip(*(["" if v is None else v for v in calibration[c]] for c in columns), strict=True)
    written.append(_write_csv(directory / "calibration.csv", columns, rows))
    return written


def save_evaluation_plots(
    labels: np.ndarray,
    probs: np.ndarray,
    report: Mapping[str, Any],
    directory: str | Path,
) -> list[Path]:
    """The three evaluation PNGs (confusion_matrix.png, roc.png, reliability.png) of a
    ``classification_report`` in ``directory``, plus the DVC plot data under ``directory/plots``.
    Returns the files written."""
    directory = Path(directory)
    class_names = report["class_names"]
    pngs = [
        plot_confusion_matrix(report["confusion_matrix"], class_names, directory / "confusion_matrix.png"),
        plot_roc_curves(labels, probs, class_names, directory / "roc.png"),
        plot_reliability(report["calibration"], directory / "reliability.png", report["ece"]),
    ]
    return pngs + write_dvc_plot_data(labels, probs, class_names, report["calibration"], directory / "plots")
