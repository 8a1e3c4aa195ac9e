"""pipeline.tracking against a real SQLite MLflow store."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import mlflow
import pytest
import torch
from bundle_testing import CLASSES, complete_training_run, save_checkpoint
from ignite.engine import Engine, Events
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.networks import NetworkSettings


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_configure_turns_telemetry_off_and_prefers_argument_then_env(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    assert tracking.configure_mlflow(store) == store
    assert (tmp_path / "mlflow.db").stat().st_size > 0
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    assert tracking.configure_mlflow() == other
    repository = Path(__file__).resolve().parents[1]
    assert tracking.default_tracking_uri() == f"sqlite:///{repository / 'mlflow.db'}"


def test_plain_path_uri_is_refused_with_a_sqlite_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sqlite:///"):
        tracking.configure_mlflow(str(tmp_path / "mlruns"))


def _create(uri: str) -> str:
    return tracking.configure_mlflow(uri)


def test_several_processes_create_one_usable_store(store: str) -> None:
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.map(_create, [store] * 2) == [store] * 2
    run_id = tracking.start_run("after", "exp", tracking_uri=store)
    assert MlflowClient(store).get_run(run_id).info.run_name == "after"


def test_start_run_nests_under_parent_and_logs_params_and_config(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = tracking.start_run("pipeline", "exp", tracking_uri=store)
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent)
    run_id = tracking.start_run(
        "teacher",
        "exp",
        params={"lr": 0.001, "recipe": {"epochs": 3}},
        tags={"bundle": "hdkd_teacher"},
        artifacts={"config.json": {"epochs": 3}},
        tracking_uri=store,
        models_dir=tmp_path / "models",
    )
    run = MlflowClient(store).get_run(run_id)
    assert run.data.tags[tracking.PARENT_TAG] == parent
    assert run.data.tags["bundle"] == "hdkd_teacher"
    assert run.data.tags[tracking.MODELS_DIR_TAG] == str(tmp_path / "models")
    assert run.data.params == {"lr": "0.001", "recipe.epochs": "3"}
    assert [a.path for a in MlflowClient(store).list_artifacts(run_id)] == ["config.json"]
    assert not (tmp_path / "models").exists()  # nothing of MLflow in the models folder
    resumed = tracking.start_run(
        "teacher", "exp", tracking_uri=store, models_dir=tmp_path / "models", resume=True
    )
    assert resumed == run_id
    assert tracking.start_run("teacher", "exp", tracking_uri=store) != run_id


@pytest.mark.parametrize("name", ["plain", "o'brien", 'say "hi"', "back\\slash", "end\\", "100%_ `x`"])
def test_resume_continues_the_newest_unfinished_run_of_the_models_folder(
    store: str, tmp_path: Path, name: str
) -> None:
    models, other = tmp_path / name / "models", tmp_path / "other"
    client = MlflowClient(store)

    def start(folder: Path, resume: bool = True, experiment: str = "exp") -> str:
        return tracking.start_run("teacher", experiment, tracking_uri=store, models_dir=folder, resume=resume)

    older, newer = start(models, resume=False), start(models, resume=False)  # two fresh starts
    assert older != newer
    client.set_terminated(older, "FAILED")
    assert start(models) == newer  # the newest unfinished one, running again
    assert client.get_run(newer).info.status == "RUNNING"
    client.set_terminated(newer, "FINISHED")
    assert start(models) == older  # a finished run is never continued
    client.set_terminated(older, "FINISHED")
    fresh = start(models)
    assert fresh not in (older, newer)
    assert start(other) not in (older, newer, fresh)  # another folder
    assert start(models, experiment="another") != fresh  # another experiment
    assert start(models, resume=False) != fresh  # a fresh start


def test_a_models_folder_no_search_can_name_is_refused(store: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pick a models_dir without quote characters") as refused:
        tracking.start_run("teacher", "exp", tracking_uri=store, models_dir=tmp_path / 'o\'brien "x"')
    assert "\n" not in str(refused.value) and "o'brien" in str(refused.value)


def test_training_run_of_finds_the_newest_run_that_kept_the_checkpoint(store: str, tmp_path: Path) -> None:
    settings = NetworkSettings("teacher", "demo", image_size=32, in_channels=1, class_names=CLASSES)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(settings.build(), settings, tmp_path / "trained")
    untrained = save_checkpoint(settings.build(), settings, tmp_path / "untrained")
    runs = []
    for experiment in ("exp", "another"):  # the same bytes kept twice, in two experiments
        runs.append(tracking.start_run("teacher", experiment, tracking_uri=store))
        complete_training_run(runs[-1], checkpoint, store)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    tagged = [MlflowClient(store).get_run(run).data.tags[tracking.CHECKPOINT_TAG] for run in runs]
    assert tagged == [digest, digest]
    assert tracking.training_run_of(checkpoint, store) == runs[-1]
    assert tracking.training_run_of(untrained, store) == ""
    assert tracking.training_run_of(tmp_path / "missing.pt", store) == ""
    mlflow.set_tracking_uri(None)


def test_unknown_parent_run_is_an_error_naming_the_variable(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, "0123456789abcdef0123456789abcdef")
    with pytest.raises(ValueError, match=tracking.PARENT_RUN_ENV):
        tracking.start_run("teacher", "exp", tracking_uri=store)


def test_handler_logs_epoch_metrics_to_its_run_and_marks_failures(store: str) -> None:
    first = tracking.start_run("teacher", "exp", tracking_uri=store)
    second = tracking.start_run("teacher", "exp", tracking_uri=store)  # same name: binding is by id

    def step(engine: Engine, batch: int) -> float:
        if batch == 99:
            raise RuntimeError("boom")
        return float(batch)

    engine = Engine(step)

    @engine.on(Events.EPOCH_COMPLETED)
    def _metric(engine: Engine) -> None:
        engine.state.metrics["train_loss"] = 1.0 / engine.state.epoch

    tracking.RunMLFlowHandler(first, tracking_uri=store, iteration_log=False, close_on_complete=True).attach(
        engine
    )
    engine.run([1, 2], max_epochs=2)
    client = MlflowClient(store)
    assert [(m.step, m.value) for m in client.get_metric_history(first, "train_loss")] == [(1, 1.0), (2, 0.5)]
    assert client.get_run(first).info.status == "FINISHED"
    assert client.get_metric_history(second, "train_loss") == []

    failing = Engine(step)
    tracking.RunMLFlowHandler(second, tracking_uri=store, iteration_log=False).attach(failing)
    with pytest.raises(RuntimeError, match="boom"):
        failing.run([99], max_epochs=1)
    assert client.get_run(second).info.status == "FAILED"
    mlflow.set_tracking_uri(None)


def test_flatten_params_cuts_long_values() -> None:
    flat = tracking.flatten_params({"a": {"b": 1, "c": {"d": "x"}}, "long": "y" * 9000})
    assert flat == {"a.b": "1", "a.c.d": "x", "long": "y" * tracking.MAX_PARAM_LENGTH}
