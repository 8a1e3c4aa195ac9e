"""Strict teacher loading: accepted checkpoint layouts and a clear error for every kind of wrong file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.distill import load_weights
from pipeline.networks import build_network


@pytest.fixture(scope="module")
def trained_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_network("teacher", "demo").state_dict()


def assert_loaded(network: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in network.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("layout", ["raw", "network", "model"])
def test_accepts_state_dict_and_checkpoint_dicts(tmp_path: Path, trained_state: dict, layout: str) -> None:
    optimizer_state = torch.optim.Adam(build_network("teacher", "demo").parameters()).state_dict()
    content = (
        trained_state
        if layout == "raw"
        else {layout: trained_state, "optimizer": optimizer_state, "epoch": 3}
    )
    torch.save(content, tmp_path / "teacher.pt")
    torch.manual_seed(1)
    network = build_network("teacher", "demo")
    assert load_weights(network, tmp_path / "teacher.pt") is network
    assert_loaded(network, trained_state)


def write(tmp_path: Path, state: dict) -> Path:
    path = tmp_path / "teacher.pt"
    torch.save({"network": state}, path)
    return path


def test_missing_key_is_named(tmp_path: Path, trained_state: dict) -> None:
    dropped = sorted(trained_state)[0]
    path = write(tmp_path, {key: value for key, value in trained_state.items() if key != dropped})
    with pytest.raises(ValueError, match=rf"teacher\.pt.*missing keys \(1\): {dropped}"):
        load_weights(build_network("teacher", "demo"), path)


def test_unexpected_key_is_named(tmp_path: Path, trained_state: dict) -> None:
    path = write(tmp_path, {**trained_state, "extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"teacher\.pt.*unexpected keys \(1\): extra\.weight"):
        load_weights(build_network("teacher", "demo"), path)


def test_shape_mismatch_is_named(tmp_path: Path, trained_state: dict) -> None:
    key = next(k for k, v in trained_state.items() if v.dim() == 4)
    shape = tuple(trained_state[key].shape)
    wrong = torch.zeros(shape[0] + 1, *shape[1:])
    path = write(tmp_path, {**trained_state, key: wrong})
    with pytest.raises(ValueError, match=rf"teacher\.pt.*shape mismatch \(1\): {key}: \({shape[0] + 1}, "):
        load_weights(build_network("teacher", "demo"), path)


def test_wrong_class_count_shows_as_the_head_shape(tmp_path: Path) -> None:
    path = write(tmp_path, build_network("teacher", "demo", num_classes=7).state_dict())
    with pytest.raises(
        ValueError, match=r"teacher\.pt.*shape mismatch.*\(7, 32\) in file vs \(4, 32\) in network"
    ):
        load_weights(build_network("teacher", "demo"), path)


def test_student_weights_are_not_a_teacher(tmp_path: Path) -> None:
    path = write(tmp_path, build_network("hdkd", "demo").state_dict())
    with pytest.raises(ValueError, match=r"missing keys.*unexpected keys"):
        load_weights(build_network("teacher", "demo"), path)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"this is a text file, not weights\n", "not a readable PyTorch checkpoint"),
        (b"PK\x03\x04 truncated zip", "not a readable PyTorch checkpoint"),
        (b"", "not a readable PyTorch checkpoint"),
    ],
)
def test_garbage_file_is_an_error(tmp_path: Path, payload: bytes, reason: str) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=rf"garbage\.pt.*{reason}"):
        load_weights(build_network("teacher", "demo"), path)


def test_pickled_object_is_refused_by_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(build_network("teacher", "demo"), path)  # a whole pickled module, not weights
    with pytest.raises(ValueError, match=r"module\.pt is not a readable PyTorch checkpoint"):
        load_weights(build_network("teacher", "demo"), path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (torch.zeros(3), "holds a Tensor"),
        ({"state": {"a": torch.zeros(1)}, "epoch": 1}, r"top-level keys: state, epoch"),
        ({"network": {"a": 1}}, "neither a state_dict"),
        ({"network": {"a": torch.zeros(1)}, "model": {"a": torch.zeros(1)}}, "ambiguous"),
    ],
)
def test_checkpoint_without_a_network_state_is_an_error(tmp_path: Path, content: object, reason: str) -> None:
    torch.save(content, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=rf"odd\.pt.*{reason}"):
        load_weights(build_network("teacher", "demo"), tmp_path / "odd.pt")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothere\.pt"):
        load_weights(build_network("teacher", "demo"), tmp_path / "nothere.pt")
