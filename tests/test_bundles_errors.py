"""Bad input to the bundles fails before any training, with an error naming the thing and what to do."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from bundle_testing import (
    CLASSES,
    FAST,
    STUDENT,
    TEACHER,
    bundle_env,
    make_split,
    run_bundle,
    save_checkpoint,
)

from pipeline.bundle import check_choice, check_split, class_list, flag, load_teacher, prepare_models_dir
from pipeline.networks import NetworkSettings, build_network


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_split(tmp_path_factory.mktemp("data"), {"train": 2, "val": 1, "test": 1})


def _fails(result, *fragments: str) -> None:
    assert result.returncode != 0
    text = result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in output:\n{text[-4000:]}"
    assert "Engine run resuming from iteration 0" not in text  # nothing was trained


@pytest.mark.slow
def test_misspelt_override_is_rejected_with_the_known_keys(split: Path, tmp_path: Path) -> None:
    result = run_bundle(
        f"{TEACHER}/train.json",
        *FAST,
        "--split_file",
        str(split),
        "--epoch",
        "3",
        "--models_dir",
        str(tmp_path / "m"),
        env=bundle_env(tmp_path / "db.db"),
        check=False,
    )
    _fails(result, "unknown config key(s) ['--epoch']", "epochs")


@pytest.mark.slow
def test_missing_teacher_weights_say_how_to_train_them(split: Path, tmp_path: Path) -> None:
    result = run_bundle(
        f"{STUDENT}/train.json",
        *FAST,
        "--split_file",
        str(split),
        "--models_dir",
        str(tmp_path / "m"),
        "--teacher_ckpt",
        str(tmp_path / "none.pt"),
        env=bundle_env(tmp_path / "db.db"),
        check=False,
    )
    _fails(
        result,
        f"error: teacher weights {tmp_path / 'none.pt'} not found",
        "bundles/hdkd_teacher/configs/train.json",
    )
    assert "Traceback" not in result.stderr  # one line, not MONAI's chained tracebacks


def _infer_with_demo_checkpoint(tmp_path: Path, source: Path, *overrides: str):
    """The student's inference.json on ``source`` with a demo HDKD checkpoint written as training writes
    it (its settings inside) and ``overrides``."""
    settings = NetworkSettings("hdkd", "demo", image_size=64, in_channels=1, class_names=CLASSES)
    weights = save_checkpoint(settings.build(), settings, tmp_path)
    return run_bundle(
        f"{STUDENT}/inference.json",
        *overrides,
        "--ckpt_path",
        str(weights),
        "--input",
        str(source),
        "--output_dir",
        str(tmp_path / "out"),
        env=bundle_env(tmp_path / "db.db"),
        check=False,
    )


@pytest.mark.slow
def test_inference_on_a_file_the_loaders_reject_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "scan.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    result = _infer_with_demo_checkpoint(tmp_path, bad)  # no --profile: the checkpoint says demo
    assert result.returncode != 0
    assert "no usable image in" in result.stderr and "scan.dcm" in result.stderr


@pytest.mark.slow
def test_inference_refuses_a_profile_or_variant_the_checkpoint_contradicts(tmp_path: Path) -> None:
    for override, message in (
        (("--profile", "published"), "profile 'demo', but profile 'published' was given"),
        (("--variant", "baseline"), "role 'hdkd', but role 'baseline' was given"),
    ):
        result = _infer_with_demo_checkpoint(tmp_path, tmp_path, *override)
        assert result.returncode != 0
        assert f"checkpoint {tmp_path / 'model.pt'} holds a network with {message}" in result.stderr


def test_missing_split_file_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"split file .*none\.csv not found: .*split --output"):
        check_split(tmp_path / "none.csv", CLASSES, ("train", "val"))
    # in a project, the stage of its dvc.yaml that writes the missing path
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "dvc.yaml", project)
    with pytest.raises(FileNotFoundError, match=r"split/split\.csv not found: `dvc repro split`"):
        check_split(project / "data/split/split.csv", CLASSES, ("train",), project_dir=project)


def test_empty_split_and_small_train_split_are_errors(split: Path, tmp_path: Path) -> None:
    table = pd.read_csv(split)
    table[table["split"] != "val"].to_csv(tmp_path / "split.csv", index=False)
    (tmp_path / "slices").symlink_to(split.parent / "slices")
    with pytest.raises(ValueError, match="split 'val' has no rows"):
        check_split(tmp_path / "split.csv", CLASSES, ("train", "val"))
    with pytest.raises(ValueError, match="fewer than one batch"):
        check_split(split, CLASSES, ("train", "val"), min_items=100)
    assert check_split(split, CLASSES, ("train", "val", "test")) == {"train": 8, "val": 4, "test": 4}


def test_missing_image_listed_in_the_split_is_an_error(split: Path, tmp_path: Path) -> None:
    table = pd.read_csv(split)
    table.loc[0, "path"] = "slices/gone.npy"
    table.to_csv(tmp_path / "split.csv", index=False)
    (tmp_path / "slices").symlink_to(split.parent / "slices")
    with pytest.raises(FileNotFoundError, match=r"gone\.npy"):
        check_split(tmp_path / "split.csv", CLASSES, ("train",))


def test_teacher_of_another_architecture_or_class_count_is_refused(tmp_path: Path) -> None:
    teacher = build_network("teacher", "demo")
    for name, other in (
        ("student", build_network("hdkd", "demo")),  # the file name: a student's weights
        ("classes", build_network("teacher", "demo", num_classes=7)),
    ):
        path = tmp_path / f"{name}.pt"
        torch.save(other.state_dict(), path)
        with pytest.raises(
            ValueError, match=rf"teacher weights .*{name}\.pt do not fit the teacher .*4 classes"
        ):
            load_teacher(teacher, path)
    path = tmp_path / "good.pt"
    torch.save(build_network("teacher", "demo").state_dict(), path)
    assert load_teacher(teacher, path) is teacher
    # a teacher checkpoint that records other settings than the student's config expects
    expected = NetworkSettings("teacher", "demo", image_size=64, in_channels=1, class_names=CLASSES)
    trained = NetworkSettings("teacher", "demo", 64, 1, class_names=("a", "b", "c", "d"))
    recorded = save_checkpoint(build_network("teacher", "demo"), trained, tmp_path, "recorded.pt")
    with pytest.raises(ValueError, match=r"teacher checkpoint .*recorded\.pt holds a network with class_n"):
        load_teacher(teacher, recorded, expected)
    save_checkpoint(build_network("teacher", "demo"), expected, tmp_path, "matching.pt")
    assert load_teacher(teacher, tmp_path / "matching.pt", expected) is teacher


def test_option_values_are_checked() -> None:
    assert class_list("a, b,c") == ["a", "b", "c"] and class_list(["x", "y"]) == ["x", "y"]
    with pytest.raises(ValueError, match="--class_names"):
        class_list("a,a")
    assert flag("resume", "false") is False and flag("resume", True) is True
    with pytest.raises(ValueError, match="--resume must be true or false"):
        flag("resume", "maybe")
    with pytest.raises(ValueError, match=r"--profile must be one of \['demo', 'published'\]"):
        check_choice("profile", "tiny", ("published", "demo"))


def test_models_dir_resumes_only_an_unfinished_run_of_the_same_length(tmp_path: Path) -> None:
    def checkpoint(epoch: int, max_epochs: int) -> Path:
        path = tmp_path / f"checkpoint_epoch={epoch}.pt"
        torch.save({"trainer": {"iteration": 4 * epoch, "epoch_length": 4, "max_epochs": max_epochs}}, path)
        return path

    first = checkpoint(1, 3)
    assert prepare_models_dir(tmp_path, epochs=3) == str(first)
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(b"")  # cut short by a kill
    assert prepare_models_dir(tmp_path, epochs=3) == str(first)
    assert prepare_models_dir(tmp_path, epochs=3, resume=False) is None
    assert list(tmp_path.glob("checkpoint_epoch=*.pt")) == []
    checkpoint(3, 3)
    assert prepare_models_dir(tmp_path, epochs=3) is None  # finished: a new run starts
    checkpoint(1, 5)
    assert prepare_models_dir(tmp_path, epochs=3) is None  # another run length
