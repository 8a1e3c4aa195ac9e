"""The published code's distillation loss, re-derived here (not imported from pipeline.distill) as a
reference for tests and benchmarks/distill_step.py.

For the logits it runs the teacher and the student once each; then, for every distilled stage, it
re-runs the stage prefix 1..k of both networks from the input to get the stage-k maps. Same loss and
same student gradients as one pass that returns all stage maps, provided the stages are deterministic
in train mode (no drop-path / dropout in the convolutional stages). BatchNorm in train mode normalises
with the batch statistics, so every re-run gives the same maps; only the running-statistic buffers are
updated once per re-run (they never touch the gradients).

The formulas, from the published definitions:
- base = CE(cls head, labels); with kd type "none" the logit part is ``base`` alone;
- soft KD = tau^2 * sum over batch and classes of p_t * (log p_t - log p_s) / (batch * classes),
  p = softmax(logits / tau); hard KD = CE(distill head, argmax teacher);
  logit part = (1 - alpha) * base + alpha * KD;
- feature part = sum_j j^a * mean((S_kj - T_kj)^2) over the distilled stages k_1, k_2, ... in order;
- total = logit part + lambda * feature part.
"""

from __future__ import annotations

import torch
from torch import nn


def stage_prefix(network: nn.Module, x: torch.Tensor, stage: int) -> torch.Tensor:
    """Run ``network``'s stages 1..``stage`` on ``x`` again, as the published code did."""
    for module in network.stages[:stage]:
        x = module(x)
    return x


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log(exp(z_c) / sum_c' exp(z_c')) along the class axis, shifted by the row maximum."""
    shifted = logits - logits.max(dim=1, keepdim=True).values
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -log p(label)."""
    return -log_softmax(logits).gather(1, labels.reshape(-1, 1).long()).mean()


def soft_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * summed KL(p_teacher || p_student) / (batch * classes), the published normalisation."""
    log_p_student, log_p_teacher = log_softmax(student_logits / tau), log_softmax(teacher_logits / tau)
    summed = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum()
    return tau**2 * summed / student_logits.numel()


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of the squared difference."""
    return ((a - b) ** 2).mean()


def published_terms(
    cls_logits: torch.Tensor,
    distill_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    student_maps: dict[int, torch.Tensor],
    teacher_maps: dict[int, torch.Tensor],
    *,
    kd_type: str,
    alpha: float,
    tau: float,
    feature_weight: float,
    stage_exponent: float,
) -> dict[str, torch.Tensor]:
    """The published loss and its terms ("ce", "logit_kd" (0 for "none"), "feature_kd", "loss").
    ``student_maps`` / ``teacher_maps`` map each distilled stage, in weighting order, to its maps."""
    ce = cross_entropy(cls_logits, labels)
    if kd_type == "soft":
        logit_kd = soft_kd(distill_logits, teacher_logits, tau)
    elif kd_type == "hard":
        logit_kd = cross_entropy(distill_logits, teacher_logits.argmax(dim=1))
    elif kd_type == "none":
        logit_kd = torch.zeros(())
    else:
        raise ValueError(f"unknown kd_type {kd_type!r}")
    logit_part = ce if kd_type == "none" else (1 - alpha) * ce + alpha * logit_kd
    feature_kd = sum(
        (
            position**stage_exponent * mse(student_maps[stage], teacher_maps[stage])
            for position, stage in enumerate(student_maps, 1)
        ),
        torch.zeros(()),
    )
    return {
        "loss": logit_part + feature_weight * feature_kd,
        "ce": ce,
        "logit_kd": logit_kd,
        "feature_kd": feature_kd,
    }


def naive_loss(
    student: nn.Module, teacher: nn.Module, loss: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The published loss with the settings of ``loss`` (an HDKDLoss; only its settings are read),
    computed the published way (prefix re-runs per distilled stage)."""
    if loss.kd_reduction != "published":
        raise ValueError(f"the published code divides soft KD by batch * classes, not {loss.kd_reduction!r}")
    with torch.no_grad():
        teacher_logits = teacher(x)
    out = student(x, return_features=True)
    kd_logits = out.cls_logits if out.distill_logits is None else out.distill_logits
    student_maps: dict[int, torch.Tensor] = {}
    teacher_maps: dict[int, torch.Tensor] = {}
    for stage in loss.stages:
        with torch.no_grad():
            teacher_maps[stage] = stage_prefix(teacher, x, stage)
        student_maps[stage] = stage_prefix(student, x, stage)
    return published_terms(
        out.cls_logits,
        kd_logits,
        teacher_logits,
        y,
        student_maps,
        teacher_maps,
        kd_type=loss.kd_type,
        alpha=loss.alpha,
        tau=loss.tau,
        feature_weight=loss.feature_weight,
        stage_exponent=loss.stage_exponent,
    )
