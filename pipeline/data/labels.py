"""Where labels come from: a labels CSV, class folders, the Kaggle Brain Tumor MRI or the HAM10000 layout.

:func:`detect_layout` picks the source (in this order of precedence: ``--labels``, ``labels.csv`` at the
input root, ``HAM10000_metadata.csv``, ``Training/`` + ``Testing/`` class folders, plain class folders). Each
source answers :meth:`LabelSource.lookup` for one item with a :class:`LabelInfo`, or raises
:class:`NoLabel` with the reason, and lists in ``skip`` the files that are not images (label tables, masks).
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipeline.data.discovery import walk

BRAIN_TUMOR_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
BRAIN_TUMOR_SPLITS = {"training": "train", "testing": "test"}
HAM_METADATA = "HAM10000_metadata.csv"
HAM_MASK_SUFFIX = "_segmentation"
CSV_KEYS = ("path", "series_uid", "study_uid", "patient_id")


class NoLabel(ValueError):
    """The item has no usable label; the message is the reason for rejected.csv."""


@dataclass(frozen=True)
class ItemKey:
    """What a label can be looked up by. ``patient_id`` is raw (DICOM PatientID) and kept out of repr."""

    path: str
    files: tuple[str, ...]
    series_uid: str = ""
    study_uid: str = ""
    patient_id: str = field(default="", repr=False)


@dataclass(frozen=True)
class LabelInfo:
    """A label and what the layout says besides: raw patient key (to be hashed), given split, mask path."""

    label: str
    patient: str = field(default="", repr=False)
    given_split: str = ""
    mask: str = ""


class LabelSource:
    """Base: a named layout that labels items and names the non-image files to skip."""

    name = "none"

    def __init__(self) -> None:
        self.skip: set[str] = set()

    def lookup(self, key: ItemKey) -> LabelInfo:
        """The item's label; NoLabel with the reason when there is none."""
        raise NoLabel("no label: no labels CSV (--labels), class folders, Brain Tumor MRI or HAM10000 layout")

    def missing(self, root: Path) -> list[tuple[str, str]]:
        """Entries of the label table that name nothing under ``root`` (as rejected rows)."""
        return []


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Column names (stripped) and records of a CSV in UTF-8 (with or without BOM) or UTF-16 (with BOM);
    ValueError naming the file when it is neither."""
    raw = path.read_bytes()
    encoding = "utf-16" if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 or UTF-16 text (byte {err.start}): save it as a UTF-8 CSV"
                         ) from err
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    return columns, list(reader)


def _clean_relpath(value: str, where: str) -> str:
    """A relative POSIX path without ``./`` or a trailing slash; ValueError if absolute or escaping."""
    text = value.strip().replace("\\", "/")
    path = PurePosixPath(text)
    if not text or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{where}: path '{value}' must be relative to the input folder")
    return path.as_posix()


class CsvLabels(LabelSource):
    """``label`` keyed by ``path`` (file or folder, relative to the input root) or a series/study/patient id.

    Optional columns: ``patient_id`` (raw, hashed by ingest), ``mask`` (relative path), ``given_split``.
    """

    name = "labels-csv"

    def __init__(self, table: Path, root: Path) -> None:
        super().__init__()
        columns, records = read_table(table)
        self.key = next((k for k in CSV_KEYS if k in columns), None)
        if "label" not in columns or self.key is None:
            raise ValueError(f"{table}: a labels CSV needs a 'label' column and one of {CSV_KEYS}, "
                             f"found {columns}")
        self.entries: dict[str, LabelInfo] = {}
        for line, record in enumerate(records, start=2):
            self._add(record, f"{table}:{line}")
        self.used: set[str] = set()
        if table.resolve().is_relative_to(root.resolve()):
            self.skip.add(table.resolve().relative_to(root.resolve()).as_posix())

    def _add(self, record: dict[str, str], where: str) -> None:
        """Store one CSV record; ValueError for an empty key or a key listed twice."""
        raw = (record.get(self.key) or "").strip()  # type: ignore[arg-type]
        if not raw:
            raise ValueError(f"{where}: empty '{self.key}'")
        key = _clean_relpath(raw, where) if self.key == "path" else raw
        if key in self.entries:
            raise ValueError(f"{where}: '{self.key}' value listed twice")
        mask = (record.get("mask") or "").strip()
        patient = (record.get("patient_id") or "").strip()
        self.entries[key] = LabelInfo(
            label=(record.get("label") or "").strip(),
            patient=patient,
            given_split=(record.get("given_split") or "").strip(),
            mask=_clean_relpath(mask, where) if mask else "",
        )
        if mask:
            self.skip.add(self.entries[key].mask)

    def _candidates(self, key: ItemKey) -> list[str]:
        """Lookup keys for an item, most specific first."""
        if self.key == "path":
            parents = [p.as_posix() for p in PurePosixPath(key.path).parents if p.as_posix() != "."]
            return [key.path, *key.files, *parents]
        ids = {"series_uid": key.series_uid, "study_uid": key.study_uid, "patient_id": key.patient_id}
        return [ids[self.key]]

    def lookup(self, key: ItemKey) -> LabelInfo:
        for candidate in self._candidates(key):
            if candidate and candidate in self.entries:
                self.used.add(candidate)
                info = self.entries[candidate]
                if not info.label:
                    raise NoLabel("no label: its row in the labels CSV has an empty 'label'")
                return info
        raise NoLabel(f"no label: not listed in the labels CSV (by '{self.key}')")

    def missing(self, root: Path) -> list[tuple[str, str]]:
        if self.key != "path":
            return []
        return [(p, "listed in the labels CSV but no such file or folder in the input")
                for p in sorted(self.entries) if not (root / p).exists()]


class FolderLabels(LabelSource):
    """The class is a folder: ``<root>/<class>/...`` (Brain Tumor MRI: ``<root>/<split>/<class>/...``)."""

    def __init__(self, name: str, splits: dict[str, str] | None = None) -> None:
        super().__init__()
        self.name = name
        self.splits = splits

    def lookup(self, key: ItemKey) -> LabelInfo:
        parts = PurePosixPath(key.path).parts
        depth = 2 if self.splits else 1
        if len(parts) <= depth:
            where = "<split>/<class>/" if self.splits else "<class>/"
            raise NoLabel(f"no label: the file is not inside a {where} folder")
        if self.splits is None:
            return LabelInfo(label=parts[0])
        return LabelInfo(label=parts[1], given_split=self.splits[parts[0].lower()])


class HamLabels(LabelSource):
    """HAM10000: ``image_id`` -> ``dx`` label, ``lesion_id`` as patient, ``<id>_segmentation.*`` as masks."""

    name = "ham10000"

    def __init__(self, metadata: Path, root: Path) -> None:
        super().__init__()
        columns, records = read_table(metadata)
        needed = {"image_id", "dx", "lesion_id"}
        if not needed <= set(columns):
            raise ValueError(f"{metadata}: HAM10000 metadata needs columns {sorted(needed)}")
        self.images = {r["image_id"].strip(): (r["dx"].strip(), r["lesion_id"].strip()) for r in records}
        self.skip.add(metadata.relative_to(root).as_posix())
        self.masks: dict[str, str] = {}
        for path in walk(root, set()):
            stem = path.name.split(".")[0]
            if stem.endswith(HAM_MASK_SUFFIX) and stem[: -len(HAM_MASK_SUFFIX)] in self.images:
                relpath = path.relative_to(root).as_posix()
                self.masks[stem[: -len(HAM_MASK_SUFFIX)]] = relpath
                self.skip.add(relpath)

    def lookup(self, key: ItemKey) -> LabelInfo:
        image_id = PurePosixPath(key.path).name.split(".")[0]
        if image_id not in self.images:
            raise NoLabel(f"no label: '{image_id}' is not an image_id in {HAM_METADATA}")
        label, lesion = self.images[image_id]
        return LabelInfo(label=label, patient=lesion, mask=self.masks.get(image_id, ""))


def _subdirs(folder: Path) -> dict[str, Path]:
    """Non-hidden sub-folders by lower-case name."""
    return {p.name.lower(): p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _is_brain_tumor(root: Path) -> bool:
    """``Training/`` and ``Testing/`` each holding only the four Kaggle class folders."""
    top = _subdirs(root)
    return set(BRAIN_TUMOR_SPLITS) <= set(top) and all(
        _subdirs(top[s]) and set(_subdirs(top[s])) <= set(BRAIN_TUMOR_CLASSES) for s in BRAIN_TUMOR_SPLITS
    )


def detect_layout(root: Path, labels_csv: Path | None) -> LabelSource:
    """The label source for ``root``; ValueError naming the file for a malformed label table."""
    if labels_csv is not None:
        if not labels_csv.is_file():
            raise ValueError(f"{labels_csv}: labels CSV not found")
        return CsvLabels(labels_csv, root)
    if (root / "labels.csv").is_file():
        return CsvLabels(root / "labels.csv", root)
    for folder in (root, *sorted(_subdirs(root).values())):
        if (folder / HAM_METADATA).is_file():
            return HamLabels(folder / HAM_METADATA, root)
    if _is_brain_tumor(root):
        return FolderLabels("brain-tumor-mri", BRAIN_TUMOR_SPLITS)
    if _subdirs(root):
        return FolderLabels("class-folders")
    return LabelSource()
