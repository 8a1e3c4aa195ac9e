"""The launcher every DVC stage runs through (`python -m pipeline.stages exec ... -- COMMAND [-- COMMAND]`).

It checks every key of params.yaml (pipeline.params: the message names the bad key) and the data
checks the stage asks for, and with ``mlflow`` finds or creates the pipeline's MLflow parent run
(pipeline.tracking.parent) and hands its id to the commands in ``HDKD_MLFLOW_PARENT_RUN_ID``; then it runs
the commands one after another, stops at the first that fails and returns its exit code. Each ``--``
starts a command, so one stage can run several ``python -m`` commands in one process and import torch
and MONAI once (the evaluation stage runs the three bundle evaluations and the report this way).

A stage process imports torch, MONAI and MLflow: some 600,000 objects that live until it ends.
:func:`startup_without_gc` imports them with the cyclic garbage collector paused and then freezes
them, so neither the collections during the stage nor the interpreter's own at exit walk them again
(about 2.5 s less per stage on 2 cores).
"""

from __future__ import annotations

import gc
import os
import runpy
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.lifetime import run_ending_with_parent
from pipeline.params import PARAMS_FILE, check_classes, check_raw_dir, load_params, validate

EXPERIMENT_NAME = "hdkd"


@contextmanager
def startup_without_gc() -> Iterator[None]:
    """Pause cyclic garbage collection for the block (a stage's imports), then move every object
    alive at its end to the collector's permanent generation (``gc.freeze``) and resume collecting."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def run_command(command: list[str]) -> int:
    """Run ``command`` and return its exit code. ``python -m MODULE ARGS`` runs in this process (the
    stage then imports torch/MONAI once, not twice); anything else runs as a subprocess that ends
    when this process ends."""
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
    return run_ending_with_parent(command)


def split_commands(tokens: list[str]) -> list[list[str]]:
    """The commands in ``tokens``: each ``--`` starts one (a leading ``--`` is optional)."""
    commands: list[list[str]] = [[]]
    for token in tokens[1:] if tokens[:1] == ["--"] else tokens:
        if token == "--":
            commands.append([])
        else:
            commands[-1].append(token)
    if not all(commands):
        raise ValueError("exec: give each of the stage's commands after a `--`")
    return commands


def run_commands(commands: list[list[str]]) -> int:
    """Run ``commands`` in order; the exit code of the first that fails, else 0."""
    for command in commands:
        code = run_command(command)
        if code:
            return code
    return 0


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
    commands: list[list[str]],
    params: Mapping[str, Any],
    mlflow: bool = False,
    experiment: str = EXPERIMENT_NAME,
    stage: str | None = None,
) -> int:
    """Run ``commands`` (:func:`run_commands`); with ``mlflow`` as children of the pipeline's MLflow
    parent run (created with ``params`` logged when this is the execution's first MLflow stage), after
    checking that the store answers and takes writes (exit code 2 with a one-line error otherwise, before
    any command runs). ``stage`` (the DVC stage name) is handed to the commands' runs as a tag.
    Returns the exit code."""
    if stage:
        from pipeline.tracking import STAGE_ENV

        os.environ[STAGE_ENV] = stage
    if not mlflow:
        return run_commands(commands)
    from pipeline.tracking import PARENT_RUN_ENV, TrackingStoreError
    from pipeline.tracking.parent import close_parent_run, pipeline_parent_run, store_client

    try:
        client = store_client(experiment)  # also exports MLFLOW_TRACKING_URI to the command
    except TrackingStoreError as error:
        print(f"python -m pipeline.stages exec: error: {error}", file=sys.stderr)
        return 2
    parent, owned = pipeline_parent_run(client, experiment, params)
    if parent:
        os.environ[PARENT_RUN_ENV] = parent
    code = 1
    try:
        code = run_commands(commands)
    finally:
        if parent and owned:
            close_parent_run(client, parent, succeeded=code == 0)
    return code
