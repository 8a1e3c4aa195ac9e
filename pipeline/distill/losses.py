"""HDKD loss: cross-entropy + logit distillation + stage-weighted feature distillation.

``loss = (1 - alpha) * CE(cls_logits, y) + alpha * KD(distill_logits, teacher_logits)
+ feature_weight * sum_k k**stage_exponent * MSE(S_k, T_k)`` over the distilled stages k (1-based;
k counts the distilled stages in order, so with the default stages 1..3 it is the stage number),
as published: soft KD is normalised by the logits' element count (``kd_reduction="published"``) and
``kd_type="none"`` trains on the unweighted CE plus the feature term. Without a teacher the loss is
plain cross-entropy on the class-token head, so the teacher, the baseline student and the HDKD student
all train through the same class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.choices import KD_REDUCTIONS, KD_TYPES
from pipeline.networks.output import HDKDOutput

STAGES = (1, 2, 3)
TERMS = ("ce", "logit_kd", "feature_kd")


def check_kd_type(kind: str) -> None:
    """Raise ValueError unless ``kind`` is one of ``KD_TYPES``."""
    if kind not in KD_TYPES:
        raise ValueError(f"kd_type must be one of {KD_TYPES}, got {kind!r}")


def check_kd_reduction(reduction: str) -> None:
    """Raise ValueError unless ``reduction`` is one of ``KD_REDUCTIONS``."""
    if reduction not in KD_REDUCTIONS:
        raise ValueError(f"kd_reduction must be one of {KD_REDUCTIONS}, got {reduction!r}")


def check_stages(stages: Sequence[int]) -> tuple[int, ...]:
    """The distilled stages as a tuple; ValueError unless they are distinct members of 1..3."""
    chosen = tuple(stages)
    if any(isinstance(stage, bool) or stage not in STAGES for stage in chosen) or len(set(chosen)) != len(
        chosen
    ):
        raise ValueError(f"stages must be distinct values among {STAGES}, got {list(chosen)}")
    return chosen


def logit_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str,
    tau: float,
    reduction: str = "published",
) -> torch.Tensor:
    """Logit distillation term (a scalar, computed in float32).

    "soft": ``tau**2 * sum KL(softmax(teacher / tau) || softmax(student / tau))`` over the batch, divided
    by batch * classes (``reduction="published"``) or by the batch (``"batchmean"``, ``classes`` times
    larger); "hard": cross-entropy against the teacher's argmax; "none": zero. ``reduction`` only
    affects "soft".
    """
    check_kd_type(kind)
    check_kd_reduction(reduction)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ in shape (different class counts?)"
        )
    student, teacher = student_logits.float(), teacher_logits.float()
    if kind == "none":
        return student.new_zeros(())
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=1))
    summed = F.kl_div(
        F.log_softmax(student / tau, dim=1),
        F.log_softmax(teacher / tau, dim=1),
        reduction="sum",
        log_target=True,
    )
    divisor = student.numel() if reduction == "published" else student.shape[0]
    return summed * tau**2 / divisor


def feature_kd_loss(
    student_features: Sequence[torch.Tensor],
    teacher_features: Sequence[torch.Tensor],
    stages: Sequence[int] = STAGES,
    exponent: float = 1.0,
) -> torch.Tensor:
    """``sum_j j**exponent * MSE(student_k_j, teacher_k_j)`` over the distilled ``stages`` k_1, k_2, ...
    (1-based stage numbers), a float32 scalar. As published, the weight follows the position j in
    ``stages``: with the default (1, 2, 3), stage k weighs ``k**exponent``; ``stages=(2, 3)`` weighs
    stage 2 by 1 and stage 3 by ``2**exponent``."""
    chosen = check_stages(stages)
    if not math.isfinite(exponent):
        raise ValueError(f"stage_exponent must be finite, got {exponent}")
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for position, stage in enumerate(chosen, 1):
        student, teacher = student_features[stage - 1], teacher_features[stage - 1]
        if student.shape != teacher.shape:
            raise ValueError(
                f"stage {stage} features differ in shape: student {tuple(student.shape)}, "
                f"teacher {tuple(teacher.shape)}"
            )
        total = total + position**exponent * F.mse_loss(student.float(), teacher.float())
    return total


def class_targets(target: torch.Tensor, batch: int) -> torch.Tensor:
    """Class indices [B] (long) from labels shaped [B] or [B, 1]; ValueError for anything else."""
    labels = target.reshape(-1) if target.dim() == 2 and target.shape[1] == 1 else target
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(
            f"target must hold one class index per image ([{batch}] or [{batch}, 1]), "
            f"got {tuple(target.shape)}"
        )
    return labels.long()


class HDKDLoss(nn.Module):
    """The HDKD training loss; ``forward`` returns the total ("loss") and each term ("ce", "logit_kd",
    "feature_kd") as tensors.

    Args:
        alpha: weight of the logit-KD term, ``1 - alpha`` weighs CE (in [0, 1]). With ``kd_type="none"``
            there is no logit-KD term and CE is unweighted, as published (``alpha`` is unused).
        tau: softmax temperature of soft KD (> 0); the term is scaled by ``tau**2``.
        kd_type: "soft" (KL divergence), "hard" (CE on the teacher's argmax) or "none".
        kd_reduction: soft KD's normalisation, "published" (summed KL / (batch * classes)) or
            "batchmean" (summed KL / batch, ``classes`` times the published term). Only "soft" uses it.
        feature_weight: lambda, the weight of the feature term (>= 0).
        stage_exponent: a, the k-th distilled stage is weighted ``k**a``.
        stages: the distilled stages, distinct members of (1, 2, 3) in weighting order.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        tau: float = 1.0,
        kd_type: str = "soft",
        feature_weight: float = 10.0,
        stage_exponent: float = 1.0,
        stages: Sequence[int] = STAGES,
        kd_reduction: str = "published",
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        check_kd_type(kd_type)
        check_kd_reduction(kd_reduction)
        if not feature_weight >= 0:
            raise ValueError(f"feature_weight (lambda) must be >= 0, got {feature_weight}")
        if not math.isfinite(stage_exponent):
            raise ValueError(f"stage_exponent must be finite, got {stage_exponent}")
        self.alpha = float(alpha)
        self.tau = float(tau)
        self.kd_type = kd_type
        self.kd_reduction = kd_reduction
        self.feature_weight = float(feature_weight)
        self.stage_exponent = float(stage_exponent)
        self.stages = check_stages(stages)

    @property
    def uses_features(self) -> bool:
        """Whether the feature term can be non-zero (a teacher's stage maps are needed)."""
        return self.feature_weight > 0 and len(self.stages) > 0

    def forward(
        self, student_out: HDKDOutput, teacher_out: HDKDOutput | None, target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Total loss and its terms. ``teacher_out`` None: plain CE on ``student_out.cls_logits``.

        Logit KD uses the student's distillation head, or its class head when it has none.
        """
        ce = F.cross_entropy(
            student_out.cls_logits.float(), class_targets(target, student_out.cls_logits.shape[0])
        )
        zero = ce.new_zeros(())
        if teacher_out is None:
            return {"loss": ce, "ce": ce, "logit_kd": zero, "feature_kd": zero}
        kd_logits = (
            student_out.cls_logits if student_out.distill_logits is None else student_out.distill_logits
        )
        logit_kd = logit_kd_loss(kd_logits, teacher_out.logits, self.kd_type, self.tau, self.kd_reduction)
        feature_kd = (
            feature_kd_loss(student_out.features, teacher_out.features, self.stages, self.stage_exponent)
            if self.uses_features
            else zero
        )
        logit_part = ce if self.kd_type == "none" else (1.0 - self.alpha) * ce + self.alpha * logit_kd
        loss = logit_part + self.feature_weight * feature_kd
        return {"loss": loss, "ce": ce, "logit_kd": logit_kd, "feature_kd": feature_kd}
