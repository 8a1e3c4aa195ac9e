"""Paired comparison of two models evaluated on the same samples, from their ``predictions.csv`` files
(written by :class:`pipeline.evaluate.handler.ClassificationReportHandler`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluate.metrics import paired_difference
from pipeline.evaluate.plots import safe_name


def read_predictions(
    path: str | Path, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Labels [N] (class indices), probabilities [N, K] and patient hashes [N] (None when the file has no
    patients) from a ``predictions.csv``; ValueError names the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found (the evaluate bundle writes it)")
    table = pd.read_csv(path, dtype={"patient": str, "label": str}, keep_default_na=False)
    columns = [f"prob_{safe_name(name)}" for name in class_names]
    missing = [column for column in ("patient", "label", *columns) if column not in table.columns]
    if missing:
        raise ValueError(f"{path}: columns {missing} missing (classes {list(class_names)} expected)")
    unknown = sorted(set(table["label"]) - set(class_names))
    if unknown:
        raise ValueError(f"{path}: labels {unknown} are not among the classes {list(class_names)}")
    labels = table["label"].map({name: index for index, name in enumerate(class_names)}).to_numpy(np.int64)
    probs = table[columns].to_numpy(np.float64)
    patients = table["patient"].to_numpy(str)
    return labels, probs / probs.sum(1, keepdims=True), (patients if all(patients) else None)


def paired_difference_of_files(
    model_csv: str | Path,
    reference_csv: str | Path,
    class_names: Sequence[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """:func:`pipeline.evaluate.metrics.paired_difference` of the model in ``model_csv`` minus the one in
    ``reference_csv``, resampling patients. The two files must list the same slices in the same order
    (same patients and labels row by row, as two evaluations of one split do); ValueError otherwise."""
    labels, probs, groups = read_predictions(model_csv, class_names)
    reference_labels, reference_probs, reference_groups = read_predictions(reference_csv, class_names)
    same_patients = (groups is None and reference_groups is None) or (
        groups is not None and reference_groups is not None and np.array_equal(groups, reference_groups)
    )
    if not (np.array_equal(labels, reference_labels) and same_patients):
        raise ValueError(
            f"{model_csv} and {reference_csv} do not list the same slices (patients and labels row by row): "
            "evaluate both models on the same split file"
        )
    return paired_difference(labels, probs, reference_probs, class_names, groups, n_bootstrap, seed, ci)
