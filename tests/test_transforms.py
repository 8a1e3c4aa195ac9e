"""Transform chains: output format for 1 and 3 channels, augmentation on, evaluation deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.transforms import IMAGENET_MEAN, eval_transforms, train_transforms


def _slice(tmp_path: Path, channels: int, name: str = "s.npy") -> dict:
    rng = np.random.default_rng(0)
    image = np.zeros((channels, 40, 52), np.float32)
    image[:, 8:30, 10:40] = rng.uniform(0.2, 1.0, (channels, 22, 30))  # off-centre, so a flip shows
    np.save(tmp_path / name, image)
    return {"image": str(tmp_path / name), "label": 2}


@pytest.mark.parametrize("source_channels,in_channels", [(1, 1), (1, 3), (3, 3)])
@pytest.mark.parametrize("chain", [eval_transforms, train_transforms])
def test_output_shape_type_and_range(tmp_path: Path, chain, source_channels: int, in_channels: int) -> None:
    out = chain(32, in_channels)(_slice(tmp_path, source_channels))
    image, label = out["image"], out["label"]
    assert type(image) is torch.Tensor and image.dtype == torch.float32
    assert image.shape == (in_channels, 32, 32)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert label.dtype == torch.long and int(label) == 2
    if source_channels == 1 and in_channels == 3:
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_rgb_into_a_one_channel_network_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps a transform's error in a RuntimeError
        eval_transforms(32, 1)(_slice(tmp_path, 3))
    causes = []
    error: BaseException | None = raised.value
    while error is not None:
        causes.append(str(error))
        error = error.__cause__
    assert any("3 channels but the network expects 1" in c for c in causes)


def test_imagenet_normalisation_per_channel(tmp_path: Path) -> None:
    data = _slice(tmp_path, 3)
    plain = eval_transforms(32, 3)(data)["image"]
    normed = eval_transforms(32, 3, imagenet_norm=True)(data)["image"]
    for c, mean in enumerate(IMAGENET_MEAN):
        assert torch.allclose(normed[c] * (0.229, 0.224, 0.225)[c] + mean, plain[c], atol=1e-5)
    with pytest.raises(ValueError, match="imagenet_norm needs in_channels=3"):
        eval_transforms(32, 1, imagenet_norm=True)


def test_eval_is_deterministic_and_train_augments(tmp_path: Path) -> None:
    data = _slice(tmp_path, 1)
    chain = eval_transforms(32)
    reference = chain(data)["image"]
    assert torch.equal(chain(data)["image"], reference)
    augment = train_transforms(32, seed=1)
    first, second = augment(data)["image"], augment(data)["image"]
    assert not torch.allclose(first, reference, atol=1e-3)
    assert not torch.allclose(first, second, atol=1e-3)


def test_train_chain_is_reproducible_for_a_seed(tmp_path: Path) -> None:
    data = _slice(tmp_path, 1)
    first, second = (train_transforms(32, seed=7)(data)["image"] for _ in range(2))
    assert torch.equal(first, second)
    assert not torch.equal(first, train_transforms(32, seed=8)(data)["image"])


def test_all_augmentations_off_equals_eval(tmp_path: Path) -> None:
    data = _slice(tmp_path, 1)
    off = train_transforms(
        32, rotate_prob=0, flip_prob=0, jitter_prob=0, sharpen_prob=0, blur_prob=0, seed=0
    )(data)["image"]
    assert torch.allclose(off, eval_transforms(32)(data)["image"], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"image_size": 0}, "image_size"),
        ({"image_size": 32, "in_channels": 2}, "in_channels must be 1 or 3"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train_transforms(**kwargs)
