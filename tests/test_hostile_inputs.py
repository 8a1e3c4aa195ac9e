"""Hostile and broken inputs (issue 14): memory bombs, links out of the input folder, per-file failures,
and the decisions for odd images. Every case writes its files, runs the real command (``python -m
pipeline ingest`` / ``slices`` in a subprocess, inference through ``predict``) and checks the rejected
row, the exit code and that the good files beside it still come through."""

from __future__ import annotations

import csv
import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from test_ingest_factory import SALT, dicom_dataset, phantom, save_dicom, write_nifti, write_series

from pipeline.data.discovery import NOT_UTF8, OUTSIDE_INPUT
from pipeline.data.manifest import read_manifest

GIB = 2**30
CLASSES = ["glioma", "meningioma"]
# Runs a command twice in one process: on the good files alone (to measure what a plain run needs), then,
# with the address space limited to that peak + 1.5 GiB, on the same files beside the hostile ones.
LIMITED_RUN = r"""
import re, resource, sys
from pathlib import Path

def peak() -> int:
    return int(re.search(r"VmPeak:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

command, plain, hostile, output = sys.argv[1:5]
if command == "ingest":
    from pipeline.data import ingest
    def run(source, target):
        return ingest.main(["--input", source, "--output", target, "--salt", "s", "--no-progress"])
else:
    import torch
    from pipeline.bundle.inference import predict
    from pipeline.networks import build_network
    torch.manual_seed(0)
    network = build_network("hdkd", "demo").eval()
    def run(source, target):
        predict(network, source, target, ["glioma", "meningioma", "pituitary", "notumor"], image_size=64,
                in_channels=1, batch_size=4, engine="torch-fp32")
        return 0
assert run(plain, output + "/plain") == 0
budget = peak() + int(1.5 * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (budget, budget))
print("exit", run(hostile, output + "/hostile"), "peak", peak(), "budget", budget)
"""


def _command(*args: str | Path) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` as a user runs it."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def _ingest(root: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    return _command("ingest", "--input", root, "--output", output, "--salt", SALT, "--no-progress", *extra)


def _rows(csv_path: Path, key: str = "path") -> dict[str, str]:
    """A rejected/skipped CSV as path -> reason (read as UTF-8, the only way the writers write)."""
    with csv_path.open(newline="", encoding="utf-8") as handle:
        return {row[key]: row["reason"] for row in csv.DictReader(handle)}


def _good_png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(phantom((48, 40), seed=seed, high=255, dtype=np.uint8)).save(path)
    return path


def _gzip_bomb(path: Path, shape: tuple[int, int, int], inflated: int) -> Path:
    """A .nii.gz: a uint8 NIfTI header claiming ``shape``, then zeros inflating to ``inflated`` bytes in all
    (concatenated gzip members, a valid gzip stream; about 1/1000 of that on disk)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    header.set_qform(np.eye(4), code=1)
    block = 64 << 20
    zeros = gzip.compress(b"\0" * block, compresslevel=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(gzip.compress(header.binaryblock + b"\0" * 4))
        for _ in range(inflated // block):
            handle.write(zeros)
    return path


def _frames_bomb(path: Path) -> Path:
    """A tiny enhanced-style DICOM whose header claims 2e9 frames of 512 x 512 (its data is one frame)."""
    ds = dicom_dataset(phantom((16, 16)))
    ds.NumberOfFrames = 2_000_000_000
    ds.Rows = ds.Columns = 512
    shared = Dataset()
    position = Dataset()
    position.ImagePositionPatient = [0.0, 0.0, 0.0]
    shared.PlanePositionSequence = [position]
    ds.SharedFunctionalGroupsSequence = [shared]
    return _save_raw(ds, path)


def _save_raw(ds: Dataset, path: Path) -> Path:
    """Save without decoding the (inconsistent) pixel data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _big_png(path: Path, side: int = 12000) -> Path:
    """A ``side`` x ``side`` grey PNG (below Pillow's bomb error limit) with a bright square: a real image."""
    image = Image.new("L", (side, side), 0)
    image.paste(255, (side // 4, side // 4, 3 * side // 4, 3 * side // 4))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, compress_level=1)
    return path


def _limited(command: str, plain: Path, hostile: Path, output: Path) -> str:
    """Run LIMITED_RUN; its last line (exit status, peak and budget); fails with the child's stderr."""
    script = output.parent / "limited_run.py"
    script.write_text(LIMITED_RUN)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), command, str(plain), str(hostile), str(output)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> tuple[Path, Path]:
    """(good files alone, the same good files beside the memory bombs)."""
    base = tmp_path_factory.mktemp("bombs")
    plain, hostile = base / "plain", base / "hostile"
    for root in (plain, hostile):
        _good_png(root / "glioma" / "good.png")
        write_nifti(root / "meningioma" / "good.nii.gz", phantom((24, 24, 6)).astype(np.float32))
    _gzip_bomb(hostile / "glioma" / "header_bomb.nii.gz", (1500, 1600, 1500), 3_600_000_000)
    _gzip_bomb(hostile / "glioma" / "stream_bomb.nii.gz", (16, 16, 16), 3_600_000_000)
    _frames_bomb(hostile / "glioma" / "frames.dcm")
    _big_png(hostile / "meningioma" / "wide.png")  # 144 M pixels: 2.2 GB to read and slice
    _big_png(hostile / "meningioma" / "large.png", 6000)  # 36 M pixels: 0.6 GB, within the limit
    return plain, hostile


def test_memory_bombs_are_rejected_from_their_headers_and_ingest_stays_within_its_budget(bombs, tmp_path):
    plain, hostile = bombs
    assert (hostile / "glioma" / "stream_bomb.nii.gz").stat().st_size < 5_000_000  # a few MB on disk
    last = _limited("ingest", plain, hostile, tmp_path / "out")
    assert last.startswith("exit 0 ")
    reasons = _rows(tmp_path / "out" / "hostile" / "rejected.csv")
    assert sorted(reasons) == ["glioma/frames.dcm", "glioma/header_bomb.nii.gz", "glioma/stream_bomb.nii.gz",
                               "meningioma/wide.png"]
    for path in ("glioma/frames.dcm", "glioma/header_bomb.nii.gz", "meningioma/wide.png"):
        assert "more than the limit of 1,073,741,824 (--max-item-bytes): refused before" in reasons[path]
    assert "header claims 2,448,000,000 bytes" in reasons["meningioma/wide.png"]  # 144 M x (1 + 16)
    assert reasons["glioma/stream_bomb.nii.gz"].startswith("gzip stream inflates past the ")
    accepted = {row.path: row for row in read_manifest(tmp_path / "out" / "hostile" / "manifest.csv")}
    assert sorted(accepted) == ["glioma/good.png", "meningioma/good.nii.gz", "meningioma/large.png"]
    assert accepted["meningioma/large.png"].shape == (1, 6000, 6000)  # large but within the limit: read


def test_memory_bombs_are_rejected_by_inference_within_its_budget(bombs, tmp_path):
    plain, hostile = bombs
    last = _limited("inference", plain, hostile, tmp_path / "out")
    assert last.startswith("exit 0 ")
    result = json.loads((tmp_path / "out" / "hostile" / "predictions.json").read_text())
    assert sorted(item["input"] for item in result["inputs"]) == [
        "glioma/good.png", "meningioma/good.nii.gz", "meningioma/large.png"]
    reasons = _rows(tmp_path / "out" / "hostile" / "rejected.csv", key="input")
    assert sorted(reasons) == ["glioma/frames.dcm", "glioma/header_bomb.nii.gz", "glioma/stream_bomb.nii.gz",
                               "meningioma/wide.png"]
    assert all("refused before reading" in r or "gzip stream" in r for r in reasons.values())


def test_the_limit_is_one_setting(tmp_path):
    root = tmp_path / "in"
    _good_png(root / "glioma" / "a.png")
    _good_png(root / "glioma" / "b.png", seed=1)
    done = _ingest(root, tmp_path / "out", "--max-item-bytes", "4000")  # 48 x 40 x 4 = 7680 bytes
    assert done.returncode == 2
    assert "more than the limit of 4,000" in _rows(tmp_path / "out" / "rejected.csv")["glioma/a.png"]
    assert "--max-voxels" not in _command("ingest", "--help").stdout


def test_links_out_of_the_input_are_one_row_each_and_never_read(tmp_path):
    outside = tmp_path / "elsewhere"
    _good_png(outside / "secret.png")
    write_nifti(outside / "mask.nii.gz", np.ones((24, 24, 6), np.uint8))
    root = tmp_path / "in"
    _good_png(root / "glioma" / "good.png")
    write_nifti(root / "meningioma" / "vol.nii.gz", phantom((24, 24, 6)).astype(np.float32))
    write_nifti(root / "meningioma" / "vol2.nii.gz", phantom((24, 24, 6), seed=3).astype(np.float32))
    (root / "glioma" / "system").symlink_to("/usr")
    (root / "glioma" / "secret.png").symlink_to(outside / "secret.png")
    (root / "masks").mkdir()
    (root / "masks" / "m.nii.gz").symlink_to(outside / "mask.nii.gz")
    (root / "labels.csv").write_text("path,label,mask\nglioma/good.png,glioma,\n"
                                     "meningioma/vol.nii.gz,meningioma,masks/m.nii.gz\n"
                                     "meningioma/vol2.nii.gz,meningioma,\n")
    done = _ingest(root, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    reasons = _rows(tmp_path / "out" / "rejected.csv")
    assert reasons["glioma/system"] == OUTSIDE_INPUT  # one row for the link to /usr, nothing under it
    assert reasons["glioma/secret.png"] == OUTSIDE_INPUT
    assert "mask 'masks/m.nii.gz' named in the labels is a link to a place outside" in reasons[
        "meningioma/vol.nii.gz"]
    assert len(reasons) == 3
    assert [row.path for row in read_manifest(tmp_path / "out" / "manifest.csv")] == [
        "glioma/good.png", "meningioma/vol2.nii.gz"]

    from pipeline.bundle.inference import find_inputs
    items, rejected = find_inputs(root / "glioma")
    assert [item.name for item in items] == ["good.png"]
    assert dict(rejected) == {"secret.png": OUTSIDE_INPUT, "system": OUTSIDE_INPUT}


def test_an_unorientable_nifti_is_a_slices_row_and_leaves_no_orphan_arrays(tmp_path):
    root = tmp_path / "in"
    write_nifti(root / "glioma" / "good.nii.gz", phantom((24, 24, 6)).astype(np.float32))
    zero = write_nifti(root / "glioma" / "zero_sform.nii", phantom((24, 24, 6), seed=5).astype(np.float32))
    header = bytearray(zero.read_bytes())
    header[252:256] = struct.pack("<hh", 0, 1)  # qform_code 0, sform_code 1 ...
    header[280:328] = bytes(48)  # ... an all-zero sform (srow_x, srow_y, srow_z) ...
    header[80:92] = bytes(12)  # ... and zero voxel sizes (pixdim[1:4]): no orientation anywhere
    zero.write_bytes(bytes(header))
    done = _ingest(root, tmp_path / "ingest")
    assert done.returncode == 0, done.stderr
    rows = {row.path: row for row in read_manifest(tmp_path / "ingest" / "manifest.csv")}
    assert any("orientation matrix is singular" in w for w in rows["glioma/zero_sform.nii"].warnings)
    done = _command("slices", "--manifest", tmp_path / "ingest" / "manifest.csv", "--output",
                    tmp_path / "slices", "--no-progress")
    assert done.returncode == 0, done.stderr
    skipped = _rows(tmp_path / "slices" / "skipped.csv")
    assert list(skipped) == ["glioma/zero_sform.nii"]
    assert skipped["glioma/zero_sform.nii"].startswith("failed to slice: ")
    with (tmp_path / "slices" / "slices.csv").open(newline="") as handle:
        listed = {row["path"] for row in csv.DictReader(handle)}
    written = {f"slices/{p.name}" for p in (tmp_path / "slices" / "slices").iterdir()}
    assert listed and written == listed  # every array on disk is in the table: no orphans
    assert {r["source_id"] for r in csv.DictReader((tmp_path / "slices" / "slices.csv").open())} == {
        rows["glioma/good.nii.gz"].id}


def test_a_file_name_that_is_not_utf8_is_a_row_with_its_bytes_escaped(tmp_path):
    root = tmp_path / "in"
    _good_png(root / "glioma" / "good.png")
    _good_png(Path(os.fsdecode(bytes(root / "glioma") + b"/caf\xe9.png")), seed=2)  # Latin-1 name
    done = _ingest(root, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert _rows(tmp_path / "out" / "rejected.csv") == {"glioma/caf\\xe9.png": NOT_UTF8}
    assert [row.path for row in read_manifest(tmp_path / "out" / "manifest.csv")] == ["glioma/good.png"]
    assert (tmp_path / "out" / "ingest.json").is_file()

    from pipeline.bundle.inference import find_inputs
    items, rejected = find_inputs(root)
    assert [item.name for item in items] == ["glioma/good.png"] and rejected == [
        ("glioma/caf\\xe9.png", NOT_UTF8)]


def test_labels_in_utf16_are_read_and_other_encodings_named(tmp_path):
    root = tmp_path / "in"
    _good_png(root / "a.png")
    _good_png(root / "b.png", seed=1)
    (root / "labels.csv").write_text("path,label\na.png,glioma\nb.png,méningioma\n", encoding="utf-16")
    done = _ingest(root, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert {row.path: row.label for row in read_manifest(tmp_path / "out" / "manifest.csv")} == {
        "a.png": "glioma", "b.png": "méningioma"}
    (root / "labels.csv").write_bytes("path,label\na.png,glioma\nb.png,méningioma\n".encode("cp1252"))
    done = _ingest(root, tmp_path / "latin")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("ingest: error: ") and "labels.csv: not UTF-8 or UTF-16 text" in line


def test_a_series_mixing_image_sizes_keeps_its_largest_group_in_ingest_and_inference(tmp_path):
    root = tmp_path / "in"
    folder = root / "glioma" / "series"
    write_series(folder, phantom((5, 16, 16)), series_uid="1.2.826.0.1.99")
    for k, frame in enumerate(phantom((2, 20, 20), seed=4)):  # same series, own instances, 20 x 20
        save_dicom(dicom_dataset(frame, series_uid="1.2.826.0.1.99", position=(0.0, 0.0, 30.0 + 3 * k),
                                 instance=10 + k), folder / f"odd{k}")
    _good_png(root / "meningioma" / "good.png")
    done = _ingest(root, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    [volume] = [row for row in read_manifest(tmp_path / "out" / "manifest.csv") if row.format == "dicom"]
    assert volume.shape == (1, 16, 16, 5) and volume.path == "glioma/series"
    reasons = _rows(tmp_path / "out" / "rejected.csv")
    expected = "20x20 pixels while 5 file(s) of its series have 16x16: only that group is used"
    assert reasons == {"glioma/series/odd0": expected, "glioma/series/odd1": expected}

    from pipeline.bundle.inference import find_inputs
    items, rejected = find_inputs(root)
    assert [(item.name, len(item.files)) for item in items] == [
        ("glioma/series", 5), ("meningioma/good.png", 1)]
    assert dict(rejected) == reasons


def test_odd_images_near_empty_rejected_multipage_tiff_and_zero_pixdim_warned(tmp_path):
    root = tmp_path / "in"
    _good_png(root / "glioma" / "good.png")
    Image.new("L", (1, 1), 128).save(root / "glioma" / "dot.png")
    Image.new("RGB", (64, 64), 0).save(root / "glioma" / "black.png")
    pages = [Image.fromarray(phantom((32, 32), seed=s, high=255, dtype=np.uint8)) for s in range(3)]
    pages[0].save(root / "glioma" / "pages.tif", save_all=True, append_images=pages[1:])
    flat = write_nifti(root / "glioma" / "flat.nii", phantom((24, 24, 6), seed=6).astype(np.float32))
    flat.write_bytes(flat.read_bytes()[:80] + struct.pack("<3f", 1.0, 0.0, -2.0) + flat.read_bytes()[92:])
    done = _ingest(root, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    reasons = _rows(tmp_path / "out" / "rejected.csv")
    assert sorted(reasons) == ["glioma/black.png", "glioma/dot.png"]
    assert all(r.startswith("near-empty image") for r in reasons.values())
    rows = {row.path: row for row in read_manifest(tmp_path / "out" / "manifest.csv")}
    assert sorted(rows) == ["glioma/flat.nii", "glioma/good.png", "glioma/pages.tif"]
    assert "multi-page TIFF: only page 1 of 3 is used" in rows["glioma/pages.tif"].warnings[0]
    [pixdim] = [w for w in rows["glioma/flat.nii"].warnings if w.startswith("NIfTI pixdim")]
    assert pixdim.startswith("NIfTI pixdim (1.0, 0.0, -2.0) has zero or negative voxel sizes")
