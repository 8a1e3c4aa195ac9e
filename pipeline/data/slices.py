"""`python -m pipeline slices`: turn the ingested volumes and 2D images into normalised 2D slices.

Every manifest item becomes float32 ``.npy`` arrays shaped (C, H, W) with values in [0, 1], listed
in ``slices.csv`` (``SLICE_COLUMNS``), so training sees one format whatever the source.

Volumes (manifest kind ``volume``) are loaded through :func:`pipeline.data.loaders.load_item` (MONAI
readers; the shared DICOM-series loader honours rescale and MONOCHROME1), reoriented to RAS with MONAI
``Orientation`` (the mask with them), optionally resampled in-plane (``--spacing``; off by default:
the slices are resized to one size later anyway, and resampling costs time), clipped to the
``--percentiles`` of the volume and scaled to [0, 1] (``np.percentile`` + MONAI
``ScaleIntensityRange``). ``slice_index`` counts axial slices from inferior to superior in the RAS
volume, so it does not depend on how the file stored them. Slices are written in radiological display
orientation (anterior at the top, the patient's right on the image's left), as 2D MRI sets store them.

Which axial slices are kept:

- a volume with a lesion mask whose label is not ``--no-lesion-class``: the slices whose lesion area
  exceeds both ``--lesion-min-fraction`` (of the slice) and ``--lesion-min-pixels``;
- a ``--no-lesion-class`` volume with a mask: slices with no lesion pixel and at least
  ``--min-foreground`` foreground, the ``--central-slices`` nearest the middle of the foreground;
- a volume without a mask: the ``--central-slices`` slices nearest the middle of the foreground
  extent among those with at least ``--min-foreground`` foreground (pixels above
  ``--foreground-threshold`` after normalisation). A lesion off the centre may be missed: give masks.

At most ``--max-per-volume`` slices are kept per volume, evenly spread over the candidates. 2D
images (kind ``image``) pass through as one slice: grayscale (also grayscale saved as RGB, as in many
public MRI sets: channels within ``GRAY_TOLERANCE``) as 1 channel, scaled to [0, 1] with the same
percentile clipping; colour RGB as 3 channels divided by the type's maximum (255 for 8-bit), which
keeps colours (and so ImageNet statistics) meaningful. Masks are not used for 2D images.

``--size N`` resizes every slice (longest side N, aspect kept, zero-padded to N x N; default: keep the
size; the demo uses it to stay small). Output is deterministic for the same input.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Orientationd,
    Resize,
    ScaleIntensityRange,
    Spacingd,
    SpatialPad,
)
from tqdm import tqdm

from pipeline.atomic import atomic_path, check_writable, write_json
from pipeline.data.loaders import error_line, load_item, load_mask
from pipeline.data.manifest import ManifestRow, input_root, mask_file, read_manifest, write_csv
from pipeline.data.parallel import map_in_order, one_torch_thread
from pipeline.data.slice_table import SLICE_COLUMNS

SKIPPED_COLUMNS: tuple[str, ...] = ("source_id", "path", "reason")
SLICES_CSV, SUMMARY_JSON, SKIPPED_CSV, ARRAY_DIR = "slices.csv", "slices.json", "skipped.csv", "slices"
NO_PATIENT_WARNING = "no patient id"
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
GRAY_TOLERANCE = 2 / 255  # RGB channels this close (fraction of full scale) are grayscale stored as RGB


@dataclass(frozen=True)
class SliceSettings:
    """Every knob of slice extraction (see the module docstring); the CLI exposes each one."""

    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    spacing: float | None = None
    size: int | None = None
    no_lesion_class: str = "notumor"
    lesion_min_fraction: float = 0.005
    lesion_min_pixels: int = 0
    central_slices: int = 5
    min_foreground: float = 0.1
    foreground_threshold: float = 0.05
    max_per_volume: int = 8

    def check(self) -> None:
        """ValueError naming the option for an out-of-range setting."""
        if not 0.0 <= self.lower_percentile < self.upper_percentile <= 100.0:
            raise ValueError(
                f"--percentiles must satisfy 0 <= low < high <= 100, got "
                f"{self.lower_percentile} {self.upper_percentile}"
            )
        for option, value in (("--spacing", self.spacing), ("--size", self.size)):
            if value is not None and value <= 0:
                raise ValueError(f"{option} must be positive, got {value}")
        for option, value in (
            ("--lesion-min-fraction", self.lesion_min_fraction),
            ("--min-foreground", self.min_foreground),
            ("--foreground-threshold", self.foreground_threshold),
        ):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{option} must be in [0, 1), got {value}")
        for option, value in (
            ("--central-slices", self.central_slices),
            ("--max-per-volume", self.max_per_volume),
        ):
            if value < 1:
                raise ValueError(f"{option} must be at least 1, got {value}")
        if self.lesion_min_pixels < 0:
            raise ValueError(f"--lesion-min-pixels must be >= 0, got {self.lesion_min_pixels}")


class SkipItem(Exception):
    """An item that yields no slice; the message is the reason written to skipped.csv."""


def _spread(candidates: list[int], cap: int) -> list[int]:
    """At most ``cap`` of the sorted ``candidates``, evenly spread over them."""
    if len(candidates) <= cap:
        return candidates
    picks = np.linspace(0, len(candidates) - 1, cap).round().astype(int)
    return [candidates[i] for i in picks]


def _central(candidates: list[int], count: int) -> list[int]:
    """The ``count`` candidates nearest the middle of the candidates' extent, in index order."""
    middle = (candidates[0] + candidates[-1]) / 2
    return sorted(sorted(candidates, key=lambda z: (abs(z - middle), z))[:count])


def select_slices(
    volume: np.ndarray, mask: np.ndarray | None, label: str, settings: SliceSettings
) -> list[int]:
    """Axial indices (last axis) of ``volume`` (C, X, Y, Z) in [0, 1] to keep; SkipItem if none.

    ``mask`` (X, Y, Z), nonzero on the lesion, or None.
    """
    area = volume.shape[1] * volume.shape[2]
    foreground = (volume.max(axis=0) > settings.foreground_threshold).sum(axis=(0, 1)) / area
    has_tissue = foreground >= settings.min_foreground
    cap = settings.max_per_volume
    if mask is not None and label != settings.no_lesion_class:
        lesion = (mask > 0).sum(axis=(0, 1))
        keep = (lesion > settings.lesion_min_fraction * area) & (lesion > settings.lesion_min_pixels)
        chosen = _spread(np.flatnonzero(keep).tolist(), cap)
        if not chosen:
            raise SkipItem(
                f"no slice has a lesion area above {settings.lesion_min_fraction} of the slice and "
                f"{settings.lesion_min_pixels} pixels"
            )
        return chosen
    if mask is not None:
        has_tissue &= (mask > 0).sum(axis=(0, 1)) == 0
    candidates = np.flatnonzero(has_tissue).tolist()
    if not candidates:
        raise SkipItem(
            f"no {'lesion-free ' if mask is not None else ''}slice has {settings.min_foreground} foreground "
            f"(pixels above {settings.foreground_threshold})"
        )
    return _spread(_central(candidates, settings.central_slices), cap)


def _percentile_scale(image: torch.Tensor | np.ndarray, settings: SliceSettings) -> np.ndarray:
    """Clip ``image`` to its percentiles and scale to [0, 1] (float32 numpy).

    The percentiles come from ``np.percentile`` (linear-time selection): MONAI's
    ``ScaleIntensityRangePercentiles`` uses ``torch.quantile``, which sorts and took 8x longer here.
    """
    array = np.asarray(torch.as_tensor(image), dtype=np.float32)
    low, high = np.percentile(array, (settings.lower_percentile, settings.upper_percentile))
    scale = ScaleIntensityRange(a_min=float(low), a_max=float(high), b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(scale(array), dtype=np.float32)


def _finish_slice(image: torch.Tensor | np.ndarray, settings: SliceSettings) -> np.ndarray:
    """(C, H, W) tensor -> float32 array, resized to ``settings.size`` if set."""
    if settings.size is not None:
        image = Resize(spatial_size=settings.size, size_mode="longest", mode="area")(image)
        image = SpatialPad(spatial_size=(settings.size, settings.size))(image)
    return np.ascontiguousarray(torch.as_tensor(image).numpy(), dtype=np.float32).clip(0.0, 1.0)


def volume_slices(
    image: MetaTensor, mask: MetaTensor | None, label: str, settings: SliceSettings
) -> Iterator[tuple[int, np.ndarray]]:
    """(slice index, (C, H, W) array) for each kept axial slice of a channel-first volume + affine."""
    data = {"image": image} if mask is None else {"image": image, "mask": mask}
    keys = list(data)
    data = Orientationd(keys=keys, axcodes="RAS", labels=RAS_LABELS)(data)
    if settings.spacing is not None:
        modes = ["bilinear", "nearest"][: len(keys)]
        data = Spacingd(keys=keys, pixdim=(settings.spacing, settings.spacing, 0.0), mode=modes)(data)
    array = _percentile_scale(data["image"], settings)
    mask_array = None
    if mask is not None:
        mask_array = torch.as_tensor(data["mask"]).numpy()[0]
        if mask_array.shape != array.shape[1:]:
            raise SkipItem(f"mask grid {mask_array.shape} differs from the image grid {array.shape[1:]}")
    for z in select_slices(array, mask_array, label, settings):
        # RAS (x: right, y: anterior) -> display rows from anterior, columns from the patient's right
        axial = torch.from_numpy(array[..., z]).flip(1, 2).transpose(1, 2)
        yield z, _finish_slice(axial, settings)


def image_slice(image: torch.Tensor, settings: SliceSettings) -> np.ndarray:
    """One (C, H, W) slice from a 2D image loaded channel-first as (C, X=columns, Y=rows)."""
    pixels = torch.as_tensor(image).float().transpose(1, 2)
    if pixels.shape[0] == 3:
        max_value = float(pixels.max())
        scale = 255.0 if max_value <= 255 else 65535.0 if max_value <= 65535 else max_value
        if float((pixels - pixels[:1]).abs().max()) > GRAY_TOLERANCE * scale:
            return _finish_slice(pixels / scale, settings)
        pixels = pixels[:1]
    if pixels.shape[0] != 1:
        raise SkipItem(f"a 2D image needs 1 (grayscale) or 3 (RGB) channels, got {pixels.shape[0]}")
    return _finish_slice(_percentile_scale(pixels, settings), settings)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _item_slices(manifest: Path, row: ManifestRow, settings: SliceSettings) -> list[tuple[int, np.ndarray]]:
    try:
        image = load_item(manifest, row)
        mask_path = mask_file(manifest, row) if row.kind == "volume" else None
        mask = load_mask(mask_path) if mask_path else None
    except Exception as err:  # readers raise many types (nibabel, pydicom, PIL); the item is unusable
        raise SkipItem(f"failed to load: {error_line(err)}") from err
    try:
        if row.kind == "image":
            return [(0, image_slice(image, settings))]
        return list(volume_slices(image, mask, row.label, settings))
    except SkipItem:
        raise
    except Exception as err:  # e.g. MONAI cannot orient a singular affine: this item only is unusable
        raise SkipItem(f"failed to slice: {error_line(err)}") from err


def _prepare_output(output: Path) -> Path:
    """Create ``output`` or clear a previous run of this command in it; refuse any other content."""
    ours = {SLICES_CSV, SUMMARY_JSON, SKIPPED_CSV, ARRAY_DIR}
    if output.exists():
        if not output.is_dir():
            raise ValueError(f"--output {output} exists and is not a folder")
        foreign = sorted(p.name for p in output.iterdir() if p.name not in ours)
        arrays = output / ARRAY_DIR
        if arrays.is_dir():
            foreign += sorted(f"{ARRAY_DIR}/{p.name}" for p in arrays.iterdir() if p.suffix != ".npy")
        if foreign:
            raise ValueError(f"--output {output} holds files this command did not write: {foreign[:5]}")
        for table in (SLICES_CSV, SUMMARY_JSON, SKIPPED_CSV):  # no table may outlive the arrays it lists
            (output / table).unlink(missing_ok=True)
        shutil.rmtree(arrays, ignore_errors=True)
    (output / ARRAY_DIR).mkdir(parents=True, exist_ok=True)
    return output / ARRAY_DIR


def _process_item(
    manifest: Path, arrays: Path, settings: SliceSettings, row: ManifestRow
) -> tuple[list[dict[str, str]], dict[str, str] | None]:
    """Slice one item and save its arrays: (slices.csv records, None) or ([], skipped.csv record)."""
    try:
        slices = _item_slices(manifest, row, settings)
    except SkipItem as err:
        return [], {"source_id": row.id, "path": row.path, "reason": str(err)}
    patient = "" if any(NO_PATIENT_WARNING in w for w in row.warnings) else row.patient
    records = []
    for index, array in slices:
        slice_id = f"{_safe_name(row.id)}_{index:04d}"
        with atomic_path(arrays / f"{slice_id}.npy") as temporary:
            np.save(temporary, array)
        records.append(
            {
                "slice_id": slice_id,
                "path": f"{ARRAY_DIR}/{slice_id}.npy",
                "source_id": row.id,
                "patient": patient,
                "label": row.label,
                "slice_index": str(index),
                "given_split": row.given_split,
                "modality": row.modality,
            }
        )
    return records, None


def extract_slices(
    manifest: Path, output: Path, settings: SliceSettings, progress: bool = True, workers: int = 0
) -> dict:
    """Write slices, slices.csv, skipped.csv and slices.json for ``manifest``; return the summary.

    ``workers`` > 0 slices items in that many processes; the output is the same either way.
    """
    settings.check()
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    manifest, output = Path(manifest), check_writable(output)
    rows = sorted(read_manifest(manifest), key=lambda r: r.id)
    root = input_root(manifest)  # ValueError naming ingest.json when it is missing
    if not root.is_dir():
        raise ValueError(f"{manifest}: its input folder {root} (from ingest.json) does not exist")
    work = functools.partial(_process_item, manifest, _prepare_output(output), settings)
    records: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []
    used: Counter = Counter()
    results = map_in_order(work, rows, workers, initializer=one_torch_thread)
    bar = tqdm(results, total=len(rows), desc="slices", unit="item", disable=not progress, file=sys.stderr)
    try:
        for row, (item_records, skip) in zip(rows, bar, strict=True):
            if skip is not None:
                skipped.append(skip)
                continue
            used[row.kind] += 1
            records += item_records
    except BaseException:  # the stage itself failed (not one item): leave no arrays without a table
        shutil.rmtree(output / ARRAY_DIR, ignore_errors=True)
        raise
    write_csv(output / SKIPPED_CSV, SKIPPED_COLUMNS, skipped)
    write_csv(output / SLICES_CSV, SLICE_COLUMNS, records)
    summary = {
        "manifest": os.path.relpath(manifest.resolve(), output.resolve()),
        "settings": asdict(settings),
        "slices_per_class": dict(sorted(Counter(r["label"] for r in records).items())),
        "volumes_used": used["volume"],
        "images_used": used["image"],
        "skipped": len(skipped),
        "slices": len(records),
    }
    write_json(output / SUMMARY_JSON, summary, indent=1)
    return summary


def build_parser() -> argparse.ArgumentParser:
    defaults = SliceSettings()
    parser = argparse.ArgumentParser(
        prog="python -m pipeline slices",
        description="Extract normalised 2D slices (float32 .npy, (C, H, W), values in [0, 1]) from the items "
        "of an ingest manifest. Writes DIR/slices/*.npy, DIR/slices.csv, DIR/slices.json (summary) and "
        "DIR/skipped.csv (items that gave no slice, with the reason).",
        epilog="Slice selection: a volume with a lesion mask keeps the axial slices whose lesion area "
        "exceeds --lesion-min-fraction and --lesion-min-pixels (for the --no-lesion-class: the lesion-free "
        "slices nearest the middle); a volume without a mask keeps the --central-slices slices nearest the "
        "middle that have --min-foreground; at most --max-per-volume per volume. A 2D image gives one slice "
        "(grayscale: 1 channel, RGB: 3). Volumes are reoriented to RAS first and normalised per volume.",
    )
    parser.add_argument(
        "--manifest", required=True, type=Path, help="manifest.csv written by `pipeline ingest`"
    )
    parser.add_argument("--output", required=True, type=Path, help="output folder DIR")
    parser.add_argument(
        "--percentiles",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        default=(defaults.lower_percentile, defaults.upper_percentile),
        help="intensity percentiles clipped to 0 and 1, per volume or grayscale image (default 0.5 99.5)",
    )
    parser.add_argument(
        "--spacing",
        type=float,
        default=None,
        help="resample volumes in-plane to this spacing in mm before slicing (default: keep the spacing)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="resize every slice to SIZE x SIZE (longest side, aspect kept, zero padding; default: keep)",
    )
    parser.add_argument(
        "--no-lesion-class",
        default=defaults.no_lesion_class,
        help=f"label of the class without lesion (default {defaults.no_lesion_class})",
    )
    parser.add_argument(
        "--lesion-min-fraction",
        type=float,
        default=defaults.lesion_min_fraction,
        help="with a mask: keep slices whose lesion area exceeds this fraction of the slice "
        f"(default {defaults.lesion_min_fraction})",
    )
    parser.add_argument(
        "--lesion-min-pixels",
        type=int,
        default=defaults.lesion_min_pixels,
        help=f"with a mask: keep slices whose lesion area also exceeds this many pixels "
        f"(default {defaults.lesion_min_pixels})",
    )
    parser.add_argument(
        "--central-slices",
        type=int,
        default=defaults.central_slices,
        help="without a mask (or for the no-lesion class): number of central slices with enough "
        f"foreground to keep (default {defaults.central_slices})",
    )
    parser.add_argument(
        "--min-foreground",
        type=float,
        default=defaults.min_foreground,
        help=f"least foreground fraction of a kept non-lesion slice (default {defaults.min_foreground})",
    )
    parser.add_argument(
        "--foreground-threshold",
        type=float,
        default=defaults.foreground_threshold,
        help="normalised intensity above which a pixel is foreground "
        f"(default {defaults.foreground_threshold})",
    )
    parser.add_argument(
        "--max-per-volume",
        type=int,
        default=defaults.max_per_volume,
        help=f"most slices kept per volume, evenly spread (default {defaults.max_per_volume})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="slice items in this many processes (default 0: in this process); the output is the same",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str]) -> int:
    """CLI entry point; returns the exit code (2 for bad input or when no slice was written)."""
    args = build_parser().parse_args(argv)
    settings = SliceSettings(
        lower_percentile=args.percentiles[0],
        upper_percentile=args.percentiles[1],
        spacing=args.spacing,
        size=args.size,
        no_lesion_class=args.no_lesion_class,
        lesion_min_fraction=args.lesion_min_fraction,
        lesion_min_pixels=args.lesion_min_pixels,
        central_slices=args.central_slices,
        min_foreground=args.min_foreground,
        foreground_threshold=args.foreground_threshold,
        max_per_volume=args.max_per_volume,
    )
    try:
        summary = extract_slices(
            args.manifest, args.output, settings, progress=not args.no_progress, workers=args.workers
        )
    except ValueError as err:
        print(f"slices: error: {err}", file=sys.stderr)
        return 2
    per_class = ", ".join(f"{k} {v}" for k, v in summary["slices_per_class"].items()) or "none"
    print(
        f"slices: {summary['slices']} ({per_class}) from {summary['volumes_used']} volumes and "
        f"{summary['images_used']} images; {summary['skipped']} skipped (see {args.output / SKIPPED_CSV})"
    )
    if summary["slices"] == 0:
        print(f"slices: error: no slice extracted from {args.manifest}", file=sys.stderr)
        return 2
    return 0
