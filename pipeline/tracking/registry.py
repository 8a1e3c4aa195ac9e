"""The MLflow Model Registry entry of the exported HDKD student.

:func:`check_registry` runs before the export writes anything: the store must answer and take writes,
and a registered model already under the name must be one of this pipeline's with the same interface
(role, input shape, classes). :func:`register_model` then logs the model -- the checkpoint as a pyfunc
model with the ONNX and int8 files stored inside it -- in an ``export_<role>`` run (tagged with the
training run) and registers it as a new version tagged with the test metrics and the training run id.
A version whose files are byte-identical to an existing one is not registered again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from pipeline.tracking import TRAINING_RUN_TAG, check_store, start_run

INTERFACE_TAG = "hdkd.interface"  # on the registered model: role, input shape and classes as JSON
CONTENT_TAG = "hdkd.content_sha256"  # on a version: digest of its checkpoint and attached files


class RegistryError(ValueError):
    """The registered model name is taken by a model this one cannot join; the message says what to do."""


def interface(config: Mapping[str, Any]) -> str:
    """What a client of the registered model relies on: role, input shape, class names (JSON)."""
    shape = [-1, config["in_channels"], config["image_size"], config["image_size"]]
    return json.dumps({"role": config["role"], "input": shape, "classes": list(config["class_names"])})


def check_registry(name: str, config: Mapping[str, Any], experiment_name: str) -> str:
    """Check the store (reachable, writable) and that registered model ``name`` is absent or holds this
    pipeline's models with the same :func:`interface`; returns the tracking URI. Raises
    TrackingStoreError / :class:`RegistryError` with a one-line message."""
    uri = check_store(experiment_name)
    try:
        existing = MlflowClient(uri).get_registered_model(name)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return uri
        raise
    found = existing.tags.get(INTERFACE_TAG)
    if found != interface(config):
        held = found or "a model not registered by this pipeline (no hdkd.interface tag)"
        raise RegistryError(
            f"MLflow registry {uri}: registered model '{name}' holds {held}, this model is "
            f"{interface(config)}; set export.registered_model in params.yaml to another name, or delete "
            "that registered model"
        )
    return uri


def content_digest(paths: list[Path]) -> str:
    """SHA-256 over the files' names and bytes (in the given order)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def registered_version(client: MlflowClient, name: str, digest: str) -> ModelVersion | None:
    """The version of ``name`` whose content digest is ``digest``, if any."""
    found = client.search_model_versions(f"name = '{name}' and tags.`{CONTENT_TAG}` = '{digest}'")
    return found[0] if found else None


def register_model(
    name: str,
    checkpoint: str | Path,
    config: Mapping[str, Any],
    files: Mapping[str, str | Path],
    training_run_id: str,
    test_metrics: Mapping[str, float],
    experiment_name: str,
) -> tuple[ModelVersion, bool]:
    """Register ``checkpoint`` (with ``files`` inside the model, e.g. ``{"onnx": ..., "onnx_int8": ...}``)
    as a version of ``name``; returns (version, whether it is new). See the module docstring."""
    from pipeline.tracking.model import log_classifier

    client = MlflowClient(check_registry(name, config, experiment_name))
    digest = content_digest([Path(checkpoint), *(Path(files[key]) for key in sorted(files))])
    existing = registered_version(client, name, digest)
    if existing is not None:
        return existing, False
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name,
            tags={INTERFACE_TAG: interface(config)},
            description=f"HDKD {config['role']} of the HDKD pipeline: class probabilities for a batch of "
            f"slices [-1, {config['in_channels']}, {config['image_size']}, {config['image_size']}]",
        )
    tags = {TRAINING_RUN_TAG: training_run_id, CONTENT_TAG: digest}
    run_id = start_run(
        f"export_{config['role']}",
        experiment_name,
        params={
            "registered_model": name,
            "checkpoint": str(checkpoint),
            **{k: str(v) for k, v in files.items()},
        },
        tags=tags,
        source="pipeline/export.py",
    )
    with mlflow.start_run(run_id=run_id):
        info = log_classifier(checkpoint, config, extra_artifacts=files)
        mlflow.log_metrics(dict(test_metrics))
    version_tags = {**tags, **{key: str(value) for key, value in test_metrics.items()}}
    version = mlflow.register_model(info.model_uri, name, tags=version_tags)
    return version, True
