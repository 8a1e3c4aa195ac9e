"""Each bundle folder stands alone: its configs are generated from the templates and up to date, hold no
macro (MONAI resolves those against the working directory), and a zipped bundle unpacked elsewhere runs
MONAI's ``verify_net_in_out`` and inference there with only the installed ``pipeline`` package."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_testing import CLASSES, ROOT, bundle_env, save_checkpoint
from monai.bundle.utils import MACRO_KEY
from PIL import Image

from pipeline.bundle import compose
from pipeline.networks import NetworkSettings

BUNDLES = {"hdkd_teacher": "teacher", "hdkd_student": "hdkd"}
# the metadata describes the published 224 px RGB input; these tests use a small demo network
DEMO_SHAPE = (
    "--_meta_#network_data_format#inputs#image#num_channels", "1",
    "--_meta_#network_data_format#inputs#image#spatial_shape", "[64,64]",
)


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return [value] if isinstance(value, str) else []


def test_generated_configs_are_those_the_templates_give() -> None:
    assert compose.stale(ROOT) == [], "run python -m pipeline.bundle.compose and commit the bundle configs"
    generated = compose.render(ROOT)
    assert {path.parent.parent.name for path in generated} == set(BUNDLES)
    for path in generated:
        config = json.loads((ROOT / path).read_text(encoding="utf-8"))
        macros = [text for text in _strings(config) if text.startswith(MACRO_KEY)]
        assert macros == [], f"{path} still pulls items from another file: {macros[:3]}"


def test_a_template_base_fills_in_the_items_the_template_does_not_set(tmp_path: Path) -> None:
    shared = {"a": 1, "b": "%common.json#b", "c": 3}
    (tmp_path / "shared.json").write_text(json.dumps(shared), encoding="utf-8")
    (tmp_path / "common.json").write_text(json.dumps({"b": {"x": 2}}), encoding="utf-8")
    template = {"_base_": "shared.json", "c": "own", "d": "%common.json#b#x"}
    config = compose.compose_template(template, tmp_path, {})
    assert list(config.items()) == [("c", "own"), ("d", 2), ("a", 1), ("b", {"x": 2})]


def test_check_names_a_hand_edited_config(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "bundles", tmp_path / "bundles")
    edited = tmp_path / "bundles" / "hdkd_student" / "configs" / "train.json"
    edited.write_text(edited.read_text(encoding="utf-8").replace('"cosine"', '"constant"'), encoding="utf-8")
    check = [sys.executable, "-m", "pipeline.bundle.compose", "--project", str(tmp_path), "--check"]
    result = subprocess.run(check, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stdout.strip() == (
        "out of date: bundles/hdkd_student/configs/train.json (run python -m pipeline.bundle.compose)"
    )
    write = subprocess.run(check[:-1], capture_output=True, text=True, timeout=120)
    assert write.returncode == 0, write.stderr
    assert subprocess.run(check, capture_output=True, text=True, timeout=120).returncode == 0
    assert edited.read_text(encoding="utf-8") == (ROOT / "bundles/hdkd_student/configs/train.json").read_text(
        encoding="utf-8"
    )


@pytest.mark.parametrize("name", BUNDLES)
def test_zipped_bundle_verifies_and_infers_from_any_folder(name: str, tmp_path: Path) -> None:
    # the bundle folder as shipped (configs, docs, licence) plus trained weights, zipped, unpacked elsewhere
    shipped = tmp_path / "shipped"
    local_outputs = shutil.ignore_patterns("models", "inference", "eval")
    shutil.copytree(ROOT / "bundles" / name, shipped / name, ignore=local_outputs)
    torch.manual_seed(0)
    settings = NetworkSettings(BUNDLES[name], "demo", image_size=64, in_channels=1, class_names=CLASSES)
    weights = save_checkpoint(settings.build(), settings, shipped / name / "models")
    archive = shutil.make_archive(str(tmp_path / name), "zip", root_dir=shipped, base_dir=name)
    elsewhere = tmp_path / "elsewhere"
    shutil.unpack_archive(archive, elsewhere)
    bundle = elsewhere / name
    assert not (elsewhere / "params.yaml").exists() and not (tmp_path / "params.yaml").exists()

    # no PYTHONPATH: the installed pipeline package only
    env = {key: value for key, value in bundle_env(tmp_path / "mlflow.db").items() if key != "PYTHONPATH"}
    monai_bundle = [sys.executable, "-m", "monai.bundle"]
    verify = subprocess.run(
        [*monai_bundle, "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
         "--config_file", "configs/inference.json", *DEMO_SHAPE],
        cwd=bundle, env=env, capture_output=True, text=True, timeout=600,
    )
    assert verify.returncode == 0, verify.stderr[-3000:]
    assert "data shape of network is verified with no error" in verify.stdout + verify.stderr

    images = tmp_path / "images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (80, 80), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "scan.png")
    somewhere = tmp_path / "somewhere"
    somewhere.mkdir()
    config = os.path.relpath(bundle / "configs" / "inference.json", somewhere)
    infer = subprocess.run(
        [*monai_bundle, "run", "--config_file", config, "--input", str(images)],
        cwd=somewhere, env=env, capture_output=True, text=True, timeout=600,
    )
    assert infer.returncode == 0, infer.stderr[-3000:]
    predictions = json.loads((bundle / "inference" / "predictions.json").read_text(encoding="utf-8"))
    assert [item["input"] for item in predictions["inputs"]] == ["scan.png"]
    assert set(predictions["inputs"][0]["mean_probs"]) == set(CLASSES)
    assert predictions["model"]["checkpoint_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert predictions["model"]["profile"] == "demo"
    assert not any(somewhere.iterdir()), "the bundle wrote into the working directory"
