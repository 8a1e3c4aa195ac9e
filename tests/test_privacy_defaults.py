"""Privacy by default: no public salt on real data, no file or folder names beyond the documented local
outputs, a patient with two labels is a warning."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from test_ingest_factory import SALT, phantom, write_nifti

from pipeline.bundle.inference import predict
from pipeline.data.manifest import read_manifest
from pipeline.data.privacy import SALT_ENV
from pipeline.demo.cohort import MARKER
from pipeline.networks import build_network

NAMES = ("Zebulon", "Quixotic")  # a patient's name, as hospital exports put it into folder names
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def _pipeline(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` as a user runs it (``env`` replaces HDKD_SALT; unset when absent)."""
    environment = {k: v for k, v in os.environ.items() if k != SALT_ENV} | (env or {})
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          env=environment, timeout=600)


def _named_cohort(root: Path) -> Path:
    """Eight NIfTI volumes of four patients, each in a folder named after the patient."""
    for k in range(8):
        patient = f"{NAMES[0]}_{NAMES[1]}_{k // 2}"
        write_nifti(root / CLASSES[k % 4] / patient / f"{patient}_scan{k}.nii.gz",
                    phantom((12, 24, 24), seed=k).astype(np.float32))
    return root


def test_a_cohort_that_is_not_the_demo_needs_a_secret_salt(tmp_path):
    root = _named_cohort(tmp_path / "in")
    refused = _pipeline(["ingest", "--input", str(root), "--output", str(tmp_path / "out"), "--no-progress"])
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "not the synthetic demo cohort" in line and "--salt" in line and SALT_ENV in line
    assert not (tmp_path / "out" / "manifest.csv").exists()
    # the public demo salt given by hand is refused the same way
    public = _pipeline(["ingest", "--input", str(root), "--output", str(tmp_path / "out"), "--salt",
                        "hdkd-demo-salt", "--no-progress"])
    assert public.returncode == 2 and SALT_ENV in public.stderr
    accepted = _pipeline(["ingest", "--input", str(root), "--output", str(tmp_path / "out"), "--no-progress"],
                         env={SALT_ENV: SALT})
    assert accepted.returncode == 0, accepted.stderr
    assert len(read_manifest(tmp_path / "out" / "manifest.csv")) == 8


def test_the_demo_cohort_keeps_its_public_salt_until_anything_is_added(tmp_path):
    demo = tmp_path / "demo"
    made = _pipeline(["demo-data", "--output", str(demo), "--cases", "4", "--seed", "0", "--quiet"])
    assert made.returncode == 0, made.stderr
    ingested = _pipeline(["ingest", "--input", str(demo), "--output", str(tmp_path / "out"), "--no-progress"])
    assert ingested.returncode == 0, ingested.stderr
    assert json.loads((tmp_path / "out" / "ingest.json").read_text())["demo_salt"] is True
    # a real scan dropped into the demo folder (or a copied marker) makes it a cohort like any other
    write_nifti(demo / "nifti" / "real_patient.nii.gz", phantom((8, 16, 16)).astype(np.float32))
    again = _pipeline(["ingest", "--input", str(demo), "--output", str(tmp_path / "out2"), "--no-progress"])
    assert again.returncode == 2 and "not the synthetic demo cohort" in again.stderr
    other = _named_cohort(tmp_path / "copied")
    (other / MARKER).write_bytes((demo / MARKER).read_bytes())
    copied = _pipeline(["ingest", "--input", str(other), "--output", str(tmp_path / "out3"), "--no-progress"])
    assert copied.returncode == 2 and "not the synthetic demo cohort" in copied.stderr


def test_a_patient_with_two_labels_is_a_manifest_warning(tmp_path):
    root = tmp_path / "in"
    for k in range(3):
        write_nifti(root / f"scan{k}.nii.gz", phantom((8, 16, 16), seed=k).astype(np.float32))
    with (root / "labels.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label", "patient_id"], ["scan0.nii.gz", "glioma", "P1"],
                                      ["scan1.nii.gz", "notumor", "P1"], ["scan2.nii.gz", "glioma", "P2"]])
    result = _pipeline(["ingest", "--input", str(root), "--output", str(tmp_path / "out"), "--salt", SALT,
                        "--no-progress"])
    assert result.returncode == 0, result.stderr
    assert "1 patients have items with different labels" in result.stderr
    rows = {row.path: row for row in read_manifest(tmp_path / "out" / "manifest.csv")}
    for name in ("scan0.nii.gz", "scan1.nii.gz"):
        assert "patient has items labelled glioma, notumor: check the labels" in rows[name].warnings
    assert rows["scan2.nii.gz"].warnings == ()
    assert json.loads((tmp_path / "out" / "ingest.json").read_text())["patients_with_several_labels"] == 1


def _files_holding(folder: Path, words: tuple[str, ...]) -> set[str]:
    """Files under ``folder`` (relative) whose name or content holds any of ``words``."""
    found = set()
    for path in (p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        text = relative + path.read_bytes().decode("latin-1")
        if any(word.lower() in text.lower() for word in words):
            found.add(relative)
    return found


def test_folder_names_stay_in_the_documented_local_outputs(tmp_path):
    root = _named_cohort(tmp_path / "raw")
    data = tmp_path / "data"
    steps = [
        ["ingest", "--input", str(root), "--output", str(data / "ingested"), "--no-progress"],
        ["slices", "--manifest", str(data / "ingested" / "manifest.csv"), "--output", str(data / "slices"),
         "--size", "32", "--no-progress"],
        ["split", "--slices", str(data / "slices" / "slices.csv"), "--output",
         str(data / "split" / "split.csv"), "--val", "0.25", "--test", "0.25"],
    ]
    for step in steps:
        result = _pipeline(step, env={SALT_ENV: SALT})
        assert result.returncode == 0, result.stderr
        assert not any(name.lower() in (result.stdout + result.stderr).lower() for name in NAMES)
    assert len((data / "split" / "split.csv").read_text().splitlines()) > 8
    # the paths relative to the input root are in ingest's outputs only (README, Privacy): the manifest and
    # ingest.json lead the later stages to the files; nothing after ingest holds them
    documented = {"ingested/manifest.csv", "ingested/ingest.json", "ingested/rejected.csv",
                  "slices/skipped.csv"}
    assert "ingested/manifest.csv" in _files_holding(data, NAMES) <= documented
    # inference: predictions map each input to its item id; the shared Grad-CAM overlays carry only the id
    network = build_network("teacher", "demo", num_classes=4)
    torch.manual_seed(0)
    out = tmp_path / "inference"
    result = predict(network, root, out, list(CLASSES), 64, 1, gradcam=True, engine="torch-fp32")
    overlays = sorted(p.name for p in (out / "gradcam").iterdir())
    assert len(overlays) >= 8
    assert not any(name.lower() in overlay.lower() for overlay in overlays for name in NAMES)
    ids = {item["item"] for item in result["inputs"]}
    assert {overlay.split("_slice")[0] for overlay in overlays} == ids and len(ids) == 8


def test_ingest_help_says_real_data_needs_a_salt():
    result = _pipeline(["ingest", "--help"])
    assert "refuses any --input that is not an unchanged demo cohort" in " ".join(result.stdout.split())
