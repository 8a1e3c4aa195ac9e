"""The training runs of the experiments pipeline (experiments/dvc.yaml), built from params.yaml.

- ``lambda-run``: an HDKD student with one feature weight, trained on the main split with the main
  teacher; only its validation scores are read (:func:`lambda_table`), never the test split.
- ``efficiency-cell``: one (fraction, seed) cell of the data-efficiency study: the seed's own subset of
  the training patients (``pipeline split --train-fraction --subset-seed``; val and test unchanged), a
  teacher trained on that subset (at fraction 1 the main pipeline's teacher, trained on the same
  patients), the student baseline and HDKD with the published distillation settings;
  ``efficiency-chosen`` adds HDKD with ``distill.*`` of params.yaml on the cell's split and teacher.
  Every run trains for ``efficiency.steps_per_epoch`` steps per epoch whatever the fraction, and is
  then evaluated on the test split.

Each run is a ``monai.bundle run`` of the bundles with the same options the main pipeline passes; the
commands run one after another in this process (:func:`pipeline.stages.launcher.run_commands`).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.params import flatten

BUNDLES = {"teacher": "bundles/hdkd_teacher", "student": "bundles/hdkd_student"}
# params.yaml key -> bundle option where the names differ
OPTION_NAMES = {
    "distill.type": "kd_type",
    "distill.lambda": "feature_weight",
    "runtime.device": "device_name",
}
MAIN_SPLIT = "data/split/split.csv"
MAIN_TEACHER_DIR = Path("models/teacher")
MAIN_TEACHER = MAIN_TEACHER_DIR / "model.pt"
SLICES = "data/slices/slices.csv"
PUBLISHED_NOTE = "same_as_published.txt"
VALIDATION_METRIC = "val_balanced_accuracy"
# distill.* key -> HDKDLoss argument (= bundle option); HDKDLoss's defaults are the published loss
DISTILL_OPTIONS = {"type": "kd_type", "kd_reduction": "kd_reduction", "alpha": "alpha", "tau": "tau",
                   "lambda": "feature_weight"}  # fmt: skip
LAMBDA_RUN = re.compile(r"l(?P<weight>[0-9.e+-]+)_s(?P<seed>[0-9]+)")
LAMBDA_RULE = (
    "the highest mean over seeds of the best-epoch validation balanced accuracy (the epoch whose weights "
    "the bundle keeps); a tie goes to the larger lambda, nearer the published 10"
)


def _options(params: Mapping[str, Any], *sections: str, **overrides: Any) -> list[str]:
    """``--option value`` for every key of ``sections`` of params.yaml (renamed by OPTION_NAMES), then
    ``overrides`` (bundle option names)."""
    flat = flatten(params)
    values = {
        OPTION_NAMES.get(key, key.split(".", 1)[1]): value
        for key, value in flat.items()
        if key.split(".", 1)[0] in sections
    }
    values.update(overrides)
    return [token for name, value in values.items() for token in (f"--{name}", str(value))]


def _model_options(params: Mapping[str, Any]) -> list[str]:
    flat = flatten(params)
    return [
        "--class_names", flat["data.class_names"], "--profile", flat["model.profile"],
        "--image_size", str(flat["model.image_size"]), "--in_channels", str(flat["model.in_channels"]),
        *_options(params, "runtime"),
    ]  # fmt: skip


def published_distillation() -> dict[str, Any]:
    """The published distillation settings as bundle options: the defaults of ``HDKDLoss`` (checked
    against the paper's formulas in tests/test_published_loss.py)."""
    from pipeline.distill import HDKDLoss

    defaults = inspect.signature(HDKDLoss).parameters
    return {option: defaults[option].default for option in DISTILL_OPTIONS.values()}


def train_command(
    params: Mapping[str, Any],
    role: str,
    split_file: str | Path,
    models_dir: Path,
    seed: int,
    run_name: str,
    variant: str | None = None,
    teacher_ckpt: str | Path | None = None,
    distill: bool = False,
    steps_per_epoch: int = 0,
    **overrides: Any,
) -> list[str]:
    """``monai.bundle run`` training one network (``role`` teacher or student; a student ``variant``
    baseline or hdkd). ``distill`` passes params.yaml's ``distill.*``, else an hdkd student gets the
    published settings (the bundle alone would read params.yaml's); ``overrides`` are bundle options that
    win over params.yaml."""
    command = ["python", "-m", "monai.bundle", "run", "--config_file", f"{BUNDLES[role]}/configs/train.json"]
    if variant:
        command += ["--variant", variant]
    if teacher_ckpt:
        command += ["--teacher_ckpt", str(teacher_ckpt)]
    sections = ("teacher",) if role == "teacher" else ("student", "distill") if distill else ("student",)
    if variant == "hdkd" and not distill:
        overrides = {**published_distillation(), **overrides}
    command += _options(params, *sections, seed=seed, steps_per_epoch=steps_per_epoch, **overrides)
    return [
        *command, "--split_file", str(split_file), "--models_dir", str(models_dir), "--run_name", run_name,
        "--augment", flatten(params)["model.augment"], *_model_options(params),
        "--progress", "false", "--resume", "false",
    ]  # fmt: skip


def evaluate_command(
    params: Mapping[str, Any], arm: str, split_file: Path, models_dir: Path, output_dir: Path, run_name: str
) -> list[str]:
    """``monai.bundle run`` evaluating ``models_dir/model.pt`` of ``arm`` on the test split (no bootstrap:
    the efficiency summary resamples the patients itself, paired across arms)."""
    role = "teacher" if arm == "teacher" else "student"
    command = [
        "python",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        f"{BUNDLES[role]}/configs/evaluate.json",
    ]
    if role == "student":
        command += ["--variant", "baseline" if arm == "baseline" else "hdkd"]
    return [
        *command, "--split_file", str(split_file), "--ckpt_path", str(models_dir / "model.pt"),
        "--output_dir", str(output_dir), "--model_name", run_name, "--n_bootstrap", "0",
        *_model_options(params),
    ]  # fmt: skip


def published_is_shipped(params: Mapping[str, Any]) -> bool:
    """True when params.yaml's ``distill.*`` equal the published settings, so the two HDKD arms of a
    cell would be the same run."""
    published = published_distillation()
    for key, option in DISTILL_OPTIONS.items():
        value = str(flatten(params)[f"distill.{key}"])
        if str(published[option]) != value and not _same_number(published[option], value):
            return False
    return True


def _same_number(default: Any, value: str) -> bool:
    try:
        return float(default) == float(value)
    except (TypeError, ValueError):
        return False


def _teacher_dir(fraction: float, cell: Path) -> Path:
    """The cell's teacher: its own, or at fraction 1 the main pipeline's, trained on the same patients."""
    return MAIN_TEACHER_DIR if fraction == 1.0 else cell / "models" / "teacher"


def cell_commands(params: Mapping[str, Any], fraction: float, seed: int, output: Path) -> list[list[str]]:
    """The commands of one data-efficiency cell, writing under ``output``: ``split.csv``, then
    ``models/<arm>/`` and ``eval/<arm>/`` of the teacher (trained unless fraction is 1), the baseline and
    HDKD with the bundle's published distillation settings. None depends on ``distill.*``."""
    flat = flatten(params)
    split_file = output / "split.csv"
    name = f"f{fraction:g}_s{seed}"
    steps = flat["efficiency.steps_per_epoch"]
    commands = [[
        "python", "-m", "pipeline", "split", "--slices", SLICES, "--output", str(split_file),
        "--val", str(flat["split.val"]), "--test", str(flat["split.test"]), "--seed", str(flat["split.seed"]),
        "--train-fraction", str(fraction), "--subset-seed", str(seed),
    ]]  # fmt: skip
    teacher = _teacher_dir(fraction, output)
    models = {"teacher": teacher, "baseline": output / "models" / "baseline"}
    models["hdkd_published"] = output / "models" / "hdkd_published"
    if teacher != MAIN_TEACHER_DIR:
        commands.append(train_command(params, "teacher", split_file, teacher, seed, f"teacher_{name}",
                                      steps_per_epoch=steps))  # fmt: skip
    commands.append(train_command(params, "student", split_file, models["baseline"], seed, f"baseline_{name}",
                                  variant="baseline", steps_per_epoch=steps))  # fmt: skip
    commands.append(
        train_command(params, "student", split_file, models["hdkd_published"], seed, f"hdkd_published_{name}",
                      variant="hdkd", teacher_ckpt=teacher / "model.pt", steps_per_epoch=steps)
    )  # fmt: skip
    for arm, models_dir in models.items():
        commands.append(
            evaluate_command(params, arm, split_file, models_dir, output / "eval" / arm, f"{arm}_{name}")
        )
    return commands


def chosen_commands(
    params: Mapping[str, Any], fraction: float, seed: int, cell: Path, output: Path
) -> list[list[str]]:
    """HDKD with params.yaml's ``distill.*`` on the split and teacher of ``cell`` (same steps), into
    ``output``/models/hdkd and eval/hdkd. When ``distill.*`` equal the published settings that run is the
    cell's ``hdkd_published``: no command, and ``output``/PUBLISHED_NOTE says so."""
    if published_is_shipped(params):
        output.mkdir(parents=True, exist_ok=True)
        (output / PUBLISHED_NOTE).write_text("distill.* equal the published settings: see hdkd_published\n")
        return []
    split_file, name = cell / "split.csv", f"f{fraction:g}_s{seed}"
    models_dir = output / "models" / "hdkd"
    return [
        train_command(params, "student", split_file, models_dir, seed, f"hdkd_{name}", variant="hdkd",
                      teacher_ckpt=_teacher_dir(fraction, cell) / "model.pt", distill=True,
                      steps_per_epoch=flatten(params)["efficiency.steps_per_epoch"]),
        evaluate_command(params, "hdkd", split_file, models_dir, output / "eval" / "hdkd", f"hdkd_{name}"),
    ]  # fmt: skip


def lambda_commands(
    params: Mapping[str, Any], feature_weight: float, seed: int, output: Path
) -> list[list[str]]:
    """Train HDKD with ``feature_weight`` (other settings from params.yaml) on the main split with the
    main teacher, into ``output``; only validation is read from it."""
    return [
        train_command(
            params, "student", MAIN_SPLIT, output, seed, f"lambda_{feature_weight:g}_s{seed}", variant="hdkd",
            teacher_ckpt=MAIN_TEACHER, distill=True, feature_weight=feature_weight,
        )
    ]  # fmt: skip


def best_validation(training_log: Path) -> dict[str, float]:
    """Best-epoch validation balanced accuracy (the checkpoint the bundle keeps), its epoch, the last
    epoch's value and the optimiser steps of a run's ``training_log.csv``."""
    if not training_log.is_file():
        raise ValueError(f"{training_log}: file not found (the training bundles write it)")
    log = pd.read_csv(training_log)
    best = log.loc[log[VALIDATION_METRIC].idxmax()]
    return {
        "best_val_balanced_accuracy": float(best[VALIDATION_METRIC]),
        "best_epoch": int(best["epoch"]),
        "last_val_balanced_accuracy": float(log[VALIDATION_METRIC].iloc[-1]),
        "steps": int(log["iteration"].iloc[-1]),
    }


def lambda_table(runs: Path) -> tuple[pd.DataFrame, float]:
    """Validation scores of every ``runs/l<lambda>_s<seed>`` run and the chosen lambda (LAMBDA_RULE)."""
    rows = []
    for folder in sorted(runs.iterdir()) if runs.is_dir() else []:
        if match := LAMBDA_RUN.fullmatch(folder.name):
            best = best_validation(folder / "training_log.csv")
            rows.append({"lambda": float(match["weight"]), "seed": int(match["seed"]), **best})
    if not rows:
        raise ValueError(f"{runs}: no l<lambda>_s<seed> runs found")
    table = pd.DataFrame(rows).sort_values(["lambda", "seed"], ascending=[False, True], ignore_index=True)
    means = table.groupby("lambda", sort=False)["best_val_balanced_accuracy"].mean().round(9)  # exact ties
    chosen = float(means.index[int(means.to_numpy().argmax())])  # first maximum: the larger lambda
    return table, chosen


def write_lambda_table(runs: Path, output: Path) -> tuple[pd.DataFrame, float]:
    """``output``/validation.csv (every run) and validation.json (mean per lambda, the rule, the choice)."""
    table, chosen = lambda_table(runs)
    output.mkdir(parents=True, exist_ok=True)
    table.to_csv(output / "validation.csv", index=False)
    means = table.groupby("lambda", sort=False)["best_val_balanced_accuracy"].agg(["mean", "count"])
    report = {
        "criterion": LAMBDA_RULE,
        "chosen_lambda": chosen,
        "mean_best_val_balanced_accuracy": {
            f"{w:g}": round(float(r["mean"]), 4) for w, r in means.iterrows()
        },
        "seeds": int(means["count"].min()),
    }
    (output / "validation.json").write_text(json.dumps(report, indent=2) + "\n")
    return table, chosen
