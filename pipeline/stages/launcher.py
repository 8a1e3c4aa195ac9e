"""The launcher every DVC stage runs through (`python -m pipeline.stages exec ... -- COMMAND`).

It checks every key of params.yaml (pipeline.params: the message names the bad key) and the data
checks the stage asks for, and with ``mlflow`` finds or creates the pipeline's MLflow parent run
(pipeline.experiment) and hands its id to the command in ``HDKD_MLFLOW_PARENT_RUN_ID``; then it runs
the command and returns its exit code.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.params import PARAMS_FILE, check_classes, check_raw_dir, load_params, validate

EXPERIMENT_NAME = "hdkd"


def run_command(command: list[str]) -> int:
    """Run ``command`` and return its exit code. ``python -m MODULE ARGS`` runs in this process (the
    stage then imports torch/MONAI once, not twice); anything else runs as a subprocess."""
    if len(command) >= 3 and Path(command[0]).name.startswith("python") and command[1] == "-m":
        saved = sys.argv
        sys.argv = [command[2], *command[3:]]
        try:
            runpy.run_module(command[2], run_name="__main__", alter_sys=True)
        except SystemExit as end:
            code = end.code
            return code if isinstance(code, int) else (0 if code is None else 1)
        finally:
            sys.argv = saved
        return 0
    return subprocess.call(command)


def check_stage(
    params_file: Path = Path(PARAMS_FILE),
    raw_dir: bool = False,
    labels: Path | None = None,
    networks: bool = True,
) -> dict:
    """Check every key of ``params_file`` (and ``data.raw_dir`` / the classes of the ``labels`` CSV when
    asked; with ``networks``, that the networks take ``model.image_size``); returns the params. Raises
    ParamsError / ValueError naming the key or file."""
    params = load_params(params_file)
    flat = validate(params, source=str(params_file), networks=networks)
    if raw_dir:
        check_raw_dir(flat)
    if labels:
        check_classes(flat, labels)
    return params


def launch(
    command: list[str], params: Mapping[str, Any], mlflow: bool = False, experiment: str = EXPERIMENT_NAME
) -> int:
    """Run ``command``; with ``mlflow`` as a child of the pipeline's MLflow parent run (created with
    ``params`` logged when this is the execution's first MLflow stage). Returns its exit code."""
    if not command:
        raise ValueError("exec: give the stage's command after `--`")
    if not mlflow:
        return run_command(command)
    from mlflow.tracking import MlflowClient

    from pipeline.experiment import close_parent_run, pipeline_parent_run
    from pipeline.tracking import PARENT_RUN_ENV, configure_mlflow

    client = MlflowClient(configure_mlflow())  # also exports MLFLOW_TRACKING_URI to the command
    parent, owned = pipeline_parent_run(client, experiment, params)
    if parent:
        os.environ[PARENT_RUN_ENV] = parent
    code = 1
    try:
        code = run_command(command)
    finally:
        if parent and owned:
            close_parent_run(client, parent, succeeded=code == 0)
    return code
