"""The MLflow parent run of one pipeline execution (one `dvc repro` / `dvc exp run` process).

DVC runs each stage as a child process of the DVC process, and skips (or restores from its run
cache) the stages whose inputs did not change. So the parent run cannot be made by a stage of
its own: a stage that always runs would leave `dvc status` dirty forever. Instead, every stage
that logs to MLflow asks :func:`pipeline_parent_run` for the parent of *its* DVC process: the
first such stage of an execution creates it (tagged with the DVC process' id and start time), the
later ones find it by that tag. Stages DVC skips log nothing, so a parent run holds exactly the
work that execution did. ``HDKD_MLFLOW_PARENT_RUN_ID`` set by the user wins over all of this.
The evaluate stage's report logs the models' final numbers to that run (:func:`log_to_parent_run`).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from pipeline.params import flatten
from pipeline.tracking import (
    PARENT_RUN_ENV,
    check_store,
    configure_mlflow,
    flatten_params,
    get_or_create_experiment,
)

SESSION_TAG = "hdkd.dvc_session"
KIND_TAG = "hdkd.run_kind"


def _is_dvc(cmdline: list[str]) -> bool:
    """Whether a process command line is a DVC command (`dvc ...`, `python -m dvc ...`)."""
    head = cmdline[:3]
    return any(Path(part).name in ("dvc", "dvc.exe") for part in head) or head[1:3] == ["-m", "dvc"]


def dvc_session() -> str | None:
    """``host:pid:start-time`` of the DVC process this process runs under, or None outside DVC."""
    for process in psutil.Process().parents():
        try:
            if _is_dvc(process.cmdline()):
                return f"{socket.gethostname()}:{process.pid}:{process.create_time():.3f}"
        except psutil.Error:
            continue
    return None


def pipeline_parent_run(
    client: MlflowClient, experiment: str, params: Mapping[str, Any], session: str | None = None
) -> tuple[str | None, bool]:
    """The parent run id for this DVC execution and whether this process owns it (may end it).

    Returns ``(env value, False)`` when HDKD_MLFLOW_PARENT_RUN_ID is set, ``(None, False)`` outside DVC;
    otherwise finds or creates the run tagged with the DVC session, logging ``params`` (params.yaml) once.
    """
    if os.environ.get(PARENT_RUN_ENV):
        return os.environ[PARENT_RUN_ENV], False
    session = session or dvc_session()
    if session is None:
        return None, False
    experiment_id = get_or_create_experiment(client, experiment)
    found = client.search_runs([experiment_id], f"tags.`{SESSION_TAG}` = '{session}'", max_results=1)
    if found:
        return found[0].info.run_id, True
    tags = {SESSION_TAG: session, KIND_TAG: "pipeline"}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    run = client.create_run(
        experiment_id, run_name="pipeline " + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), tags=tags
    )
    logged = [Param(key, value) for key, value in flatten_params(params).items()]
    client.log_batch(run.info.run_id, params=logged)
    return run.info.run_id, True


def close_parent_run(client: MlflowClient, run_id: str, succeeded: bool) -> None:
    """Mark the parent run finished (or failed) after a stage; the next stage of the same execution
    re-uses it and moves its end time on."""
    client.set_terminated(run_id, "FINISHED" if succeeded else "FAILED")


def store_client(experiment: str) -> MlflowClient:
    """A client of the checked store (:func:`pipeline.tracking.check_store`: reachable, takes writes; the
    URI is exported to the commands as MLFLOW_TRACKING_URI)."""
    return MlflowClient(check_store(experiment))


def log_to_parent_run(metrics: Mapping[str, Mapping[str, Any]], files: Sequence[Path]) -> str | None:
    """Log every model's flat metrics as ``<model>.<key>`` and ``files`` (artifact folder ``report``) to the
    pipeline's parent run (``HDKD_MLFLOW_PARENT_RUN_ID``); returns its id, or None outside a pipeline
    execution."""
    run_id = os.environ.get(PARENT_RUN_ENV)
    if not run_id:
        return None
    client = MlflowClient(configure_mlflow())
    for model, values in metrics.items():
        for key, value in flatten(values).items():
            if isinstance(value, (int, float)) and value is not None:
                client.log_metric(run_id, f"{model}.{key}", float(value))
    for path in files:
        client.log_artifact(run_id, str(path), "report")
    return run_id
