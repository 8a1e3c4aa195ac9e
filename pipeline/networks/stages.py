"""The three convolutional stages shared by the HDKD teacher and student, and their common base class.

Stage 1 is a stem of ConvBNAct blocks (the first with stride ``stem_stride``); stages 2 and 3 are
MBCSA (or MBConv) stages whose first block halves the resolution. A network with stem stride ``s``
maps an image of side ``S`` to stage maps of side ``S/s``, ``S/(2s)`` and ``S/(4s)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import nn

from pipeline.networks.blocks import MBCSA, ConvBNAct, MBConv
from pipeline.networks.output import HDKDOutput

BLOCKS: dict[str, type[MBConv] | type[MBCSA]] = {"mbcsa": MBCSA, "mbconv": MBConv}
STEM_STRIDES = (2, 4)


def check_rate(name: str, value: float) -> None:
    """Raise ValueError unless ``value`` is a probability below 1."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def drop_path_rates(drop_path: float, count: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 to ``drop_path`` over ``count`` residual blocks."""
    check_rate("drop_path", drop_path)
    if count <= 1:
        return [drop_path] * count
    return [drop_path * i / (count - 1) for i in range(count)]


def build_conv_stages(
    in_channels: int,
    channels: Sequence[int],
    blocks: Sequence[int],
    stem_stride: int,
    block: str,
    expansion: int,
    drop_paths: Sequence[float],
) -> nn.ModuleList:
    """The three stages as an ``nn.ModuleList`` of ``nn.Sequential``.

    ``drop_paths`` holds one rate per block of stages 2 and 3 (the stem has no residual to drop).
    """
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
    if len(drop_paths) != blocks[1] + blocks[2]:
        raise ValueError(f"need {blocks[1] + blocks[2]} drop-path rates, got {len(drop_paths)}")
    stem = [ConvBNAct(in_channels, channels[0], 3, stride=stem_stride)]
    stem += [ConvBNAct(channels[0], channels[0], 3) for _ in range(blocks[0] - 1)]
    stages = [nn.Sequential(*stem)]
    block_type = BLOCKS[block]
    rates = iter(drop_paths)
    for stage in (1, 2):
        stages.append(
            nn.Sequential(
                *(
                    block_type(
                        channels[stage - 1] if index == 0 else channels[stage],
                        channels[stage],
                        downsample=index == 0,
                        expansion=expansion,
                        drop_path=next(rates),
                    )
                    for index in range(blocks[stage])
                )
            )
        )
    return nn.ModuleList(stages)


def check_input(x: torch.Tensor, in_channels: int, image_size: int) -> None:
    """Raise ValueError unless ``x`` is shaped [B, in_channels, image_size, image_size]."""
    if x.dim() != 4:
        raise ValueError(
            f"expected a 4-D batch [B, {in_channels}, {image_size}, {image_size}], got {x.dim()}-D"
        )
    if x.shape[1] != in_channels:
        raise ValueError(f"expected {in_channels} input channels, got {x.shape[1]}")
    if x.shape[2] != image_size or x.shape[3] != image_size:
        raise ValueError(
            f"expected images of {image_size}x{image_size} pixels, got {x.shape[2]}x{x.shape[3]}"
        )


class StagedNetwork(nn.Module):
    """Base of the teacher and the student: validated sizes, the three stages, input checks."""

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        num_classes: int,
        stem_stride: int,
        blocks: Sequence[int],
        channels: Sequence[int],
        block: str,
        expansion: int,
        size_multiple: int,
        drop_paths: Sequence[float],
    ) -> None:
        """``size_multiple`` is what the head needs the stage-3 side to divide by (1, or the patch size);
        ``drop_paths`` has one drop-path rate per block of stages 2 and 3."""
        super().__init__()
        if len(blocks) != 3 or len(channels) != 3 or min(blocks) < 1 or min(channels) < 1:
            raise ValueError(f"blocks and channels need 3 positive entries, got {blocks} and {channels}")
        if stem_stride not in STEM_STRIDES:
            raise ValueError(f"stem_stride must be one of {STEM_STRIDES}, got {stem_stride}")
        if in_channels < 1 or num_classes < 1 or expansion < 1:
            raise ValueError(
                f"in_channels, num_classes and expansion must be positive, got {in_channels}, "
                f"{num_classes}, {expansion}"
            )
        divisor = stem_stride * 4 * size_multiple
        if image_size < divisor or image_size % divisor:
            raise ValueError(
                f"image_size {image_size} must be a positive multiple of {divisor}: stem stride "
                f"{stem_stride} x 2 x 2 downsampling"
                + (f" x patch {size_multiple}" if size_multiple > 1 else "")
            )
        self.image_size = image_size
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.stem_stride = stem_stride
        self.channels = tuple(channels)
        self.stages = build_conv_stages(
            in_channels, channels, blocks, stem_stride, block, expansion, drop_paths
        )

    def stage_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """(C, H, W) of each stage map for an input of ``image_size``."""
        sides = [self.image_size // (self.stem_stride * 2**stage) for stage in range(3)]
        return tuple((channels, side, side) for channels, side in zip(self.channels, sides, strict=True))

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validate ``x`` (unless tracing, where shapes are fixed) and return the three stage maps."""
        if not torch.jit.is_tracing():
            check_input(x, self.in_channels, self.image_size)
        first = self.stages[0](x)
        second = self.stages[1](first)
        return first, second, self.stages[2](second)

    def forward_all(self, x: torch.Tensor) -> HDKDOutput:
        """Logits and stage features of one forward pass; implemented by the teacher and the student."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_features: bool = False) -> Union[torch.Tensor, HDKDOutput]:  # noqa: UP007
        """Logits [B, num_classes], or an HDKDOutput with all heads and the stage features."""
        out = self.forward_all(x)
        if return_features:
            return out
        return out.logits
