"""Training data from a split CSV: item lists (``load_split``), cached datasets and their loaders.

``make_dataset`` returns a ``monai.data.CacheDataset``: the deterministic head of the transform chain
(load the .npy slice, resize) runs once, when the dataset is built, and only the random augmentation
runs per epoch. The slices are small (a 224 px float32 slice is 200 kB), so a full cache fits in memory
for datasets of tens of thousands of slices; ``cache_rate`` below 1 caches a part when it does not.

Pass ``worker_init_fn=loader_worker_init`` to the DataLoader over it: its workers then skip MetaTensor
bookkeeping (the chains end in plain tensors anyway), and the augmentation costs about 40 % less CPU
for the same output, which keeps the loader off the critical path on small CPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from monai.data import CacheDataset, set_track_meta
from monai.data.utils import worker_init_fn

from pipeline.data.slice_table import read_slice_table
from pipeline.data.split import SPLITS


def load_split(split_csv: str | Path, split: str, class_names: Sequence[str]) -> list[dict]:
    """The items of one split: ``{"image": absolute path, "label": class index, "patient", "source_id"}``.

    ``patient`` is the salted patient hash, or ``source:<source_id>`` when the source had no patient id.

    ValueError (naming the file) for a missing file, an unknown split name, an empty split or a label
    that is not in ``class_names``.
    """
    split_csv = Path(split_csv)
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' (expected one of {SPLITS}) for {split_csv}")
    if len(set(class_names)) != len(class_names) or not class_names:
        raise ValueError(f"class_names must be a non-empty list of distinct names, got {list(class_names)}")
    table = read_slice_table(split_csv, extra_columns=("split",))
    rows = table[table["split"] == split]
    if rows.empty:
        raise ValueError(f"{split_csv}: split '{split}' has no rows")
    unknown = sorted(set(rows["label"]) - set(class_names))
    if unknown:
        raise ValueError(f"{split_csv}: labels {unknown} are not in class_names {list(class_names)}")
    index = {name: i for i, name in enumerate(class_names)}
    root = split_csv.parent.resolve()
    return [
        {
            "image": str(root / path),
            "label": index[label],
            "patient": patient or f"source:{source}",
            "source_id": source,
        }
        for path, label, patient, source in zip(
            rows["path"], rows["label"], rows["patient"], rows["source_id"], strict=True
        )
    ]


def make_dataset(
    split_csv: str | Path,
    split: str,
    class_names: Sequence[str],
    transform: Callable,
    cache_rate: float = 1.0,
    num_workers: int | None = 0,
    progress: bool = False,
) -> CacheDataset:
    """A ``CacheDataset`` over ``load_split(split_csv, split, class_names)`` with ``transform``.

    ``num_workers`` threads fill the cache (None: one per CPU); ``progress`` shows a bar while caching.
    """
    return CacheDataset(
        data=load_split(split_csv, split, class_names),
        transform=transform,
        cache_rate=cache_rate,
        num_workers=num_workers,
        progress=progress,
    )


def loader_worker_init(worker_id: int) -> None:
    """DataLoader worker initialiser: MONAI's per-worker seeding of the random transforms, then no
    MetaTensor tracking in this worker process (identical values, less overhead)."""
    worker_init_fn(worker_id)
    set_track_meta(False)
