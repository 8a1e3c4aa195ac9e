"""The teacher and student bundles end to end through the real ``python -m monai.bundle`` CLI: train the
teacher, distil it into the HDKD student, train the no-distillation baseline, evaluate, infer; check the
weights, the metrics JSON and the MLflow runs with their loss terms."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from bundle_testing import CLASSES, FAST, ROOT, STUDENT, TEACHER, bundle_env, make_split, run_bundle
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.networks import NetworkSettings, load_trained, read_settings, read_state_dict
from pipeline.tracking import PARENT_TAG, start_run

EPOCHS = 2


# what every training run records once per epoch, in training_log.csv and in MLflow
PER_EPOCH_KEYS = ("train_loss", "train_ce", "lr", "val_balanced_accuracy")
# what only the distillation run records (its loss terms)
KD_KEYS = ("train_logit_kd", "train_feature_kd")
KD_PARAMS = ("alpha", "tau", "kd_type", "feature_weight", "stage_exponent", "teacher_ckpt")


def _train_all(root: Path) -> dict:
    """Teacher, HDKD student and baseline trained for two epochs, the HDKD student evaluated, all under
    one MLflow parent run in a private SQLite store."""
    split = make_split(root / "data")
    store = root / "mlflow.db"
    parent = start_run("pipeline", "hdkd", tracking_uri=f"sqlite:///{store}")
    mlflow.set_tracking_uri(None)
    env = bundle_env(store, HDKD_MLFLOW_PARENT_RUN_ID=parent)
    common = (*FAST, "--split_file", str(split), "--epochs", str(EPOCHS))
    models = {name: root / name for name in ("teacher", "hdkd", "baseline")}
    run_bundle(f"{TEACHER}/train.json", *common, "--models_dir", str(models["teacher"]), env=env)
    teacher_ckpt = str(models["teacher"] / "model.pt")
    run_bundle(
        f"{STUDENT}/train.json",
        *common,
        "--models_dir",
        str(models["hdkd"]),
        "--teacher_ckpt",
        teacher_ckpt,
        "--teacher_precision",
        "bf16",  # the path a CPU with native bf16 takes by default ("auto")
        env=env,
    )
    run_bundle(
        f"{STUDENT}/train.json",
        *common,
        "--variant",
        "baseline",
        "--models_dir",
        str(models["baseline"]),
        env=env,
    )
    run_bundle(  # no --profile: the network comes from the checkpoint
        f"{STUDENT}/evaluate.json",
        "--split_file",
        str(split),
        "--models_dir",
        str(models["hdkd"]),
        "--output_dir",
        str(root / "eval"),
        "--n_bootstrap",
        "20",
        "--model_precision",
        "bf16",
        env=env,
    )
    return {
        "root": root,
        "split": split,
        "store": f"sqlite:///{store}",
        "parent": parent,
        "models": models,
        "env": env,
    }


def _check_training_outputs(trained: dict, name: str) -> None:
    """Best weights with the settings of their network (rebuilt from the file alone, loaded strictly), the
    resume checkpoint (which records them too), the per-epoch log, the report."""
    models = trained["models"][name]
    settings = NetworkSettings(name, "demo", image_size=64, in_channels=1, class_names=CLASSES)
    assert load_trained(models / "model.pt")[0] == settings
    assert read_settings(models / f"checkpoint_epoch={EPOCHS}.pt") == settings
    log = pd.read_csv(models / "training_log.csv")
    assert list(log["epoch"]) == list(range(1, EPOCHS + 1))
    for column in PER_EPOCH_KEYS + (KD_KEYS if name == "hdkd" else ()):
        assert log[column].notna().all(), column
    assert name == "hdkd" or not set(KD_KEYS) & set(log.columns)
    # the validation report is the kept checkpoint's (the first epoch with the best score), not the last's
    best = log["val_balanced_accuracy"].max()
    kept_epoch = int(log.loc[log["val_balanced_accuracy"] == best, "epoch"].iloc[0])
    report = json.loads((models / "validation" / "metrics.json").read_text())
    assert report["balanced_accuracy"] == pytest.approx(best, abs=1e-6)
    assert (models / "validation" / "confusion_matrix.png").is_file()
    trained.setdefault("kept", {})[name] = (kept_epoch, best)


def _runs(trained: dict) -> dict[str, mlflow.entities.Run]:
    client = MlflowClient(trained["store"])
    experiment = client.get_experiment_by_name("hdkd")
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


def _check_mlflow(trained: dict) -> None:
    """The four runs side by side under the parent run, with params, each loss term per epoch, artifacts."""
    client = MlflowClient(trained["store"])
    mlflow.set_tracking_uri(trained["store"])  # where runs:/ model URIs resolve
    runs = _runs(trained)
    assert {"teacher", "hdkd", "baseline", "evaluation_hdkd"} <= runs.keys()

    def history(run: str, key: str) -> list[float]:
        return [
            m.value
            for m in sorted(client.get_metric_history(runs[run].info.run_id, key), key=lambda m: m.step)
        ]

    for name in ("teacher", "hdkd", "baseline"):
        run = runs[name]
        assert run.info.status == "FINISHED"
        assert run.data.tags[PARENT_TAG] == trained["parent"]
        for key in PER_EPOCH_KEYS:
            assert len(history(name, key)) == EPOCHS, (name, key)
        # the kept checkpoint's score and epoch
        kept_epoch, best = trained["kept"][name]
        assert run.data.metrics["best_epoch"] == kept_epoch
        assert run.data.metrics["best_val_balanced_accuracy"] == pytest.approx(best, abs=1e-6)
        assert 0.0 <= run.data.metrics["best_val_macro_f1"] <= 1.0
        # provenance: source, user, git commit, the split table as the training dataset
        tags = run.data.tags
        assert tags["mlflow.source.name"].endswith("configs/train.json") and tags["mlflow.user"]
        assert len(tags.get("mlflow.source.git.commit", "")) == 40
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.name == "split.csv" and dataset.tags[0].value == "training"
        # honest params and metrics: distillation settings and terms only on the distillation run
        kd_params = set(KD_PARAMS) & run.data.params.keys()
        kd_metrics = set(KD_KEYS) & run.data.metrics.keys()
        assert (kd_params == set(KD_PARAMS)) if name == "hdkd" else not kd_params, name
        assert (kd_metrics == set(KD_KEYS)) if name == "hdkd" else not kd_metrics, name
        # the logged model: class probabilities for a batch of slices shaped as the slice files are
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
        assert model.metadata.metadata["class_names"] == list(CLASSES)
        assert model.metadata.get_input_schema().inputs[0].shape == (-1, 1, 64, 64)
        batch = np.random.default_rng(0).random((3, 1, 64, 64), dtype=np.float32)
        probabilities = model.predict(batch)
        assert probabilities.shape == (3, len(CLASSES))
        np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
        network = load_trained(trained["models"][name] / "model.pt")[1].eval()
        with torch.no_grad():
            expected = torch.softmax(network(torch.from_numpy(batch)), 1).numpy()
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "config.json" in artifacts
        assert "confusion_matrix.png" in {
            a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "validation")
        }
    assert min(history("hdkd", "train_feature_kd")) > 0 and min(history("hdkd", "train_logit_kd")) > 0
    hdkd = runs["hdkd"].data.params
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())["distill"]  # the bundle's settings
    assert (hdkd["alpha"], hdkd["tau"], hdkd["feature_weight"], hdkd["kd_type"]) == tuple(
        str(shipped[key]) for key in ("alpha", "tau", "lambda", "type")
    )
    assert hdkd["optimizer"] == "AdamW" and runs["teacher"].data.params["optimizer"] == "Adam"
    config_file = client.download_artifacts(runs["hdkd"].info.run_id, "config.json", str(trained["root"]))
    config = json.loads(Path(config_file).read_text())
    assert config["epochs"] == EPOCHS and config["profile"] == "demo"
    assert (config["teacher_precision"], config["model_precision"]) == ("bf16", "fp32")
    for run in runs.values():  # which CPU every run's timings came from
        assert run.data.tags["cpu.torch_capability"] == torch.backends.cpu.get_cpu_capability()
        assert run.data.tags["cpu.native_bf16"] in ("true", "false")
    evaluation = runs["evaluation_hdkd"]
    assert evaluation.info.status == "FINISHED"
    assert evaluation.data.tags["hdkd.training_run_id"] == runs["hdkd"].info.run_id
    assert evaluation.data.tags["mlflow.source.name"].endswith("configs/evaluate.json")
    assert [d.tags[0].value for d in evaluation.inputs.dataset_inputs] == ["testing"]
    assert evaluation.data.tags[PARENT_TAG] == trained["parent"]
    assert 0.0 <= evaluation.data.metrics["test_balanced_accuracy"] <= 1.0
    assert "confusion_matrix.png" in {
        a.path.split("/")[-1] for a in client.list_artifacts(evaluation.info.run_id, "evaluation")
    }


def _check_metrics_json(trained: dict) -> None:
    report = json.loads((trained["root"] / "eval" / "metrics.json").read_text())
    assert report["model"] == "hdkd"
    assert report["n"] == 2 * len(CLASSES)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
        assert 0.0 <= report[key] <= 1.0, key
    assert set(report["per_class"]) == set(CLASSES)
    assert {"sensitivity", "specificity", "auc"} <= report["per_class"]["glioma"].keys()
    assert np.asarray(report["confusion_matrix"]).shape == (len(CLASSES), len(CLASSES))
    assert (trained["root"] / "eval" / "confusion_matrix.png").is_file()


def _check_inference(trained: dict) -> None:
    """inference.json on a folder with a NIfTI volume, a PNG and a text file."""
    folder = trained["root"] / "new_cases"
    folder.mkdir()
    rng = np.random.default_rng(1)
    volume = rng.random((40, 40, 10)).astype(np.float32) * 50
    volume[8:30, 8:30, :] += 200
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(folder / "case.nii.gz"))
    Image.fromarray((rng.random((48, 48)) * 255).astype(np.uint8)).save(folder / "photo.png")
    (folder / "notes.txt").write_text("not an image")
    out = trained["root"] / "inference"
    run_bundle(  # no --profile: the network comes from the checkpoint
        f"{STUDENT}/inference.json",
        "--models_dir",
        str(trained["models"]["hdkd"]),
        "--input",
        str(folder),
        "--output_dir",
        str(out),
        "--gradcam",
        "true",
        env=trained["env"],
    )
    result = json.loads((out / "predictions.json").read_text())
    by_name = {item["input"]: item for item in result["inputs"]}
    assert by_name.keys() == {"case.nii.gz", "photo.png"}
    assert by_name["case.nii.gz"]["kind"] == "volume" and len(by_name["case.nii.gz"]["slices"]) > 1
    for item in by_name.values():
        assert sum(item["mean_probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert item["predicted"] in CLASSES
    rows = pd.read_csv(out / "predictions.csv")
    assert len(rows) == len(by_name["case.nii.gz"]["slices"]) + 1
    volume_rows = rows[rows["input"] == "case.nii.gz"][[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(
        volume_rows.mean(0), list(by_name["case.nii.gz"]["mean_probs"].values()), atol=1e-5
    )
    assert [r["input"] for r in result["rejected"]] == ["notes.txt"]
    assert len(list((out / "gradcam").glob("*.png"))) == len(rows)
    assert result["model"]["checkpoint"] == "model.pt" and len(result["model"]["checkpoint_sha256"]) == 64
    (choice,) = json.loads(Path(trained["env"]["HDKD_CACHE_DIR"], "engines.json").read_text()).values()
    assert {trial["engine"] for trial in choice["trials"]} >= {"torch-fp32", "onnxruntime-fp32"}


def _check_baseline_has_no_distillation_token(trained: dict) -> None:
    weights = read_state_dict(trained["models"]["baseline"] / "model.pt")
    hdkd = read_state_dict(trained["models"]["hdkd"] / "model.pt")
    assert not any("distill" in key for key in weights)
    assert any("distill" in key for key in hdkd)


@pytest.mark.slow
def test_teacher_hdkd_and_baseline_train_evaluate_and_infer(tmp_path: Path) -> None:
    """One test (the training is shared by every check and must not be repeated on each xdist worker)."""
    trained = _train_all(tmp_path)
    for name in ("teacher", "hdkd", "baseline"):
        _check_training_outputs(trained, name)
    _check_mlflow(trained)
    _check_metrics_json(trained)
    _check_baseline_has_no_distillation_token(trained)
    _check_inference(trained)
