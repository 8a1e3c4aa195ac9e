"""load_split / make_dataset: item lists from a split CSV, errors, and a cached MONAI dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader
from monai.utils import set_determinism

from pipeline.data.datasets import load_split, loader_worker_init, make_dataset
from pipeline.data.manifest import write_csv
from pipeline.data.slice_table import SLICE_COLUMNS
from pipeline.data.transforms import eval_transforms, train_transforms

CLASSES = ["glioma", "notumor"]


def _split_csv(tmp_path: Path, labels: tuple[str, ...] = ("glioma", "notumor", "glioma")) -> Path:
    (tmp_path / "arrays").mkdir()
    rows = []
    for i, (label, split) in enumerate(zip(labels, ("train", "train", "val"), strict=False)):
        np.save(tmp_path / "arrays" / f"s{i}.npy", np.full((1, 20, 24), i / 4, np.float32))
        rows.append(
            {
                "slice_id": f"s{i}",
                "path": f"arrays/s{i}.npy",
                "source_id": f"src{i}",
                "patient": "" if i else "p0",
                "label": label,
                "slice_index": "0",
                "given_split": "",
                "modality": "MR",
                "split": split,
            }
        )
    path = tmp_path / "out" / "split.csv"
    path.parent.mkdir()
    for row in rows:
        row["path"] = "../" + row["path"]
    write_csv(path, (*SLICE_COLUMNS, "split"), rows)
    return path


def test_load_split_items(tmp_path: Path) -> None:
    items = load_split(_split_csv(tmp_path), "train", CLASSES)
    assert [i["label"] for i in items] == [0, 1]
    assert all(Path(i["image"]).is_absolute() and Path(i["image"]).is_file() for i in items)
    assert items[0]["patient"] == "p0" and items[0]["source_id"] == "src0"
    assert items[1]["patient"] == "source:src1"  # no patient id: the source stands in


@pytest.mark.parametrize(
    "split,classes,message",
    [
        ("holdout", CLASSES, "unknown split 'holdout'"),
        ("test", CLASSES, "split 'test' has no rows"),
        ("train", ["glioma"], r"labels \['notumor'\] are not in class_names"),
    ],
)
def test_load_split_errors(tmp_path: Path, split: str, classes: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_split(_split_csv(tmp_path), split, classes)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.csv: file not found"):
        load_split(tmp_path / "nope.csv", "train", CLASSES)


def test_cached_dataset_batches(tmp_path: Path) -> None:
    csv = _split_csv(tmp_path)
    dataset = make_dataset(csv, "train", CLASSES, eval_transforms(16, 3))
    assert isinstance(dataset, CacheDataset) and len(dataset) == 2
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["label"].tolist() == [0, 1]
    augmented = make_dataset(csv, "train", CLASSES, train_transforms(16, seed=0))
    assert not torch.equal(augmented[1]["image"], augmented[1]["image"])  # random part runs per access


def test_loader_workers_give_plain_tensors_and_are_reproducible(tmp_path: Path) -> None:
    csv = _split_csv(tmp_path)
    plain = make_dataset(csv, "train", CLASSES, eval_transforms(16))
    expected = torch.stack([plain[i]["image"] for i in range(len(plain))])
    batch = next(iter(DataLoader(plain, batch_size=2, num_workers=2, worker_init_fn=loader_worker_init)))
    assert type(batch["image"]) is torch.Tensor
    assert torch.equal(batch["image"], expected)
    augmented = make_dataset(csv, "train", CLASSES, train_transforms(16))
    runs = []
    for _ in range(2):
        set_determinism(seed=5)
        loader = DataLoader(augmented, batch_size=2, num_workers=2, worker_init_fn=loader_worker_init)
        runs.append(next(iter(loader))["image"])
    set_determinism(seed=None)
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], expected, atol=1e-3)
