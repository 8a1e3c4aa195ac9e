"""A training run killed mid-way resumes from its last epoch checkpoint and ends exactly where an
uninterrupted run of the same seed ends."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from bundle_testing import FAST, ROOT, TEACHER, bundle_command, bundle_env, make_split, run_bundle
from mlflow.tracking import MlflowClient

from pipeline.networks import SETTINGS_KEY
from pipeline.tracking import CHECKPOINT_TAG, MODELS_DIR_TAG

EPOCHS = "3"


def _train_args(split: Path, models: Path) -> tuple[str, ...]:
    return (*FAST, "--split_file", str(split), "--epochs", EPOCHS, "--models_dir", str(models))


def _complete(checkpoint: Path) -> bool:
    try:
        return "trainer" in torch.load(checkpoint, weights_only=True)
    except (OSError, EOFError, RuntimeError):  # missing or half-written (torch raises EINVAL too)
        return False


def _kill_after_first_checkpoint(split: Path, models: Path, env: dict[str, str]) -> None:
    """Start training and SIGKILL it as soon as the epoch-1 checkpoint loads (it is renamed into place
    once complete)."""
    process = subprocess.Popen(
        bundle_command("run", f"{TEACHER}/train.json", *_train_args(split, models)),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    checkpoint = models / "checkpoint_epoch=1.pt"
    while not _complete(checkpoint):
        assert process.poll() is None, "training ended before writing its first checkpoint"
        assert time.monotonic() < deadline, "no epoch-1 checkpoint within 300 s"
        time.sleep(0.05)
    process.kill()
    process.wait()


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    split = make_split(tmp_path / "data", {"train": 6, "val": 2, "test": 1})
    env = bundle_env(tmp_path / "mlflow.db")
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run_bundle(f"{TEACHER}/train.json", *_train_args(split, straight), env=env)

    _kill_after_first_checkpoint(split, interrupted, env)
    left = sorted(path.name for path in interrupted.glob("checkpoint_epoch=*.pt"))
    assert left and left[-1] != f"checkpoint_epoch={EPOCHS}.pt", left
    resumed = run_bundle(f"{TEACHER}/train.json", *_train_args(split, interrupted), env=env)
    assert "Restored all variables from" in resumed.stdout + resumed.stderr

    expected = pd.read_csv(straight / "training_log.csv")
    got = pd.read_csv(interrupted / "training_log.csv")
    assert list(got["epoch"]) == [1, 2, 3]
    pd.testing.assert_frame_equal(got, expected, rtol=0, atol=1e-6)
    best_expected = torch.load(straight / "model.pt", weights_only=True)
    best_got = torch.load(interrupted / "model.pt", weights_only=True)
    assert best_got.keys() == best_expected.keys()
    assert best_got[SETTINGS_KEY] == best_expected[SETTINGS_KEY]
    for key, value in best_expected["network"].items():
        torch.testing.assert_close(best_got["network"][key], value, rtol=0, atol=1e-6, msg=key)
    # the validation report of the kept checkpoint survives the interruption (kept in the checkpoints)
    straight_report, resumed_report = (
        json.loads((models / "validation" / "metrics.json").read_text()) for models in (straight, interrupted)
    )
    assert resumed_report["confusion_matrix"] == straight_report["confusion_matrix"]
    kept_score = straight_report["balanced_accuracy"]
    assert resumed_report["balanced_accuracy"] == pytest.approx(kept_score, abs=1e-9)
    assert straight_report["balanced_accuracy"] == pytest.approx(expected["val_balanced_accuracy"].max())
    # one MLflow run per folder: the resumed training continued the run the killed process started
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("hdkd").experiment_id
    runs = client.search_runs([experiment])
    folders = [run.data.tags[MODELS_DIR_TAG] for run in runs]
    assert sorted(folders) == sorted([str(straight), str(interrupted)])
    resumed_run = runs[folders.index(str(interrupted))]
    assert resumed_run.info.status == "FINISHED"
    history = client.get_metric_history(resumed_run.info.run_id, "val_balanced_accuracy")
    assert sorted({metric.step for metric in history}) == [1, 2, 3]
    kept = hashlib.sha256((interrupted / "model.pt").read_bytes()).hexdigest()
    assert resumed_run.data.tags[CHECKPOINT_TAG] == kept
