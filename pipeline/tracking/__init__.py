"""MLflow wiring: one SQLite store, explicitly named runs, nesting under the pipeline's parent run.

Every bundle run logs through MONAI's ``MLFlowHandler``; this module only prepares what the handler
cannot: the store (created once, under a file lock, checked to be reachable and writable), the run itself
(named, tagged with its parent and its provenance -- pipeline.tracking.provenance --, its hyper-parameters
and the executed config logged up front) and the handler bound to that run, which at the end also logs
the kept checkpoint's validation scores and the model itself (pipeline.tracking.model).

A training run is found in the store, never through a file in its models folder (a DVC output that must
be the same bytes on every identical run): by tag ``hdkd.models_dir`` to resume it, by tag
``hdkd.checkpoint_sha256`` (the kept ``model.pt``) to name it on the runs that evaluate or export it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow
from filelock import FileLock
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis
from monai.handlers import MLFlowHandler
from monai.utils import path_to_uri

from pipeline.device import cpu_report
from pipeline.digest import file_sha256

logger = logging.getLogger(__name__)

PARENT_RUN_ENV = "HDKD_MLFLOW_PARENT_RUN_ID"
STAGE_ENV = "HDKD_DVC_STAGE"  # a run's DVC stage (set by `python -m pipeline.stages exec --stage`)
PARENT_TAG = "mlflow.parentRunId"
SQLITE_PREFIX = "sqlite:///"
TRAINING_RUN_TAG = "hdkd.training_run_id"  # on evaluation runs and registered versions
MODELS_DIR_TAG = "hdkd.models_dir"  # on a training run: the absolute path of its models folder
CHECKPOINT_TAG = "hdkd.checkpoint_sha256"  # on a completed training run: SHA-256 of the model.pt it kept
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value
STORE_PROBE_TAG = "hdkd.pipeline"  # experiment tag written by check_store to prove the store takes writes


def repo_root() -> Path:
    """The repository root: the folder holding the ``pipeline`` package."""
    return Path(__file__).resolve().parents[2]


def default_tracking_uri() -> str:
    """``sqlite:///<repo root>/mlflow.db``."""
    return SQLITE_PREFIX + str(repo_root() / "mlflow.db")


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(uri[len(SQLITE_PREFIX) :]) if uri.startswith(SQLITE_PREFIX) else None


def configure_mlflow(tracking_uri: str | None = None) -> str:
    """Turn MLflow telemetry off, pick the tracking URI (argument, else env ``MLFLOW_TRACKING_URI``,
    else ``sqlite:///<repo root>/mlflow.db``), make it the process-wide URI and, for a SQLite store that
    does not exist yet, create it exactly once under a file lock. Returns the URI."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if uri.startswith("file:") or "://" not in uri:
        raise ValueError(
            f"MLflow tracking URI {uri!r} is a plain path; MLflow 3 needs a database URI such as "
            f"'sqlite:///{Path(uri.removeprefix('file://')).resolve()}/mlflow.db'"
        )
    # MONAI's MLFlowHandler gives the environment variable priority: keep the two in agreement.
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    database = _sqlite_path(uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(database) + ".lock"):
            if not database.exists() or database.stat().st_size == 0:
                MlflowClient(uri).search_experiments()  # creates the schema
    return uri


class TrackingStoreError(ValueError):
    """The MLflow store cannot be used (unreachable, read-only); the message names it and the fix."""


def check_store(experiment_name: str, tracking_uri: str | None = None) -> str:
    """Check that the tracking store answers (quickly: no retries) and takes writes (an idempotent tag on
    ``experiment_name``); returns its URI. Raises :class:`TrackingStoreError` with a one-line message
    naming the store and what to do, so a stage can fail before it writes anything."""
    def fix(kind: str) -> str:
        return f"or set MLFLOW_TRACKING_URI to a {kind} store (default {default_tracking_uri()})"

    try:
        uri = configure_mlflow(tracking_uri)
    except OSError as error:
        named = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        raise TrackingStoreError(
            f"MLflow store {named} cannot be created ({error}); fix the path {fix('writable')}"
        ) from error
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {key: os.environ.get(key) for key in quick}
    os.environ.update(quick)
    client = MlflowClient(uri)
    try:
        try:
            client.search_experiments(max_results=1)
        except Exception as error:  # whatever the store or the network raises: it did not answer
            raise TrackingStoreError(
                f"MLflow store {uri} is unreachable ({_first_line(error)}); start its server "
                f"{fix('reachable')}"
            ) from error
        try:
            experiment_id = get_or_create_experiment(client, experiment_name)
            client.set_experiment_tag(experiment_id, STORE_PROBE_TAG, "python -m pipeline.stages")
        except mlflow.exceptions.MlflowException as error:
            raise TrackingStoreError(
                f"MLflow store {uri} does not take writes ({_first_line(error)}); make it writable "
                f"{fix('writable')}"
            ) from error
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return uri


def _first_line(error: BaseException) -> str:
    """The first line of an exception's message (store errors carry whole SQL statements)."""
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: ``mlartifacts/`` next to a SQLite store."""
    database = _sqlite_path(uri)
    return None if database is None else path_to_uri(database.parent / "mlartifacts")


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created (artifacts next to the store) when missing; tolerates
    another process creating it at the same moment."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri))
        except mlflow.exceptions.MlflowException:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise ValueError(
            f"MLflow experiment '{name}' is deleted; restore it (mlflow experiments restore) or pick "
            "another experiment_name"
        )
    return experiment.experiment_id


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings flattened to ``a.b`` keys, values as strings cut to MLflow's length limit."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def parent_run_id(client: MlflowClient) -> str | None:
    """The pipeline's parent run from env ``HDKD_MLFLOW_PARENT_RUN_ID`` (checked to exist), or None."""
    run_id = os.environ.get(PARENT_RUN_ENV, "").strip()
    if not run_id:
        return None
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise ValueError(
            f"{PARENT_RUN_ENV}={run_id} is not a run in the MLflow store {client.tracking_uri}; unset it or "
            "point MLFLOW_TRACKING_URI at the store that holds it"
        ) from error
    return run_id


def start_run(
    run_name: str,
    experiment_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    artifacts: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
    models_dir: str | Path | None = None,
    resume: bool = False,
    source: str = "",
) -> str:
    """Create the MLflow run ``run_name`` in ``experiment_name`` and return its id.

    The run is a child of ``HDKD_MLFLOW_PARENT_RUN_ID`` when that is set and carries its provenance
    (pipeline.tracking.provenance: user, ``source`` -- e.g. the bundle config --, git commit, DVC stage and
    data hashes; ``tags`` win); ``params`` are flattened and logged; ``artifacts`` maps a file name to
    JSON-ready content logged as a JSON artifact (e.g. the executed config; None is not
    logged). A training run passes its ``models_dir``, recorded as tag ``hdkd.models_dir`` (absolute
    path); with ``resume`` as well, the newest unfinished run of the experiment with that tag is continued
    (a training run resumed from its checkpoint keeps one run), and a new run is created when there is none.
    """
    from pipeline.tracking.provenance import provenance_tags

    uri = configure_mlflow(tracking_uri)
    client = MlflowClient(uri)
    folder, folder_clause = _models_dir_filter(models_dir) if models_dir else (None, None)
    run_id = _resumable_run(client, experiment_name, folder_clause) if resume and folder_clause else None
    if run_id is None:
        all_tags = {**cpu_report().tags(), **provenance_tags(repo_root(), source, STAGE_ENV, tags)}
        if folder:
            all_tags[MODELS_DIR_TAG] = folder
        parent = parent_run_id(client)
        if parent:
            all_tags[PARENT_TAG] = parent
        experiment_id = get_or_create_experiment(client, experiment_name)
        run_id = client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
        if params:
            client.log_batch(run_id, params=[Param(k, v) for k, v in flatten_params(params).items()])
    else:
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    _opened.add((uri, run_id))
    for name, content in (artifacts or {}).items():
        if content is None:  # e.g. no executed config: the bundle was run from MONAI's Python API
            continue
        client.log_text(run_id, json.dumps(content, indent=2, default=str), name)
    return run_id


# (tracking URI, run id) of every run start_run created or resumed in this process
_opened: set[tuple[str, str]] = set()


def fail_unfinished_runs() -> None:
    """Mark FAILED every run :func:`start_run` opened in this process that is still RUNNING: a run ends
    FINISHED only where its work completes (the training handler at COMPLETED, ``end_run`` in the
    evaluation's finalize), so one still running when the process exits (an exception, SIGTERM turned
    into SystemExit by :func:`pipeline.lifetime.exit_on_sigterm`, ``sys.exit``) did not complete.
    Registered at exit; it runs before MLflow's own exit hook, which would end the active run FINISHED."""
    for uri, run_id in sorted(_opened):
        try:
            if MlflowClient(uri).get_run(run_id).info.status != RunStatus.to_string(RunStatus.RUNNING):
                continue
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run_id:
                mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
            else:
                MlflowClient(uri).set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            logger.warning("MLflow run %s did not complete: marked FAILED", run_id)
        except mlflow.exceptions.MlflowException as error:  # store gone: nothing left to mark
            logger.warning("could not mark MLflow run %s FAILED: %s", run_id, error)
    _opened.clear()


atexit.register(fail_unfinished_runs)  # after `import mlflow`, so it runs before MLflow's exit hook


def _models_dir_filter(models_dir: str | Path) -> tuple[str, str]:
    """(absolute path of ``models_dir``, MLflow filter clause selecting the runs tagged with it). MLflow's
    filter grammar has no escapes: the value is quoted with a quote character it does not hold (a single
    quote may not follow a final backslash); a path no quoting expresses is refused."""
    path = str(Path(models_dir).resolve())
    quote = next((q for q in ('"', "'") if q not in path and not (q == "'" and path.endswith("\\"))), None)
    if quote is None:
        raise ValueError(
            f'models folder {path} cannot be named in an MLflow search (it holds both \' and ", or " and a '
            "final backslash); pick a models_dir without quote characters"
        )
    return path, f"tags.`{MODELS_DIR_TAG}` = {quote}{path}{quote}"


def _resumable_run(client: MlflowClient, experiment_name: str, models_dir_filter: str) -> str | None:
    """The newest run of ``experiment_name`` matching ``models_dir_filter`` that is not FINISHED."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        f"{models_dir_filter} and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def activate_run(run_id: str, dataset: str | Path | None = None, dataset_context: str = "testing") -> str:
    """Make ``run_id`` the active MLflow run of this process (handlers that log to ``mlflow.active_run()``,
    such as the evaluation report, then log to it) and log ``dataset`` (a split CSV) as its input under
    ``dataset_context``; returns the id."""
    from pipeline.tracking.provenance import log_split_dataset

    mlflow.start_run(run_id=run_id)
    if dataset:
        log_split_dataset(dataset, dataset_context)
    return run_id


def training_run_of(checkpoint: str | Path, tracking_uri: str | None = None) -> str:
    """The id of the MLflow run that trained ``checkpoint``: the run of the tracking store (any active
    experiment) tagged ``hdkd.checkpoint_sha256`` with the file's SHA-256 (the newest of several), or ""
    when no run there kept these bytes (or the file is missing)."""
    if not Path(checkpoint).is_file():
        return ""
    configure_mlflow(tracking_uri)
    runs = mlflow.search_runs(
        filter_string=f"tags.`{CHECKPOINT_TAG}` = '{file_sha256(checkpoint)}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        search_all_experiments=True,
        output_format="list",
    )
    return runs[0].info.run_id if runs else ""


def end_run() -> None:
    """Finish the active MLflow run, if any."""
    if mlflow.active_run() is not None:
        mlflow.end_run()


class RunMLFlowHandler(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` bound to one run created by :func:`start_run`.

    The stock handler picks "the latest unfinished run of that name", which after an interrupted run is
    the wrong one; binding by id removes the guess. An exception in the engine marks the run FAILED.
    At COMPLETED it also logs, when given: ``final_metrics`` (a callable returning e.g. the kept
    checkpoint's ``best_val_*`` and ``best_epoch``), ``dataset`` (the split CSV, as the run's training
    dataset) and ``model_checkpoint``, logged as the run's pyfunc model ``model`` (rebuilt from the network
    settings the checkpoint records) and named by its SHA-256 in tag ``hdkd.checkpoint_sha256``, by which
    :func:`training_run_of` finds the run.
    """

    def __init__(
        self,
        run_id: str,
        tracking_uri: str | None = None,
        final_metrics: Callable[[], Mapping[str, float]] | None = None,
        dataset: str | Path | None = None,
        model_checkpoint: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        uri = configure_mlflow(tracking_uri)
        super().__init__(tracking_uri=uri, **kwargs)
        self.cur_run = self.client.get_run(run_id)
        self.experiment = self.client.get_experiment(self.cur_run.info.experiment_id)
        self.experiment_name = self.experiment.name
        self.final_metrics, self.dataset = final_metrics, dataset
        self.model_checkpoint = model_checkpoint

    def complete(self) -> None:
        """Log ``artifacts`` at COMPLETED: a file at the top level, a folder as a folder of that name (the
        stock handler flattens folders, so a ``validation/`` report would mix with other files); then the
        final metrics, the checkpoint's digest, the dataset and the model."""
        if self.cur_run is None:
            return
        run_id = self.cur_run.info.run_id
        for path in map(Path, (p for p in self.artifacts if p)):
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(run_id, str(path))
        if self.final_metrics is not None:
            now = get_current_time_millis()
            metrics = [Metric(key, float(value), now, 0) for key, value in self.final_metrics().items()]
            self.client.log_batch(run_id, metrics=metrics)
        if self.model_checkpoint:
            self.client.set_tag(run_id, CHECKPOINT_TAG, file_sha256(self.model_checkpoint))
        if self.dataset or self.model_checkpoint:
            from pipeline.networks import read_settings
            from pipeline.tracking.model import log_classifier
            from pipeline.tracking.provenance import log_split_dataset

            started = time.perf_counter()
            with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
                if self.dataset:
                    log_split_dataset(self.dataset, "training")
                if self.model_checkpoint:
                    log_classifier(self.model_checkpoint, read_settings(self.model_checkpoint).state_dict())
            seconds = time.perf_counter() - started
            logger.info("logged the dataset and model of run %s in %.1f s", run_id, seconds)

    def attach(self, engine: Any) -> None:
        """Attach MONAI's handlers plus one that marks the run FAILED on an engine exception."""
        from ignite.engine import Events

        super().attach(engine)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)

    def _failed(self, engine: Any, error: BaseException) -> None:
        if self.cur_run is not None:
            self.client.set_terminated(self.cur_run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
        raise error
