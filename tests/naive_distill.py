"""The published code's distillation loss, kept as a reference for tests and benchmarks/distill_step.py.

For the logits it runs the teacher and the student once each; then, for every distilled stage k, it
re-runs the stage prefix 1..k of both networks from the input to get the stage-k maps. Same loss and
same student gradients as one pass that returns all stage maps, provided the stages are deterministic
in train mode (no drop-path / dropout in the convolutional stages). BatchNorm in train mode normalises
with the batch statistics, so every re-run gives the same maps; only the running-statistic buffers are
updated once per re-run (they never touch the gradients).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.distill import HDKDLoss, feature_kd_loss, logit_kd_loss
from pipeline.distill.losses import class_targets


def stage_prefix(network: nn.Module, x: torch.Tensor, stage: int) -> torch.Tensor:
    """Run ``network``'s stages 1..``stage`` on ``x`` again, as the published code did."""
    for module in network.stages[:stage]:
        x = module(x)
    return x


def naive_loss(
    student: nn.Module, teacher: nn.Module, loss: HDKDLoss, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """HDKD loss terms computed the published way (prefix re-runs per distilled stage)."""
    with torch.no_grad():
        teacher_logits = teacher(x)
    out = student(x, return_features=True)
    ce = nn.functional.cross_entropy(out.cls_logits, class_targets(y, x.shape[0]))
    kd_logits = out.cls_logits if out.distill_logits is None else out.distill_logits
    logit_kd = logit_kd_loss(kd_logits, teacher_logits, loss.kd_type, loss.tau)
    student_maps: list[torch.Tensor] = [torch.empty(0)] * 3
    teacher_maps: list[torch.Tensor] = [torch.empty(0)] * 3
    for stage in loss.stages:
        with torch.no_grad():
            teacher_maps[stage - 1] = stage_prefix(teacher, x, stage)
        student_maps[stage - 1] = stage_prefix(student, x, stage)
    feature_kd = feature_kd_loss(student_maps, teacher_maps, loss.stages, loss.stage_exponent)
    total = (1 - loss.alpha) * ce + loss.alpha * logit_kd + loss.feature_weight * feature_kd
    return {"loss": total, "ce": ce, "logit_kd": logit_kd, "feature_kd": feature_kd}
