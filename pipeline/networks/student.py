"""The HDKD student: the teacher's three convolutional stages (shallower) followed by DFLT, a small
vision transformer over 2x2 patches of the stage-3 map with a class token and, for HDKD, a
distillation token (DeiT-style)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import MLPBlock
from monai.networks.layers import DropPath
from torch import nn

from pipeline.networks.output import HDKDOutput
from pipeline.networks.stages import StagedNetwork, check_rate, drop_path_rates


class Attention(nn.Module):
    """Pre-norm multi-head self-attention (LayerNorm -> bias-free qkv -> SDPA -> output projection)."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.proj = nn.Linear(heads * head_dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).reshape(batch, tokens, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim)))


class TransformerLayer(nn.Module):
    """x + attention(x), then x + MLP(x); as published, only the attention branch is pre-normed."""

    def __init__(
        self, dim: int, heads: int, head_dim: int, mlp_ratio: int, dropout: float, drop_path: float
    ) -> None:
        super().__init__()
        self.attention = Attention(dim, heads, head_dim, dropout)
        self.mlp = MLPBlock(dim, dim * mlp_ratio, dropout, act="GELU", dropout_mode="vit")
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attention(x))
        return x + self.drop_path(self.mlp(x))


class DFLT(nn.Module):
    """Transformer over ``patch_size`` x ``patch_size`` patches of a [B, C, H, W] map.

    Patch embedding: LayerNorm(C*p*p) -> Linear -> LayerNorm(dim); then the class token (and the
    distillation token) are prepended, learned positions added, ``len(drop_paths)`` transformer layers
    applied and a final LayerNorm. Returns the normalised token sequence [B, tokens + patches, dim].
    """

    def __init__(
        self,
        in_channels: int,
        grid: int,
        patch_size: int,
        dim: int,
        heads: int,
        head_dim: int,
        mlp_ratio: int,
        distillation: bool,
        dropout: float,
        drop_paths: Sequence[float],
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        patch_dim = in_channels * patch_size * patch_size
        self.num_tokens = 2 if distillation else 1
        self.embed = nn.Sequential(nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim))
        self.tokens = nn.Parameter(torch.randn(1, self.num_tokens, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, self.num_tokens + (grid // patch_size) ** 2, dim))
        self.pos_drop = nn.Dropout(dropout)
        self.layers = nn.Sequential(
            *(TransformerLayer(dim, heads, head_dim, mlp_ratio, dropout, rate) for rate in drop_paths)
        )
        self.norm = nn.LayerNorm(dim)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, (H/p)(W/p), p*p*C] with features ordered (row in patch, column, channel).

        Goes through NHWC, so a ``channels_last`` map needs only the one copy of the final reshape.
        """
        batch, channels, height, width = x.shape
        p = self.patch_size
        x = x.permute(0, 2, 3, 1).reshape(batch, height // p, p, width // p, p, channels)
        return x.transpose(2, 3).reshape(batch, (height // p) * (width // p), p * p * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.embed(self.patchify(x))
        tokens = self.tokens.expand(patches.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([tokens, patches], dim=1) + self.pos_embedding)
        return self.norm(self.layers(x))


class HDKDStudent(StagedNetwork):
    """Hybrid student: three convolutional stages -> DFLT -> a linear head on the class token (and one on
    the distillation token when ``distillation``; the prediction is then the mean of the two heads).

    ``dropout`` acts on the positional embedding, attention weights, attention and MLP outputs and before
    the heads; ``drop_path`` is the largest stochastic-depth rate, rising linearly over the MBCSA blocks
    and then the transformer layers.
    """

    def __init__(
        self,
        image_size: int = 224,
        in_channels: int = 3,
        num_classes: int = 4,
        stem_stride: int = 2,
        blocks: Sequence[int] = (2, 2, 3),
        channels: Sequence[int] = (64, 96, 192),
        block: str = "mbcsa",
        expansion: int = 4,
        distillation: bool = True,
        patch_size: int = 2,
        dim: int = 256,
        depth: int = 3,
        heads: int = 8,
        head_dim: int = 32,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        check_rate("dropout", dropout)
        if min(patch_size, dim, depth, heads, head_dim, mlp_ratio) < 1:
            raise ValueError(
                "patch_size, dim, depth, heads, head_dim and mlp_ratio must be positive, got "
                f"{(patch_size, dim, depth, heads, head_dim, mlp_ratio)}"
            )
        rates = drop_path_rates(drop_path, sum(blocks[1:]) + depth)
        stage_blocks = len(rates) - depth
        super().__init__(
            image_size,
            in_channels,
            num_classes,
            stem_stride,
            blocks,
            channels,
            block,
            expansion,
            patch_size,
            rates[:stage_blocks],
        )
        self.distillation = distillation
        self.dflt = DFLT(
            channels[2],
            self.stage_shapes()[2][1],
            patch_size,
            dim,
            heads,
            head_dim,
            mlp_ratio,
            distillation,
            dropout,
            rates[stage_blocks:],
        )
        self.head_drop = nn.Dropout(dropout)
        self.head_cls = nn.Linear(dim, num_classes)
        self.head_distill = nn.Linear(dim, num_classes) if distillation else None

    def forward_all(self, x: torch.Tensor) -> HDKDOutput:
        """Logits of both heads and stage features of one forward pass."""
        features = self.forward_stages(x)
        tokens = self.head_drop(self.dflt(features[2])[:, : self.dflt.num_tokens])
        cls_logits = self.head_cls(tokens[:, 0])
        head_distill = self.head_distill
        if head_distill is None:
            return HDKDOutput(cls_logits, cls_logits, None, features)
        distill_logits = head_distill(tokens[:, 1])
        return HDKDOutput((cls_logits + distill_logits) / 2, cls_logits, distill_logits, features)
