"""Learning-rate schedules the bundles choose by name (``--lr_schedule``), stepped once per epoch."""

from __future__ import annotations

from monai.optimizers import WarmupCosineSchedule
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, LRScheduler

LR_SCHEDULES = ("constant", "cosine")
WARMUP_START = 0.02  # the warm-up starts at this fraction of the learning rate


def lr_schedule(optimizer: Optimizer, name: str, epochs: int, warmup_epochs: int = 0) -> LRScheduler:
    """``constant``: the learning rate as given (the published teacher); ``cosine``: linear warm-up over
    ``warmup_epochs`` then cosine decay to zero at ``epochs`` (the published student). ValueError names
    the bad argument."""
    if name not in LR_SCHEDULES:
        raise ValueError(f"--lr_schedule must be one of {list(LR_SCHEDULES)}, got {name!r}")
    if warmup_epochs < 0:
        raise ValueError(f"--warmup_epochs must be >= 0, got {warmup_epochs}")
    if name == "constant":
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    return WarmupCosineSchedule(
        optimizer, warmup_steps=warmup_epochs, t_total=epochs, warmup_multiplier=WARMUP_START
    )
