"""Strict weight loading (accepted checkpoint layouts, a clear error for every kind of wrong file) and
the network settings a training checkpoint carries: the network rebuilt from the file alone, and an
explicit setting that contradicts it refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bundle_testing import CLASSES, save_checkpoint

from pipeline.networks import NetworkSettings, build_network, load_trained, load_weights, read_settings
from pipeline.roles import MODELS


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


@pytest.mark.parametrize("role", MODELS)
def test_a_saved_checkpoint_rebuilds_its_network_alone(tmp_path: Path, role: str) -> None:
    settings = NetworkSettings(role, "demo", image_size=48, in_channels=1, class_names=CLASSES[:3])
    torch.manual_seed(0)
    network = settings.build().eval()
    path = save_checkpoint(network, settings, tmp_path)
    assert read_settings(path) == settings
    # the file alone: role, profile, size, channels and the 3 classes come from it
    rebuilt_settings, rebuilt = load_trained(path)
    assert rebuilt_settings == settings and type(rebuilt) is type(network)
    assert (rebuilt.image_size, rebuilt.in_channels, rebuilt.num_classes) == (48, 1, 3)
    assert_loaded(rebuilt, network.state_dict())
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), network(x), rtol=0, atol=0)
    # explicit settings that agree are accepted
    assert load_trained(path, role=role, profile="demo", class_names=list(CLASSES[:3]))[0] == settings


def test_an_explicit_setting_contradicting_the_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    settings = NetworkSettings("hdkd", "demo", image_size=64, in_channels=1, class_names=CLASSES)
    path = save_checkpoint(settings.build(), settings, tmp_path)
    for given, expected in (
        ({"profile": "published"}, "profile 'demo', but profile 'published' was given"),
        ({"role": "baseline"}, "role 'hdkd', but role 'baseline' was given"),
        ({"class_names": ["a", "b"]}, "class_names ['glioma', 'meningioma', 'pituitary', 'notumor'], but"),
    ):
        with pytest.raises(ValueError, match=r"checkpoint .*model\.pt holds a network with ") as error:
            load_trained(path, **given)
        assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_checkpoint_without_settings_says_to_retrain(tmp_path: Path) -> None:
    for name, content in (
        ("bare.pt", build_network("hdkd", "demo").state_dict()),
        ("old.pt", {"network": build_network("hdkd", "demo").state_dict()}),
    ):
        torch.save(content, tmp_path / name)
        with pytest.raises(ValueError, match=rf"{name} records no network settings .*retrain") as error:
            load_trained(tmp_path / name, profile="demo")
        assert "\n" not in str(error.value)


def test_settings_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match=r"role must be one of \['teacher', 'baseline', 'hdkd'\], got 'stud"):
        NetworkSettings("student", "demo", 64, 1, CLASSES)
    with pytest.raises(ValueError, match="profile must be one of"):
        NetworkSettings("hdkd", "tiny", 64, 1, CLASSES)
    with pytest.raises(ValueError, match=r"lack \['class_names'\]"):
        NetworkSettings.from_dict({"role": "hdkd", "profile": "demo", "image_size": 64, "in_channels": 1})
