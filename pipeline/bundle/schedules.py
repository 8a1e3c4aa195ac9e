"""Learning-rate schedules the bundles choose by name (``--lr_schedule``), stepped once per epoch, and the
optimiser's weight-decay parameter groups."""

from __future__ import annotations

import math
from functools import partial

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, LambdaLR, LRScheduler

from pipeline.choices import LR_SCHEDULES


def cosine_rate(
    epoch: int, lr: float, epochs: int, warmup_epochs: int, warmup_lr: float, min_lr: float
) -> float:
    """The learning rate of 0-based ``epoch`` under timm's cosine schedule (the published student's):
    linear from ``warmup_lr`` over the first ``warmup_epochs`` epochs, then ``min_lr + (lr - min_lr) *
    (1 + cos(pi * epoch / epochs)) / 2`` (the cosine counts from epoch 0, warm-up included), and
    ``min_lr`` from ``epochs`` on (the cool-down)."""
    if epoch < warmup_epochs:
        return warmup_lr + epoch * (lr - warmup_lr) / warmup_epochs
    if epoch < epochs:
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * epoch / epochs))
    return min_lr


def _factor(epoch: int, lr: float, **schedule: float) -> float:
    return cosine_rate(epoch, lr, **schedule) / lr


def lr_schedule(
    optimizer: Optimizer,
    name: str,
    epochs: int,
    warmup_epochs: int = 0,
    warmup_lr: float = 0.0,
    min_lr: float = 0.0,
) -> LRScheduler:
    """``constant``: the learning rate as given (the published teacher); ``cosine``: :func:`cosine_rate`
    (the published student: warm-up from ``warmup_lr``, cosine to ``min_lr`` at ``epochs``, ``min_lr``
    in the cool-down epochs after it). ValueError names the bad argument."""
    if name not in LR_SCHEDULES:
        raise ValueError(f"--lr_schedule must be one of {list(LR_SCHEDULES)}, got {name!r}")
    if warmup_epochs < 0:
        raise ValueError(f"--warmup_epochs must be >= 0, got {warmup_epochs}")
    for option, value in (("warmup_lr", warmup_lr), ("min_lr", min_lr)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--{option} must be a number >= 0, got {value}")
    if name == "constant":
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    schedule = {"epochs": epochs, "warmup_epochs": warmup_epochs, "warmup_lr": warmup_lr, "min_lr": min_lr}
    return LambdaLR(
        optimizer, [partial(_factor, lr=group["lr"], **schedule) for group in optimizer.param_groups]
    )


def training_epochs(epochs: int, cooldown_epochs: int) -> int:
    """How many epochs a run trains: the schedule's ``epochs`` then ``cooldown_epochs`` at the final rate
    (timm's semantics: the cool-down comes after ``epochs``). ValueError names a bad count."""
    if cooldown_epochs < 0:
        raise ValueError(f"--cooldown_epochs must be >= 0, got {cooldown_epochs}")
    return epochs + cooldown_epochs


def weight_decay_groups(network: nn.Module, weight_decay: float) -> list[dict]:
    """The network's trainable parameters in two optimiser groups, as timm's optimizer factory builds
    them for the published student: biases and 1-D parameters (norm weights) without weight decay,
    every other parameter (including the class / distillation tokens and the position embedding,
    which the published model does not exempt) with ``weight_decay``."""
    decay, no_decay = [], []
    for name, parameter in network.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
