"""The data-efficiency summary: student baseline vs HDKD trained on fractions of the training patients.

The experiment pipeline (experiments/dvc.yaml) evaluates every ``<variant>_f<fraction>_s<seed>`` model
on the same test split; this module collects their ``metrics.json`` into a table, the mean and
spread (standard deviation, min, max) over seeds per variant and fraction, and a plot of both curves.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

RUN_NAME = re.compile(r"(?P<variant>[a-z]+)_f(?P<fraction>[0-9.]+)_s(?P<seed>[0-9]+)")
METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "macro_auc", "ece")


def collect(eval_dir: Path) -> pd.DataFrame:
    """One row per evaluated run folder of ``eval_dir``: variant, fraction, seed and the METRICS."""
    rows = []
    for folder in sorted(eval_dir.iterdir()) if eval_dir.is_dir() else []:
        match = RUN_NAME.fullmatch(folder.name)
        if not match or not (folder / "metrics.json").is_file():
            continue
        report = json.loads((folder / "metrics.json").read_text())
        rows.append(
            {
                "variant": match["variant"],
                "fraction": float(match["fraction"]),
                "seed": int(match["seed"]),
                **{name: report[name] for name in METRICS},
            }
        )
    if not rows:
        raise ValueError(f"{eval_dir}: no <variant>_f<fraction>_s<seed>/metrics.json found")
    return pd.DataFrame(rows).sort_values(["variant", "fraction", "seed"]).reset_index(drop=True)


def summarise(table: pd.DataFrame, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Mean, standard deviation, min, max and number of seeds of ``metric`` per variant and fraction."""
    grouped = table.groupby(["variant", "fraction"])[metric]
    summary = grouped.agg(["mean", "std", "min", "max", "count"]).reset_index()
    return summary.rename(columns={"count": "seeds"})


def plot_efficiency(summary: pd.DataFrame, path: Path, metric: str = "balanced_accuracy") -> Path:
    """Mean ``metric`` (line) and the range over seeds (band) against the training fraction."""
    figure = Figure(figsize=(6, 3.8), layout="constrained")
    ax = figure.subplots()
    for variant, rows in summary.groupby("variant"):
        percent = rows["fraction"] * 100
        ax.plot(percent, rows["mean"], marker="o", label=f"{variant} (mean over seeds; band: min-max)")
        ax.fill_between(percent, rows["min"], rows["max"], alpha=0.2)
    ax.set(
        xlabel="training patients used (%)",
        ylabel=f"test {metric.replace('_', ' ')}",
        title="data efficiency: student baseline vs HDKD",
        ylim=(0, 1.02),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def write_efficiency(eval_dir: Path, output: Path) -> pd.DataFrame:
    """Write ``output``/efficiency.csv (every run), efficiency.json (the summary, a DVC metrics file) and
    efficiency.png; returns the summary."""
    table = collect(eval_dir)
    summary = summarise(table)
    output.mkdir(parents=True, exist_ok=True)
    table.to_csv(output / "efficiency.csv", index=False)
    nested = {
        variant: {
            f"f{row.fraction:g}": {
                "mean": round(row.mean, 4),
                "std": None if pd.isna(row.std) else round(row.std, 4),
                "min": row.min,
                "max": row.max,
                "seeds": int(row.seeds),
            }
            for row in rows.itertuples()
        }
        for variant, rows in summary.groupby("variant")
    }
    (output / "efficiency.json").write_text(json.dumps({"balanced_accuracy": nested}, indent=2) + "\n")
    plot_efficiency(summary, output / "efficiency.png")
    return summary
