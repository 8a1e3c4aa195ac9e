"""inference.predict on mixed folders: it classifies what it can, names every input by its relative path,
converts colour for a 1-channel model by luminance, writes no hidden files and says what the model is."""

from __future__ import annotations

import csv
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from PIL import Image
from test_ingest_factory import palette_dataset, phantom, save_dicom, write_seg, write_series

from pipeline.bundle.inference import (
    DEMO_WARNING,
    LUMINANCE,
    InferenceInputs,
    model_provenance,
    predict,
    to_channels,
)
from pipeline.demo.cohort import MARKER, generate_cohort
from pipeline.networks import build_network

CLASSES = ["glioma", "meningioma", "pituitary", "notumor"]


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("hdkd", "demo").eval()


def _predict(network: torch.nn.Module, input_path: Path, output: Path, **kwargs) -> dict:
    return predict(network, input_path, output, CLASSES, image_size=64, in_channels=1, batch_size=4, **kwargs)


def _rejected_csv(output: Path) -> dict[str, str]:
    with (output / "rejected.csv").open(newline="") as handle:
        return {row["input"]: row["reason"] for row in csv.DictReader(handle)}


def test_a_colour_image_beside_grey_slices_is_converted_and_the_rest_still_predicted(network, tmp_path):
    root = tmp_path / "in"
    write_series(root / "series", phantom((6, 32, 32), seed=1))
    grey = phantom((40, 40), seed=2, high=255, dtype=np.uint8)
    Image.fromarray(grey).save(root / "grey.png")
    colour = np.stack([grey, grey[::-1], grey[:, ::-1]], axis=-1)
    Image.fromarray(colour).save(root / "colour.jpg", quality=95)
    save_dicom(palette_dataset((phantom((32, 32), seed=4, high=255, dtype=np.uint8) // 64).astype(np.uint8)),
               root / "palette.dcm")
    (root / "readme.txt").write_text("not an image")
    write_seg(root / "sub" / "seg.dcm", np.ones((2, 32, 32), bool), "1.2.826.0.1.99")
    (root / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    result = _predict(network, root, tmp_path / "out")
    names = {item["input"]: item for item in result["inputs"]}
    assert sorted(names) == ["colour.jpg", "grey.png", "palette.dcm", "series"]
    for converted in ("colour.jpg", "palette.dcm"):  # PALETTE COLOR: LUT to RGB, then luminance
        assert names[converted]["conversion"].startswith("RGB converted to grey")
    assert "conversion" not in names["grey.png"] and names["series"]["kind"] == "volume"
    refused = _rejected_csv(tmp_path / "out")
    assert sorted(refused) == ["readme.txt", "sub/broken.png", "sub/seg.dcm"]
    assert refused["sub/seg.dcm"] == "DICOM SEG: a mask, not an image to classify"
    assert sorted(r["input"] for r in result["rejected"]) == sorted(refused)
    with (tmp_path / "out" / "predictions.csv").open(newline="") as handle:
        assert {row["input"] for row in csv.DictReader(handle)} == set(names)


def test_luminance_rule_is_the_documented_weights():
    rgb = np.random.default_rng(0).random((3, 5, 7)).astype(np.float32)
    grey, note = to_channels(rgb, 1)
    expected = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    np.testing.assert_allclose(grey[0], expected, rtol=1e-6)
    assert grey.shape == (1, 5, 7) and "0.299 R + 0.587 G + 0.114 B" in note
    assert sum(LUMINANCE) == pytest.approx(1)
    assert to_channels(rgb, 3) == (rgb, "")


def test_a_series_folder_passed_directly_is_named_by_the_folder(network, tmp_path):
    folder = tmp_path / "brain_t1"
    write_series(folder, phantom((6, 32, 32), seed=3))
    result = _predict(network, folder, tmp_path / "out", gradcam=True)
    assert [item["input"] for item in result["inputs"]] == ["brain_t1"]
    written = [p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")]
    assert written and not any(part.startswith(".") for name in written for part in name.split("/"))
    (item,) = result["inputs"]
    assert any(name.startswith(f"gradcam/{item['item']}_slice") for name in written)
    assert not any("brain_t1" in name for name in written)  # a folder name never names a shared overlay


def test_nothing_usable_is_an_error_naming_the_files(network, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no usable image .*a\.txt"):
        _predict(network, tmp_path / "in", tmp_path / "out")


def test_provenance_says_a_demo_trained_model_saw_synthetic_data(network, tmp_path):
    checkpoint = tmp_path / "model.pt"
    torch.save(network.state_dict(), checkpoint)
    demo, ingested = tmp_path / "data" / "demo", tmp_path / "data" / "ingested"
    generate_cohort(demo, cases=4, seed=0, progress=False)  # a real demo cohort: its marker lists its files
    ingested.mkdir()
    (ingested / "ingest.json").write_text(json.dumps({"input_root": "../demo"}))
    provenance = model_provenance(checkpoint, "hdkd_student", "demo", ingested / "ingest.json")
    assert provenance["trained_on_demo"] is True and provenance["warning"] == DEMO_WARNING
    assert provenance["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    Image.fromarray(phantom((40, 40), high=255, dtype=np.uint8)).save(tmp_path / "x.png")
    result = _predict(network, tmp_path / "x.png", tmp_path / "out", provenance=provenance)
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert saved["model"] == result["model"] == provenance
    (demo / MARKER).unlink()
    real = model_provenance(checkpoint, "hdkd_student", "demo", ingested / "ingest.json")
    assert real["trained_on_demo"] is False and "warning" not in real
    unknown = model_provenance(checkpoint, "hdkd_student", "demo", tmp_path / "none" / "ingest.json")
    assert unknown["trained_on_demo"] is None and unknown["training_data"].startswith("unknown")


def test_the_scratch_slices_are_removed_when_the_run_ends_or_fails(network, tmp_path, monkeypatch):
    private = tmp_path / "tmp"  # this test's own temporary folder: nothing else writes there
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    Image.fromarray(phantom((40, 40), high=255, dtype=np.uint8)).save(tmp_path / "x.png")
    inputs = InferenceInputs(tmp_path / "x.png", image_size=64, in_channels=1)
    scratch = Path(inputs.records[0]["image"]).parent
    assert scratch.parent == private and len(list(scratch.iterdir())) == 1
    failing = Engine(lambda engine, batch: 1 / 0)
    inputs.attach(failing)  # as the bundle's evaluator attaches it
    with pytest.raises(ZeroDivisionError):  # the run's error still reaches the caller
        failing.run([0])
    assert not scratch.exists()
    result = _predict(network, tmp_path / "x.png", tmp_path / "out")
    assert len(result["inputs"]) == 1
    assert not any(private.iterdir())
