"""Validation of params.yaml: every key is checked at the start of every DVC stage.

A bad value raises :class:`ParamsError` whose message names the key (``distill.lambda``), the
value and the reason, before any work starts. ``validate(params)`` checks the file alone;
``check_raw_dir`` and ``check_classes`` add the checks that need the data on disk.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipeline.choices import AUGMENTATIONS, CHANNELS, KD_REDUCTIONS, KD_TYPES, LR_SCHEDULES, PROFILE_NAMES

PARAMS_FILE = "params.yaml"


class ParamsError(ValueError):
    """A params.yaml value that the pipeline cannot use; the message starts with the key."""

    def __init__(self, key: str, value: Any, reason: str, source: str = PARAMS_FILE) -> None:
        super().__init__(f"{source}: {key} = {value!r}: {reason}")
        self.key = key


Check = Callable[[Any], "str | None"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive(value: Any) -> str | None:
    """A finite number > 0."""
    return None if _number(value) and value > 0 else "must be a number > 0"


def non_negative(value: Any) -> str | None:
    """A finite number >= 0."""
    return None if _number(value) and value >= 0 else "must be a number >= 0"


def fraction(value: Any) -> str | None:
    """A fraction in (0, 1]."""
    return None if _number(value) and 0 < value <= 1 else "must be a fraction in (0, 1]"


def probability(value: Any) -> str | None:
    """A number in [0, 1)."""
    return None if _number(value) and 0 <= value < 1 else "must be a number in [0, 1)"


def unit_interval(value: Any) -> str | None:
    """A number in [0, 1]."""
    return None if _number(value) and 0 <= value <= 1 else "must be a number in [0, 1]"


def count(minimum: int) -> Check:
    """An integer >= ``minimum``."""

    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        return None if ok else f"must be an integer >= {minimum}"

    return check


def one_of(*choices: Any) -> Check:
    """One of ``choices``."""

    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {list(choices)}"

    return check


def each(check: Check) -> Check:
    """A non-empty list of distinct values that each pass ``check``."""

    def check_list(value: Any) -> str | None:
        if not isinstance(value, list) or not value:
            return "must be a non-empty list"
        reasons = [f"item {item!r} {reason}" for item in value if (reason := check(item))]
        if reasons:
            return reasons[0]
        return None if len(set(value)) == len(value) else "must not repeat a value"

    return check_list


def text(value: Any) -> str | None:
    """A non-empty string."""
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def split_names(value: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]`` (a comma-separated string, because DVC cannot put a list
    into a stage's command line)."""
    return [name.strip() for name in value.split(",")]


def class_list(value: Any) -> str | None:
    """A comma-separated string of at least two distinct, non-empty class names."""
    if not isinstance(value, str) or not all(split_names(value)):
        return "must be comma-separated non-empty class names, e.g. 'glioma,meningioma,pituitary,notumor'"
    names = split_names(value)
    if len(set(names)) != len(names):
        return "must not repeat a class name"
    return None if len(names) >= 2 else "needs at least two classes"


def device_name(value: Any) -> str | None:
    """ "auto", "cpu", "cuda" or "cuda:N", and CUDA only when a GPU is present."""
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"
    if value in ("auto", "cpu"):
        return None  # always possible; no need to import torch
    from pipeline.device import select_device

    try:
        select_device(value)
    except RuntimeError as err:
        return str(err)
    return None


def precision(value: Any) -> str | None:
    """A precision setting: one of ``pipeline.device.PRECISIONS`` ("auto", "fp32", "bf16")."""
    from pipeline.device import PRECISIONS  # imported here: validating the file needs no torch

    return one_of(*PRECISIONS)(value)


def registered_model_name(value: Any) -> str | None:
    """An MLflow registered-model name: letters, digits, '.', '_' and '-' (it appears in models:/ URIs)."""
    ok = isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value)
    return None if ok else "must be a name of letters, digits, '.', '_' and '-' (e.g. hdkd-student)"


# Slices are resized to model.image_size: below 16 px the networks' 8x-downsampled stage-3 map has
# under 2x2 cells (nothing for the student's 2x2 patches); above 1024 px one published-teacher forward
# takes > 200 GFLOP and a batch of 16 no longer fits in a typical 16-32 GB machine.
IMAGE_SIZE_LIMITS = (16, 1024)


def pixels(value: Any) -> str | None:
    """An image size in IMAGE_SIZE_LIMITS (the networks' own divisibility rules are checked later)."""
    low, high = IMAGE_SIZE_LIMITS
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    return None if ok else f"must be an integer from {low} to {high} pixels"


TRAINING: dict[str, Check] = {"epochs": count(1), "batch_size": count(1), "lr": positive, "seed": count(0)}


# Every key params.yaml must hold, and its check. A key missing here is unknown (likely a typo).
SCHEMA: dict[str, Check] = {
    "runtime.device": device_name,
    "runtime.num_workers": count(0),
    "runtime.teacher_precision": precision,
    "runtime.model_precision": precision,
    "data.raw_dir": text,
    "data.class_names": class_list,
    "data.workers": count(0),
    "demo.cases": count(4),
    "demo.seed": count(0),
    "slices.max_per_volume": count(1),
    "split.val": probability,
    "split.test": probability,
    "split.seed": count(0),
    "split.train_fraction": fraction,
    "model.profile": one_of(*PROFILE_NAMES),
    "model.image_size": pixels,
    "model.in_channels": one_of(*CHANNELS),
    "model.augment": one_of(*AUGMENTATIONS),
    **{f"teacher.{key}": check for key, check in TRAINING.items()},
    **{f"student.{key}": check for key, check in TRAINING.items()},
    "teacher.lr_schedule": one_of(*LR_SCHEDULES),
    "student.weight_decay": non_negative,
    "student.warmup_epochs": count(0),
    "student.warmup_lr": non_negative,
    "student.min_lr": non_negative,
    "student.cooldown_epochs": count(0),
    "distill.type": one_of(*KD_TYPES),
    "distill.kd_reduction": one_of(*KD_REDUCTIONS),
    "distill.alpha": unit_interval,
    "distill.tau": positive,
    "distill.lambda": non_negative,
    "evaluate.n_bootstrap": count(0),
    "evaluate.latency_runs": count(1),
    "export.opset": count(13),
    "export.calibration_images": count(1),
    "export.int8_min_agreement": unit_interval,
    "export.registered_model": registered_model_name,
    "efficiency.fractions": each(fraction),
    "efficiency.seeds": each(count(0)),
    "efficiency.steps_per_epoch": count(1),
    "lambda_search.values": each(non_negative),
    "lambda_search.seeds": each(count(0)),
}


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml into a nested dict; a missing or malformed file is a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found (run from the repository root)")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(params, dict):
        raise ValueError(f"{path}: must hold a mapping of sections, got {type(params).__name__}")
    return params


def bundle_settings(path: str | Path) -> dict[str, Any]:
    """The checked settings of ``path`` (a params.yaml) as a flat ``{"section.key": value}`` dict: what
    the bundle configs read (``@settings['student.epochs']``). Networks are not built here; the bundle
    builds them itself and reports a size they cannot take."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(
            "params_file",
            str(path),
            "not found: a bundle reads its settings from the project's params.yaml; pass "
            "--params_file PATH (a params.yaml of this pipeline) or run the bundle inside its project",
            source="bundle",
        )
    return validate(load_params(path), source=str(path), networks=False)


def _check_network(flat: Mapping[str, Any], source: str) -> None:
    """Build the teacher and HDKD student the training stages will build; a size they cannot take
    is reported against ``model.image_size``."""
    from pipeline.networks import build_network, check_feature_compatibility

    arguments = {
        "image_size": flat["model.image_size"],
        "in_channels": flat["model.in_channels"],
        "num_classes": len(split_names(flat["data.class_names"])),
    }
    try:
        teacher = build_network("teacher", flat["model.profile"], **arguments)
        student = build_network("hdkd", flat["model.profile"], **arguments)
        check_feature_compatibility(teacher, student)
    except ValueError as err:
        raise ParamsError(
            "model.image_size",
            flat["model.image_size"],
            f"the {flat['model.profile']} networks cannot take it ({err})",
            source,
        ) from err


def validate(params: Mapping[str, Any], source: str = PARAMS_FILE, networks: bool = True) -> dict[str, Any]:
    """Check every key of ``params`` (nested, as in params.yaml); return the flat ``{"a.b": value}``.

    Raises ParamsError for the first unknown, missing or invalid key. ``networks`` also builds the
    networks once to check that they accept ``model.image_size``.
    """
    flat = flatten(params)
    for key in flat:
        if key not in SCHEMA:
            raise ParamsError(key, flat[key], f"unknown key (known keys: {', '.join(SCHEMA)})", source)
    for key, check in SCHEMA.items():
        if key not in flat:
            raise ParamsError(key, None, "missing", source)
        reason = check(flat[key])
        if reason:
            raise ParamsError(key, flat[key], reason, source)
    if flat["split.val"] + flat["split.test"] >= 1:
        raise ParamsError(
            "split.test",
            flat["split.test"],
            f"split.val + split.test must be < 1, got {flat['split.val']} + {flat['split.test']}",
            source,
        )
    if networks:
        _check_network(flat, source)
    return flat


def check_raw_dir(flat: Mapping[str, Any], root: str | Path = ".") -> Path:
    """The cohort folder ``data.raw_dir`` must exist; say how to bring data when it does not."""
    raw_dir = Path(root) / flat["data.raw_dir"]
    if not raw_dir.is_dir():
        raise ParamsError(
            "data.raw_dir",
            flat["data.raw_dir"],
            f"folder {raw_dir} not found. Put your scans and "
            "labels.csv there and run `dvc add data/raw` (README: 'Bring your own data'), or set "
            "data.raw_dir: data/demo to use the built-in demo cohort",
        )
    return raw_dir


def check_classes(flat: Mapping[str, Any], labels_csv: str | Path) -> None:
    """``data.class_names`` must be exactly the labels found in ``labels_csv`` (column ``label``)."""
    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise ValueError(f"{labels_csv}: file not found (run the earlier pipeline stages first)")
    found = set(pd.read_csv(labels_csv, usecols=["label"], dtype=str)["label"].dropna())
    expected = set(split_names(flat["data.class_names"]))
    if found != expected:
        problems = []
        if found - expected:
            problems.append(f"labels in the data but not listed: {sorted(found - expected)}")
        if expected - found:
            problems.append(f"listed classes without any data: {sorted(expected - found)}")
        reason = f"does not match {labels_csv}: " + "; ".join(problems)
        raise ParamsError("data.class_names", flat["data.class_names"], reason)
