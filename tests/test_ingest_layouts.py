"""Ingest: the four label layouts are detected and read; masks attach to their image; manifest helpers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_ingest_factory import SALT, phantom, rejected, run, write_nifti, write_series

from pipeline.data.discovery import OUTSIDE_INPUT
from pipeline.data.loaders import load_item
from pipeline.data.manifest import MANIFEST_COLUMNS, item_files, mask_file, read_info, read_manifest
from pipeline.data.privacy import salted_hash


def _png(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(phantom((16, 16), seed=seed, high=250, dtype=np.uint8)).save(path)


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_labels_csv_with_masks_patients_and_series_folders(tmp_path, capsys):
    root, out = tmp_path / "demo", tmp_path / "out"
    volume = phantom((4, 16, 16), seed=1)
    write_series(root / "dicom" / "case1", volume, series_uid="1.2.826.0.1.3680043.10.2.1", patient_id="P-A")
    write_nifti(root / "nifti" / "case2.nii.gz", volume.transpose(2, 1, 0).astype(np.float32))
    write_nifti(root / "masks" / "case2_mask.nii.gz", (volume.transpose(2, 1, 0) > 1500).astype(np.uint8))
    write_nifti(root / "nifti" / "case3.nii.gz", volume.transpose(2, 1, 0).astype(np.float32))
    write_nifti(root / "nifti" / "case4.nii.gz", volume.transpose(2, 1, 0).astype(np.float32))
    _write_csv(root / "labels.csv", ["path", "label", "patient_id", "mask"], [
        ["dicom/case1", "glioma", "P-A", ""],
        ["nifti/case2.nii.gz", "meningioma", "P-A", "masks/case2_mask.nii.gz"],  # second scan of P-A
        ["nifti/case3.nii.gz", "notumor", "P-B", "masks/missing.nii.gz"],
        ["nifti/case4.nii.gz", "pituitary", "", ""],
        ["nifti/case5.nii.gz", "glioma", "P-C", ""],
    ])
    assert run(root, out) == 0
    summary = capsys.readouterr().out
    assert "layout labels-csv: 3 accepted (glioma 1, meningioma 1, pituitary 1), 2 rejected" in summary
    manifest = out / "manifest.csv"
    with manifest.open() as handle:
        assert tuple(next(csv.reader(handle))) == MANIFEST_COLUMNS
    rows = {r.path: r for r in read_manifest(manifest)}
    assert set(rows) == {"dicom/case1", "nifti/case2.nii.gz", "nifti/case4.nii.gz"}  # masks not ingested
    assert rows["dicom/case1"].patient == rows["nifti/case2.nii.gz"].patient == salted_hash("P-A", SALT)
    assert rows["nifti/case4.nii.gz"].warnings == ("no patient id: the item counts as its own patient",)
    assert rows["dicom/case1"].modality == "MR" and rows["dicom/case1"].kind == "volume"
    assert rows["nifti/case2.nii.gz"].mask == "masks/case2_mask.nii.gz"
    assert mask_file(manifest, rows["nifti/case2.nii.gz"]) == (root / "masks" / "case2_mask.nii.gz").resolve()
    assert mask_file(manifest, rows["dicom/case1"]) is None
    assert [p.name for p in item_files(manifest, rows["dicom/case1"])] == ["IM0", "IM1", "IM2", "IM3"]
    assert read_info(manifest)["input_root"] == "../demo"
    assert tuple(load_item(manifest, rows["nifti/case2.nii.gz"]).shape) == rows["nifti/case2.nii.gz"].shape
    assert rejected(out) == {
        "nifti/case3.nii.gz": "mask 'masks/missing.nii.gz' named in the labels does not exist",
        "nifti/case5.nii.gz": "listed in the labels CSV but no such file or folder in the input",
    }
    ids = [r.id for r in rows.values()]
    assert len(set(ids)) == 3
    assert run(root, tmp_path / "again") == 0
    assert [r.id for r in read_manifest(tmp_path / "again" / "manifest.csv")] == ids  # stable ids


def test_labels_csv_keyed_by_series_uid_outside_the_input(tmp_path):
    root = tmp_path / "in"
    write_series(root / "s1", phantom((2, 8, 8)), series_uid="1.2.826.0.1.3680043.10.3.1")
    write_series(root / "s2", phantom((2, 8, 8)), series_uid="1.2.826.0.1.3680043.10.3.2")
    table = tmp_path / "series_labels.csv"
    _write_csv(table, ["series_uid", "label"], [["1.2.826.0.1.3680043.10.3.1", "x"]])
    assert run(root, tmp_path / "out", "--labels", str(table)) == 0
    assert [(r.path, r.label) for r in read_manifest(tmp_path / "out" / "manifest.csv")] == [("s1", "x")]
    reason = "no label: not listed in the labels CSV (by 'series_uid')"
    assert rejected(tmp_path / "out") == {"s2/IM0": reason, "s2/IM1": reason}  # one row per file


def test_malformed_labels_csv_is_a_clear_error(tmp_path, capsys):
    root = tmp_path / "in"
    _png(root / "a" / "x.png")
    _write_csv(tmp_path / "bad.csv", ["file", "class"], [["a/x.png", "a"]])
    assert run(root, tmp_path / "out", "--labels", str(tmp_path / "bad.csv")) == 2
    assert "needs a 'label' column" in capsys.readouterr().err


def test_class_folders(tmp_path, capsys):
    root = tmp_path / "in"
    _png(root / "benign" / "deep" / "er" / "a.png", 1)
    _png(tmp_path / "elsewhere" / "b.png", 2)
    _png(root / "store" / "c.png", 3)
    (root / "malignant").symlink_to(root / "store", target_is_directory=True)  # inside: followed (store is
    (root / "outside").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # then not walked
    (root / "benign" / "loop").symlink_to(root, target_is_directory=True)  # twice); outside: one row
    assert run(root, tmp_path / "out") == 0
    assert "layout class-folders: 2 accepted (benign 1, malignant 1), 1 rejected" in capsys.readouterr().out
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    assert [(r.path, r.label, r.given_split) for r in rows] == [
        ("benign/deep/er/a.png", "benign", ""), ("malignant/c.png", "malignant", "")]
    assert rejected(tmp_path / "out") == {"outside": OUTSIDE_INPUT}


def test_brain_tumor_mri_layout_keeps_the_given_split(tmp_path, capsys):
    root = tmp_path / "brain"
    for split, prefix in (("Training", "Tr"), ("Testing", "Te")):
        for k, label in enumerate(("glioma", "meningioma", "notumor", "pituitary")):
            _png(root / split / label / f"{prefix}-{label[:2]}_{k:04d}.jpg", k)
    assert run(root, tmp_path / "out", "--classes", "glioma,meningioma,notumor,pituitary") == 0
    assert "layout brain-tumor-mri: 8 accepted (glioma 2, meningioma 2, notumor 2, pituitary 2)" in \
        capsys.readouterr().out
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    splits = {(r.path.split("/")[0], r.given_split) for r in rows}
    assert splits == {("Training", "train"), ("Testing", "test")}
    assert all(r.label == r.path.split("/")[1] for r in rows)
    assert len({r.patient for r in rows}) == 8  # no patient ids: each image is its own patient


def test_ham10000_layout_groups_by_lesion(tmp_path, capsys):
    root = tmp_path / "ham"
    _png(root / "HAM10000_images_part_1" / "ISIC_0000001.jpg", 1)
    _png(root / "HAM10000_images_part_2" / "ISIC_0000002.jpg", 2)
    _png(root / "HAM10000_images_part_2" / "ISIC_0000003.jpg", 3)
    _png(root / "HAM10000_segmentations" / "ISIC_0000001_segmentation.png", 4)
    _write_csv(root / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx", "dx_type", "age"], [
        ["HAM_0000118", "ISIC_0000001", "bkl", "histo", "80.0"],
        ["HAM_0000118", "ISIC_0000002", "bkl", "histo", "80.0"],
        ["HAM_0002730", "ISIC_0000003", "mel", "histo", "75.0"],
    ])
    assert run(root, tmp_path / "out") == 0
    assert "layout ham10000: 3 accepted (bkl 2, mel 1), 0 rejected" in capsys.readouterr().out
    rows = {Path(r.path).stem: r for r in read_manifest(tmp_path / "out" / "manifest.csv")}
    assert rows["ISIC_0000001"].patient == rows["ISIC_0000002"].patient == salted_hash("HAM_0000118", SALT)
    assert rows["ISIC_0000003"].patient != rows["ISIC_0000001"].patient
    assert rows["ISIC_0000001"].mask == "HAM10000_segmentations/ISIC_0000001_segmentation.png"
    assert rows["ISIC_0000003"].mask == ""


@pytest.mark.parametrize("layout", ["flat", "labels-in-subfolder"])
def test_no_label_source_rejects_everything(tmp_path, capsys, layout):
    root = tmp_path / "in"
    _png(root / "a.png")
    if layout == "labels-in-subfolder":
        _png(root / "a" / "b.png")
        _write_csv(tmp_path / "l.csv", ["path", "label"], [["a/b.png", ""]])
        assert run(root, tmp_path / "out", "--labels", str(tmp_path / "l.csv")) == 2
        reason = rejected(tmp_path / "out")["a/b.png"]
        assert reason == "no label: its row in the labels CSV has an empty 'label'"
    else:
        assert run(root, tmp_path / "out") == 2
        assert "layout none: 0 accepted" in capsys.readouterr().out
        reason = rejected(tmp_path / "out")["a.png"]
        assert reason.startswith("no label: no labels CSV (--labels), class folders")
