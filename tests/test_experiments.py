"""The experiments pipeline: the runs it builds from params.yaml, the lambda table, the efficiency summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from pipeline.stages import efficiency, trials

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("glioma", "meningioma", "pituitary", "notumor")


def _params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_a_cell_trains_every_arm_on_its_own_subset_with_equal_steps(tmp_path: Path) -> None:
    params = _params()
    params["distill"]["lambda"] = 0.5  # differs from the published 10: the chosen arm trains
    cell = tmp_path / "cell"
    commands = trials.cell_commands(params, 0.25, 3, cell)
    chosen_train, chosen_eval = trials.chosen_commands(params, 0.25, 3, cell, tmp_path / "chosen")
    split, *rest = commands
    assert split[:4] == ["python", "-m", "pipeline", "split"]
    assert _option(split, "--train-fraction") == "0.25" and _option(split, "--subset-seed") == "3"
    assert _option(split, "--seed") == str(params["split"]["seed"])
    trains = [c for c in rest if _option(c, "--config_file").endswith("train.json")] + [chosen_train]
    evaluations = [c for c in rest if _option(c, "--config_file").endswith("evaluate.json")] + [chosen_eval]
    arms = ["teacher", "baseline", "hdkd_published", "hdkd"]
    assert [Path(_option(c, "--models_dir")).name for c in trains] == arms
    assert [Path(_option(c, "--output_dir")).name for c in evaluations] == arms
    assert _option(chosen_eval, "--ckpt_path") == str(tmp_path / "chosen" / "models" / "hdkd" / "model.pt")
    for command in trains:
        assert _option(command, "--steps_per_epoch") == str(params["efficiency"]["steps_per_epoch"])
        assert _option(command, "--seed") == "3"
        assert _option(command, "--split_file") == str(cell / "split.csv")
    teacher, baseline, published, chosen = trains
    assert _option(teacher, "--epochs") == str(params["teacher"]["epochs"])
    assert _option(baseline, "--variant") == "baseline" and "--teacher_ckpt" not in baseline
    for hdkd in (published, chosen):  # both distil from the cell's own teacher
        assert _option(hdkd, "--teacher_ckpt") == str(cell / "models" / "teacher" / "model.pt")
    # the published loss, given explicitly (the bundle alone reads params.yaml's distill.*)
    assert _option(published, "--feature_weight") == "10.0" and _option(published, "--kd_type") == "soft"
    assert _option(published, "--alpha") == "0.5" and _option(published, "--kd_reduction") == "published"
    assert _option(chosen, "--feature_weight") == "0.5"
    assert _option(chosen, "--kd_type") == params["distill"]["type"]


def test_fraction_one_uses_the_main_teacher_and_published_settings_train_once(tmp_path: Path) -> None:
    params = _params()
    params["distill"].update(
        {"type": "soft", "kd_reduction": "published", "alpha": 0.5, "tau": 1, "lambda": 10}
    )
    assert trials.published_is_shipped(params)
    assert trials.chosen_commands(params, 1.0, 0, tmp_path / "cell", tmp_path / "chosen") == []
    assert (tmp_path / "chosen" / trials.PUBLISHED_NOTE).is_file()
    commands = trials.cell_commands(params, 1.0, 0, tmp_path / "cell")
    trained = [Path(_option(c, "--models_dir")).name for c in commands if "--models_dir" in c]
    assert trained == ["baseline", "hdkd_published"]  # fraction 1: no teacher of its own
    published = next(c for c in commands if "--teacher_ckpt" in c)
    assert _option(published, "--teacher_ckpt") == str(trials.MAIN_TEACHER)
    evaluated = [_option(c, "--ckpt_path") for c in commands if "--ckpt_path" in c]
    assert evaluated[0] == str(trials.MAIN_TEACHER) and len(evaluated) == 3
    params["distill"]["alpha"] = 0.7
    assert not trials.published_is_shipped(params)


def _log(folder: Path, values: list[float], steps_per_epoch: int = 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "training_log.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "iteration", "train_loss", "val_balanced_accuracy"])
        for epoch, value in enumerate(values, 1):
            writer.writerow([epoch, epoch * steps_per_epoch, 1.0, value])


def test_lambda_table_reads_validation_and_breaks_ties_towards_the_larger_lambda(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _log(runs / "l10_s0", [0.5, 0.7, 0.6])
    _log(runs / "l10_s1", [0.6, 0.6, 0.6])
    _log(runs / "l0.1_s0", [0.4, 0.8, 0.5])
    _log(runs / "l0.1_s1", [0.5, 0.5, 0.5])  # mean best 0.65 = lambda 10's: tie
    _log(runs / "l0_s0", [0.3, 0.3, 0.3])
    _log(runs / "l0_s1", [0.3, 0.3, 0.6])
    table, chosen = trials.write_lambda_table(runs, tmp_path / "out")
    assert chosen == 10.0
    row = table[(table["lambda"] == 0.1) & (table["seed"] == 0)].iloc[0]
    assert row["best_val_balanced_accuracy"] == pytest.approx(0.8) and row["best_epoch"] == 2
    assert row["last_val_balanced_accuracy"] == pytest.approx(0.5) and row["steps"] == 60
    written = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert written["chosen_lambda"] == 10.0 and written["seeds"] == 2
    assert written["mean_best_val_balanced_accuracy"] == {"10": 0.65, "0.1": 0.65, "0": 0.45}
    _log(runs / "l1_s0", [0.9])
    _log(runs / "l1_s1", [0.7])
    assert trials.lambda_table(runs)[1] == 1.0


def _cell(cells: Path, fraction: str, seed: int, predictions: dict[str, list[str]], truth: list[str]) -> None:
    """A cell folder as efficiency-cell writes it; one slice per test patient, probability 0.7 on the
    predicted class."""
    folder = cells / f"f{fraction}_s{seed}"
    (folder).mkdir(parents=True)
    (folder / "split.json").write_text(json.dumps({"patients": {"train": {c: 3 for c in CLASSES}}}))
    for arm, predicted in predictions.items():
        _log(folder / "models" / arm, [0.5, 0.6])
        out = folder / "eval" / arm
        out.mkdir(parents=True)
        rows = []
        for i, (label, guess) in enumerate(zip(truth, predicted, strict=True)):
            probs = [0.7 if c == guess else 0.1 for c in CLASSES]
            rows.append([f"p{i:02d}", label, guess, *probs])
        with (out / "predictions.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["patient", "label", "predicted", *(f"prob_{c}" for c in CLASSES)])
            writer.writerows(rows)
        recall = [np.mean([g == c for t, g in zip(truth, predicted, strict=True) if t == c]) for c in CLASSES]
        metrics = {"balanced_accuracy": float(np.mean(recall)), "accuracy": 0.0, "macro_f1": 0.0,
                   "macro_auc": 0.0, "ece": 0.0}  # fmt: skip
        (out / "metrics.json").write_text(json.dumps(metrics))


def test_summary_gives_arm_intervals_and_paired_differences(tmp_path: Path) -> None:
    truth = [c for c in CLASSES for _ in range(5)]  # 20 test patients, 5 per class
    rng = np.random.default_rng(0)
    cells = tmp_path / "cells"
    per_seed = {}
    for seed in range(3):
        baseline = [c if rng.random() < 0.5 else CLASSES[0] for c in truth]
        hdkd = [c if rng.random() < 0.8 else CLASSES[1] for c in truth]
        _cell(cells, "1.0", seed, {"baseline": baseline, "hdkd_published": hdkd}, truth)
        per_seed[seed] = (hdkd, baseline)
    _cell(cells, "0.5", 0, {"baseline": truth, "hdkd_published": truth}, truth)
    summary, differences = efficiency.write_efficiency(cells, tmp_path / "summary", CLASSES, n_bootstrap=300)

    def balanced_accuracy(predicted: list[str]) -> float:
        pairs = list(zip(truth, predicted, strict=True))
        return float(np.mean([np.mean([p == c for t, p in pairs if t == c]) for c in CLASSES]))

    gaps = [balanced_accuracy(h) - balanced_accuracy(b) for h, b in per_seed.values()]
    row = differences[(differences["fraction"] == 1.0) & (differences["metric"] == "balanced_accuracy")].iloc[
        0
    ]
    assert row["mean"] == pytest.approx(np.mean(gaps))
    low, high = stats.t.interval(0.95, len(gaps) - 1, loc=np.mean(gaps), scale=stats.sem(gaps))
    assert (row["seed_ci_low"], row["seed_ci_high"]) == pytest.approx((low, high))
    assert row["patient_ci_low"] < row["mean"] < row["patient_ci_high"]
    assert row["wins"] == sum(g > 0 for g in gaps)
    runs = efficiency.collect(cells)
    assert len(runs) == 8 and set(runs["steps"]) == {40}
    rows = efficiency.per_seed_differences(runs, CLASSES, n_bootstrap=200)
    hdkd_rows = rows[(rows["arm"] == "hdkd_published") & (rows["fraction"] == 1.0)].sort_values("seed")
    assert hdkd_rows["ba_minus_baseline"].to_numpy() == pytest.approx(gaps)
    assert (hdkd_rows["ba_minus_baseline_ci_low"] <= hdkd_rows["ba_minus_baseline"]).all()
    assert rows.loc[rows["arm"] == "baseline", "ba_minus_baseline"].isna().all()
    baseline_scores = [balanced_accuracy(b) for _, b in per_seed.values()]
    arm = summary[(summary["arm"] == "baseline") & (summary["fraction"] == 1.0)].iloc[0]
    assert arm["mean"] == pytest.approx(np.mean(baseline_scores)) and arm["seeds"] == 3 and arm["steps"] == 40
    same = differences[
        (differences["fraction"] == 0.5) & (differences["metric"] == "balanced_accuracy")
    ].iloc[0]
    assert same["mean"] == 0.0 and same["patient_ci_low"] == 0.0 == same["patient_ci_high"]  # identical arms
    written = json.loads((tmp_path / "summary" / "efficiency.json").read_text())
    assert written["paired"]["hdkd_published - baseline"]["f1"]["balanced_accuracy"]["seeds"] == 3
    assert written["arms"]["baseline"]["f0.5"]["seeds"] == 1
    assert (tmp_path / "summary" / "efficiency.png").read_bytes()[:4] == b"\x89PNG"
    rows = (tmp_path / "summary" / "efficiency.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 and "steps" in rows[0]


def test_paired_difference_needs_the_same_test_slices(tmp_path: Path) -> None:
    truth = list(CLASSES) * 2
    _cell(tmp_path / "cells", "1.0", 0, {"baseline": truth, "hdkd_published": truth}, truth)
    predictions = tmp_path / "cells" / "f1.0_s0" / "eval" / "hdkd_published" / "predictions.csv"
    predictions.write_text(predictions.read_text().replace("p00", "p99"))
    with pytest.raises(ValueError, match=r"same (test )?slices"):
        efficiency.write_efficiency(tmp_path / "cells", tmp_path / "summary", CLASSES, n_bootstrap=10)


def test_shipped_lambda_is_the_one_the_committed_validation_table_chose() -> None:
    table = ROOT / "experiments" / "lambda_search" / "summary" / "validation.json"
    chosen = json.loads(table.read_text())["chosen_lambda"]
    assert _params()["distill"]["lambda"] == chosen


def test_a_lambda_run_trains_hdkd_on_the_main_split_with_its_own_weight(tmp_path: Path) -> None:
    params = _params()
    params["distill"]["lambda"] = 0.3  # replaced: the stage does not depend on distill.lambda
    (command,) = trials.lambda_commands(params, 1.0, 2, tmp_path / "l1_s2")
    assert command.count("--feature_weight") == 1 and _option(command, "--feature_weight") == "1.0"
    assert _option(command, "--kd_reduction") == params["distill"]["kd_reduction"]
    assert _option(command, "--split_file") == trials.MAIN_SPLIT
    assert _option(command, "--teacher_ckpt") == str(trials.MAIN_TEACHER)
    assert _option(command, "--seed") == "2" and _option(command, "--variant") == "hdkd"
    stage = yaml.safe_load((ROOT / "experiments" / "dvc.yaml").read_text())["stages"]["lambda_run"]
    assert "distill.lambda" not in stage["params"] and "distill" not in stage["params"]


def test_the_chosen_arm_joins_its_cell_in_the_summary(tmp_path: Path) -> None:
    truth = [c for c in CLASSES for _ in range(3)]
    _cell(tmp_path / "cells", "0.25", 0, {"baseline": truth, "hdkd_published": truth}, truth)
    wrong = [CLASSES[0]] * len(truth)
    _cell(tmp_path / "chosen", "0.25", 0, {"hdkd": wrong}, truth)
    (tmp_path / "chosen" / "f0.25_s0" / "split.json").unlink()  # only the cell holds the split
    table = efficiency.collect(tmp_path / "cells", tmp_path / "chosen")
    assert sorted(table["arm"]) == ["baseline", "hdkd", "hdkd_published"]
    assert (
        table.loc[table["arm"] == "hdkd", "run_dir"].item() == (tmp_path / "chosen" / "f0.25_s0").as_posix()
    )
    _, differences = efficiency.write_efficiency(
        tmp_path / "cells", tmp_path / "summary", CLASSES, n_bootstrap=50, chosen_dir=tmp_path / "chosen"
    )
    ba = differences[differences["metric"] == "balanced_accuracy"].set_index("arm")["mean"]
    assert ba["hdkd_published"] == 0.0 and ba["hdkd"] == pytest.approx(0.25 - 1.0)
