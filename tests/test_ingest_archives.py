"""Ingest on messy, real-looking archives: every file accounted for, undecodable files rejected one by one
before series assembly, duplicate instances, two acquisitions in one series, PALETTE COLOR, DICOM SEG and
headers that claim enormous images. All files are written here with pydicom, nibabel and PIL."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom import uid
from test_ingest_factory import (
    PALETTE,
    dicom_dataset,
    palette_dataset,
    phantom,
    rejected,
    run,
    save_dicom,
    write_seg,
    write_series,
)

from pipeline.data.ingest import SEG_ALONE
from pipeline.data.loaders import load_item
from pipeline.data.manifest import read_manifest


def _truncate(path: Path, keep: float = 0.6) -> Path:
    """Cut ``path`` to a fraction of its bytes (a copy interrupted mid-transfer)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _accepted_files(out: Path) -> set[str]:
    """Input files that are part of an accepted item (series files, single files and masks)."""
    info = json.loads((out / "ingest.json").read_text())
    files = {name for names in info["files"].values() for name in names}
    for row in read_manifest(out / "manifest.csv"):
        if row.id not in info["files"]:
            files.add(row.path)
        if row.mask:
            files.add(row.mask)
    return files


def test_truncated_copy_in_another_folder_leaves_the_series_whole(tmp_path):
    root = tmp_path / "in"
    volume = phantom((6, 16, 16), seed=3)
    paths = write_series(root / "glioma" / "case1" / "series", volume)
    copy = root / "glioma" / "case1" / "exported_again" / "IM2"
    copy.parent.mkdir(parents=True)
    _truncate(Path(shutil.copy(paths[2], copy)))
    assert run(root, tmp_path / "out") == 0
    [row] = read_manifest(tmp_path / "out" / "manifest.csv")
    assert row.shape == (1, 16, 16, 6) and row.path == "glioma/case1/series"
    reasons = rejected(tmp_path / "out")
    assert list(reasons) == ["glioma/case1/exported_again/IM2"]
    assert "pixel data" in reasons["glioma/case1/exported_again/IM2"] or "truncated" in reasons[
        "glioma/case1/exported_again/IM2"]


def test_undecodable_slice_is_rejected_alone_and_the_gap_is_reported(tmp_path):
    root = tmp_path / "in"
    paths = write_series(root / "glioma" / "case1", phantom((6, 16, 16), seed=4))
    _truncate(paths[3], keep=0.9)
    assert run(root, tmp_path / "out") == 0
    [row] = read_manifest(tmp_path / "out" / "manifest.csv")
    assert row.shape == (1, 16, 16, 5)
    assert any("1 file(s) of its series rejected" in w for w in row.warnings)
    assert any("irregular slice gaps" in w for w in row.warnings)
    assert list(rejected(tmp_path / "out")) == ["glioma/case1/IM3"]


def test_one_instance_in_three_encodings_and_a_truncated_copy_keeps_one(tmp_path):
    root = tmp_path / "in"
    image = phantom((24, 24), seed=5)
    kept = save_dicom(dicom_dataset(image), root / "glioma" / "a" / "rle.dcm", uid.RLELossless)
    save_dicom(dicom_dataset(image), root / "glioma" / "b" / "jls.dcm", uid.JPEGLSLossless)
    save_dicom(dicom_dataset(image), root / "glioma" / "cc" / "big.dcm", uid.ExplicitVRBigEndian)
    _truncate(save_dicom(dicom_dataset(image), root / "glioma" / "d" / "t.dcm"))
    assert run(root, tmp_path / "out") == 0
    [row] = read_manifest(tmp_path / "out" / "manifest.csv")
    assert row.path == kept.relative_to(root).as_posix() and row.shape == (1, 24, 24)
    np.testing.assert_array_equal(np.asarray(load_item(tmp_path / "out" / "manifest.csv", row))[0], image.T)
    reasons = rejected(tmp_path / "out")
    assert reasons["glioma/b/jls.dcm"] == "duplicate of glioma/a/rle.dcm (same SOPInstanceUID)"
    assert reasons["glioma/cc/big.dcm"] == "duplicate of glioma/a/rle.dcm (same SOPInstanceUID)"
    assert "duplicate" not in reasons["glioma/d/t.dcm"]
    assert len(reasons) == 3


def _two_acquisitions(folder: Path, tag: str | None, series_uid: str = "1.2.826.0.1.3") -> None:
    """Two 4-slice acquisitions at the same positions in one series (different instances)."""
    for acquisition in (1, 2):
        volume = phantom((4, 16, 16), seed=10 + acquisition)
        for k in range(4):
            ds = dicom_dataset(volume[k], position=(0.0, 0.0, 3.0 * k), instance=10 * acquisition + k,
                               series_uid=series_uid)
            if tag:
                setattr(ds, tag, acquisition)
            save_dicom(ds, folder / f"A{acquisition}_{k}.dcm")


def test_two_acquisitions_in_one_series_are_split_by_acquisition_number(tmp_path):
    root = tmp_path / "in"
    _two_acquisitions(root / "glioma" / "case1", "AcquisitionNumber")
    assert run(root, tmp_path / "out") == 0
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    assert [r.shape for r in rows] == [(1, 16, 16, 4)] * 2 and len({r.id for r in rows}) == 2
    assert sorted(w.split(": ")[-1] for r in rows for w in r.warnings if "acquisitions" in w) == [
        "AcquisitionNumber 1", "AcquisitionNumber 2"]
    info = json.loads((tmp_path / "out" / "ingest.json").read_text())
    assert sorted(sorted(files) for files in info["files"].values()) == [
        [f"glioma/case1/A{a}_{k}.dcm" for k in range(4)] for a in (1, 2)]
    assert rejected(tmp_path / "out") == {}


def test_two_acquisitions_nothing_tells_apart_are_rejected_per_file(tmp_path):
    root = tmp_path / "in"
    _two_acquisitions(root / "glioma" / "case1", None)
    assert run(root, tmp_path / "out") == 2
    reasons = rejected(tmp_path / "out")
    assert sorted(reasons) == sorted(f"glioma/case1/A{a}_{k}.dcm" for a in (1, 2) for k in range(4))
    assert all("same slice position" in r for r in reasons.values())


def test_identical_pixels_under_two_patients_warn(tmp_path):
    root = tmp_path / "in"
    image = phantom((20, 20), seed=6)
    save_dicom(dicom_dataset(image, series_uid="1.2.3.1", patient_id="P1"), root / "glioma" / "one.dcm")
    save_dicom(dicom_dataset(image, series_uid="1.2.3.2", patient_id="P2"), root / "glioma" / "two.dcm")
    # blank volumes of two patients are alike by nature: no warning (blank 2D images are rejected)
    blank = np.zeros((2, 20, 20), np.uint16)
    save_dicom(dicom_dataset(blank, series_uid="1.2.3.3", patient_id="P1"), root / "glioma" / "blank1.dcm")
    save_dicom(dicom_dataset(blank, series_uid="1.2.3.4", patient_id="P2"), root / "glioma" / "blank2.dcm")
    assert run(root, tmp_path / "out") == 0
    rows = {row.path: row for row in read_manifest(tmp_path / "out" / "manifest.csv")}
    assert len(rows) == 4
    for path, other in (("glioma/one.dcm", "glioma/two.dcm"), ("glioma/two.dcm", "glioma/one.dcm")):
        assert any(f"pixel data identical to {other} of another patient" in w for w in rows[path].warnings)
    assert not any("identical" in w for path in ("glioma/blank1.dcm", "glioma/blank2.dcm")
                   for w in rows[path].warnings)


def test_palette_color_is_read_as_rgb(tmp_path):
    root = tmp_path / "in"
    indices = (phantom((12, 10), seed=7, high=255, dtype=np.uint8) // 64).astype(np.uint8)  # 0..3
    save_dicom(palette_dataset(indices), root / "glioma" / "palette.dcm")
    lut = PALETTE
    assert run(root, tmp_path / "out") == 0
    [row] = read_manifest(tmp_path / "out" / "manifest.csv")
    assert row.shape == (3, 10, 12) and row.photometric == "PALETTE COLOR"
    rgb = np.asarray(load_item(tmp_path / "out" / "manifest.csv", row))
    expected = np.stack([np.asarray(lut[c])[indices.T] for c in ("Red", "Green", "Blue")])
    np.testing.assert_array_equal(rgb, expected)


def test_dicom_seg_is_the_mask_of_its_series_and_alone_is_rejected(tmp_path):
    root = tmp_path / "in"
    volume = phantom((4, 16, 16), seed=8)
    write_series(root / "glioma" / "case1", volume, series_uid="1.2.826.0.1.77")
    mask = np.zeros((4, 16, 16), bool)
    mask[1:3, 4:9, 5:12] = True
    write_seg(root / "glioma" / "seg" / "lesion.dcm", mask, "1.2.826.0.1.77")
    write_seg(root / "glioma" / "orphan" / "lesion.dcm", mask, "1.2.826.0.1.55")
    assert run(root, tmp_path / "out") == 0
    [row] = read_manifest(tmp_path / "out" / "manifest.csv")
    assert row.mask == "glioma/seg/lesion.dcm" and row.shape == (1, 16, 16, 4)
    assert rejected(tmp_path / "out") == {"glioma/orphan/lesion.dcm": SEG_ALONE}


def test_a_seg_that_does_not_fit_its_series_leaves_the_series_accepted(tmp_path):
    root = tmp_path / "in"
    write_series(root / "glioma" / "case1", phantom((4, 16, 16), seed=8), series_uid="1.2.826.0.1.78")
    write_seg(root / "glioma" / "seg.dcm", np.ones((2, 16, 16), bool), "1.2.826.0.1.78")  # 2 of the 4 slices
    assert run(root, tmp_path / "out") == 0
    [row] = read_manifest(tmp_path / "out" / "manifest.csv")
    assert row.mask == "" and row.shape == (1, 16, 16, 4)
    [warning] = [w for w in row.warnings if w.startswith("DICOM SEG glioma/seg.dcm not used as the mask")]
    assert "has shape (16, 16, 2)" in warning
    assert rejected(tmp_path / "out") == {"glioma/seg.dcm": warning}


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header (IHDR) claims ``width`` x ``height`` RGB pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _nifti_claiming(path: Path, shape: tuple[int, int, int]) -> Path:
    """A small NIfTI whose header is edited afterwards to claim ``shape`` (dim[1..3] at byte 42)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), path)
    data = bytearray(path.read_bytes())
    data[42:48] = struct.pack("<3h", *shape)
    path.write_bytes(bytes(data))
    return path


def test_headers_claiming_enormous_images_are_rejected_before_reading(tmp_path):
    root = tmp_path / "in"
    _png_claiming(root / "glioma" / "bomb.png", 200_000, 200_000)
    _nifti_claiming(root / "glioma" / "bomb.nii", (30_000, 30_000, 30_000))
    Image.fromarray(phantom((40, 40), high=255, dtype=np.uint8)).save(root / "glioma" / "fine.png")
    assert run(root, tmp_path / "out") == 0
    reasons = rejected(tmp_path / "out")
    assert sorted(reasons) == ["glioma/bomb.nii", "glioma/bomb.png"]
    assert all("more than the limit" in r for r in reasons.values())
    assert "540,000,000,000,000 bytes" in reasons["glioma/bomb.nii"]  # 30000^3 float32 values x (4 + 16)
    assert run(root, tmp_path / "small", "--max-item-bytes", "1000") == 2  # the limit is a setting
    assert "more than the limit of 1,000" in rejected(tmp_path / "small")["glioma/fine.png"]


def test_every_file_of_a_messy_tree_is_accepted_or_rejected_under_its_own_path(tmp_path):
    root = tmp_path / "in"
    series = write_series(root / "glioma" / "p1" / "t1", phantom((5, 16, 16), seed=9),
                          series_uid="1.2.826.0.1.5")
    shutil.copy(series[0], root / "glioma" / "p1" / "dup_of_IM0")
    _truncate(Path(shutil.copy(series[1], root / "glioma" / "p1" / "IM1_cut")))
    _two_acquisitions(root / "meningioma" / "p2", None, "1.2.826.0.1.12")
    _two_acquisitions(root / "meningioma" / "p3", "EchoNumbers", "1.2.826.0.1.13")
    save_dicom(dicom_dataset(phantom((16, 16), seed=2)), root / "series_root_file.dcm")  # no class folder
    (root / "notumor").mkdir()
    (root / "pituitary").mkdir()
    grey = Image.fromarray(phantom((30, 30), high=255, dtype=np.uint8))
    grey.convert("RGB").save(root / "notumor" / "a.jpg")
    (root / "notumor" / "notes.txt").write_text("not an image")
    (root / "notumor" / "empty.png").write_bytes(b"")
    volume = nib.Nifti1Image(phantom((16, 16, 6)).astype(np.float32), np.eye(4))
    nib.save(volume, root / "pituitary" / "v.nii.gz")
    write_seg(root / "pituitary" / "seg.dcm", np.ones((2, 16, 16), bool), "1.2.826.0.1.404")
    (root / ".hidden_file").write_text("skipped by design")
    out = tmp_path / "out"
    assert run(root, out) == 0
    every = {p.relative_to(root).as_posix() for p in root.rglob("*")
             if p.is_file() and not p.name.startswith(".")}
    accepted, refused = _accepted_files(out), rejected(out)
    assert not accepted & set(refused)
    assert accepted | set(refused) == every
    assert all(path != "." and (root / path).is_file() and reason for path, reason in refused.items())
    assert refused["glioma/p1/dup_of_IM0"] == "duplicate of glioma/p1/t1/IM0 (same SOPInstanceUID)"
    assert refused["pituitary/seg.dcm"] == SEG_ALONE
    assert len([r for r in read_manifest(out / "manifest.csv") if r.path == "meningioma/p3"]) == 2
