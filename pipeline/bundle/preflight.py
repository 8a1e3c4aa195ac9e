"""Checks the bundle configs run before any data is cached or any training starts, each failing with
an error that names the file or key and what to do about it."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.bundle.errors import BundleInputError, MissingInputError, missing
from pipeline.data.datasets import load_split
from pipeline.networks import NetworkSettings, load_weights, read_settings

TRUE_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
TEACHER_TRAINING = (
    "`python -m monai.bundle run --config_file bundles/hdkd_teacher/configs/train.json --models_dir DIR` "
    "writes DIR/model.pt"
)


def check_choice(key: str, value: Any, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming the key and the choices."""
    if value not in choices:
        raise BundleInputError(f"--{key} must be one of {sorted(choices)}, got {value!r}")
    return value


def class_list(class_names: Sequence[str] | str) -> list[str]:
    """The class names from a list or a comma-separated string (what DVC can pass); at least two,
    distinct and non-empty."""
    names = (
        [name.strip() for name in class_names.split(",")]
        if isinstance(class_names, str)
        else list(class_names)
    )
    if len(names) < 2 or len(set(names)) != len(names) or not all(names):
        raise BundleInputError(
            f"--class_names must be at least two distinct, non-empty names, got {class_names!r}"
        )
    return names


def flag(key: str, value: Any) -> bool:
    """A boolean config value; accepts true/false/yes/no/1/0 strings (the command line gives
    ``--resume false`` as a string)."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word not in TRUE_WORDS:
        raise BundleInputError(f"--{key} must be true or false, got {value!r}")
    return TRUE_WORDS[word]


def check_split(
    split_file: str | Path,
    class_names: Sequence[str],
    splits: Sequence[str],
    min_items: int = 1,
    project_dir: str | Path = ".",
) -> dict[str, int]:
    """Load each of ``splits`` from ``split_file`` (the data layer's errors name the file for a missing
    file, an unknown split, an empty split or an unknown label), check that every image exists and that
    the first split has at least ``min_items`` images (a full training batch). Returns the sizes. A
    missing file names the stage of ``project_dir``'s dvc.yaml that makes it."""
    path = Path(split_file)
    if not path.is_file():
        raise missing(
            "split file", path, project_dir, f"`python -m pipeline split --output {path} ...` makes it",
            "--split_file",
        )
    sizes = {}
    for split in splits:
        try:
            items = load_split(path, split, list(class_names))
        except ValueError as error:
            raise BundleInputError(str(error)) from None
        absent = [item["image"] for item in items if not Path(item["image"]).is_file()]
        if absent:
            raise MissingInputError(
                f"{len(absent)} image(s) of the '{split}' split listed in {path} do not exist, e.g. "
                f"{absent[0]}; re-run `dvc repro slices split` or fix the CSV"
            )
        sizes[split] = len(items)
    first = splits[0]
    if sizes[first] < min_items:
        raise BundleInputError(
            f"the '{first}' split of {path} has {sizes[first]} images, fewer than one batch "
            f"({min_items}); lower --batch_size or add data"
        )
    return sizes


def load_teacher(
    teacher: nn.Module,
    checkpoint: str | Path,
    expected: NetworkSettings | None = None,
    project_dir: str | Path = ".",
) -> nn.Module:
    """``teacher`` with the weights of ``checkpoint`` loaded strictly; a missing file (named with the
    stage of ``project_dir``'s dvc.yaml that makes it), a checkpoint whose recorded settings differ from
    ``expected`` (the teacher the config builds) or one of another architecture / class count is an error
    saying how to produce the right one."""
    path = Path(checkpoint)
    if not path.is_file():
        raise missing("teacher weights", path, project_dir, TEACHER_TRAINING, "--teacher_ckpt")
    try:
        if expected is not None:
            read_settings(path).check(f"teacher checkpoint {path}", **expected.state_dict())
        return load_weights(teacher, path)
    except ValueError as error:
        raise BundleInputError(
            f"teacher weights {path} do not fit the teacher this config builds "
            f"({teacher.num_classes} classes, {teacher.in_channels} channels, {teacher.image_size} px): "
            f"{error}. Was it trained with other model settings or classes? {TEACHER_TRAINING}"
        ) from None


def trained_settings(
    checkpoint: str | Path,
    bundle_name: str,
    role: str,
    profile: str | None = None,
    class_names: Sequence[str] | str | None = None,
    project_dir: str | Path = ".",
) -> NetworkSettings:
    """The network settings recorded in the bundle's trained checkpoint, from which evaluation and
    inference rebuild the network. ``role`` (the bundle variant's) and the explicit ``profile`` /
    ``class_names`` (None: the checkpoint's) must agree with the record; a missing file is an error naming
    the command that trains it or where to point ``--ckpt_path``."""
    path = Path(checkpoint)
    if not path.is_file():
        training = (
            f"`python -m monai.bundle run --config_file bundles/{bundle_name}/configs/train.json` "
            "(same --variant / --models_dir) writes it"
        )
        raise missing("trained weights", path, project_dir, training, "--ckpt_path")
    names = None if class_names is None else class_list(class_names)
    try:
        return read_settings(path).check(f"checkpoint {path}", role=role, profile=profile, class_names=names)
    except ValueError as error:
        raise BundleInputError(str(error)) from None
