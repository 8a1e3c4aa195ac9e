"""Read and write the ingest outputs; resolve a manifest row to the input files it stands for.

Ingest writes three files into its output folder:

- ``manifest.csv``: one row per accepted item, columns ``MANIFEST_COLUMNS``:
  ``id`` (salted hash, stable for a given salt and input layout), ``path`` (relative to the input root:
  the file, or for a DICOM series the folder that holds its files), ``kind`` (``volume`` | ``image``),
  ``format`` (``dicom`` | ``nifti`` | ``png`` | ``jpeg`` | ``bmp`` | ``tiff``), ``label`` (class name),
  ``patient`` (salted hash), ``modality`` (DICOM Modality, or empty), ``shape`` (channel-first array
  shape as :func:`pipeline.data.loaders.load_item` returns it, ``x``-joined, e.g. ``1x16x16x4`` for a
  volume (C, X, Y, Z), ``3x64x48`` for an RGB image (C, X, Y)), ``spacing`` (mm per spatial axis,
  ``x``-joined), ``given_split`` (``train`` / ``test`` when the source layout fixes one, else empty),
  ``warnings`` (`` | ``-joined, empty if none), ``mask`` (mask file relative to the input root, or empty);
  for DICOM also ``transfer_syntax``, ``rescale`` (``slope,intercept`` applied by the loader, ``varies``
  when slices differ) and ``photometric`` (``MONOCHROME1`` items are inverted by the loader).
- ``rejected.csv``: ``path``, ``reason``: one row per input file ingest could not use (each file of a
  rejected series on its own row); a DICOM SEG used as a series' mask is that row's ``mask``.
- ``ingest.json``: ``input_root`` (relative to the manifest's folder, absolute only when no relative path
  exists), ``layout``, ``demo_salt`` and ``files``: for items made of several files (DICOM series) the
  files relative to the input root, in slice order.

Typical use by a later stage::

    rows = read_manifest(manifest_csv)
    for row in rows:
        files = item_files(manifest_csv, row)      # absolute paths, slice order for a DICOM series
        image = load_item(manifest_csv, row)        # pipeline.data.loaders: float32 channel-first + affine
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pipeline.atomic import atomic_open, write_json

MANIFEST_NAME = "manifest.csv"
REJECTED_NAME = "rejected.csv"
INFO_NAME = "ingest.json"
MANIFEST_COLUMNS: tuple[str, ...] = (
    "id", "path", "kind", "format", "label", "patient", "modality",
    "shape", "spacing", "given_split", "warnings", "mask", "transfer_syntax", "rescale", "photometric",
)
REJECTED_COLUMNS: tuple[str, ...] = ("path", "reason")
KINDS = ("volume", "image")
WARNING_SEPARATOR = " | "


@dataclass(frozen=True)
class ManifestRow:
    """One accepted item. ``shape``/``spacing`` are tuples; ``warnings`` a tuple of messages."""

    id: str
    path: str
    kind: str
    format: str
    label: str
    patient: str
    modality: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    given_split: str
    warnings: tuple[str, ...]
    mask: str
    transfer_syntax: str = ""
    rescale: str = ""
    photometric: str = ""

    def to_csv(self) -> dict[str, str]:
        """The row as CSV strings, keyed by ``MANIFEST_COLUMNS``."""
        values = asdict(self)
        values["shape"] = "x".join(str(n) for n in self.shape)
        values["spacing"] = "x".join(f"{s:.6g}" for s in self.spacing)
        values["warnings"] = WARNING_SEPARATOR.join(self.warnings)
        return {name: str(values[name]) for name in MANIFEST_COLUMNS}

    @classmethod
    def from_csv(cls, record: dict[str, str], where: str) -> ManifestRow:
        """Parse one CSV record; ``where`` (file and line) names the place in errors."""
        try:
            values: dict[str, object] = {f.name: record[f.name] or "" for f in fields(cls)}
            values["shape"] = tuple(int(n) for n in record["shape"].split("x"))
            values["spacing"] = tuple(float(s) for s in record["spacing"].split("x"))
        except (KeyError, ValueError) as err:
            raise ValueError(f"{where}: malformed manifest row ({err})") from err
        values["warnings"] = tuple(w for w in record["warnings"].split(WARNING_SEPARATOR) if w)
        if values["kind"] not in KINDS:
            raise ValueError(f"{where}: kind '{values['kind']}' is not one of {KINDS}")
        return cls(**values)  # type: ignore[arg-type]


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """All rows of a ``manifest.csv``; ValueError naming the file for a missing column or bad row."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: manifest not found (run `python -m pipeline ingest` first)")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing manifest columns {missing}")
        return [ManifestRow.from_csv(rec, f"{path}:{n + 2}") for n, rec in enumerate(reader)]


def write_csv(path: Path, columns: Iterable[str], records: Iterable[dict[str, str]]) -> None:
    """Write ``records`` (dicts keyed by ``columns``) as a UTF-8 CSV with a header, atomically
    (:mod:`pipeline.atomic`: the previous file or the new one, never a file cut short)."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)


def write_outputs(
    output_dir: Path,
    rows: list[ManifestRow],
    rejected: list[tuple[str, str]],
    info: dict[str, object],
) -> None:
    """Write ``manifest.csv``, ``rejected.csv`` and ``ingest.json`` into ``output_dir``, each atomically. The
    previous manifest is removed first and the new one written last, so a failure in between leaves no
    manifest (a later stage then says to run ingest) rather than a manifest beside another run's files."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / MANIFEST_NAME).unlink(missing_ok=True)
    write_csv(output_dir / REJECTED_NAME, REJECTED_COLUMNS, ({"path": p, "reason": r} for p, r in rejected))
    write_json(output_dir / INFO_NAME, info, indent=1, sort_keys=True)
    write_csv(output_dir / MANIFEST_NAME, MANIFEST_COLUMNS, (row.to_csv() for row in rows))


def read_info(manifest_path: str | os.PathLike) -> dict:
    """The ``ingest.json`` written beside ``manifest_path`` (parsed once per version of the file)."""
    info_path = Path(manifest_path).parent.resolve() / INFO_NAME
    if not info_path.is_file():
        raise ValueError(f"{info_path}: not found; it is written by ingest beside {MANIFEST_NAME}")
    status = info_path.stat()
    return _parse_info(str(info_path), status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=4)
def _parse_info(path: str, mtime_ns: int, size: int) -> dict:
    """Parsed ``ingest.json``; the modification time and size in the cache key catch a rewrite."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def input_root(manifest_path: str | os.PathLike) -> Path:
    """Absolute input folder the manifest's paths are relative to."""
    root = Path(read_info(manifest_path)["input_root"])
    return (root if root.is_absolute() else Path(manifest_path).parent / root).resolve()


def item_files(manifest_path: str | os.PathLike, row: ManifestRow) -> list[Path]:
    """Absolute paths of the files making ``row`` (slice order for a DICOM series); ValueError if gone."""
    info = read_info(manifest_path)
    root = input_root(manifest_path)
    relative = info.get("files", {}).get(row.id, [row.path])
    paths = [root / name for name in relative]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"item {row.id} ({row.path}): input files missing since ingest: {missing[:3]}")
    return paths


def mask_file(manifest_path: str | os.PathLike, row: ManifestRow) -> Path | None:
    """Absolute path of the item's mask, or None when it has none."""
    if not row.mask:
        return None
    path = input_root(manifest_path) / row.mask
    if not path.is_file():
        raise ValueError(f"item {row.id}: mask {row.mask} missing since ingest")
    return path
