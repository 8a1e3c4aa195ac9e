"""`python -m pipeline split`: patient-grouped, label-stratified train/val/test split of slices.csv.

Algorithm (deterministic for a seed; our own greedy, because sklearn's StratifiedGroupKFold only
makes equal folds and cannot pin rows to a split):

1. Rows are grouped by ``patient``. A row without a patient id (the source had none, e.g. the
   Kaggle folder layout) forms a group with the other slices of its own scan/image
   (``source_id``); the report then says patient grouping was impossible for those rows.
2. A group with any row whose ``given_split`` is ``test`` goes to test whole (the source's test
   split is respected; its other rows follow so no patient sits in two splits). A group with
   ``given_split`` ``train`` may go to train or val only; other groups may go anywhere.
3. The target of split s for class c is ``fraction_s * slices_of_c``. Free groups are visited
   largest first (ties in a seeded random order) and each goes to the allowed split whose
   per-class relative squared error ``((count - target) / max(target, 1))**2`` grows least.
   Relative errors make small splits (val, test) receive each class as early as possible.
4. ``--train-fraction F`` then keeps ``round(F * n)`` (at least one) of the training patients of
   each class (a patient's class: its most frequent label) and drops the others' rows; val and
   test are untouched. The kept patients come from one seeded order per class (``--subset-seed``,
   default ``--seed``), so smaller fractions are subsets of larger ones for the same seed, and
   another subset seed draws other patients from the same train/val/test split.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import atomic_open, check_writable, write_json
from pipeline.data.slice_table import read_slice_table

SPLITS = ("train", "val", "test")
NO_PATIENT_NOTE = (
    "patient grouping impossible for {rows} rows from {sources} sources without a patient id: "
    "each scan/image is its own group, so slices of one patient may sit in two splits"
)


@dataclass
class _Group:
    """The rows of one patient (or of one source when the patient is unknown)."""

    rows: list[int] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)
    given: set[str] = field(default_factory=set)

    def allowed(self, fractions: dict[str, float]) -> tuple[str, ...]:
        if "test" in self.given:
            return ("test",)
        choices = ("train", "val") if "train" in self.given else SPLITS
        return tuple(s for s in choices if fractions[s] > 0) or ("train",)


def check_fractions(val: float, test: float, train_fraction: float = 1.0) -> None:
    """ValueError naming the option when a fraction is out of range."""
    for name, value in (("--val", val), ("--test", test)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val + test >= 1.0:
        raise ValueError(f"--val + --test must be below 1 to leave a training set, got {val} + {test}")
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"--train-fraction must be in (0, 1], got {train_fraction}")


def _groups(table: pd.DataFrame) -> dict[str, _Group]:
    groups: dict[str, _Group] = {}
    for i, (patient, source, label, given) in enumerate(
        zip(table["patient"], table["source_id"], table["label"], table["given_split"], strict=True)
    ):
        group = groups.setdefault(patient or f"source:{source}", _Group())
        group.rows.append(i)
        group.labels[label] += 1
        if given:
            group.given.add(given)
    return groups


def _cost_increase(
    counts: dict[str, Counter], targets: dict[str, Counter], split: str, group: _Group
) -> float:
    increase = 0.0
    for label, n in group.labels.items():
        target = targets[split][label]
        scale = max(target, 1.0)
        before = counts[split][label] - target
        increase += ((before + n) / scale) ** 2 - (before / scale) ** 2
    return increase


def assign_splits(table: pd.DataFrame, val: float, test: float, seed: int) -> list[str]:
    """The split name of every row of ``table`` (see the module docstring for the rules)."""
    check_fractions(val, test)
    fractions = {"train": 1.0 - val - test, "val": val, "test": test}
    totals = Counter(table["label"])
    targets = {s: Counter({c: fractions[s] * n for c, n in totals.items()}) for s in SPLITS}
    counts: dict[str, Counter] = {s: Counter() for s in SPLITS}
    groups = _groups(table)
    keys = sorted(groups)
    tie_break = np.random.default_rng(seed).permutation(len(keys))
    order = sorted(range(len(keys)), key=lambda i: (-len(groups[keys[i]].rows), tie_break[i]))
    split_of_row = [""] * len(table)
    # pinned groups (given test) first, so the free groups fill what the given split left over
    for i in sorted(order, key=lambda i: len(groups[keys[i]].allowed(fractions)) != 1):
        group = groups[keys[i]]
        allowed = group.allowed(fractions)
        best = min(allowed, key=lambda s: _cost_increase(counts, targets, s, group))
        counts[best].update(group.labels)
        for row in group.rows:
            split_of_row[row] = best
    return split_of_row


def subsample_train(table: pd.DataFrame, splits: list[str], fraction: float, seed: int) -> list[bool]:
    """Which rows to keep when only ``fraction`` of each class's training patients is used."""
    check_fractions(0.0, 0.0, fraction)
    keep = [True] * len(table)
    if fraction == 1.0:
        return keep
    train = table[[s == "train" for s in splits]]
    by_class: dict[str, list[str]] = {}
    for key, rows in _groups(train).items():
        label = sorted(rows.labels.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        by_class.setdefault(label, []).append(key)
    kept: set[str] = set()
    for label in sorted(by_class):
        keys = sorted(by_class[label])
        order = np.random.default_rng([seed, len(label), *label.encode()]).permutation(len(keys))
        n_keep = max(1, round(fraction * len(keys)))
        kept.update(keys[j] for j in order[:n_keep])
    for i, (patient, source, split) in enumerate(
        zip(table["patient"], table["source_id"], splits, strict=True)
    ):
        if split == "train" and (patient or f"source:{source}") not in kept:
            keep[i] = False
    return keep


def _count_table(table: pd.DataFrame) -> dict[str, dict[str, dict[str, int]]]:
    group_key = table["patient"].where(table["patient"] != "", "source:" + table["source_id"])
    out: dict[str, dict[str, dict[str, int]]] = {"slices": {}, "patients": {}}
    for split in SPLITS:
        part = table[table["split"] == split]
        out["slices"][split] = {k: int(v) for k, v in sorted(Counter(part["label"]).items())}
        groups = group_key[part.index].groupby(part["label"]).nunique()
        out["patients"][split] = {k: int(v) for k, v in sorted(groups.items())}
    return out


def _print_table(counts: dict[str, dict[str, dict[str, int]]]) -> None:
    labels = sorted({c for per in counts["slices"].values() for c in per})
    width = max([len("class"), *map(len, labels)])
    print(f"{'class':<{width}}  " + "  ".join(f"{s + ' slices (patients)':>24}" for s in SPLITS))
    for label in labels:
        cells = [
            f"{counts['slices'][s].get(label, 0)} ({counts['patients'][s].get(label, 0)})" for s in SPLITS
        ]
        print(f"{label:<{width}}  " + "  ".join(f"{c:>24}" for c in cells))


def split_slices(
    slices_csv: Path,
    output_csv: Path,
    val: float,
    test: float,
    seed: int,
    train_fraction: float = 1.0,
    subset_seed: int | None = None,
) -> dict:
    """Split ``slices_csv`` into ``output_csv`` (+ its ``.json`` report); returns the report.
    ``subset_seed`` (default ``seed``) draws the training patients ``train_fraction`` keeps."""
    subset_seed = seed if subset_seed is None else subset_seed
    check_fractions(val, test, train_fraction)
    slices_csv, output_csv = Path(slices_csv), Path(output_csv)
    if output_csv.resolve() == slices_csv.resolve():
        raise ValueError(f"--output {output_csv} would overwrite the input --slices file")
    check_writable(output_csv.parent)
    table = read_slice_table(slices_csv)
    if table.empty:
        raise ValueError(f"{slices_csv}: no slices to split")
    bad_given = sorted(set(table["given_split"]) - {"", "train", "test"})
    if bad_given:
        raise ValueError(f"{slices_csv}: given_split values {bad_given} are not train/test/empty")
    splits = assign_splits(table, val, test, seed)
    keep = subsample_train(table, splits, train_fraction, subset_seed)
    table["split"] = splits
    moved = int(((table["given_split"] == "train") & (table["split"] == "test")).sum())
    dropped = table[[not k for k in keep]]
    table = table[keep]
    output_csv.parent.mkdir(parents=True, exist_ok=True)
    absolute = [slices_csv.parent.resolve() / p for p in table["path"]]
    table = table.assign(
        path=[Path(os.path.relpath(p, output_csv.parent.resolve())).as_posix() for p in absolute]
    )
    with atomic_open(output_csv, "w", newline="", encoding="utf-8") as handle:
        table.to_csv(handle, index=False, lineterminator="\n")

    unknown = table[table["patient"] == ""]
    report = {
        "slices_csv": os.path.relpath(slices_csv.resolve(), output_csv.parent.resolve()),
        "seed": seed,
        "val": val,
        "test": test,
        "train_fraction": train_fraction,
        "subset_seed": subset_seed,
        "patient_grouping": "by patient"
        if unknown.empty
        else NO_PATIENT_NOTE.format(rows=len(unknown), sources=unknown["source_id"].nunique()),
        "given_train_rows_moved_to_test": moved,
        "dropped_by_train_fraction": {
            "slices": len(dropped),
            "patients": int(
                dropped["patient"].where(dropped["patient"] != "", dropped["source_id"]).nunique()
            ),
        },
        **_count_table(table),
    }
    write_json(output_csv.with_suffix(".json"), report, indent=1)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline split",
        description="Patient-grouped, label-stratified train/val/test split of a slices.csv. Writes the "
        "rows plus a 'split' column to --output (paths relative to its folder) and a report "
        "(counts per class and split) to the same name with .json.",
    )
    parser.add_argument("--slices", required=True, type=Path, help="slices.csv written by `pipeline slices`")
    parser.add_argument("--output", required=True, type=Path, help="split CSV to write")
    parser.add_argument(
        "--val", type=float, default=0.15, help="validation fraction in [0, 1) (default 0.15)"
    )
    parser.add_argument(
        "--test",
        type=float,
        default=0.15,
        help="test fraction in [0, 1) (default 0.15); a source's given test split counts towards it",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for tie-breaking (default 0)")
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=1.0,
        help="keep only this fraction in (0, 1] of the training patients of each class (default 1); "
        "val and test stay the same",
    )
    parser.add_argument(
        "--subset-seed",
        type=int,
        default=None,
        help="seed of the training patients --train-fraction keeps (default: --seed); the train/val/test "
        "split itself depends on --seed only",
    )
    return parser


def main(argv: list[str]) -> int:
    """CLI entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        report = split_slices(
            args.slices, args.output, args.val, args.test, args.seed, args.train_fraction, args.subset_seed
        )
    except ValueError as err:
        print(f"split: error: {err}", file=sys.stderr)
        return 2
    _print_table(report)
    print(f"patient grouping: {report['patient_grouping']}")
    if report["given_train_rows_moved_to_test"]:
        print(f"{report['given_train_rows_moved_to_test']} given-train rows follow their patient into test")
    if args.train_fraction < 1.0:
        dropped = report["dropped_by_train_fraction"]
        print(
            f"train fraction {args.train_fraction}: dropped {dropped['patients']} patients "
            f"({dropped['slices']} slices)"
        )
    print(f"wrote {args.output} and {args.output.with_suffix('.json')}")
    return 0
