"""Shared helpers of the bundle tests: a tiny split CSV of simple-pattern slices and a runner for the
real ``python -m monai.bundle`` CLI with a temporary SQLite MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("glioma", "meningioma", "pituitary", "notumor")
TEACHER = "bundles/hdkd_teacher/configs"
STUDENT = "bundles/hdkd_student/configs"
# small, fast and quiet: demo networks (64 px, 1 channel), 8 images a batch, no progress bar
FAST = ("--profile", "demo", "--batch_size", "8", "--progress", "false")


def save_checkpoint(network: Any, settings: Any, folder: Path, name: str = "model.pt") -> Path:
    """``folder/name`` written as the training bundles write ``model.pt``, without training: ignite's
    ``Checkpoint`` with the bundles' ``to_save`` (the network and its ``NetworkSettings``) and atomic disk
    saver, fired by a one-iteration ignite engine."""
    from ignite.engine import Engine, Events
    from ignite.handlers import Checkpoint

    from pipeline.bundle import FixedNameDiskSaver
    from pipeline.networks import SETTINGS_KEY

    checkpoint = Checkpoint(
        {"network": network, SETTINGS_KEY: settings}, FixedNameDiskSaver(folder), filename_pattern=name
    )
    engine = Engine(lambda engine, batch: None)
    engine.add_event_handler(Events.COMPLETED, checkpoint)
    engine.run([0], max_epochs=1)
    return folder / name


def complete_training_run(run_id: str, checkpoint: Path, tracking_uri: str | None = None) -> None:
    """End MLflow run ``run_id`` as a training bundle ends its run: ``pipeline.tracking.RunMLFlowHandler``
    at COMPLETED of a one-iteration ignite engine, with ``checkpoint`` as the kept model."""
    from ignite.engine import Engine

    from pipeline.tracking import RunMLFlowHandler

    engine = Engine(lambda engine, batch: None)
    RunMLFlowHandler(
        run_id, tracking_uri, iteration_log=False, close_on_complete=True, model_checkpoint=checkpoint
    ).attach(engine)
    engine.run([0], max_epochs=1)


def make_split(folder: Path, per_class: dict[str, int] | None = None, size: int = 32, seed: int = 0) -> Path:
    """``folder/split.csv`` (the split CLI's columns) over (1, size, size) float32 .npy slices: class k
    is a bright quadrant k over noise. ``per_class`` gives images per class and split."""
    counts = per_class or {"train": 4, "val": 2, "test": 2}
    rng = np.random.default_rng(seed)
    (folder / "slices").mkdir(parents=True, exist_ok=True)
    rows = []
    half = size // 2
    for split, count in counts.items():
        for i in range(count * len(CLASSES)):
            k = i % len(CLASSES)
            image = rng.random((1, size, size), dtype=np.float32) * 0.3
            row, col = divmod(k, 2)
            image[0, row * half : (row + 1) * half, col * half : (col + 1) * half] += 0.7
            path = f"slices/{split}_{i}.npy"
            np.save(folder / path, image.clip(0, 1))
            rows.append(
                {
                    "slice_id": f"{split}_{i}",
                    "path": path,
                    "source_id": f"{split}{i}",
                    "patient": f"p{split}{i // 2}",
                    "label": CLASSES[k],
                    "slice_index": 0,
                    "given_split": "",
                    "modality": "MR",
                    "split": split,
                }
            )
    pd.DataFrame(rows).to_csv(folder / "split.csv", index=False)
    return folder / "split.csv"


def bundle_env(store: Path, **extra: str) -> dict[str, str]:
    """The environment of a bundle subprocess: a private MLflow store and engine cache, one torch thread
    each."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("HDKD_MLFLOW_PARENT_RUN_ID", "MLFLOW_TRACKING_URI")
    }
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{store}",
        MLFLOW_DISABLE_TELEMETRY="true",
        HDKD_CACHE_DIR=str(store.parent / "engine_cache"),  # the inference engine choice, not ~/.cache
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def bundle_command(command: str, config: str | list[str], *overrides: str) -> list[str]:
    """``python -m monai.bundle <command> --config_file <config> <overrides>``."""
    config_arg = config if isinstance(config, str) else "[" + ",".join(f"'{c}'" for c in config) + "]"
    return [sys.executable, "-m", "monai.bundle", command, "--config_file", config_arg, *overrides]


def run_bundle(
    config: str | list[str], *overrides: str, env: dict[str, str], check: bool = True, command: str = "run"
) -> subprocess.CompletedProcess:
    """Run a bundle config from the repository root; on an unexpected exit code fail with its output."""
    result = subprocess.run(
        bundle_command(command, config, *overrides),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"bundle {config} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result
