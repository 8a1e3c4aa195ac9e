"""Where a run came from: MLflow's own context tags (user, source, git) completed for a bundle run, the
DVC stage, the DVC hashes of the data it read, and the split table as an MLflow dataset."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import mlflow
import pandas as pd
import yaml
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_REPO_URL,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
)

STAGE_TAG = "dvc.stage"
DVC_MD5_TAG = "dvc.md5."  # + the path of a DVC-tracked output, e.g. dvc.md5.data/split
DATA_OUTPUTS = ("data/slices", "data/split")


def dvc_output_hashes(root: Path, outputs: tuple[str, ...] = DATA_OUTPUTS) -> dict[str, str]:
    """The md5 that ``dvc.lock`` records for each of ``outputs`` (missing ones are left out)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    found = {out["path"]: out.get("md5", "") for stage in stages.values() for out in stage.get("outs", [])}
    return {path: found[path] for path in outputs if found.get(path)}


def provenance_tags(
    root: Path, source: str, stage_env: str, tags: Mapping[str, str] | None = None
) -> dict[str, str]:
    """MLflow's context tags (user, source type, ...) with the source set to ``source`` (e.g. the bundle
    config) and the git commit / branch / URL of the repository at ``root``; the DVC stage from env
    ``stage_env`` and the DVC md5 of the data outputs; then ``tags`` (which win)."""
    resolved = resolve_tags()
    resolved[MLFLOW_SOURCE_NAME] = source
    resolved[MLFLOW_SOURCE_TYPE] = "LOCAL"
    for key, value in (
        (MLFLOW_GIT_COMMIT, get_git_commit(str(root))),
        (MLFLOW_GIT_BRANCH, get_git_branch(str(root))),
        (MLFLOW_GIT_REPO_URL, get_git_repo_url(str(root))),
    ):
        if value:
            resolved[key] = value
    if os.environ.get(stage_env):
        resolved[STAGE_TAG] = os.environ[stage_env]
    for path, md5 in dvc_output_hashes(root).items():
        resolved[DVC_MD5_TAG + path] = md5
    resolved.update(tags or {})
    return {key: str(value) for key, value in resolved.items()}


def log_split_dataset(split_file: str | Path, context: str) -> None:
    """Log the split table as an MLflow dataset input of the active run (its digest identifies the slices,
    patients, labels and split assignment the run used)."""
    table = pd.read_csv(split_file)
    dataset = mlflow.data.from_pandas(
        table, source=str(split_file), name=Path(split_file).name, targets="label"
    )
    mlflow.log_input(dataset, context=context)
