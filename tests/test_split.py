"""`pipeline split`: patient grouping, stratification, given test split, train fraction, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.data import split
from pipeline.data.manifest import write_csv
from pipeline.data.slice_table import SLICE_COLUMNS

CLASSES = ("glioma", "meningioma", "pituitary", "notumor")


def _rows(patients_per_class: int = 8, scans: int = 2, slices: int = 3, given: str = "") -> list[dict]:
    """Several scans per patient and several slices per scan, with uneven slice counts."""
    rows = []
    for c, label in enumerate(CLASSES):
        for p in range(patients_per_class):
            patient = f"pat{c}{p:02d}"
            for s in range(scans):
                source = f"{patient}s{s}"
                for z in range(slices + (p % 3)):
                    rows.append(
                        {
                            "slice_id": f"{source}_{z:04d}",
                            "path": f"slices/{source}_{z:04d}.npy",
                            "source_id": source,
                            "patient": patient,
                            "label": label,
                            "slice_index": str(z),
                            "given_split": given,
                            "modality": "MR",
                        }
                    )
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, SLICE_COLUMNS, rows)
    return path


def _run(tmp_path: Path, rows: list[dict], name: str = "split.csv", **kwargs) -> tuple[pd.DataFrame, dict]:
    slices = _write(tmp_path / "sl" / "slices.csv", rows)
    output = tmp_path / "out" / name
    options = {"val": 0.15, "test": 0.15, "seed": 0, **kwargs}
    report = split.split_slices(slices, output, **options)
    return pd.read_csv(output, dtype=str, keep_default_na=False), report


def test_no_patient_in_two_splits_and_every_class_in_every_split(tmp_path: Path) -> None:
    table, report = _run(tmp_path, _rows())
    assert set(table["split"]) == {"train", "val", "test"}
    assert (table.groupby("patient")["split"].nunique() == 1).all()
    for part in ("train", "val", "test"):
        assert set(table.loc[table["split"] == part, "label"]) == set(CLASSES)
    assert report["patient_grouping"] == "by patient"
    fraction = (table["split"] == "train").mean()
    assert 0.6 < fraction < 0.8


def test_report_counts_match_the_csv_and_json_is_written(tmp_path: Path) -> None:
    table, report = _run(tmp_path, _rows())
    saved = json.loads((tmp_path / "out" / "split.json").read_text())
    assert saved == report
    for part in ("train", "val", "test"):
        expected = table[table["split"] == part].groupby("label").size().to_dict()
        assert report["slices"][part] == expected
        patients = table[table["split"] == part].groupby("label")["patient"].nunique().to_dict()
        assert report["patients"][part] == patients


def test_paths_are_relative_to_the_output_folder(tmp_path: Path) -> None:
    table, _ = _run(tmp_path, _rows(2, 1, 1))
    resolved = {(tmp_path / "out" / p).resolve() for p in table["path"]}
    assert resolved == {(tmp_path / "sl" / p).resolve() for p in pd.DataFrame(_rows(2, 1, 1))["path"]}


def test_same_seed_same_split_other_seed_differs(tmp_path: Path) -> None:
    rows = _rows()
    first, _ = _run(tmp_path, rows, "a.csv", seed=3)
    again, _ = _run(tmp_path, rows, "b.csv", seed=3)
    other, _ = _run(tmp_path, rows, "c.csv", seed=4)
    assert first["split"].tolist() == again["split"].tolist()
    assert first["split"].tolist() != other["split"].tolist()


def test_given_test_split_is_respected(tmp_path: Path) -> None:
    rows = _rows(given="train")
    for row in rows:
        if row["patient"].endswith(("00", "01")):
            row["given_split"] = "test"
    # one patient has a given-test scan and a given-train scan: the whole patient goes to test
    mixed = [r for r in rows if r["patient"] == "pat102" and r["source_id"].endswith("s1")]
    for row in mixed:
        row["given_split"] = "test"
    table, report = _run(tmp_path, rows)
    assert (table.loc[table["given_split"] == "test", "split"] == "test").all()
    assert set(table.loc[table["split"] == "test", "patient"]) == {
        f"pat{c}{p}" for c in range(4) for p in ("00", "01")
    } | {"pat102"}
    assert report["given_train_rows_moved_to_test"] == sum(1 for r in rows if r["patient"] == "pat102") - len(
        mixed
    )
    assert set(table.loc[table["given_split"] == "train", "split"]) >= {"train", "val"}


def test_rows_without_patient_id_are_grouped_by_source_and_reported(tmp_path: Path) -> None:
    rows = _rows(4, 1, 2)
    for row in rows:
        row["patient"] = ""
    table, report = _run(tmp_path, rows)
    assert "patient grouping impossible" in report["patient_grouping"]
    assert (table.groupby("source_id")["split"].nunique() == 1).all()


def test_train_fraction_takes_whole_patients_and_keeps_val_and_test(tmp_path: Path) -> None:
    rows = _rows(12)
    full, _ = _run(tmp_path, rows, "full.csv")
    half, report = _run(tmp_path, rows, "half.csv", train_fraction=0.5)
    quarter, _ = _run(tmp_path, rows, "quarter.csv", train_fraction=0.25)
    for part in ("val", "test"):
        expected = full[full["split"] == part].reset_index(drop=True)
        assert expected.equals(half[half["split"] == part].reset_index(drop=True))
    train_full = full[full["split"] == "train"]
    for subset in (half, quarter):
        train = subset[subset["split"] == "train"]
        kept = set(train["patient"])
        assert len(train) == len(train_full[train_full["patient"].isin(kept)])  # whole patients
        assert set(train["label"]) == set(CLASSES)
    patients_full = train_full.groupby("label")["patient"].nunique()
    patients_half = half[half["split"] == "train"].groupby("label")["patient"].nunique()
    assert ((patients_half - (patients_full * 0.5).round()).abs() <= 0.5).all()
    assert set(quarter.loc[quarter["split"] == "train", "patient"]) <= set(
        half.loc[half["split"] == "train", "patient"]
    )
    assert report["dropped_by_train_fraction"]["patients"] == patients_full.sum() - patients_half.sum()


def test_subset_seed_draws_other_patients_from_the_same_split(tmp_path: Path) -> None:
    rows = _rows(12)
    full, _ = _run(tmp_path, rows, "full.csv")
    subsets = {}
    for subset_seed in (0, 1):
        for fraction in (0.25, 0.5):
            name = f"s{subset_seed}_f{fraction}.csv"
            table, report = _run(tmp_path, rows, name, train_fraction=fraction, subset_seed=subset_seed)
            assert report["subset_seed"] == subset_seed
            for part in ("val", "test"):  # the split itself does not move
                expected = full[full["split"] == part].reset_index(drop=True)
                assert expected.equals(table[table["split"] == part].reset_index(drop=True))
            subsets[subset_seed, fraction] = set(table.loc[table["split"] == "train", "patient"])
    for subset_seed in (0, 1):  # nested within a seed
        assert subsets[subset_seed, 0.25] <= subsets[subset_seed, 0.5]
    assert subsets[0, 0.5] != subsets[1, 0.5]  # another seed, other patients
    default, _ = _run(tmp_path, rows, "default.csv", train_fraction=0.5)
    assert set(default.loc[default["split"] == "train", "patient"]) == subsets[0, 0.5]


@pytest.mark.parametrize(
    "options,named",
    [
        (["--val", "1.0"], "--val"),
        (["--test", "-0.1"], "--test"),
        (["--val", "0.5", "--test", "0.5"], "--val + --test"),
        (["--train-fraction", "0"], "--train-fraction"),
        (["--train-fraction", "1.5"], "--train-fraction"),
    ],
)
def test_bad_fractions_name_the_option(tmp_path: Path, capsys, options: list[str], named: str) -> None:
    slices = _write(tmp_path / "slices.csv", _rows(2, 1, 1))
    code = split.main(["--slices", str(slices), "--output", str(tmp_path / "s.csv"), *options])
    assert code == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def test_missing_or_empty_input_is_a_clear_error(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.csv"
    assert split.main(["--slices", str(missing), "--output", str(tmp_path / "s.csv")]) == 2
    assert str(missing) in capsys.readouterr().err
    empty = _write(tmp_path / "empty.csv", [])
    assert split.main(["--slices", str(empty), "--output", str(tmp_path / "s.csv")]) == 2
    assert "no slices to split" in capsys.readouterr().err


def test_output_may_not_overwrite_the_input(tmp_path: Path) -> None:
    slices = _write(tmp_path / "slices.csv", _rows(2, 1, 1))
    with pytest.raises(ValueError, match="overwrite"):
        split.split_slices(slices, slices, 0.15, 0.15, 0)
