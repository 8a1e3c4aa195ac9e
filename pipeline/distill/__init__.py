"""HDKD distillation: the loss, strict checkpoint loading and the MONAI trainer."""

from pipeline.distill.checkpoint import load_weights, read_state_dict
from pipeline.distill.losses import HDKDLoss, feature_kd_loss, logit_kd_loss
from pipeline.distill.trainer import DistillationTrainer, loss_terms_transform

__all__ = [
    "DistillationTrainer",
    "HDKDLoss",
    "feature_kd_loss",
    "load_weights",
    "logit_kd_loss",
    "loss_terms_transform",
    "read_state_dict",
]
