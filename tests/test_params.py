"""params.yaml validation: every bad value is rejected before a stage starts, naming the key."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from pipeline.params import ParamsError, check_classes, check_raw_dir, flatten, load_params, validate
from pipeline.stages.__main__ import main as stages_main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = load_params(ROOT / "params.yaml")


def with_value(key: str, value: Any) -> dict:
    """The shipped params with ``key`` (dotted) set to ``value``."""
    params = copy.deepcopy(SHIPPED)
    *sections, last = key.split(".")
    node = params
    for section in sections:
        node = node[section]
    node[last] = value
    return params


def test_shipped_params_are_valid_and_complete() -> None:
    flat = validate(SHIPPED)
    assert flat == flatten(SHIPPED)
    assert flat["data.raw_dir"] == "data/demo"


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("teacher.lr", -0.001, "> 0"),
        ("student.lr", 0, "> 0"),
        ("distill.type", "medium", "one of"),
        ("distill.kd_reduction", "mean", "one of"),
        ("distill.lambda", -1.0, ">= 0"),
        ("distill.alpha", 1.5, "[0, 1]"),
        ("distill.tau", 0, "> 0"),
        ("split.train_fraction", 0.0, "(0, 1]"),
        ("split.train_fraction", 1.5, "(0, 1]"),
        ("split.val", 1.0, "[0, 1)"),
        ("teacher.epochs", 0, "integer >= 1"),
        ("student.batch_size", 2.5, "integer >= 1"),
        ("model.profile", "huge", "one of"),
        ("model.in_channels", 2, "one of"),
        ("model.augment", "heavy", "one of"),
        ("data.class_names", "glioma", "at least two"),
        ("data.class_names", "glioma,glioma,notumor", "repeat"),
        ("data.class_names", ["glioma", "notumor"], "comma-separated"),
        ("runtime.device", "tpu", "'auto', 'cpu'"),
        ("model.image_size", 50, "cannot take it"),
        ("model.image_size", 4, "integer from 16 to 1024"),
        ("model.image_size", 2048, "integer from 16 to 1024"),
        ("evaluate.n_bootstrap", -5, "integer >= 0"),
        ("efficiency.fractions", [0.1, 0.0], "item 0.0 must be a fraction in (0, 1]"),
        ("efficiency.seeds", [], "non-empty list"),
    ],
)
def test_invalid_value_is_rejected_naming_the_key(key: str, value: Any, reason: str) -> None:
    with pytest.raises(ParamsError) as error:
        validate(with_value(key, value))
    assert error.value.key == key
    assert f"{key} = {value!r}" in str(error.value)
    assert reason in str(error.value)


def test_cuda_is_rejected_without_a_gpu() -> None:
    params = with_value("runtime.device", "cuda")
    if torch.cuda.is_available():
        assert validate(params)["runtime.device"] == "cuda"
    else:
        with pytest.raises(ParamsError, match=r"runtime\.device = 'cuda'.*no CUDA GPU"):
            validate(params)


def test_unknown_and_missing_keys_are_named() -> None:
    typo = with_value("distill.lamda", 5.0)
    with pytest.raises(ParamsError, match=r"distill\.lamda = 5\.0: unknown key"):
        validate(typo)
    missing = copy.deepcopy(SHIPPED)
    del missing["distill"]["tau"]
    with pytest.raises(ParamsError, match=r"distill\.tau = None: missing"):
        validate(missing)


def test_val_plus_test_must_leave_a_training_set() -> None:
    params = with_value("split.val", 0.5)
    params["split"]["test"] = 0.5
    with pytest.raises(ParamsError, match=r"split\.test .*split\.val \+ split\.test must be < 1"):
        validate(params)


def test_classes_must_match_the_data(tmp_path: Path) -> None:
    flat = validate(SHIPPED, networks=False)
    labels = tmp_path / "split.csv"
    labels.write_text("path,label\na.npy,glioma\nb.npy,meningioma\nc.npy,pituitary\nd.npy,notumor\n")
    check_classes(flat, labels)
    labels.write_text("path,label\na.npy,glioma\nb.npy,meningioma\nc.npy,schwannoma\n")
    with pytest.raises(ParamsError) as error:
        check_classes(flat, labels)
    message = str(error.value)
    assert error.value.key == "data.class_names"
    assert "not listed: ['schwannoma']" in message
    assert "without any data: ['notumor', 'pituitary']" in message


def test_missing_raw_dir_says_how_to_bring_data(tmp_path: Path) -> None:
    flat = validate(with_value("data.raw_dir", "data/raw"), networks=False)
    with pytest.raises(
        ParamsError, match=r"data\.raw_dir = 'data/raw'.*dvc add data/raw.*Bring your own data"
    ):
        check_raw_dir(flat, root=tmp_path)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    assert check_raw_dir(flat, root=tmp_path) == tmp_path / "data" / "raw"


def test_stage_launcher_refuses_to_start_with_bad_params(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    params_file = tmp_path / "params.yaml"
    marker = tmp_path / "ran.txt"
    command = ["--", sys.executable, "-c", f"open({str(marker)!r}, 'w').write('ran')"]
    params_file.write_text(yaml.safe_dump(with_value("distill.lambda", -2)))
    assert stages_main(["exec", "--params", str(params_file), *command]) == 2
    assert "distill.lambda = -2" in capsys.readouterr().err
    assert not marker.exists()
    params_file.write_text(yaml.safe_dump(SHIPPED))
    assert stages_main(["exec", "--params", str(params_file), *command]) == 0
    assert marker.read_text() == "ran"


def test_network_check_is_skipped_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    params_file = tmp_path / "params.yaml"
    marker = tmp_path / "ran.txt"
    command = ["--", sys.executable, "-c", f"open({str(marker)!r}, 'w').write('ran')"]
    params_file.write_text(yaml.safe_dump(with_value("model.image_size", 50)))  # the networks cannot take it
    assert stages_main(["exec", "--params", str(params_file), *command]) == 2
    assert "model.image_size = 50" in capsys.readouterr().err and not marker.exists()
    # stages that build no network (demo data, split) start without building them
    assert stages_main(["exec", "--no-network-check", "--params", str(params_file), *command]) == 0
    assert marker.read_text() == "ran"
    # every other key is still checked
    params_file.write_text(yaml.safe_dump(with_value("split.seed", -1)))
    assert stages_main(["exec", "--no-network-check", "--params", str(params_file), *command]) == 2
    assert "split.seed" in capsys.readouterr().err


def test_class_names_set_as_an_experiment_need_the_documented_quotes(tmp_path: Path) -> None:
    """`dvc exp run -S data.class_names=a,b,c` is a sweep of three experiments (DVC's hydra parser);
    the quoting params.yaml and the README give sets one valid value."""
    from dvc.utils.hydra import apply_overrides, get_hydra_sweeps

    assert len(get_hydra_sweeps({"params.yaml": ["data.class_names=a,b,c"]})) == 3
    quoted = "data.class_names='glioma,pituitary'"
    assert get_hydra_sweeps({"params.yaml": [quoted]}) == [{"params.yaml": [quoted]}]
    params_file = tmp_path / "params.yaml"
    params_file.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(params_file, [quoted])
    assert validate(load_params(params_file), networks=False)["data.class_names"] == "glioma,pituitary"
    assert quoted.replace("glioma,pituitary", "a,b,c") in (ROOT / "params.yaml").read_text().replace('"', "")


def test_ingest_stops_on_a_class_without_data_naming_the_labels_found(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import numpy as np
    from PIL import Image

    from pipeline.data.ingest import main as ingest_main

    for label in ("glioma", "notumor", "other"):
        (tmp_path / "raw" / label).mkdir(parents=True)
        for i in range(2):
            pixels = (np.random.default_rng(i).random((16, 16)) * 255).astype("uint8")
            Image.fromarray(pixels).save(tmp_path / "raw" / label / f"p{i}.png")
    arguments = ["--input", str(tmp_path / "raw"), "--output", str(tmp_path / "out"), "--no-progress",
                 "--salt", "a-secret-salt-of-this-test"]
    assert ingest_main([*arguments, "--classes", "glioma,notumor,pituitary"]) == 2
    error = capsys.readouterr().err
    assert "--classes ['pituitary'] match no image" in error
    assert "labels found: ['glioma', 'notumor', 'other']" in error
    assert ingest_main([*arguments, "--classes", "glioma,notumor"]) == 0  # 'other' is only rejected
