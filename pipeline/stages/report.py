"""The report of the `evaluate` stage: teacher, baseline and HDKD side by side.

For each model it reads the evaluation report (``<eval>/<model>/metrics.json``, written by the
evaluate bundle's ClassificationReportHandler) and the per-epoch training log
(``<models>/<model>/training_log.csv``), measures the size and CPU cost (pipeline.evaluate.complexity) of
the network its checkpoint (``<models>/<model>/model.pt``) records, and writes

- ``<metrics>/<model>.json``: the DVC metrics file (headline test metrics, counts, parameters, GFLOPs:
  what ``dvc exp show`` / ``dvc metrics diff`` compare);
- ``<metrics>/details/<model>_details.json``: the rest, kept out of DVC's ``metrics:`` so comparisons stay
  readable (bootstrap CIs, per-class sensitivity / specificity / AUC) and so the CPU latency, which
  varies with the machine's load, never shows as a change of a model that was not retrained;
- ``<metrics>/paired.json``: the paired HDKD - baseline difference in balanced accuracy, macro-F1 and
  macro AUC, with a 95% CI from patient-bootstrap resamples shared by both models
  (pipeline.evaluate.paired, from ``<eval>/<model>/predictions.csv``); both models' values, the mean
  resampled difference and the undefined resamples are in ``<metrics>/details/paired_details.json``;
- ``<plots>/comparison.png`` (+ ``comparison.csv``) and ``<plots>/training_curves.png``
  (+ ``training_curves.csv``);
- and, inside a pipeline execution, logs all of it to the MLflow parent run (metric keys
  ``<model>.<metric>``), so the parent shows the three models' final numbers next to each other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.atomic import atomic_open, write_json
from pipeline.evaluate.complexity import count_parameters, cpu_latency_ms, forward_gflops
from pipeline.evaluate.metrics import HEADLINE, PAIRED, PER_CLASS
from pipeline.evaluate.paired import paired_difference_of_files
from pipeline.evaluate.plots import plot_training_curves
from pipeline.networks import read_settings
from pipeline.roles import BASELINE, HDKD

BARS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
CURVES = ("train_loss", "val_accuracy", "val_balanced_accuracy")
DETAILS = ("ci95", "per_class", "cpu_latency_ms")  # not DVC metrics: wide, or (latency) machine noise


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file; a missing one is a ValueError naming it."""
    if not path.is_file():
        raise ValueError(f"{path}: file not found (run the earlier pipeline stages first)")
    return json.loads(path.read_text())


def complexity(checkpoint: Path, latency_runs: int) -> dict[str, float]:
    """Parameters, GFLOPs and median CPU latency (batch 1, 2 threads) of the network the training
    checkpoint records (its settings: role, profile, image size, channels, classes)."""
    settings = read_settings(checkpoint)
    network = settings.build().eval()
    size, channels = settings.image_size, settings.in_channels
    return {
        "parameters": count_parameters(network),
        "gflops": round(forward_gflops(network, size, channels), 6),
        "cpu_latency_ms": round(cpu_latency_ms(network, size, channels, repeats=latency_runs), 3),
    }


def model_metrics(report: Mapping[str, Any], cost: Mapping[str, float]) -> dict[str, Any]:
    """The DVC metrics of one model from its evaluation ``report`` and its ``cost``."""
    return {
        **{name: report[name] for name in HEADLINE},
        "n_slices": report["n"],
        "n_patients": report["n_groups"],
        "ci95": {name: {"low": low, "high": high} for name, (low, high) in report["ci"].items()},
        "per_class": {
            name: {metric: entry[metric] for metric in PER_CLASS}
            for name, entry in report["per_class"].items()
        },
        **cost,
    }


def paired_metrics(
    eval_dir: Path, model: str, reference: str, class_names: Sequence[str], n_bootstrap: int, seed: int
) -> dict[str, Any]:
    """The DVC metrics of ``model`` - ``reference`` on the same test slices: per metric in ``PAIRED`` both
    point estimates, their ``difference``, the ``mean`` resampled difference, its ``ci95`` (patient
    bootstrap, the same resamples for both models) and the resamples left out as ``undefined``."""
    result = paired_difference_of_files(
        eval_dir / model / "predictions.csv",
        eval_dir / reference / "predictions.csv",
        class_names,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    entries = {
        name: {
            model: result[name]["model"],
            reference: result[name]["reference"],
            "difference": result[name]["difference"],
            "mean": result[name]["mean"],
            "ci95": dict(zip(("low", "high"), result[name]["ci"], strict=True)),
            "undefined": result[name]["undefined"],
        }
        for name in PAIRED
    }
    return {
        "comparison": f"{model} - {reference}",
        "n_slices": result["n"],
        "n_patients": result["n_groups"],
        **entries,
        "bootstrap": result["bootstrap"],
    }


def comparison_table(metrics: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Rows model, metric, value, low, high for the headline metrics (and the CSV behind the plot)."""
    rows = [
        {
            "model": model,
            "metric": name,
            "value": values[name],
            "low": values["ci95"].get(name, {}).get("low"),
            "high": values["ci95"].get(name, {}).get("high"),
        }
        for model, values in metrics.items()
        for name in HEADLINE
    ]
    return pd.DataFrame(rows)


def plot_comparison(table: pd.DataFrame, path: Path) -> Path:
    """Grouped bars (one group per headline metric, one bar per model) with 95% CI whiskers."""
    models = list(dict.fromkeys(table["model"]))
    figure = Figure(figsize=(7.5, 3.6), layout="constrained")
    ax = figure.subplots()
    width = 0.8 / len(models)
    x = np.arange(len(BARS))
    for index, model in enumerate(models):
        rows = table[table["model"] == model].set_index("metric").loc[list(BARS)]
        values = rows["value"].astype(float).to_numpy()
        low = rows["low"].astype(float).fillna(rows["value"].astype(float)).to_numpy()
        high = rows["high"].astype(float).fillna(rows["value"].astype(float)).to_numpy()
        offsets = x + (index - (len(models) - 1) / 2) * width
        ax.bar(offsets, values, width, label=model)
        # a percentile bootstrap interval need not contain the point estimate: clip the whiskers at it
        whiskers = [np.clip(values - low, 0, None), np.clip(high - values, 0, None)]
        ax.errorbar(offsets, values, yerr=whiskers, fmt="none", ecolor="black", capsize=3)
    ax.set_xticks(x, [name.replace("_", " ") for name in BARS])
    ax.set(
        ylim=(0, 1.05), ylabel="test split", title="teacher vs student baseline vs HDKD (95% CI by patient)"
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def training_history(models_dir: Path, models: Sequence[str]) -> pd.DataFrame:
    """The ``CURVES`` columns of the models' per-epoch logs merged on ``epoch``, each suffixed with
    `` (<model>)``."""
    merged: pd.DataFrame | None = None
    for model in models:
        path = models_dir / model / "training_log.csv"
        if not path.is_file():
            raise ValueError(f"{path}: file not found (the training bundles write it)")
        log = pd.read_csv(path).set_index("epoch")
        log = log[[column for column in CURVES if column in log.columns]]
        log.columns = [f"{column} ({model})" for column in log.columns]
        merged = log if merged is None else merged.join(log, how="outer")
    if merged is None:
        raise ValueError("no models given")
    return merged.reset_index()


def write_report(
    models: Sequence[str],
    eval_dir: Path,
    models_dir: Path,
    metrics_dir: Path,
    plots_dir: Path,
    class_names: Sequence[str],
    latency_runs: int,
    n_bootstrap: int = 1000,
    seed: int = 0,
    paired: tuple[str, str] | None = (HDKD, BASELINE),
) -> dict[str, dict[str, Any]]:
    """Write the metrics files and plots described in the module docstring; returns the metrics, with
    the ``paired`` comparison (model, reference; None for none) under the key "paired"."""
    if paired is not None and not set(paired) <= set(models):
        raise ValueError(f"the paired comparison {list(paired)} needs both models among {list(models)}")
    metrics = {}
    for model in models:
        report = read_json(eval_dir / model / "metrics.json")
        if report["class_names"] != list(class_names):
            raise ValueError(
                f"{eval_dir / model / 'metrics.json'}: classes {report['class_names']} differ from "
                f"data.class_names {list(class_names)}"
            )
        cost = complexity(models_dir / model / "model.pt", latency_runs)
        metrics[model] = model_metrics(report, cost)
    (metrics_dir / "details").mkdir(parents=True, exist_ok=True)
    files = []
    for model, values in metrics.items():
        headline = {key: value for key, value in values.items() if key not in DETAILS}
        details = {key: values[key] for key in DETAILS}
        details_path = metrics_dir / "details" / f"{model}_details.json"
        for path, content in ((metrics_dir / f"{model}.json", headline), (details_path, details)):
            write_json(path, content, indent=2, allow_nan=False)
            files.append(path)
    if paired is not None:
        comparison = paired_metrics(eval_dir, *paired, class_names, n_bootstrap, seed)
        headline = {name: {key: comparison[name][key] for key in ("difference", "ci95")} for name in PAIRED}
        for path, content in (
            (metrics_dir / "paired.json", headline),
            (metrics_dir / "details" / "paired_details.json", comparison),
        ):
            write_json(path, content, indent=2, allow_nan=False)
            files.append(path)
    plots_dir.mkdir(parents=True, exist_ok=True)
    table = comparison_table(metrics)
    with atomic_open(plots_dir / "comparison.csv", "w", newline="") as handle:
        table.to_csv(handle, index=False)
    files.append(plot_comparison(table, plots_dir / "comparison.png"))
    history = training_history(models_dir, models)
    with atomic_open(plots_dir / "training_curves.csv", "w", newline="") as handle:
        history.to_csv(handle, index=False)
    files.append(plot_training_curves(plots_dir / "training_curves.csv", plots_dir / "training_curves.png"))
    if paired is not None:
        metrics = {**metrics, "paired": comparison}
    from pipeline.tracking.parent import log_to_parent_run

    log_to_parent_run(metrics, files)
    return metrics
