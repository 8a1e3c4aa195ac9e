"""The data-efficiency summary: each arm per training fraction, and HDKD minus the baseline, paired.

The experiment pipeline (experiments/dvc.yaml) writes one folder per (fraction, seed) cell
(``f<fraction>_s<seed>``, :mod:`pipeline.stages.trials`) holding ``models/<arm>/training_log.csv`` and
``eval/<arm>/{metrics.json,predictions.csv}`` of its arms, and a folder of the same name for the chosen
HDKD arm; all are evaluated on the same test patients. This module
writes:

- ``efficiency.csv``: one row per run (arm, fraction, seed, optimiser steps, training patients and the
  test metrics);
- ``efficiency.json``: per fraction and arm the mean over seeds with its 95% t-interval, and per
  fraction and HDKD arm the paired difference HDKD - baseline (same seed = same training patients,
  same test patients) of balanced accuracy, macro-F1 and macro AUC, with two 95% intervals: over the
  seeds (t-interval of the per-seed differences: training-subset and initialisation variability) and
  over the test patients (patient bootstrap of the seed-mean difference, every seed and both arms
  scored on the same resample: test-sampling variability);
- ``efficiency.png``: both panels with error bars.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from pipeline.evaluate.metrics import PAIRED, confusion_metrics, weighted_ovr_auc
from pipeline.evaluate.paired import paired_difference_of_files, read_predictions
from pipeline.stages.trials import MAIN_TEACHER_DIR

CELL_NAME = re.compile(r"f(?P<fraction>[0-9.]+)_s(?P<seed>[0-9]+)")
METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "macro_auc", "ece")
BASELINE = "baseline"
HDKD_ARMS = ("hdkd_published", "hdkd")
LEVEL = 0.95


def _cells(cells_dir: Path) -> list[tuple[Path, float, int]]:
    found = []
    for folder in sorted(cells_dir.iterdir()) if cells_dir.is_dir() else []:
        if (match := CELL_NAME.fullmatch(folder.name)) and (folder / "eval").is_dir():
            found.append((folder, float(match["fraction"]), int(match["seed"])))
    if not found:
        raise ValueError(f"{cells_dir}: no f<fraction>_s<seed>/eval folders found")
    return found


def collect(cells_dir: Path, chosen_dir: Path | None = None) -> pd.DataFrame:
    """One row per evaluated run of ``cells_dir``'s cells and of their ``chosen_dir`` counterparts
    (same ``f<fraction>_s<seed>`` names): cell, arm, run_dir (the folder holding its models/ and
    eval/), fraction, seed, steps, train_patients and the METRICS."""
    rows = []
    for folder, fraction, seed in _cells(cells_dir):
        split = json.loads((folder / "split.json").read_text())
        patients = sum(split["patients"]["train"].values())
        for run_dir in (folder, *([chosen_dir / folder.name] if chosen_dir else [])):
            evaluated = sorted(p for p in (run_dir / "eval").glob("*") if (p / "metrics.json").is_file())
            for eval_dir in evaluated:
                report = json.loads((eval_dir / "metrics.json").read_text())
                models = run_dir / "models" / eval_dir.name
                if eval_dir.name == "teacher" and not models.is_dir():  # fraction 1: the main pipeline's
                    models = MAIN_TEACHER_DIR
                log = pd.read_csv(models / "training_log.csv")
                rows.append(
                    {
                        "cell": folder.name,
                        "arm": eval_dir.name,
                        "run_dir": run_dir.as_posix(),
                        "fraction": fraction,
                        "seed": seed,
                        "steps": int(log["iteration"].iloc[-1]),
                        "train_patients": patients,
                        **{name: report[name] for name in METRICS},
                    }
                )
    return pd.DataFrame(rows).sort_values(["arm", "fraction", "seed"]).reset_index(drop=True)


def _predictions(table: pd.DataFrame, cell: str, arm: str) -> Path:
    """The predictions.csv of ``arm`` in ``cell``."""
    rows = table[(table["cell"] == cell) & (table["arm"] == arm)]
    if rows.empty:
        raise ValueError(f"cell {cell} has no evaluated {arm} run: run its stages first")
    row = rows.iloc[0]
    return Path(row["run_dir"]) / "eval" / arm / "predictions.csv"


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and its ``level`` Student-t interval; (mean, NaN, NaN) for fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    mean = float(values.mean()) if values.size else float("nan")
    if values.size < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return mean, mean - half, mean + half


def summarise(table: pd.DataFrame, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Per arm and fraction: seeds, steps, mean, sd, min, max and the 95% t-interval of ``metric``."""
    rows = []
    for (arm, fraction), group in table.groupby(["arm", "fraction"]):
        mean, low, high = t_interval(group[metric])
        rows.append(
            {
                "arm": arm,
                "fraction": fraction,
                "seeds": len(group),
                "steps": int(group["steps"].max()),
                "mean": mean,
                "std": float(group[metric].std()),
                "min": float(group[metric].min()),
                "max": float(group[metric].max()),
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows)


def _scores(labels: np.ndarray, probs: np.ndarray, units: np.ndarray, counts: np.ndarray) -> dict:
    """PAIRED metrics of one model for each row of patient ``counts`` [R, U] (resample multiplicities);
    NaN where a metric is undefined (a resample that misses a class)."""
    k = probs.shape[1]
    cells = np.zeros((counts.shape[1], k * k))
    np.add.at(cells, (units, labels * k + probs.argmax(1)), 1.0)
    scores = confusion_metrics((counts @ cells).reshape(-1, k, k))
    scores["macro_auc"] = weighted_ovr_auc(labels, probs, counts[:, units]).mean(-1)
    return scores


def seed_mean_difference(
    pairs: Sequence[tuple[Path, Path]], class_names: Sequence[str], n_bootstrap: int, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Mean over seeds of HDKD - baseline per PAIRED metric, with its patient-bootstrap 95% interval.

    ``pairs`` holds one (hdkd, baseline) pair of ``predictions.csv`` files per seed, all of the same test
    slices. Every resample draws patients with replacement once and scores every seed's two models on
    it, so the interval is of the paired, seed-averaged difference; resamples where a metric is
    undefined are left out of its percentiles (counted in ``undefined``)."""
    runs = [[read_predictions(path, class_names) for path in pair] for pair in pairs]
    labels, _, groups = runs[0][1]
    for other_labels, _, other_groups in (run for pair in runs for run in pair):
        if other_groups is None or not (
            np.array_equal(other_labels, labels) and np.array_equal(other_groups, groups)
        ):
            raise ValueError(
                "the runs were not evaluated on the same test slices of known patients: no paired difference"
            )
    patients, units = np.unique(groups, return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, len(patients), size=(n_bootstrap, len(patients)))
    counts = np.stack([np.bincount(row, minlength=len(patients)) for row in draws]).astype(np.float64)
    counts = np.vstack([np.ones(len(patients)), counts])  # row 0: the observed sample
    differences = {name: np.zeros(len(counts)) for name in PAIRED}
    for (_, hdkd, _), (_, baseline, _) in runs:
        a, b = _scores(labels, hdkd, units, counts), _scores(labels, baseline, units, counts)
        for name in PAIRED:
            differences[name] += (a[name] - b[name]) / len(runs)
    out = {}
    for name, values in differences.items():
        resampled = values[1:][~np.isnan(values[1:])]
        low, high = np.percentile(resampled, [50 * (1 - LEVEL), 50 * (1 + LEVEL)]) if resampled.size else (
            np.nan, np.nan)  # fmt: skip
        out[name] = {
            "mean": float(values[0]),
            "ci_low": float(low),
            "ci_high": float(high),
            "undefined": int(n_bootstrap - resampled.size),
        }
    return out


def per_seed_differences(table: pd.DataFrame, class_names: Sequence[str], n_bootstrap: int) -> pd.DataFrame:
    """``table`` plus, on each HDKD run's row, its balanced-accuracy difference from the baseline of the
    same cell and that difference's patient-bootstrap 95% interval
    (:func:`pipeline.evaluate.paired.paired_difference_of_files`)."""
    columns = {"ba_minus_baseline": [], "ba_minus_baseline_ci_low": [], "ba_minus_baseline_ci_high": []}
    for row in table.itertuples():
        values = [float("nan")] * 3
        if row.arm in HDKD_ARMS:
            paired = paired_difference_of_files(
                _predictions(table, row.cell, row.arm), _predictions(table, row.cell, BASELINE), class_names,
                n_bootstrap, ci=LEVEL,
            )["balanced_accuracy"]  # fmt: skip
            values = [paired["difference"], *paired["ci"]]
        for column, value in zip(columns, values, strict=True):
            columns[column].append(value)
    return table.assign(**columns)


def paired_differences(table: pd.DataFrame, class_names: Sequence[str], n_bootstrap: int) -> pd.DataFrame:
    """Per fraction, HDKD arm and PAIRED metric: seeds, the mean difference HDKD - baseline, its
    t-interval over seeds, its patient-bootstrap interval (:func:`seed_mean_difference`) and in how
    many seeds HDKD was ahead."""
    rows = []
    wide = table.pivot_table(index=["fraction", "seed"], columns="arm", values=list(PAIRED))
    for fraction, seed_rows in table.groupby("fraction"):
        for arm in (a for a in HDKD_ARMS if a in set(seed_rows["arm"])):
            cells = sorted(seed_rows.loc[seed_rows["arm"] == arm, "cell"])
            pairs = [(_predictions(table, c, arm), _predictions(table, c, BASELINE)) for c in cells]
            patient_ci = seed_mean_difference(pairs, class_names, n_bootstrap)
            for name in PAIRED:
                per_seed = (
                    (wide.loc[fraction][name][arm] - wide.loc[fraction][name][BASELINE]).dropna().to_numpy()
                )
                mean, low, high = t_interval(per_seed)
                rows.append(
                    {
                        "fraction": fraction,
                        "arm": arm,
                        "metric": name,
                        "seeds": len(per_seed),
                        "mean": mean,
                        "seed_ci_low": low,
                        "seed_ci_high": high,
                        "patient_ci_low": patient_ci[name]["ci_low"],
                        "patient_ci_high": patient_ci[name]["ci_high"],
                        "wins": int((per_seed > 0).sum()),
                    }
                )
    return pd.DataFrame(rows)


def plot_efficiency(summary: pd.DataFrame, differences: pd.DataFrame, path: Path) -> Path:
    """Left: each arm's mean test balanced accuracy with its 95% interval over seeds. Right: HDKD -
    baseline (paired) with the interval over seeds (thick) and over test patients (thin)."""
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    for offset, (arm, rows) in zip((-0.6, -0.2, 0.2, 0.6), summary.groupby("arm"), strict=False):
        percent = rows["fraction"] * 100 + offset
        error = [rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]]
        left.errorbar(percent, rows["mean"], yerr=error, marker="o", capsize=3, label=arm)
    left.set(xlabel="training patients used (%)", ylabel="test balanced accuracy", ylim=(0, 1.02),
             title="each arm: mean over seeds, 95% CI")  # fmt: skip
    ba = differences[differences["metric"] == "balanced_accuracy"]
    for offset, (arm, rows) in zip((-0.5, 0.5), ba.groupby("arm"), strict=False):
        percent = rows["fraction"] * 100 + offset
        seed_error = [rows["mean"] - rows["seed_ci_low"], rows["seed_ci_high"] - rows["mean"]]
        patient_error = [rows["mean"] - rows["patient_ci_low"], rows["patient_ci_high"] - rows["mean"]]
        line = right.errorbar(percent, rows["mean"], yerr=seed_error, marker="o", capsize=3, lw=2,
                              label=f"{arm} - baseline")  # fmt: skip
        right.errorbar(percent, rows["mean"], yerr=patient_error, fmt="none", capsize=6, lw=0.8,
                       color=line[0].get_color())  # fmt: skip
    right.axhline(0.0, color="black", lw=0.8)
    right.set(xlabel="training patients used (%)", ylabel="paired difference in balanced accuracy",
              title="HDKD - baseline: 95% CI over seeds (thick), test patients (thin)")  # fmt: skip
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _json_number(value: float) -> float | None:
    return None if pd.isna(value) else round(float(value), 4)


def write_efficiency(
    cells_dir: Path,
    output: Path,
    class_names: Sequence[str],
    n_bootstrap: int,
    chosen_dir: Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``output``/efficiency.csv, efficiency.json and efficiency.png (module docstring); returns
    the per-arm summary and the paired differences."""
    table = per_seed_differences(collect(cells_dir, chosen_dir), class_names, n_bootstrap)
    summary = summarise(table)
    differences = paired_differences(table, class_names, n_bootstrap)
    output.mkdir(parents=True, exist_ok=True)
    table.to_csv(output / "efficiency.csv", index=False)
    arms = {
        arm: {
            f"f{row.fraction:g}": {
                "seeds": int(row.seeds),
                "steps": int(row.steps),
                **{
                    key: _json_number(getattr(row, key))
                    for key in ("mean", "std", "min", "max", "ci_low", "ci_high")
                },
            }
            for row in rows.itertuples()
        }
        for arm, rows in summary.groupby("arm")
    }
    paired: dict = {}
    for row in differences.itertuples():
        entry = paired.setdefault(f"{row.arm} - {BASELINE}", {}).setdefault(f"f{row.fraction:g}", {})
        entry[row.metric] = {
            "seeds": int(row.seeds),
            "wins": int(row.wins),
            **{
                key: _json_number(getattr(row, key))
                for key in ("mean", "seed_ci_low", "seed_ci_high", "patient_ci_low", "patient_ci_high")
            },
        }
    report = {
        "metric": "test balanced_accuracy",
        "ci": f"{LEVEL:.0%}: arms and seed_ci over seeds (Student t); patient_ci: patient bootstrap",
        "n_bootstrap": n_bootstrap,
        "arms": arms,
        "paired": paired,
    }
    (output / "efficiency.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_efficiency(summary, differences, output / "efficiency.png")
    return summary, differences
