"""The slice table (``slices.csv`` and the split CSVs built on it): its columns and a checked reader.

Kept apart from :mod:`pipeline.data.slices` so that reading a table (the split command, the datasets)
needs only pandas, not the image stack of the slicing step.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

SLICE_COLUMNS: tuple[str, ...] = (
    "slice_id",
    "path",
    "source_id",
    "patient",
    "label",
    "slice_index",
    "given_split",
    "modality",
)


def read_slice_table(path: str | os.PathLike, extra_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A slices.csv (or a split CSV: pass ``("split",)``) as strings; ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable CSV ({err})") from err
    missing = [c for c in (*SLICE_COLUMNS, *extra_columns) if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return table
