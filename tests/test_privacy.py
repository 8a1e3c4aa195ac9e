"""Privacy: salted hashes, the salt setting, and no identifier reaching any ingest output or log."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from pydicom import uid
from test_ingest_factory import (
    FAKE_ID,
    SALT,
    SECRETS,
    dicom_dataset,
    phantom,
    save_dicom,
    write_nifti,
    write_series,
)

from pipeline.data import ingest
from pipeline.data.manifest import read_manifest
from pipeline.data.privacy import DEMO_SALT, SALT_ENV, resolve_salt, salted_hash


def test_salted_hash_is_stable_keyed_and_opaque():
    assert salted_hash("PID-1", "s") == salted_hash("PID-1", "s")
    assert salted_hash("PID-1", "s") != salted_hash("PID-1", "t")
    assert salted_hash("PID-1", "s") != salted_hash("PID-2", "s")
    assert len(salted_hash("PID-1", "s")) == 16 and "PID" not in salted_hash("PID-1", "s")
    with pytest.raises(ValueError, match="salt"):
        salted_hash("PID-1", "")


def test_salt_precedence(monkeypatch):
    monkeypatch.delenv(SALT_ENV, raising=False)
    assert resolve_salt(None) == (DEMO_SALT, True)
    monkeypatch.setenv(SALT_ENV, "from-env")
    assert resolve_salt(None) == ("from-env", False)
    assert resolve_salt("from-cli") == ("from-cli", False)


def test_no_identifier_reaches_outputs_or_logs(tmp_path, capfd, monkeypatch):
    root, out = tmp_path / "in", tmp_path / "out"
    volume = phantom((3, 16, 16), seed=1)
    write_series(root / "mr" / "series", volume, series_uid="1.2.826.0.1.3680043.10.4.1")
    save_dicom(dicom_dataset(volume, series_uid="1.2.826.0.1.3680043.10.4.2"), root / "mr" / "multi.dcm",
               uid.JPEGLSLossless)
    truncated = save_dicom(dicom_dataset(volume[0], series_uid="1.2.826.0.1.3680043.10.4.3"),
                           root / "mr" / "broken.dcm")
    truncated.write_bytes(truncated.read_bytes()[:-100])
    write_nifti(root / "mr" / "vol.nii.gz", volume.astype(np.float32))
    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id"])
        writer.writerows([["mr/series", "a", ""], ["mr/multi.dcm", "b", ""], ["mr/broken.dcm", "a", ""],
                          ["mr/vol.nii.gz", "b", FAKE_ID]])
    monkeypatch.setenv(SALT_ENV, SALT)
    # progress bars on, as a user sees them
    args = ["--input", str(root), "--output", str(out), "--labels", str(tmp_path / "labels.csv")]
    assert ingest.main(args) == 0
    logs = capfd.readouterr()
    rows = read_manifest(out / "manifest.csv")
    assert {r.patient for r in rows} == {salted_hash(FAKE_ID, SALT)}  # DICOM PatientID and CSV patient_id
    assert len(rows) == 3 and len(list(out.iterdir())) == 3
    texts = {p.name: p.read_text() for p in out.iterdir()} | {"stdout": logs.out, "stderr": logs.err}
    assert "broken.dcm" in texts["rejected.csv"]
    for name, text in texts.items():
        for secret in SECRETS:
            assert secret.lower() not in text.lower(), f"{secret!r} leaked into {name}"
