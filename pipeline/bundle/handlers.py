"""Ignite handlers the bundle configs attach to the trainer: per-epoch seeding (so a resumed run
repeats an uninterrupted one exactly), per-epoch means of each loss term plus the learning rate (picked
up by StatsHandler and MLFlowHandler from ``engine.state.metrics``), the validation report of the kept
checkpoint, the atomic disk saver of ``model.pt``, and early-stopping wiring."""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from ignite.metrics import Average
from monai.data.utils import set_rnd
from monai.handlers import EarlyStopHandler

from pipeline.atomic import atomic_open
from pipeline.distill.trainer import loss_terms_transform

TERMS = ("loss", "ce", "logit_kd", "feature_kd")


class EpochSeeding:
    """Reseed every source of randomness from (seed, epoch) at the start of each epoch.

    The augmentation chain of ``dataset`` is reseeded at EPOCH_STARTED (before the epoch's first batch
    is drawn); torch, numpy and ``random`` (dropout, drop-path) at the epoch's first ITERATION_STARTED,
    after the data loader has drawn its own seed. Shuffling comes from a seeded DistributedSampler,
    whose epoch MONAI sets. Epoch k is then the same whether or not the run was resumed before it.
    """

    def __init__(self, seed: int, dataset: Any) -> None:
        self.seed = int(seed)
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._seed_augmentation)
        engine.add_event_handler(Events.ITERATION_STARTED, self._seed_globals)

    def _epoch_seed(self, engine: Engine) -> int:
        return self.seed + 1000 * engine.state.epoch

    def _seed_augmentation(self, engine: Engine) -> None:
        transform = getattr(self.dataset, "transform", None)
        if transform is not None:
            set_rnd(transform, self._epoch_seed(engine))

    def _seed_globals(self, engine: Engine) -> None:
        epoch_length = engine.state.epoch_length
        if epoch_length and (engine.state.iteration - 1) % epoch_length != 0:
            return
        seed = self._epoch_seed(engine)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)


class ReshuffleOnRestart:
    """Draw a new shuffling order when the training loader restarts inside an epoch.

    With ``steps_per_epoch`` larger than the loader, ignite restarts the loader within the epoch; the
    sampler's epoch (which MONAI sets at each epoch start) would repeat the same order. Each mid-epoch
    restart sets it to a value no epoch start uses (``RESTART_OFFSET`` + the iteration), so the order is
    new and still a function of the seed and the step. Restarts at an epoch boundary keep MONAI's order.
    """

    RESTART_OFFSET = 1_000_000

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.DATALOADER_STOP_ITERATION, self)

    def __call__(self, engine: Engine) -> None:
        epoch_length = engine.state.epoch_length
        if epoch_length and engine.state.iteration % epoch_length != 0:
            self.sampler.set_epoch(self.RESTART_OFFSET + engine.state.iteration)


def _term(name: str, output: Any) -> float:
    return loss_terms_transform(output)[name]


class EpochLossTerms:
    """Epoch means of the total loss and each term (``train_loss``, ``train_ce``, ``train_logit_kd``,
    ``train_feature_kd``, ignite ``Average`` metrics over the iterations, synced across DDP ranks) and
    the learning rate the epoch ran with (``lr``), all in ``engine.state.metrics``."""

    def __init__(self, optimizer: torch.optim.Optimizer, terms: Sequence[str] = TERMS) -> None:
        self.optimizer = optimizer
        self.terms = tuple(terms)
        self._lr = float("nan")

    def attach(self, engine: Engine) -> None:
        for term in self.terms:
            Average(output_transform=partial(_term, term)).attach(engine, f"train_{term}")
        engine.add_event_handler(Events.EPOCH_STARTED, self._remember_lr)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish_lr)

    def _remember_lr(self, engine: Engine) -> None:
        self._lr = float(self.optimizer.param_groups[0]["lr"])

    def _publish_lr(self, engine: Engine) -> None:
        engine.state.metrics["lr"] = self._lr


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among an engine's metrics."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


class EpochCSVLogger:
    """One row per epoch in ``path`` (CSV): epoch, optimiser steps so far (iteration), the trainer's
    metrics (loss terms, lr) and the scalar metrics of ``evaluator``'s last run (validation), for DVC
    training-curve plots. Rows of epochs at or after the current one (left by an interrupted run being
    resumed) are replaced."""

    def __init__(self, path: str | Path, evaluator: Engine) -> None:
        self.path = Path(path)
        self.evaluator = evaluator

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        row = {
            "epoch": epoch,
            "iteration": engine.state.iteration,
            **scalar_metrics(engine.state.metrics),
            **scalar_metrics(self.evaluator.state.metrics),
        }
        rows: list[dict[str, Any]] = []
        if self.path.is_file():
            with self.path.open(newline="") as handle:
                rows = [old for old in csv.DictReader(handle) if int(old["epoch"]) < epoch]
        rows.append(row)
        columns = list(dict.fromkeys(key for item in rows for key in item))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


class PeriodicReport:
    """Attach a ClassificationReportHandler-like ``report`` (``reset`` / ``iteration_completed`` /
    ``epoch_completed``) to a validator so that it only collects and writes on every ``interval``-th
    validation epoch and on the last one (``max_epochs``): the full report with its figures costs
    seconds, the ignite metrics of every epoch do not. The report's metrics are removed from the
    validator again at the next epoch, so loggers never repeat a stale value for an epoch without one."""

    def __init__(self, report: Any, interval: int, max_epochs: int) -> None:
        if interval < 1:
            raise ValueError(f"--val_report_interval must be >= 1, got {interval}")
        self.report = report
        self.interval = int(interval)
        self.max_epochs = int(max_epochs)
        self._reported: set[str] = set()

    def due(self, engine: Engine, _: Any = None) -> bool:
        """Whether this validation epoch (the trainer's epoch) gets a report."""
        epoch = engine.state.epoch
        return epoch % self.interval == 0 or epoch >= self.max_epochs

    def _report(self, engine: Engine) -> None:
        before = set(engine.state.metrics)
        self.report.epoch_completed(engine)
        self._reported = set(engine.state.metrics) - before

    def _forget(self, engine: Engine) -> None:
        for key in self._reported:
            engine.state.metrics.pop(key, None)
        self._reported = set()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._forget)
        engine.add_event_handler(Events.EPOCH_STARTED, self.report.reset)
        engine.add_event_handler(
            Events.ITERATION_COMPLETED(event_filter=self.due), self.report.iteration_completed
        )
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self.due), self._report)


class KeptCheckpointReport:
    """The validation report of the checkpoint training keeps (``model.pt``), not of the last epoch.

    Attached to the trainer, it collects ``report``'s predictions (a ClassificationReportHandler) at every
    validation epoch of ``evaluator`` and keeps those of each epoch whose ``key_metric`` beats every earlier
    one -- the rule of the bundles' best-model ``Checkpoint`` (``greater_or_equal=False``), which replaces
    ``model.pt`` only on a strictly better score. When training completes it writes the report of the
    kept epoch (its metrics in ``evaluator.state.metrics`` under the report's prefix, e.g. ``best_val_``) and
    :meth:`metrics` returns ``best_epoch`` and the kept epoch's scores for logging. Its state (kept epoch,
    scores and predictions) goes into the per-epoch training checkpoint, so a resumed run keeps it.
    """

    def __init__(self, evaluator: Engine, report: Any, key_metric: str = "val_balanced_accuracy") -> None:
        self.evaluator = evaluator
        self.report = report
        self.key_metric = key_metric
        self.kept: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        self.evaluator.add_event_handler(Events.EPOCH_STARTED, self.report.reset)
        self.evaluator.add_event_handler(Events.ITERATION_COMPLETED, self.report.iteration_completed)
        self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._keep_if_better)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _keep_if_better(self, evaluator: Engine) -> None:
        score = float(evaluator.state.metrics[self.key_metric])
        if self.kept and not score > self.kept["metrics"][self.key_metric]:
            return
        self.kept = {
            "epoch": int(evaluator.state.epoch),
            "metrics": scalar_metrics(evaluator.state.metrics),
            "predictions": self.report.state_dict(),
        }

    def _write(self, engine: Engine) -> None:
        if not self.kept:
            return
        self.report.load_state_dict(self.kept["predictions"])
        before = set(self.evaluator.state.metrics)
        self.report.epoch_completed(self.evaluator)
        added = set(self.evaluator.state.metrics) - before
        self.kept["report"] = {key: float(self.evaluator.state.metrics.pop(key)) for key in added}

    def metrics(self) -> dict[str, float]:
        """``best_epoch`` and ``best_<metric>`` of the kept epoch (ignite metrics, then the report's)."""
        if not self.kept:
            return {}
        scores = {f"best_{key}": value for key, value in self.kept["metrics"].items()}
        return {"best_epoch": self.kept["epoch"], **scores, **self.kept.get("report", {})}

    def state_dict(self) -> dict[str, Any]:
        return dict(self.kept)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.kept = dict(state)


def logits_and_labels(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, K], class indices [B]) from an evaluator's output (``decollate=False``) for ignite
    metrics such as Accuracy, Recall and Loss."""
    return output["pred"].float(), output["label"].reshape(-1).long()


class FixedNameDiskSaver(DiskSaver):
    """Ignite's atomic ``DiskSaver`` for a ``Checkpoint`` whose ``filename_pattern`` is a fixed name
    (``model.pt``): each save goes to a temporary file renamed over the old one, so the Checkpoint's
    removal of its previous file (the same name) is skipped, and a failed save leaves the previous complete
    file instead of none."""

    def __init__(self, dirname: str | Path) -> None:
        super().__init__(dirname, atomic=True, require_empty=False)

    def remove(self, filename: str) -> None:
        """Keep ``filename``: the next save replaces it atomically."""


def link_early_stopping(handler: EarlyStopHandler | None, trainer: Engine) -> None:
    """Give the (evaluator-attached) early-stopping handler the trainer it stops; no-op when disabled."""
    if handler is not None:
        handler.set_trainer(trainer)
