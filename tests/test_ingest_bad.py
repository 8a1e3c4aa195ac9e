"""Ingest: each kind of bad input lands in rejected.csv with a clear reason; exit codes; inputs untouched."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from test_ingest_factory import (
    SALT,
    dicom_dataset,
    phantom,
    rejected,
    run,
    save_dicom,
    write_nifti,
    write_series,
)

from pipeline.data.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]


def _structured_report(path: Path) -> None:
    """A Basic Text SR: valid DICOM, no pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = uid.BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid(entropy_srcs=["sr"])
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = uid.BasicTextSRStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1.99"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _bad_tree(root: Path) -> None:
    """One good image per class plus one of each kind of bad input."""
    good = phantom((16, 16), seed=1, high=250, dtype=np.uint8)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(good).save(root / label / "good.png")
    single = dicom_dataset(phantom((16, 16), seed=2), series_uid="1.2.826.0.1.3680043.10.1.50")
    truncated = save_dicom(single, root / "a" / "truncated.dcm")
    truncated.write_bytes(truncated.read_bytes()[:-200])
    (root / "a" / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    _structured_report(root / "a" / "report.dcm")
    (root / "a" / "notes.txt").write_text("not an image\n")
    write_nifti(root / "a" / "nan.nii.gz", np.full((4, 4, 3), np.nan, dtype=np.float32))
    write_nifti(root / "a" / "empty.nii", np.zeros((4, 4, 0), dtype=np.float32))
    write_nifti(root / "a" / "fmri.nii.gz", np.zeros((4, 4, 3, 5), dtype=np.float32))
    cut = write_nifti(root / "a" / "cut.nii.gz", phantom((8, 8, 4)).astype(np.float32))
    cut.write_bytes(cut.read_bytes()[:-60])
    Image.fromarray(good).save(root / "a" / "cut.png")
    (root / "a" / "cut.png").write_bytes((root / "a" / "cut.png").read_bytes()[:60])
    Image.fromarray(good).save(root / "unlabelled.png")
    (root / "c").mkdir()
    Image.fromarray(good).save(root / "c" / "other_class.png")
    (root / "b" / "gone.png").symlink_to(root / "nowhere.png")
    write_series(root / "b" / "dup", np.stack([good, good]).astype(np.uint16), positions=[0.0, 0.0])


def _tree_digest(root: Path) -> str:
    """Hash of every path, file content and mode under ``root`` (links by target)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(path.relative_to(root).as_posix().encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            status = path.stat()
            digest.update(path.read_bytes() + f"{status.st_mode:o} {status.st_mtime_ns}".encode())
    return digest.hexdigest()


def test_each_bad_input_is_rejected_with_its_reason_and_inputs_untouched(tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    _bad_tree(root)
    before = _tree_digest(root)
    assert run(root, out, "--classes", "a,b") == 0
    assert _tree_digest(root) == before
    reasons = rejected(out)
    expected = {
        "a/truncated.dcm": "truncated or corrupt pixel data",
        "a/corrupt.dcm": "corrupt or truncated DICOM",
        "a/report.dcm": "DICOM without pixel data (Basic Text SR Storage)",
        "a/notes.txt": "not an image",
        "a/nan.nii.gz": "NaN/Inf",
        "a/empty.nii": "zero-size",
        "a/fmri.nii.gz": "4D volume (4, 4, 3, 5): split it into 3D files",
        "a/cut.nii.gz": "cannot read nifti (damaged or truncated?)",
        "a/cut.png": "cannot read png (damaged or truncated?)",
        "unlabelled.png": "no label: the file is not inside a <class>/ folder",
        "c/other_class.png": "label 'c' is not in --classes (a, b)",
        "b/gone.png": "does not exist (broken link?)",
        "b/dup/IM0": "same slice position and no tag",
        "b/dup/IM1": "same slice position and no tag",
    }
    assert set(reasons) == set(expected)
    for path, reason in expected.items():
        assert reason in reasons[path], (path, reasons[path])
    assert sorted(r.path for r in read_manifest(out / "manifest.csv")) == ["a/good.png", "b/good.png"]


def test_worker_processes_write_the_same_outputs(tmp_path):
    """Every kind of rejection travels back from the worker processes unchanged."""
    root = tmp_path / "in"
    _bad_tree(root)
    outputs = {}
    for workers in ("0", "2"):
        out = tmp_path / f"out{workers}"
        assert run(root, out, "--classes", "a,b", "--workers", workers) == 0
        outputs[workers] = {name: (out / name).read_bytes() for name in ("manifest.csv", "rejected.csv")}
    assert outputs["0"] == outputs["2"]
    assert run(root, tmp_path / "bad", "--workers", "-1") == 2


def test_exit_codes(tmp_path, capsys):
    root = tmp_path / "in"
    _bad_tree(root)
    assert run(root, tmp_path / "strict", "--strict") == 1
    assert "--strict" in capsys.readouterr().err
    empty = tmp_path / "nothing"
    (empty / "cls").mkdir(parents=True)
    (empty / "cls" / "readme.txt").write_text("no images here")
    assert run(empty, tmp_path / "out2") == 2
    err = capsys.readouterr().err
    assert "no usable image" in err and "rejected.csv" in err
    assert rejected(tmp_path / "out2") == {"cls/readme.txt": rejected(tmp_path / "out2")["cls/readme.txt"]}


@pytest.mark.parametrize("inside", ["same", "child"])
def test_output_inside_input_is_refused(tmp_path, capsys, inside):
    root = tmp_path / "in"
    (root / "cls").mkdir(parents=True)
    Image.fromarray(phantom((8, 8), high=250, dtype=np.uint8)).save(root / "cls" / "x.png")
    output = root if inside == "same" else root / "cls" / "out"
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert run(root, output) == 2
    assert "inside --input" in capsys.readouterr().err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_unreadable_file_is_rejected(tmp_path):
    """A file the user may not read (run as an unprivileged user when the tests run as root)."""
    base = Path(tempfile.mkdtemp(prefix="ingest-perm-"))
    try:
        os.chmod(base, 0o755)
        root, out = base / "in", base / "out"
        (root / "cls").mkdir(parents=True)
        image = phantom((8, 8), high=250, dtype=np.uint8)
        Image.fromarray(image).save(root / "cls" / "ok.png")
        Image.fromarray(image).save(root / "cls" / "secret.png")
        for folder in (root, root / "cls"):
            os.chmod(folder, 0o755)
        os.chmod(root / "cls" / "ok.png", 0o644)
        os.chmod(root / "cls" / "secret.png", 0o000)
        out.mkdir(mode=0o777)
        os.chmod(out, 0o777)
        args = ["--input", str(root), "--output", str(out), "--salt", SALT, "--no-progress"]
        if os.geteuid() == 0:  # root reads anything: import as root, then drop to 'nobody' and run
            script = ("import os, sys; from pipeline.data import ingest; os.setgroups([]); os.setgid(65534); "
                      f"os.setuid(65534); sys.exit(ingest.main({args!r}))")
            env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(base)}
            status = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, timeout=300).returncode
        else:
            from pipeline.data import ingest

            status = ingest.main(args)
        assert status == 0
        assert rejected(out) == {"cls/secret.png": "cannot read file: permission denied"}
        assert [r.path for r in read_manifest(out / "manifest.csv")] == ["cls/ok.png"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_help_explains_every_option(capsys):
    from pipeline.data import ingest

    with pytest.raises(SystemExit) as stop:
        ingest.main(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--input", "--output", "--labels", "--classes", "--salt", "--strict", "--no-progress"):
        assert option in text
    assert "HDKD_SALT" in text and "real data needs its own secret salt" in text
    assert "Exit status: 0 when at least one item is accepted, 2 when none is" in text
