"""Convolutional blocks of HDKD: the stem block, MBConv (squeeze-excitation) and MBCSA (CBAM).

Every convolution is bias-free and followed by BatchNorm, as in the published networks, so the
parameter counts match them exactly. All blocks work on NCHW tensors in either memory format
(``torch.channels_last`` included): attention maps are computed with pooling and 1x1 convolutions,
never by reshaping to token form.
"""

from __future__ import annotations

import torch
from monai.networks.layers import DropPath
from torch import nn


class ConvBNAct(nn.Sequential):
    """Convolution (no bias) -> BatchNorm -> GELU; the block of the stem (stage 1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
        )


class SqueezeExcitation(nn.Module):
    """Channel gating from globally averaged features (bias-free bottleneck of ``reduced`` channels)."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Conv2d(channels, reduced, 1, bias=False),
            nn.GELU(),
            nn.Conv2d(reduced, channels, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(self.pool(x))


class ChannelAttention(nn.Module):
    """CBAM channel attention: a shared bias-free MLP over average- and max-pooled features."""

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        reduced = max(1, channels // ratio)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, reduced, 1, bias=False),
            nn.GELU(),
            nn.Conv2d(reduced, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The attention map [B, C, 1, 1] in (0, 1)."""
        return torch.sigmoid(self.mlp(self.avg_pool(x)) + self.mlp(self.max_pool(x)))


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a bias-free 7x7 convolution over the channel mean and channel max."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The attention map [B, 1, H, W] in (0, 1)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional block attention: channel then spatial attention, with an identity shortcut."""

    def __init__(self, channels: int, ratio: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention(channels, ratio)
        self.spatial_attention = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.channel_attention(x)
        return x + y * self.spatial_attention(y)


class InvertedBottleneck(nn.Module):
    """Pre-norm mobile inverted bottleneck with an attention module; base of MBConv and MBCSA.

    BN(x) -> 1x1 expand (stride 2 when downsampling) -> BN/GELU -> 3x3 depthwise -> BN/GELU -> attention
    -> 1x1 project -> BN, added to the shortcut: the input itself, or ``1x1 conv(maxpool(3, 2, 1)(x))``
    when the block downsamples. ``drop_path`` drops the residual branch per sample while training.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        downsample: bool = False,
        expansion: int = 4,
        kernel_size: int = 3,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if not downsample and in_channels != out_channels:
            raise ValueError(
                f"a block that does not downsample keeps its width: got {in_channels} -> {out_channels}"
            )
        hidden = in_channels * expansion
        self.shortcut: nn.Module = (
            nn.Sequential(nn.MaxPool2d(3, 2, 1), nn.Conv2d(in_channels, out_channels, 1, bias=False))
            if downsample
            else nn.Identity()
        )
        self.branch = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            ConvBNAct(in_channels, hidden, 1, stride=2 if downsample else 1),
            nn.Conv2d(hidden, hidden, kernel_size, 1, kernel_size // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.GELU(),
            self.make_attention(in_channels, hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.drop_path = DropPath(drop_path)

    @staticmethod
    def make_attention(in_channels: int, hidden: int) -> nn.Module:
        """The attention module between the depthwise conv and the projection; set by subclasses."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.drop_path(self.branch(x))


class MBConv(InvertedBottleneck):
    """Inverted bottleneck with squeeze-excitation (bottleneck of ``in_channels / 4``), the ablation block."""

    @staticmethod
    def make_attention(in_channels: int, hidden: int) -> nn.Module:
        return SqueezeExcitation(hidden, max(1, in_channels // 4))


class MBCSA(InvertedBottleneck):
    """Inverted bottleneck with CBAM (channel and spatial attention), the HDKD block."""

    @staticmethod
    def make_attention(in_channels: int, hidden: int) -> nn.Module:
        return CBAM(hidden)
