"""Inference engines (pipeline.engines): each reproduces torch float32, "auto" measures once per machine
and model and then reads its cache, the cache lives in the user cache folder. Speed is not asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.engines import (
    CACHE_FILE,
    OPENVINO_FP32,
    ORT_FP32,
    ORT_INT8,
    TORCH_BF16,
    TORCH_FP32,
    Trial,
    auto_candidates,
    available_engines,
    build_runner,
    cache_dir,
    compare,
    fastest,
    model_key,
    select_engine,
)
from pipeline.networks import build_network

SIZE, CLASSES = 32, 4
SHAPE = (1, SIZE, SIZE)


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("hdkd", "demo", image_size=SIZE, num_classes=CLASSES).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine_models")


def test_every_engine_is_available_with_the_export_and_test_extras() -> None:
    assert set(available_engines("cpu")) == {TORCH_FP32, TORCH_BF16, ORT_FP32, ORT_INT8, OPENVINO_FP32}
    assert available_engines("cuda") == (TORCH_FP32, TORCH_BF16)
    assert set(auto_candidates("cpu")) <= set(available_engines("cpu"))


@pytest.mark.parametrize("name", [TORCH_FP32, TORCH_BF16, ORT_FP32, ORT_INT8, OPENVINO_FP32])
def test_every_engine_reproduces_float32(
    name: str, network: torch.nn.Module, images: torch.Tensor, folder: Path
) -> None:
    with torch.no_grad():
        expected = network(images)
    logits = build_runner(name, network, SHAPE, folder, images.numpy())(images)
    assert logits.shape == (len(images), CLASSES) and logits.dtype == torch.float32
    agreement, change = compare(expected, logits)
    if name in (TORCH_FP32, ORT_FP32, OPENVINO_FP32):
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    else:  # bf16 keeps 8 mantissa bits; int8 is calibrated on these very images
        assert change < 0.1, (name, agreement, change)


def test_compare_reports_agreement_and_probability_change() -> None:
    reference = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    agreement, change = compare(reference, torch.tensor([[2.0, 0.0], [2.0, 0.0]]))
    expected_change = (torch.softmax(reference, 1)[1] - torch.softmax(reference, 1)[0]).abs().max().item()
    assert agreement == 0.5 and change == pytest.approx(expected_change)


def test_fastest_engine_that_agrees_wins() -> None:
    trials = [
        Trial(TORCH_FP32, 10.0, 1.0, 0.0),
        Trial(ORT_INT8, 40.0, 0.5, 0.4),
        Trial(ORT_FP32, 20.0, 1.0, 1e-6),
    ]
    assert fastest(trials, 0.95).engine == ORT_FP32
    assert fastest(trials, 0.4).engine == ORT_INT8


def test_auto_measures_once_then_reads_the_cache(
    network: torch.nn.Module, images: torch.Tensor, tmp_path: Path
) -> None:
    first = select_engine(network, images[:3], batch_size=8, seconds=0.05, cache=tmp_path)
    assert first.how == "measured" and first.engine in auto_candidates("cpu")
    assert [trial.engine for trial in first.trials] == list(auto_candidates("cpu"))
    reference = next(trial for trial in first.trials if trial.engine == TORCH_FP32)
    assert reference.top1_agreement == 1.0 and reference.max_probability_change == 0.0
    chosen = next(trial for trial in first.trials if trial.engine == first.engine)
    assert all(chosen.images_per_s >= t.images_per_s for t in first.trials if t.top1_agreement >= 0.95)
    cached = json.loads((tmp_path / CACHE_FILE).read_text())
    (key,) = cached
    assert key.endswith("/batch8") and cached[key]["engine"] == first.engine
    second = select_engine(network, images[:3], batch_size=8, seconds=0.05, cache=tmp_path)
    assert (second.how, second.engine, second.trials) == ("cached", first.engine, first.trials)
    torch.testing.assert_close(second.run(images), first.run(images))


def test_the_cache_key_follows_the_weights(network: torch.nn.Module) -> None:
    changed = build_network("hdkd", "demo", image_size=SIZE, num_classes=CLASSES)
    assert model_key(network, SHAPE) == model_key(network, SHAPE)
    assert model_key(changed, SHAPE) != model_key(network, SHAPE)
    assert model_key(network, (3, SIZE, SIZE)) != model_key(network, SHAPE)


def test_requested_engines(network: torch.nn.Module, images: torch.Tensor, tmp_path: Path) -> None:
    selection = select_engine(network, images, ORT_FP32, cache=tmp_path)
    assert (selection.engine, selection.how, selection.trials) == (ORT_FP32, "requested", [])
    assert not (tmp_path / CACHE_FILE).exists()
    with pytest.raises(ValueError, match="engine 'tensorrt': must be one of"):
        select_engine(network, images, "tensorrt", cache=tmp_path)


def test_cache_folder_is_the_users(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HDKD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "hdkd-pipeline"
    monkeypatch.setenv("HDKD_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("HDKD_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "hdkd-pipeline"
