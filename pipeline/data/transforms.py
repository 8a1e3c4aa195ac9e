"""MONAI transform chains that turn a 2D ``.npy`` slice (C, H, W) into a network input.

The training chain follows the published HDKD recipe (torchvision in the original code):
rotation by up to +-180 degrees, horizontal and vertical flips, brightness and contrast
jitter of 0.3, sharpening and Gaussian blur. The MONAI equivalents used here:

============================  ==========================================================
published (torchvision)       here (MONAI)
============================  ==========================================================
RandomRotation(180)           RandRotated(range_x=pi, prob=1)
RandomHorizontal/VerticalFlip RandFlipd(spatial_axis=1 / 0, prob=0.5)
ColorJitter(brightness=0.3)   RandScaleIntensityd(factors=0.3, prob=1): x * U(0.7, 1.3)
ColorJitter(contrast=0.3)     RandScaleIntensityFixedMeand(factors=0.3, prob=1)
RandomAdjustSharpness(2)      RandGaussianSharpend(alpha=1, prob=0.5): x + 1 * (x - blur(x))
GaussianBlur(3)               RandGaussianSmoothd(sigma U(0.1, 0.8), prob=1)
============================  ==========================================================

torchvision's blur uses a 3-tap kernel, which caps its effective sigma near 0.8 whatever sigma
it draws; MONAI's kernel is not truncated that way, hence the (0.1, 0.8) sigma range. After the
intensity changes the image is clipped back to [0, 1] (torchvision clamps too).

As published, the slice is resized first and augmented at the network's size. The deterministic
head (load, resize) comes before the first random transform, so a ``CacheDataset`` caches the resized
slice and only the augmentation runs per epoch. Grayscale slices are repeated to 3 channels last
(cheaper) when the network takes 3. The published code always applies ImageNet normalisation (its
inputs are RGB photos or RGB-saved MRI); here it is ``imagenet_norm``, for 3-channel input. ``seed``
fixes the chain's own random state; a MONAI ``DataLoader`` reseeds it (per worker) from torch's seed,
so ``set_determinism`` makes training runs repeatable.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    RandFlipd,
    RandGaussianSharpend,
    RandGaussianSmoothd,
    RandRotated,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    Resized,
    ScaleIntensityRanged,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MatchChannelsd(MapTransform):
    """Give the image the channel count the network expects.

    A 1-channel (grayscale) image is repeated to ``channels``; an image that already has
    ``channels`` channels passes unchanged; anything else is a ValueError naming both counts.
    """

    def __init__(self, keys: KeysCollection, channels: int) -> None:
        super().__init__(keys)
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            image = out[key]
            got = image.shape[0]
            if got == self.channels:
                continue
            if got != 1:
                raise ValueError(
                    f"'{key}' has {got} channels but the network expects {self.channels}; only "
                    "1-channel images are repeated to match"
                )
            out[key] = image.repeat(self.channels, *([1] * (image.ndim - 1)))
        return out


def _check_args(image_size: int, in_channels: int, imagenet_norm: bool) -> None:
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    if imagenet_norm and in_channels != 3:
        raise ValueError("imagenet_norm needs in_channels=3 (the ImageNet statistics are per RGB channel)")


def _load_and_resize(image_size: int) -> list[MapTransform]:
    """Deterministic head of both chains: load the (C, H, W) slice, resize to a square."""
    return [
        LoadImaged(keys="image", reader="NumpyReader", ensure_channel_first=True, channel_dim=0),
        Resized(keys="image", spatial_size=(image_size, image_size), mode="bilinear", anti_aliasing=True),
    ]


def _finish(in_channels: int, imagenet_norm: bool) -> list[MapTransform]:
    """Shared tail: channel matching, optional ImageNet normalisation, plain tensors."""
    tail: list[MapTransform] = [MatchChannelsd(keys="image", channels=in_channels)]
    if imagenet_norm:
        tail.append(
            NormalizeIntensityd(
                keys="image", subtrahend=IMAGENET_MEAN, divisor=IMAGENET_STD, channel_wise=True
            )
        )
    tail += [
        EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
        EnsureTyped(keys="label", dtype=torch.long, track_meta=False),
    ]
    return tail


def eval_transforms(image_size: int, in_channels: int = 1, imagenet_norm: bool = False) -> Compose:
    """Deterministic chain for validation, test and inference: load, resize, match channels.

    ``imagenet_norm`` standardises 3-channel input with the ImageNet mean/std, as the published
    code does; leave it off for grayscale data, whose slices are already in [0, 1].
    """
    _check_args(image_size, in_channels, imagenet_norm)
    return Compose([*_load_and_resize(image_size), *_finish(in_channels, imagenet_norm)])


def train_transforms(
    image_size: int,
    in_channels: int = 1,
    imagenet_norm: bool = False,
    rotate_degrees: float = 180.0,
    rotate_prob: float = 1.0,
    flip_prob: float = 0.5,
    brightness: float = 0.3,
    contrast: float = 0.3,
    jitter_prob: float = 1.0,
    sharpen_alpha: float = 1.0,
    sharpen_prob: float = 0.5,
    blur_sigma: Sequence[float] = (0.1, 0.8),
    blur_prob: float = 1.0,
    seed: int | None = None,
) -> Compose:
    """Training chain: the eval chain plus the published augmentation (see the module docstring).

    Magnitudes: ``rotate_degrees`` (uniform in +-degrees), ``brightness`` / ``contrast`` (factor
    uniform in 1 +- value), ``sharpen_alpha`` (sharpness factor minus one), ``blur_sigma`` (range
    in pixels). Each ``*_prob`` is the chance the step runs; 0 disables it. ``seed`` fixes the
    chain's random state so two chains built with the same seed produce the same images.
    """
    _check_args(image_size, in_channels, imagenet_norm)
    low, high = (float(s) for s in blur_sigma)
    augment: list[MapTransform] = [
        RandRotated(
            keys="image",
            range_x=math.radians(rotate_degrees),
            prob=rotate_prob,
            keep_size=True,
            mode="bilinear",
            padding_mode="zeros",
            dtype=torch.float32,
        ),
        RandFlipd(keys="image", spatial_axis=1, prob=flip_prob),
        RandFlipd(keys="image", spatial_axis=0, prob=flip_prob),
        RandScaleIntensityd(keys="image", factors=brightness, prob=jitter_prob),
        RandScaleIntensityFixedMeand(keys="image", factors=contrast, fixed_mean=True, prob=jitter_prob),
        RandGaussianSharpend(
            keys="image",
            sigma1_x=(0.1, 0.1),
            sigma1_y=(0.1, 0.1),
            sigma2_x=0.7,
            sigma2_y=0.7,
            alpha=(sharpen_alpha, sharpen_alpha),
            prob=sharpen_prob,
        ),
        RandGaussianSmoothd(keys="image", sigma_x=(low, high), sigma_y=(low, high), prob=blur_prob),
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
    ]
    chain = Compose([*_load_and_resize(image_size), *augment, *_finish(in_channels, imagenet_norm)])
    if seed is not None:
        chain.set_random_state(seed=seed)
    return chain
