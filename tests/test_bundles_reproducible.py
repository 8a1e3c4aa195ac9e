"""Two identical trainings write the same bytes into their models folders (the folders are DVC outputs:
nothing of MLflow, such as a run id, may land there), and the runs are linked through MLflow alone: the
training runs carry their folder and the digest of the checkpoint they kept, an evaluation run names the
run that trained its checkpoint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
import pytest
from bundle_testing import CLASSES, FAST, TEACHER, bundle_env, make_split, run_bundle, save_checkpoint
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.networks import NetworkSettings


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


@pytest.mark.slow
def test_identical_trainings_write_identical_folders_and_evaluation_names_the_training_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    split = make_split(tmp_path / "data", {"train": 4, "val": 2, "test": 1})
    store = tmp_path / "mlflow.db"
    env = bundle_env(store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])  # for training_run_of below
    first, second = tmp_path / "first", tmp_path / "second"
    for models in (first, second):
        args = ("--split_file", str(split), "--epochs", "2", "--models_dir", str(models))
        run_bundle(f"{TEACHER}/train.json", *FAST, *args, env=env)

    compared = _files(first)
    assert _files(second) == compared
    expected = {"model.pt", "checkpoint_epoch=2.pt", "training_log.csv", "validation/metrics.json"}
    assert expected <= set(compared), compared
    differing = [name for name in compared if (first / name).read_bytes() != (second / name).read_bytes()]
    assert not differing, f"{differing} differ between two identical trainings (compared: {compared})"

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("hdkd").experiment_id
    runs = client.search_runs(
        [experiment], "attributes.run_name = 'teacher'", order_by=["attributes.start_time"]
    )
    digest = hashlib.sha256((first / "model.pt").read_bytes()).hexdigest()
    assert [run.data.tags[tracking.MODELS_DIR_TAG] for run in runs] == [str(first), str(second)]
    assert [run.data.tags[tracking.CHECKPOINT_TAG] for run in runs] == [digest, digest]

    # both runs kept these bytes: the evaluation names the newer one
    args = ("--split_file", str(split), "--models_dir", str(first), "--output_dir", str(tmp_path / "eval"))
    run_bundle(f"{TEACHER}/evaluate.json", *args, "--n_bootstrap", "20", env=env)
    (evaluation,) = client.search_runs([experiment], "attributes.run_name = 'evaluation_teacher'")
    assert evaluation.data.tags[tracking.TRAINING_RUN_TAG] == runs[-1].info.run_id

    # a checkpoint no run of the store trained
    settings = NetworkSettings("teacher", "demo", image_size=64, in_channels=1, class_names=CLASSES)
    untrained = save_checkpoint(settings.build(), settings, tmp_path / "untrained")
    assert tracking.training_run_of(untrained) == ""
    mlflow.set_tracking_uri(None)
