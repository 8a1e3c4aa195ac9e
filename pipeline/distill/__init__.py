"""HDKD distillation: the loss and the MONAI trainer."""

from pipeline.distill.losses import HDKDLoss, feature_kd_loss, logit_kd_loss
from pipeline.distill.trainer import DistillationTrainer, loss_terms_transform

__all__ = [
    "DistillationTrainer",
    "HDKDLoss",
    "feature_kd_loss",
    "logit_kd_loss",
    "loss_terms_transform",
]
