"""The MONAI parts of bundle inference that run the model and write its outputs: the inferer that runs
the chosen inference engine, and the evaluator handlers that write predictions.csv / predictions.json /
rejected.csv and the Grad-CAM overlays. ``inference.json`` wires them into a ``SupervisedEvaluator``
over :class:`pipeline.bundle.inference.InferenceInputs`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from matplotlib.figure import Figure
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import CommonKeys as Keys
from monai.visualize import GradCAM
from torch import nn

from pipeline.atomic import atomic_path, write_csv, write_json
from pipeline.engines import AUTO, Selection, select_engine
from pipeline.evaluate.plots import safe_name

if TYPE_CHECKING:
    from pipeline.bundle.inference import InferenceInputs

logger = logging.getLogger(__name__)


class EngineInferer(Inferer):
    """Runs a batch through a ``pipeline.engines`` inference engine and returns its float32 logits (on
    the CPU). The engine is chosen on the first batch (``select_engine``: ``engine`` by name, or "auto",
    the fastest that agrees with float32 here, measured once on a ``batch_size`` batch and cached; the
    first batch also calibrates int8) and kept for the later ones."""

    def __init__(self, engine: str = AUTO, batch_size: int | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.batch_size = batch_size
        self.selection: Selection | None = None

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs:
            raise TypeError("EngineInferer takes no network arguments: the engines run on the images only")
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        if self.selection is None:
            self.selection = select_engine(network, x, self.engine, self.batch_size)
            logger.info(self.selection.summary())
        return self.selection.run(x).float()


def probabilities(output: dict[str, Any]) -> torch.Tensor:
    """Softmax class probabilities (CPU, float32) of an evaluator iteration's logits (``pred``)."""
    return torch.softmax(output[Keys.PRED].detach().float(), dim=1).cpu()


class PredictionWriter:
    """Evaluator handler: keeps the class probabilities of every batch and, when the run completes,
    writes predictions.csv (one row per slice), predictions.json (per input: its slices and the mean of
    their probabilities; ``provenance`` as ``model``; the rejected inputs) and rejected.csv to
    ``output_dir`` (checked writable before the inputs were read). ``result`` then holds the JSON
    content."""

    def __init__(
        self,
        inputs: InferenceInputs,
        output_dir: str | Path,
        class_names: Sequence[str],
        provenance: dict[str, Any] | None = None,
    ) -> None:
        self.inputs = inputs
        self.output = Path(output_dir)
        self.names = list(class_names)
        self.provenance = provenance or {}
        self.probs: list[torch.Tensor] = []
        self.result: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.probs, self.result = [], None

    def _collect(self, engine: Engine) -> None:
        self.probs.append(probabilities(engine.state.output))

    def _write(self, engine: Engine) -> None:
        records, rejected = self.inputs.records, self.inputs.rejected
        self.result = write_predictions(self.output, self.names, records, torch.cat(self.probs).numpy(),
                                        rejected, self.provenance)
        if self.result["model"].get("warning"):
            logger.warning("%s", self.result["model"]["warning"])
        logger.info("%d slices of %d inputs classified, %d rejected; written to %s", len(records),
                    len(self.result["inputs"]), len(rejected), self.output)


def write_predictions(
    output: Path,
    names: list[str],
    records: list[dict[str, Any]],
    probs: np.ndarray,
    rejected: list[tuple[str, str]],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """predictions.csv, predictions.json and rejected.csv; returns the JSON content."""
    columns = [f"prob_{safe_name(name)}" for name in names]
    write_csv(output / "predictions.csv", ["input", "item", "slice_index", "predicted", *columns],
              ([record["input"], record["item"], record["slice"], names[int(prob.argmax())],
                *np.round(prob, 6)] for record, prob in zip(records, probs, strict=True)))
    rows_of: dict[str, list[int]] = {}  # each input's slice rows, inputs in order of first appearance
    for row, record in enumerate(records):
        rows_of.setdefault(record["input"], []).append(row)
    inputs = []
    for name, rows in rows_of.items():
        mean = probs[rows].mean(axis=0)
        first = records[rows[0]]
        inputs.append(
            {
                "input": name,
                "item": first["item"],
                "format": first["format"],
                "kind": first["kind"],
                "slices": [records[i]["slice"] for i in rows],
                "mean_probs": {label: float(p) for label, p in zip(names, mean, strict=True)},
                "predicted": names[int(mean.argmax())],
                **({"conversion": first["conversion"]} if first["conversion"] else {}),
            }
        )
    result = {
        "model": provenance,
        "class_names": names,
        "inputs": inputs,
        "rejected": [{"input": name, "reason": reason} for name, reason in rejected],
    }
    write_json(output / "predictions.json", result, indent=2)
    write_csv(output / "rejected.csv", ["input", "reason"], rejected)
    return result


class GradCAMOverlays:
    """Evaluator handler: MONAI's Grad-CAM of every image of each batch (on the torch network's
    ``target_layer``, whichever engine gave the predictions) and, when the run completes, one PNG per slice
    in ``output_dir/gradcam``: the slice with its map, named and titled by the item id, never by a file
    name (overlays get shared; predictions.csv maps the id to the input)."""

    def __init__(
        self,
        inputs: InferenceInputs,
        output_dir: str | Path,
        class_names: Sequence[str],
        target_layer: str = "stages.2",
    ) -> None:
        self.inputs = inputs
        self.folder = Path(output_dir) / "gradcam"
        self.names = list(class_names)
        self.target_layer = target_layer
        self.cam: GradCAM | None = None
        self.maps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._compute)
        engine.add_event_handler(Events.COMPLETED, self._save)

    def _start(self, engine: Engine) -> None:
        self.cam = GradCAM(nn_module=engine.network, target_layers=self.target_layer)
        self.maps = []

    def _compute(self, engine: Engine) -> None:
        x = engine.state.output[Keys.IMAGE]
        x = x.as_tensor() if isinstance(x, MetaTensor) else x
        heat = self.cam(x).detach().cpu().numpy()[:, 0]
        images = x.detach().cpu().numpy()
        probs = probabilities(engine.state.output).numpy()
        self.maps += [(image[0], cam_map, prob)
                      for image, cam_map, prob in zip(images, heat, probs, strict=True)]

    def _save(self, engine: Engine) -> None:
        self.folder.mkdir(exist_ok=True)
        for record, (image, cam_map, prob) in zip(self.inputs.records, self.maps, strict=True):
            label = self.names[int(prob.argmax())]
            save_overlay(image, cam_map, self.folder / f"{record['item']}_slice{record['slice']}.png",
                         f"{record['item']} [{record['slice']}]: {label} {prob.max():.2f}")


def save_overlay(image: np.ndarray, cam: np.ndarray, path: Path, title: str) -> None:
    """A grey slice with its Grad-CAM map (jet, semi-transparent) as a PNG."""
    figure = Figure(figsize=(3, 3), dpi=100)
    axis = figure.add_subplot()
    axis.imshow(image, cmap="gray")
    axis.imshow(cam, cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0)
    axis.set_title(title, fontsize=8)
    axis.axis("off")
    with atomic_path(path) as temporary:
        figure.savefig(temporary, bbox_inches="tight")
