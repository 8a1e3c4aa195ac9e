"""The result of one forward pass of an HDKD network when stage features are requested."""

from typing import NamedTuple, Optional

import torch


class HDKDOutput(NamedTuple):
    """Logits and the three stage feature maps of one forward pass.

    ``logits`` are the predictive logits (an HDKD student: mean of its two heads), ``cls_logits`` the
    class-token head (the teacher's and the baseline student's only head), ``distill_logits`` the
    distillation-token head or None, ``features`` the stage maps, each shaped [B, C_i, H_i, W_i].
    """

    logits: torch.Tensor
    cls_logits: torch.Tensor
    distill_logits: Optional[torch.Tensor]  # noqa: UP045 - TorchScript reads typing.Optional
    features: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
