"""params.yaml is the one home of the bundles' settings: a bundle run with no flags reads the DVC stage's
values and paths, each DVC stage lists every setting its bundles read, and the bundles work from MONAI's
Python API (no stack frames, no command line needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from bundle_testing import CLASSES, STUDENT, TEACHER, make_split
from mlflow import MlflowClient
from monai.bundle import ConfigParser, ConfigWorkflow

import pipeline.tracking
from pipeline.bundle.errors import making_stage
from pipeline.bundle.workflow import command_line, executed_config
from pipeline.params import flatten, load_params
from pipeline.stages.__main__ import REPORT_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = flatten(load_params(ROOT / "params.yaml"))
SETTING = re.compile(r"@settings\[(?:'([\w.]+)'|@run_settings \+ '\.(\w+)')\]")


def _bundle_runs(stage: str) -> list[tuple[str, dict[str, str]]]:
    """(config file, overrides) of each `python -m monai.bundle run` in the stage's command."""
    runs = []
    for command in STAGES[stage]["cmd"].split(" -- "):
        words = command.split()
        if words[:4] == ["python", "-m", "monai.bundle", "run"]:
            options = dict(zip(words[4::2], words[5::2], strict=True))
            runs.append((options.pop("--config_file"), {k[2:]: v for k, v in options.items()}))
    return runs


def _settings_read(config_file: str, overrides: dict[str, str]) -> set[str]:
    """The params.yaml keys the config reads (macros resolved; ids overridden on the command line are
    not read from the settings)."""
    parser = ConfigParser(ConfigParser.load_config_file(ROOT / config_file))
    parser.resolve_macro_and_relative_ids()
    config = parser.get()
    keys = set()
    for key, value in flatten(config).items():
        if key.split(".")[0] in overrides:
            continue
        for match in SETTING.finditer(json.dumps(value)):
            keys.add(match[1] or f"{config['run_settings']}.{match[2]}")
    if overrides.get("variant") == "baseline":  # no teacher: the loss is plain CE, distill.* unused
        keys = {key for key in keys if not key.startswith("distill.")}
    return keys


@pytest.mark.parametrize("stage", [name for name in STAGES if _bundle_runs(name)])
def test_each_stage_lists_exactly_the_settings_its_bundles_read(stage: str) -> None:
    listed = STAGES[stage]["params"]
    read = set().union(*(_settings_read(config, overrides) for config, overrides in _bundle_runs(stage)))
    assert read, stage
    assert read <= set(PARAMS), read - set(PARAMS)
    covered = {key for key in PARAMS if any(key == entry or key.startswith(entry + ".") for entry in listed)}
    assert read <= covered, f"{stage} reads {sorted(read - covered)} but dvc.yaml does not list them"
    # nothing listed that none of its commands reads (a change would re-run the stage for nothing),
    # apart from the keys the non-bundle commands of the stage read (command line, the report's --params)
    command_keys = set(re.findall(r"\$\{([\w.]+)\}", STAGES[stage]["cmd"]))
    if "pipeline.stages report" in STAGES[stage]["cmd"]:  # the report reads its settings from --params
        command_keys |= set(REPORT_SETTINGS.values())
    for entry in listed:
        used = {key for key in read | command_keys if key == entry or key.startswith(entry + ".")}
        assert used, f"{stage} lists {entry} but reads none of it"


def test_bundle_defaults_are_the_pipeline_settings_and_paths() -> None:
    """With no flags the student bundle trains what the `distill` stage trains (params.yaml values, the
    DVC split and teacher) and writes under the bundle folder, never into a DVC output."""
    workflow = ConfigWorkflow(config_file=str(ROOT / STUDENT / "train.json"), workflow_type="train")
    parsed = workflow.parser.get_parsed_content
    assert Path(parsed("split_file")) == ROOT / "data/split/split.csv"
    assert Path(parsed("teacher_ckpt")) == ROOT / "models/teacher/model.pt"
    assert making_stage(parsed("split_file"), ROOT) == "split"
    assert making_stage(parsed("teacher_ckpt"), ROOT) == "train_teacher"
    expected = {
        "epochs": "student.epochs", "lr": "student.lr", "warmup_lr": "student.warmup_lr",
        "min_lr": "student.min_lr", "cooldown_epochs": "student.cooldown_epochs", "seed": "student.seed",
        "feature_weight": "distill.lambda", "kd_type": "distill.type", "kd_reduction": "distill.kd_reduction",
        "alpha": "distill.alpha", "tau": "distill.tau", "profile": "model.profile",
        "image_size": "model.image_size", "teacher_precision": "runtime.teacher_precision",
        "model_precision": "runtime.model_precision", "augment": "model.augment",
    }
    for bundle_key, params_key in expected.items():
        assert parsed(bundle_key) == PARAMS[params_key], bundle_key
    assert parsed("classes") == [name.strip() for name in PARAMS["data.class_names"].split(",")]
    models_dir = Path(parsed("models_dir"))
    assert models_dir.is_relative_to(ROOT / "bundles/hdkd_student") and making_stage(models_dir, ROOT) is None
    teacher = ConfigWorkflow(config_file=str(ROOT / TEACHER / "train.json"), workflow_type="train")
    assert teacher.parser.get_parsed_content("epochs") == PARAMS["teacher.epochs"]
    assert teacher.parser.get_parsed_content("lr_schedule") == PARAMS["teacher.lr_schedule"]


def test_python_api_builds_the_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MONAI's Python API drives the bundle: overrides as keyword arguments, no command line."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("HDKD_MLFLOW_PARENT_RUN_ID", raising=False)
    split = make_split(tmp_path / "data")
    workflow = ConfigWorkflow(
        config_file=str(ROOT / TEACHER / "train.json"),
        workflow_type="train",
        split_file=str(split),
        models_dir=str(tmp_path / "models"),
        class_names=list(CLASSES),
        epochs=1,
        batch_size=4,
    )
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.max_epochs == 1 and len(trainer.data_loader.dataset) == 16
    # the run the trainer's MLflow handler opened never trained: marked FAILED here, as at exit
    run_id = workflow.parser.get_parsed_content("mlflow_run_id")
    pipeline.tracking.fail_unfinished_runs()
    assert MlflowClient().get_run(run_id).info.status == "FAILED"


def test_command_line_is_read_as_monai_reads_it() -> None:
    main = str(Path("/x/site-packages/monai/bundle/__main__.py"))
    files, overrides = command_line(
        [main, "run", "--config_file", "a/train.json", "--epochs", "3", "--lr=0.5", "--train#trainer#amp",
         "false", "--progress", "--meta_file", "m.json"]
    )
    assert files == ("a/train.json",)
    assert overrides == {"epochs": 3, "lr": 0.5, "train#trainer#amp": "false", "progress": True}
    assert command_line([main, "run", "--config_file", "a.json,b.json"])[0] == ("a.json", "b.json")
    assert command_line(["-m", "pytest"]) is None


def test_executed_config_shows_the_settings_values(monkeypatch: pytest.MonkeyPatch) -> None:
    main = str(Path("/x/site-packages/monai/bundle/__main__.py"))
    config = str(ROOT / TEACHER / "train.json")
    monkeypatch.setattr("sys.argv", [main, "run", "--config_file", config, "--epochs", "2"])
    executed = executed_config(PARAMS)
    assert executed["epochs"] == 2  # the override
    assert executed["lr"] == PARAMS["teacher.lr"]
    assert executed["model_precision"] == PARAMS["runtime.model_precision"]
    assert executed["bundle_root"].startswith("$")  # other expressions stay as written
    monkeypatch.setattr("sys.argv", ["pytest"])
    assert executed_config(PARAMS) is None  # not a `monai.bundle run` command line
