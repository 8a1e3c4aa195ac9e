"""Resuming an interrupted training run from the last per-epoch checkpoint in the models folder."""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# written by the trainer's per-epoch ignite Checkpoint (train#checkpoint, n_saved=1): checkpoint_epoch=<N>.pt
CHECKPOINT_PATTERN = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")


def epoch_checkpoints(models_dir: str | Path) -> list[Path]:
    """The per-epoch training checkpoints in ``models_dir``, oldest epoch first."""
    folder = Path(models_dir)
    found = [
        (int(match.group(1)), path)
        for path in folder.glob("checkpoint_epoch=*.pt")
        if (match := CHECKPOINT_PATTERN.match(path.name))
    ]
    return [path for _, path in sorted(found)]


def _trainer_progress(path: Path) -> tuple[int, int] | None:
    """(completed epochs, max_epochs) recorded in a training checkpoint; None for a file cut short (written
    in place by an earlier version of the bundles that was killed mid-write, or damaged since)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, pickle.UnpicklingError) as error:
        logger.warning("ignoring unreadable checkpoint %s (%s: %s)", path, type(error).__name__, error)
        return None
    trainer = state.get("trainer") if isinstance(state, dict) else None
    if not isinstance(trainer, dict) or not {"iteration", "epoch_length", "max_epochs"} <= trainer.keys():
        raise ValueError(
            f"{path} is not a training checkpoint written by this bundle (no trainer state); delete it or "
            "pass --resume false"
        )
    return int(trainer["iteration"]) // int(trainer["epoch_length"]), int(trainer["max_epochs"])


def prepare_models_dir(
    models_dir: str | Path, epochs: int, resume: bool = True, cleanup: bool = True
) -> str | None:
    """Create ``models_dir`` and return the checkpoint to resume from, or None for a fresh start.

    A run resumes when ``resume`` is on and the newest readable per-epoch checkpoint belongs to an
    unfinished run of the same length (``epochs``). Otherwise the old per-epoch checkpoints are removed (when
    ``cleanup``; under DDP only rank 0 cleans up), so that the new run's files cannot be mistaken for the old
    one's.
    """
    folder = Path(models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoints = epoch_checkpoints(folder)
    if resume:
        for checkpoint in reversed(checkpoints):
            progress = _trainer_progress(checkpoint)
            if progress is None:
                continue
            done, max_epochs = progress
            if max_epochs == epochs and done < epochs:
                logger.info("resuming from %s (epoch %d of %d)", checkpoint, done, epochs)
                return str(checkpoint)
            break
    if cleanup:
        for stale in checkpoints:
            stale.unlink(missing_ok=True)
    return None
