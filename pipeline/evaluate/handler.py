"""An ignite handler that turns a MONAI evaluator's predictions into ``classification_report`` files."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import convert_to_tensor, evenly_divisible_all_gather, string_list_all_gather

from pipeline.atomic import write_csv, write_json
from pipeline.evaluate.metrics import HEADLINE, PER_CLASS, classification_report
from pipeline.evaluate.plots import safe_name, save_evaluation_plots

logger = logging.getLogger(__name__)


def _mlflow_if_active() -> Any:
    """The ``mlflow`` module when an MLflow run is active, else None. A run can only be active if something
    imported mlflow already, so it is looked up in ``sys.modules`` rather than imported (which takes
    seconds in every evaluation process, DDP ranks included)."""
    mlflow = sys.modules.get("mlflow")
    return mlflow if mlflow is not None and mlflow.active_run() is not None else None


def flatten_report(
    report: Mapping[str, Any], prefix: str = "test_", per_class: bool = True
) -> dict[str, float]:
    """Scalar metrics of a report keyed for MLflow / ignite: ``{prefix}accuracy``,
    ``{prefix}accuracy_ci_low`` / ``_ci_high`` ..., and with ``per_class`` also
    ``{prefix}sensitivity_<class>`` (and its CI) for sensitivity, specificity and auc. Undefined values
    are left out."""
    flat: dict[str, Any] = {}
    for name in HEADLINE:
        flat[f"{prefix}{name}"] = report[name]
        low, high = report["ci"].get(name, (None, None))
        flat[f"{prefix}{name}_ci_low"], flat[f"{prefix}{name}_ci_high"] = low, high
    if per_class:
        for class_name, entry in report["per_class"].items():
            for metric in PER_CLASS:
                key = f"{prefix}{metric}_{safe_name(class_name)}"
                flat[key] = entry[metric]
                low, high = entry.get("ci", {}).get(metric, (None, None))
                flat[f"{key}_ci_low"], flat[f"{key}_ci_high"] = low, high
    return {key: float(value) for key, value in flat.items() if value is not None}


class ClassificationReportHandler:
    """Collects softmax probabilities, labels and patient ids from a MONAI evaluator and, at the end of
    each evaluation epoch, writes ``metrics.json`` (the ``classification_report`` plus ``model``),
    ``predictions.csv``, the PNG figures and DVC plot data into ``output_dir``.

    Works with batched (``decollate=False``) and decollated evaluator outputs. ``pred_key`` must hold
    logits (``logits=True``, softmax applied here) or probabilities; ``label_key`` class indices (or
    one-hot rows). ``patient_key`` is read from the batch (``datasets.load_split`` items carry a "patient"
    hash) and makes the bootstrap resample patients; ``patient_key=None`` resamples single samples.
    Under DDP every rank gathers all predictions (use a sampler that does not pad with repeated samples,
    e.g. ``monai.data.DistributedSampler(even_divisible=False)``); only rank 0 writes files and logs.

    The headline metrics and their CIs are also put in ``engine.state.metrics`` (keys
    ``{metric_prefix}accuracy``, ``{metric_prefix}accuracy_ci_low`` ...), where MONAI's ``StatsHandler``
    and ``MLFlowHandler`` (attached after this handler) pick them up. If an MLflow run is active
    (``mlflow.active_run()``), all flattened metrics, per-class ones included, and the output files are
    logged to it (artifacts under ``mlflow_artifact_path``). ``figures=False`` skips the PNGs and DVC plot
    data (e.g. for a validation run every epoch).
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        n_bootstrap: int = 1000,
        seed: int = 0,
        ci: float = 0.95,
        model_name: str | None = None,
        metric_prefix: str = "test_",
        pred_key: str = "pred",
        label_key: str = "label",
        patient_key: str | None = "patient",
        logits: bool = True,
        mlflow_artifact_path: str = "evaluation",
        figures: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.n_bootstrap, self.seed, self.ci = n_bootstrap, seed, ci
        self.model_name = model_name
        self.metric_prefix = metric_prefix
        self.pred_key, self.label_key, self.patient_key = pred_key, label_key, patient_key
        self.logits = logits
        self.mlflow_artifact_path = mlflow_artifact_path
        self.figures = figures
        self.report: dict[str, Any] | None = None
        self.reset()

    def attach(self, engine: Engine) -> None:
        """Register with ``engine`` (what MONAI's ``val_handlers`` / bundle ``handlers`` lists call)."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self) -> None:
        """Forget the predictions collected so far."""
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._patients: list[str] = []

    def state_dict(self) -> dict[str, Any]:
        """The predictions collected so far (to keep one epoch's, e.g. the best, and report it later)."""
        return {"probs": list(self._probs), "labels": list(self._labels), "patients": list(self._patients)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the collected predictions with ``state`` (from :meth:`state_dict`)."""
        self._probs, self._labels = list(state["probs"]), list(state["labels"])
        self._patients = list(state["patients"])

    def _label_indices(self, labels: torch.Tensor, n: int) -> torch.Tensor:
        labels = convert_to_tensor(labels, track_meta=False).detach().cpu()
        if labels.numel() == n:
            return labels.reshape(n).long()
        if labels.numel() == n * len(self.class_names):
            onehot = labels.reshape(n, -1)
            if torch.all((onehot == 0) | (onehot == 1)) and torch.all(onehot.sum(1) == 1):
                return onehot.argmax(1)
        raise ValueError(
            f"'{self.label_key}' must hold one class index (or one one-hot row) per sample; got shape "
            f"{tuple(labels.shape)} for {n} predictions"
        )

    def _patients_of(self, batch: Any, n: int) -> list[str]:
        if self.patient_key is None:
            return []
        if isinstance(batch, list):
            missing = not all(isinstance(item, Mapping) and self.patient_key in item for item in batch)
            patients = [] if missing else [item[self.patient_key] for item in batch]
        else:
            missing = not isinstance(batch, Mapping) or self.patient_key not in batch
            patients = [] if missing else list(batch[self.patient_key])
        if missing:
            raise ValueError(
                f"the evaluator's batch has no '{self.patient_key}' key; the patient-level bootstrap needs "
                "it (datasets.load_split items carry it). Pass patient_key=None to resample single samples."
            )
        if len(patients) != n:
            raise ValueError(f"'{self.patient_key}' has {len(patients)} entries for {n} predictions")
        return [str(patient) for patient in patients]

    def iteration_completed(self, engine: Engine) -> None:
        """Collect one iteration's predictions, labels and patient ids (batched or decollated)."""
        output = engine.state.output
        try:
            if isinstance(output, list):  # decollated: one dict per sample
                preds = torch.stack([torch.as_tensor(item[self.pred_key]).reshape(-1) for item in output])
                labels = torch.stack([torch.as_tensor(item[self.label_key]).reshape(-1) for item in output])
            else:
                preds, labels = torch.as_tensor(output[self.pred_key]), output[self.label_key]
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"evaluator output must carry '{self.pred_key}' and '{self.label_key}' per sample; got "
                f"{type(output).__name__} ({error})"
            ) from error
        preds = convert_to_tensor(preds, track_meta=False).detach().float().cpu()
        if preds.ndim != 2 or preds.shape[1] != len(self.class_names):
            raise ValueError(
                f"'{self.pred_key}' must be [batch, {len(self.class_names)}] (one score per class in "
                f"{self.class_names}); got shape {tuple(preds.shape)}"
            )
        n = preds.shape[0]
        self._probs.append(torch.softmax(preds, dim=1) if self.logits else preds)
        self._labels.append(self._label_indices(labels, n))
        self._patients.extend(self._patients_of(engine.state.batch, n))

    def _gathered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        k = len(self.class_names)
        probs = torch.cat(self._probs) if self._probs else torch.empty(0, k)
        labels = torch.cat(self._labels) if self._labels else torch.empty(0, dtype=torch.long)
        patients = self._patients
        if idist.get_world_size() > 1:
            probs = evenly_divisible_all_gather(probs, concat=True)
            labels = evenly_divisible_all_gather(labels, concat=True)
            if self.patient_key is not None:
                patients = string_list_all_gather(patients)
        groups = None if self.patient_key is None else np.asarray(patients)
        return labels.numpy(), probs.double().numpy(), groups

    def epoch_completed(self, engine: Engine) -> None:
        """Compute the report (all ranks), store headline metrics in ``engine.state.metrics``; on rank 0
        write the files and log to the active MLflow run."""
        labels, probs, groups = self._gathered()
        report = classification_report(
            labels,
            probs,
            self.class_names,
            groups=groups,
            n_bootstrap=self.n_bootstrap,
            seed=self.seed,
            ci=self.ci,
        )
        self.report = {"model": self.model_name, **report}
        engine.state.metrics.update(flatten_report(report, self.metric_prefix, per_class=False))
        if idist.get_rank() == 0:
            written = self._write(self.report, labels, probs, groups)
            if (mlflow := _mlflow_if_active()) is not None:
                mlflow.log_metrics(flatten_report(self.report, self.metric_prefix))
                for path in written:
                    folder = PurePosixPath(
                        self.mlflow_artifact_path, path.parent.relative_to(self.output_dir).as_posix()
                    )
                    mlflow.log_artifact(str(path), str(folder))

    def _write(
        self, report: dict[str, Any], labels: np.ndarray, probs: np.ndarray, groups: np.ndarray | None
    ) -> list[Path]:
        """metrics.json, predictions.csv, the PNGs and the DVC plot data; returns the files written."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        metrics = self.output_dir / "metrics.json"
        write_json(metrics, report, indent=2, allow_nan=False)
        predictions = self.output_dir / "predictions.csv"
        names = self.class_names
        write_csv(
            predictions,
            ["patient", "label", "predicted", *(f"prob_{safe_name(c)}" for c in names)],
            (["" if groups is None else groups[i], names[labels[i]], names[int(row.argmax())],
              *np.round(row, 6)] for i, row in enumerate(probs)),
        )
        written = [metrics, predictions]
        if self.figures:
            written += save_evaluation_plots(labels, probs, report, self.output_dir)
        logger.info(
            "evaluation of %d samples written to %s: accuracy %.4f, balanced accuracy %.4f",
            report["n"],
            self.output_dir,
            report["accuracy"],
            report["balanced_accuracy"],
        )
        return written
