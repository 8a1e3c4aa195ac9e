"""Class probabilities for new images: what the bundles' ``inference.json`` runs.

Input is a file or a folder of DICOM series, NIfTI volumes or 2D images. Files are recognised by content
and loaded by the data layer (``pipeline.data``: the same readers, orientation, intensity scaling and
slice selection as ingest + slices), then go through the bundle's evaluation transforms. Output:
``predictions.csv`` (one row per image or volume slice), ``predictions.json`` (per input: its slices and
the mean of their probabilities), ``rejected.csv`` and, optionally, Grad-CAM overlays as PNGs.
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from monai.data import DataLoader, Dataset
from monai.visualize import GradCAM
from torch import nn

from pipeline.data.dicom import DicomError
from pipeline.data.discovery import Unreadable, classify, walk
from pipeline.data.loaders import LoadError, kind_of, load_files
from pipeline.data.slices import SkipItem, SliceSettings, image_slice, volume_slices
from pipeline.data.transforms import eval_transforms
from pipeline.engines import AUTO, select_engine
from pipeline.evaluate.plots import safe_name

logger = logging.getLogger(__name__)
REJECTIONS = (Unreadable, LoadError, DicomError, SkipItem)


@dataclass(frozen=True)
class InputItem:
    """One image or volume to classify: its name (path relative to the input root; a DICOM series is
    its folder, numbered when a folder holds several), format and files."""

    name: str
    format: str
    files: tuple[Path, ...]


def find_inputs(path: str | Path) -> tuple[list[InputItem], list[tuple[str, str]]]:
    """The items under ``path`` (a file or a folder; DICOM files grouped by series) and the files that
    are not images, as (relative path, reason). FileNotFoundError when ``path`` does not exist."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--input {path} does not exist")
    root = path if path.is_dir() else path.parent
    files = list(walk(root, set())) if path.is_dir() else [path]
    items: list[InputItem] = []
    series: dict[str, list[Path]] = {}
    series_folder: dict[str, str] = {}
    rejected: list[tuple[str, str]] = []
    for file in files:
        try:
            found = classify(file, root)
        except Unreadable as error:
            rejected.append((file.relative_to(root).as_posix(), str(error)))
            continue
        if found.dicom is None:
            items.append(InputItem(found.relpath, found.format, (file,)))
            continue
        uid = found.dicom.series_uid
        series.setdefault(uid, []).append(file)
        series_folder.setdefault(uid, Path(found.relpath).parent.as_posix())
    per_folder: dict[str, int] = {}
    for uid, members in series.items():
        folder = series_folder[uid]
        per_folder[folder] = per_folder.get(folder, 0) + 1
        name = folder if per_folder[folder] == 1 else f"{folder}#series{per_folder[folder]}"
        items.append(InputItem(name, "dicom", tuple(members)))
    return sorted(items, key=lambda item: item.name), rejected


def item_slices(item: InputItem, settings: SliceSettings) -> tuple[str, list[tuple[int, np.ndarray]]]:
    """("volume" or "image", [(slice index, (C, H, W) float32 in [0, 1])]) of ``item``: the central tissue
    slices of a volume, the image itself otherwise (the ``slices`` stage's processing)."""
    image = load_files(item.files, item.format)
    kind = kind_of(image)
    if kind == "volume":
        return kind, list(volume_slices(image, None, "", settings))
    return kind, [(0, image_slice(image, settings))]


def _save_overlay(image: np.ndarray, cam: np.ndarray, path: Path, title: str) -> None:
    """A grey slice with its Grad-CAM map (jet, semi-transparent) as a PNG."""
    figure = Figure(figsize=(3, 3), dpi=100)
    axis = figure.add_subplot()
    axis.imshow(image, cmap="gray")
    axis.imshow(cam, cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0)
    axis.set_title(title, fontsize=8)
    axis.axis("off")
    figure.savefig(path, bbox_inches="tight")


def predict(
    network: nn.Module,
    input_path: str | Path | None,
    output_dir: str | Path,
    class_names: Sequence[str],
    image_size: int,
    in_channels: int,
    imagenet_norm: bool = False,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    slices_per_volume: int = 5,
    gradcam: bool = False,
    gradcam_layer: str = "stages.2",
    engine: str = AUTO,
) -> dict[str, Any]:
    """Classify every image / volume under ``input_path`` with ``network`` (logits out) and write the
    outputs to ``output_dir``; returns the content of predictions.json.

    A single input file that cannot be used, or a folder without one usable image, is a ValueError naming
    the file(s) and the reason; unusable files in a folder are listed in rejected.csv. ``engine`` is a
    ``pipeline.engines`` name or "auto" (the fastest that agrees with float32 here, measured once and cached).
    """
    if input_path is None:
        raise ValueError(
            "pass --input PATH: a DICOM series folder, a NIfTI volume, a 2D image or a folder of them"
        )
    items, rejected = find_inputs(input_path)
    settings = SliceSettings(central_slices=slices_per_volume, max_per_volume=slices_per_volume)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    names = list(class_names)
    with tempfile.TemporaryDirectory() as scratch:
        records: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                kind, slices = item_slices(item, settings)
            except REJECTIONS as error:
                rejected.append((item.name, str(error)))
                continue
            for z, array in slices:
                file = Path(scratch) / f"{index}_{z}.npy"
                np.save(file, array)
                records.append(
                    {"image": str(file), "input": item.name, "format": item.format, "slice": z, "kind": kind}
                )
        if not records:
            reasons = "; ".join(f"{name}: {reason}" for name, reason in rejected[:5]) or "no files"
            raise ValueError(f"no usable image in {input_path}: {reasons}")
        probs, cams = _run(
            network,
            records,
            image_size,
            in_channels,
            imagenet_norm,
            device,
            batch_size,
            gradcam,
            gradcam_layer,
            engine,
        )
    result = _write(output, names, records, probs, rejected)
    if gradcam:
        folder = output / "gradcam"
        folder.mkdir(exist_ok=True)
        for record, prob, (image, cam) in zip(records, probs, cams, strict=True):
            label = names[int(prob.argmax())]
            _save_overlay(
                image,
                cam,
                folder / f"{safe_name(record['input'])}_slice{record['slice']}.png",
                f"{record['input']} [{record['slice']}]: {label} {prob.max():.2f}",
            )
    logger.info(
        "%d slices of %d inputs classified, %d rejected; written to %s",
        len(records),
        len(result["inputs"]),
        len(rejected),
        output,
    )
    return result


def _run(
    network: nn.Module,
    records: list[dict[str, Any]],
    image_size: int,
    in_channels: int,
    imagenet_norm: bool,
    device: torch.device | str,
    batch_size: int,
    gradcam: bool,
    gradcam_layer: str,
    engine: str,
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Softmax probabilities per record and, with ``gradcam``, (input image, CAM) pairs."""
    transform = eval_transforms(image_size, in_channels, imagenet_norm)
    # the evaluation chain also types a "label"; new images have none (-1, never read)
    data = [{"image": record["image"], "label": -1} for record in records]
    loader = DataLoader(Dataset(data, transform), batch_size=batch_size)
    network.eval()
    cam = GradCAM(nn_module=network, target_layers=gradcam_layer) if gradcam else None
    probs, cams = [], []
    selection = None
    for batch in loader:
        x = torch.as_tensor(batch["image"]).to(device)
        if selection is None:  # the first batch calibrates int8 and, when not cached, times the engines
            selection = select_engine(network, x, engine, batch_size)
            logger.info(selection.summary())
        probs.append(torch.softmax(selection.run(x), dim=1))
        if cam is not None:
            maps = cam(x).detach().cpu().numpy()[:, 0]
            cams += [(image[0], heat) for image, heat in zip(x.detach().cpu().numpy(), maps, strict=True)]
    return torch.cat(probs).numpy(), cams


def _write(
    output: Path,
    names: list[str],
    records: list[dict[str, Any]],
    probs: np.ndarray,
    rejected: list[tuple[str, str]],
) -> dict[str, Any]:
    """predictions.csv, predictions.json and rejected.csv; returns the JSON content."""
    columns = [f"prob_{safe_name(name)}" for name in names]
    with (output / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", "slice_index", "predicted", *columns])
        for record, prob in zip(records, probs, strict=True):
            writer.writerow([record["input"], record["slice"], names[int(prob.argmax())], *np.round(prob, 6)])
    inputs = []
    for name in dict.fromkeys(record["input"] for record in records):
        rows = [i for i, record in enumerate(records) if record["input"] == name]
        mean = probs[rows].mean(axis=0)
        first = records[rows[0]]
        inputs.append(
            {
                "input": name,
                "format": first["format"],
                "kind": first["kind"],
                "slices": [records[i]["slice"] for i in rows],
                "mean_probs": {label: float(p) for label, p in zip(names, mean, strict=True)},
                "predicted": names[int(mean.argmax())],
            }
        )
    result = {
        "class_names": names,
        "inputs": inputs,
        "rejected": [{"input": name, "reason": reason} for name, reason in rejected],
    }
    (output / "predictions.json").write_text(json.dumps(result, indent=2))
    with (output / "rejected.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", "reason"])
        writer.writerows(rejected)
    return result
