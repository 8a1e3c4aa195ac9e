"""The HDKD teacher: a CNN of three convolutional stages, global pooling and a two-layer head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.networks.output import HDKDOutput
from pipeline.networks.stages import StagedNetwork, check_rate, drop_path_rates


class HDKDTeacher(StagedNetwork):
    """CNN teacher: stem + two MBCSA stages -> global average pool -> Linear(C3, head_hidden) -> Linear.

    As published, the two head layers have no activation between them. ``dropout`` acts on the pooled
    features; ``drop_path`` is the largest stochastic-depth rate (rising linearly over the MBCSA blocks).
    """

    def __init__(
        self,
        image_size: int = 224,
        in_channels: int = 3,
        num_classes: int = 4,
        stem_stride: int = 2,
        blocks: Sequence[int] = (6, 6, 9),
        channels: Sequence[int] = (64, 96, 192),
        block: str = "mbcsa",
        expansion: int = 4,
        head_hidden: int = 128,
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        check_rate("dropout", dropout)
        rates = drop_path_rates(drop_path, sum(blocks[1:]))
        super().__init__(
            image_size, in_channels, num_classes, stem_stride, blocks, channels, block, expansion, 1, rates
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Linear(channels[2], head_hidden),
            nn.Linear(head_hidden, num_classes),
        )

    def forward_all(self, x: torch.Tensor) -> HDKDOutput:
        """Logits and stage features of one forward pass."""
        features = self.forward_stages(x)
        logits = self.head(features[2])
        return HDKDOutput(logits, logits, None, features)
