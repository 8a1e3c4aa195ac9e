"""Class probabilities for new images: the inputs of the bundles' ``inference.json`` and :func:`predict`,
its Python entry.

Input is a file or a folder of DICOM series, NIfTI volumes or 2D images. Files are recognised by content
and loaded by the data layer (``pipeline.data``: the same readers, orientation, intensity scaling and
slice selection as ingest + slices) into :class:`InferenceInputs`, whose slices a MONAI ``Dataset`` takes
through the bundle's evaluation transforms to a ``SupervisedEvaluator`` (the inferer and output handlers
of :mod:`pipeline.bundle.predictions`). Output: ``predictions.csv`` (one row per image or volume slice),
``predictions.json`` (per input: its slices and the mean of their probabilities), ``rejected.csv`` and,
optionally, Grad-CAM overlays as PNGs.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from torch import nn

from pipeline.atomic import check_writable
from pipeline.bundle.predictions import EngineInferer, GradCAMOverlays, PredictionWriter
from pipeline.data.dicom import DicomError
from pipeline.data.discovery import Found, Unreadable, classify, printable, walk
from pipeline.data.ingest import Candidate, group_dicom, screen_dicom
from pipeline.data.limits import MAX_ITEM_BYTES
from pipeline.data.loaders import LoadError, error_line, kind_of, read_item
from pipeline.data.manifest import MANIFEST_NAME, input_root
from pipeline.data.privacy import HASH_CHARS
from pipeline.data.slices import SkipItem, SliceSettings, image_slice, volume_slices
from pipeline.data.transforms import eval_transforms
from pipeline.demo.cohort import is_demo_cohort
from pipeline.digest import file_sha256
from pipeline.engines import AUTO

REJECTIONS = (Unreadable, LoadError, DicomError, SkipItem)


# ITU-R BT.601 luma weights (PIL's RGB -> L conversion): how a colour image becomes a grey one for a
# 1-channel model; the conversion is recorded per input in predictions.json.
LUMINANCE = (0.299, 0.587, 0.114)
LUMINANCE_NOTE = ("RGB converted to grey for a 1-channel model: 0.299 R + 0.587 G + 0.114 B "
                  "(ITU-R BT.601 luma)")
SEG_NOT_IMAGE = "DICOM SEG: a mask, not an image to classify"
DEMO_WARNING = ("this model was trained on the synthetic demo cohort: its predictions on real images mean "
                "nothing")


@dataclass(frozen=True)
class InputItem:
    """One image or volume to classify: its name (path relative to the input root; a DICOM series is
    its folder, numbered when a folder holds several; the input folder's own name when it is the series
    folder), format and files."""

    name: str
    format: str
    files: tuple[Path, ...]


def _names(candidates: list[Candidate], root: Path) -> list[str]:
    """Display names of candidates: relative path (the root folder's own name for ``.``), with the
    acquisition of a split series, numbered when one folder holds several series."""
    seen: dict[str, int] = {}
    names = []
    for candidate in candidates:
        name = root.name if candidate.relpath == "." else candidate.relpath
        name += f"#{candidate.part}" if candidate.part else ""
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#series{seen[name]}")
    return names


def find_inputs(path: str | Path, max_item_bytes: int = MAX_ITEM_BYTES
                ) -> tuple[list[InputItem], list[tuple[str, str]]]:
    """The items under ``path`` (a file or a folder; DICOM files validated one by one, de-duplicated and
    grouped by series as ingest does; links leaving the folder and headers claiming more than
    ``max_item_bytes`` decoded rejected unread) and the files that cannot be used, as (relative path,
    reason). FileNotFoundError when ``path`` does not exist."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--input {path} does not exist")
    if not path.is_dir():
        path = path.resolve()  # a file named on its own is read wherever its link points
    root = path if path.is_dir() else path.parent
    files = list(walk(root, set())) if path.is_dir() else [path]
    found: list[Found] = []
    rejected: list[tuple[str, str]] = []
    for file in files:
        try:
            found.append(classify(file, root, max_item_bytes))
        except Unreadable as error:
            rejected.append((printable(file.relative_to(root).as_posix()), str(error)))
    dicom, segmentations, screened, dropped = screen_dicom(found)
    rejected += screened + [(f.relpath, SEG_NOT_IMAGE) for f in segmentations]
    candidates, refused = group_dicom(dicom, dropped)
    candidates += [Candidate(f.relpath, f.format, [f]) for f in found if f.dicom is None]
    candidates.sort(key=lambda c: c.relpath)
    items = [InputItem(name, c.format, tuple(f.path for f in c.found))
             for name, c in zip(_names(candidates, root), candidates, strict=True)]
    return sorted(items, key=lambda item: item.name), sorted(rejected + refused)


def to_channels(array: np.ndarray, in_channels: int) -> tuple[np.ndarray, str]:
    """A (C, H, W) slice with the model's channel count, and how it was converted ("" when it was not):
    grey is repeated by the evaluation transforms; RGB becomes grey by :data:`LUMINANCE` for a 1-channel
    model. SkipItem for any other channel count."""
    if array.shape[0] == in_channels or array.shape[0] == 1:
        return array, ""
    if array.shape[0] == 3 and in_channels == 1:
        grey = np.tensordot(np.asarray(LUMINANCE, dtype=np.float32), array, axes=1)[None]
        return grey.astype(np.float32), LUMINANCE_NOTE
    raise SkipItem(f"{array.shape[0]} channels and the model takes {in_channels}: no conversion defined")


def item_slices(item: InputItem, settings: SliceSettings) -> tuple[str, list[tuple[int, np.ndarray]]]:
    """("volume" or "image", [(slice index, (C, H, W) float32 in [0, 1])]) of ``item``: the central tissue
    slices of a volume, the image itself otherwise (the ``slices`` stage's processing)."""
    image = read_item(item.files, item.format)
    kind = kind_of(image)
    if kind == "volume":
        return kind, list(volume_slices(image, None, "", settings))
    return kind, [(0, image_slice(image, settings))]


def item_id(files: Sequence[Path]) -> str:
    """An input's id in the outputs that get shared (Grad-CAM file names and titles): the first 16 hex
    digits of the SHA-256 of its files' SHA-256s. It holds nothing of the file or folder names, and the
    same image (same bytes) always gets the same id; predictions.csv / .json map it to the input."""
    digest = hashlib.sha256("".join(file_sha256(file) for file in files).encode("ascii"))
    return digest.hexdigest()[:HASH_CHARS]


def model_provenance(ckpt_path: str | Path, bundle: str, profile: str, training_ingest: str | Path) -> dict:
    """What the model is, for predictions.json: checkpoint file and SHA-256, bundle, network profile and
    the training data, told from the ingest output the bundle trains on (``ingest.json``): whether its
    input folder is the synthetic demo cohort (the rule ingest's salt check uses)."""
    info_path = Path(training_ingest)
    if info_path.is_file():
        demo_cohort = is_demo_cohort(input_root(info_path.parent / MANIFEST_NAME))
        training_data = "synthetic demo cohort" if demo_cohort else "user cohort (not the demo)"
    else:
        demo_cohort, training_data = None, f"unknown: no {info_path.name} at {info_path.parent}"
    provenance = {
        "checkpoint": Path(ckpt_path).name,
        "checkpoint_sha256": file_sha256(ckpt_path),
        "bundle": bundle,
        "profile": profile,
        "trained_on_demo": demo_cohort,
        "training_data": training_data,
    }
    if demo_cohort:
        provenance["warning"] = DEMO_WARNING
    return provenance


class InferenceInputs:
    """The usable slices of every image / volume under ``input_path`` and the inputs that cannot be used.

    On creation it finds the inputs (:func:`find_inputs`), reads each one, takes the slices the ``slices``
    stage would (the central ``slices_per_volume`` of a volume, the image itself otherwise) resized to the
    network's ``image_size``, gives them the model's channel count (:func:`to_channels`) and saves them as
    .npy in a scratch folder. ``records`` holds one dict per slice (``image``: its .npy; ``input``,
    ``item``, ``format``, ``slice``, ``kind``, ``conversion``), ``data`` the items of the evaluation
    Dataset, ``rejected`` (name, reason) per input that cannot be used. ValueError when there is no input
    or nothing is usable. Attached to an engine (as an evaluator handler), it removes the scratch folder
    when the run completes or fails; :meth:`cleanup` does it directly.
    """

    def __init__(
        self,
        input_path: str | Path | None,
        image_size: int,
        in_channels: int,
        slices_per_volume: int = 5,
        max_item_bytes: int = MAX_ITEM_BYTES,
    ) -> None:
        if input_path is None:
            raise ValueError(
                "pass --input PATH: a DICOM series folder, a NIfTI volume, a 2D image or a folder of them"
            )
        items, self.rejected = find_inputs(input_path, max_item_bytes)
        self._scratch = tempfile.TemporaryDirectory(prefix="hdkd-inference-")
        try:
            self.records = self._save_slices(items, image_size, in_channels, slices_per_volume)
        except BaseException:
            self.cleanup()
            raise
        if not self.records:
            self.cleanup()
            reasons = "; ".join(f"{name}: {reason}" for name, reason in self.rejected[:5]) or "no files"
            raise ValueError(f"no usable image in {input_path}: {reasons}")

    def _save_slices(self, items: list[InputItem], image_size: int, in_channels: int,
                     slices_per_volume: int) -> list[dict[str, Any]]:
        # slices resized to the network's size as the slices stage does for training (--size), before
        # batching: a large image never reaches the evaluation transforms at full size
        settings = SliceSettings(central_slices=slices_per_volume, max_per_volume=slices_per_volume,
                                 size=image_size)
        records: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                kind, slices = item_slices(item, settings)
                converted = [to_channels(array, in_channels) for _, array in slices]
            except REJECTIONS as error:
                self.rejected.append((item.name, str(error)))
                continue
            except Exception as error:  # e.g. MONAI cannot orient a singular affine: only this input fails
                self.rejected.append((item.name, f"cannot process: {error_line(error)}"))
                continue
            ident = item_id(item.files)
            for (z, _), (array, conversion) in zip(slices, converted, strict=True):
                file = Path(self._scratch.name) / f"{index}_{z}.npy"
                np.save(file, array)
                records.append({"image": str(file), "input": item.name, "item": ident, "format": item.format,
                                "slice": z, "kind": kind, "conversion": conversion})
        return records

    @property
    def data(self) -> list[dict[str, Any]]:
        """The evaluation Dataset's items: each slice's .npy (the evaluation chain also types a "label";
        new images have none: -1, never read)."""
        return [{"image": record["image"], "label": -1} for record in self.records]

    def cleanup(self) -> None:
        """Remove the scratch folder of the slices."""
        self._scratch.cleanup()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, lambda _: self.cleanup())
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._cleanup_and_raise)

    def _cleanup_and_raise(self, engine: Engine, error: BaseException) -> None:
        self.cleanup()
        raise error


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
    provenance: dict[str, Any] | None = None,
    engine: str = AUTO,
    max_item_bytes: int = MAX_ITEM_BYTES,
) -> dict[str, Any]:
    """Classify every image / volume under ``input_path`` with ``network`` (logits out) and write the
    outputs to ``output_dir``, with the parts ``inference.json`` defines (:class:`InferenceInputs`, a MONAI
    Dataset and DataLoader, :class:`~pipeline.bundle.predictions.EngineInferer`, a SupervisedEvaluator with
    the output handlers); returns the content of predictions.json, which carries ``provenance``
    (:func:`model_provenance`) as ``model``.

    Every input that cannot be used (unreadable, not an image, a channel count the model cannot take) is a
    row of rejected.csv and the others are still classified; only when nothing is usable is it a ValueError
    naming the files and reasons. Colour images for a 1-channel model are converted by :data:`LUMINANCE`.
    ``engine`` is a ``pipeline.engines`` name or "auto" (the fastest that agrees with float32 here,
    measured once and cached). ``max_item_bytes`` bounds the decoded size of one input, read from its
    header before its data (:mod:`pipeline.data.limits`).
    """
    output = check_writable(output_dir, "--output_dir")
    inputs = InferenceInputs(input_path, image_size, in_channels, slices_per_volume, max_item_bytes)
    try:
        writer = PredictionWriter(inputs, output, class_names, provenance)
        overlays = [GradCAMOverlays(inputs, output, class_names, gradcam_layer)] if gradcam else []
        dataset = Dataset(inputs.data, eval_transforms(image_size, in_channels, imagenet_norm))
        evaluator = SupervisedEvaluator(
            device=torch.device(device),
            val_data_loader=DataLoader(dataset, batch_size=batch_size, shuffle=False),
            network=network.eval(),
            inferer=EngineInferer(engine, batch_size),
            decollate=False,
            val_handlers=[writer, *overlays, inputs],
        )
        evaluator.run()
    finally:
        inputs.cleanup()
    return writer.result
