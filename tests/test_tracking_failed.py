"""An MLflow run whose process fails (an exception, SIGTERM) ends FAILED in the store, never RUNNING, and
never FINISHED by MLflow's own exit hook."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from bundle_testing import CLASSES, TEACHER, bundle_env, make_split, run_bundle, save_checkpoint
from mlflow.tracking import MlflowClient

from pipeline.networks import NetworkSettings


def _runs(store: Path) -> dict[str, str]:
    """{run name: status} of every run in the SQLite store ``store``."""
    client = MlflowClient(f"sqlite:///{store}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {run.info.run_name: run.info.status for run in client.search_runs(experiments)}


def _process(store: Path, body: str) -> subprocess.CompletedProcess:
    """A Python process that opens run "r" (as the evaluation bundle does: created, then active) and
    then runs ``body``."""
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        from pipeline.lifetime import exit_on_sigterm
        from pipeline.tracking import activate_run, end_run, start_run
        exit_on_sigterm()
        run_id = activate_run(start_run(run_name="r", experiment_name="e", tracking_uri="sqlite:///{store}"))
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=bundle_env(store))


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("end_run()\n", "FINISHED", 0),
        ("raise RuntimeError('the evaluation broke')\n", "FAILED", 1),
        ("os.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(60)\n", "FAILED", 128 + 15),
        ("sys.exit(3)\n", "FAILED", 3),
    ],
    ids=["completes", "raises", "sigterm", "exits"],
)
def test_a_run_ends_failed_when_its_process_fails(tmp_path, body, status, code):
    store = tmp_path / "mlflow.db"
    result = _process(store, body)
    assert result.returncode == code, result.stderr
    assert _runs(store) == {"r": status}


@pytest.mark.slow
def test_an_evaluation_bundle_that_fails_midway_ends_failed(tmp_path):
    split = make_split(tmp_path / "data", {"train": 1, "val": 1, "test": 2})
    models = tmp_path / "models"
    models.mkdir()
    settings = NetworkSettings(
        role="teacher", profile="demo", image_size=64, in_channels=1, class_names=CLASSES
    )
    save_checkpoint(settings.build(), settings, models)
    # a test slice broken after the split was made: the evaluator fails on it after its run has started
    (tmp_path / "data" / "slices" / "test_5.npy").write_bytes(b"not an array")
    assert np.load(tmp_path / "data" / "slices" / "test_4.npy").shape == (1, 32, 32)
    store = tmp_path / "mlflow.db"
    result = run_bundle(f"{TEACHER}/evaluate.json", "--split_file", str(split),
                        "--models_dir", str(models), "--output_dir", str(tmp_path / "eval"),
                        env=bundle_env(store), check=False)
    assert result.returncode != 0
    statuses = _runs(store)
    assert list(statuses.values()) == ["FAILED"], (statuses, result.stderr[-3000:])
