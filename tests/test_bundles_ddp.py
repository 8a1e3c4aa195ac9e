"""multi_gpu_train.json under torchrun: two CPU processes over gloo, one set of outputs from rank 0."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from bundle_testing import FAST, ROOT, TEACHER, bundle_env, make_split
from mlflow.tracking import MlflowClient

from pipeline.networks import build_network, load_weights


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path: Path) -> None:
    split = make_split(tmp_path / "data", {"train": 4, "val": 2, "test": 1})
    models = tmp_path / "models"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    configs = f"['{TEACHER}/train.json','{TEACHER}/multi_gpu_train.json']"
    command = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        configs,
        *FAST,
        "--split_file",
        str(split),
        "--epochs",
        "2",
        "--models_dir",
        str(models),
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=bundle_env(tmp_path / "mlflow.db"), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-6000:]
    load_weights(build_network("teacher", "demo"), models / "model.pt")
    assert sorted(p.name for p in models.glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=2.pt"]
    assert list(pd.read_csv(models / "training_log.csv")["epoch"]) == [1, 2]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("hdkd").experiment_id])
    assert [run.info.run_name for run in runs] == ["teacher"]  # rank 0 only
    assert len(client.get_metric_history(runs[0].info.run_id, "train_loss")) == 2
    # each rank trained on its own half: an epoch has half the batches of a single-process run
    assert runs[0].data.params["epoch_length"] == "1"
