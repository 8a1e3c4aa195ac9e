"""The demo cohort: real, reproducible, readable files that a model can learn but a threshold cannot."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.data import NibabelReader, PydicomReader
from monai.transforms import LoadImage
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.tree import DecisionTreeClassifier

from pipeline.demo import cohort as demo
from pipeline.demo.phantom import CLASSES, IN_PLANE, MAX_SLICES, MIN_SLICES, central_slices

ROOT = Path(__file__).resolve().parents[1]


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "cohort"
    demo.generate_cohort(root, cases=8, seed=3, progress=False)
    return root


@pytest.fixture(scope="module")
def larger_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo24") / "cohort"
    demo.generate_cohort(root, cases=24, seed=11, progress=False)
    return root


def load(path: Path):
    reader = PydicomReader() if path.is_dir() else NibabelReader()
    return LoadImage(reader=reader, image_only=True)(str(path))


def test_plan_balances_classes_formats_and_repeats_patients() -> None:
    plan = demo.plan_cohort(48)
    assert Counter(s.label for s in plan) == {c: 12 for c in CLASSES}
    assert Counter(s.fmt for s in plan) == {"dicom": 24, "nifti": 24}
    scans_per_patient = Counter(s.patient for s in plan)
    assert len(scans_per_patient) == 40 and sorted(set(scans_per_patient.values())) == [1, 2]
    for patient in (p for p, n in scans_per_patient.items() if n == 2):
        pair = [s for s in plan if s.patient == patient]
        assert {s.fmt for s in pair} == {"dicom", "nifti"} and len({s.label for s in pair}) == 1
    with pytest.raises(ValueError, match="at least 4"):
        demo.plan_cohort(3)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(cohort: Path, tmp_path: Path) -> None:
    """... also when two worker processes draw the scans."""
    again, other = tmp_path / "again", tmp_path / "other"
    demo.generate_cohort(again, cases=8, seed=3, progress=False, workers=2)
    demo.generate_cohort(other, cases=8, seed=4, progress=False)
    reference = file_hashes(cohort)
    assert file_hashes(again) == reference
    differing = file_hashes(other)
    images = [name for name in reference if name.endswith((".dcm", ".nii.gz")) and name in differing]
    assert images and all(differing[name] != reference[name] for name in images)


def test_labels_csv_matches_the_files(cohort: Path) -> None:
    rows = demo.read_labels(cohort)
    assert (cohort / "labels.csv").read_text().splitlines()[0] == "path,label,patient_id,mask"
    assert Counter(r["label"] for r in rows) == {c: 2 for c in CLASSES}
    written = {p.relative_to(cohort).as_posix() for p in cohort.rglob("*") if p.is_file()}
    listed = set()
    for row in rows:
        path = cohort / row["path"]
        if row["path"].startswith("dicom/"):
            assert path.is_dir() and row["mask"] == ""
            files = sorted(path.glob("*.dcm"))
            ids = {pydicom.dcmread(f, stop_before_pixels=True).PatientID for f in files}
            assert files and ids == {row["patient_id"]}
            listed |= {f.relative_to(cohort).as_posix() for f in files}
        else:
            assert row["path"] == f"nifti/{path.name}" and path.is_file()
            assert row["mask"] == f"masks/{path.name.removesuffix('.nii.gz')}_mask.nii.gz"
            listed |= {row["path"], row["mask"]}
    assert written == listed | {"labels.csv", demo.MARKER}
    by_patient: dict[str, set[str]] = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], set()).add(row["label"])
    assert len(by_patient) == 7 and all(len(labels) == 1 for labels in by_patient.values())


def test_dicom_series_load_with_monai_and_carry_the_promised_headers(cohort: Path) -> None:
    series = [cohort / r["path"] for r in demo.read_labels(cohort) if r["path"].startswith("dicom/")]
    assert len(series) == 4
    sop_uids: set[str] = set()
    for folder in series:
        files = sorted(folder.glob("*.dcm"))
        headers = [pydicom.dcmread(f) for f in files]
        first = headers[0]
        for ds in headers:
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.file_meta.ImplementationVersionName == "HDKD_DEMO_1"
            assert ds.SOPClassUID == MRImageStorage and ds.Modality == "MR"
            assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 16
            assert (ds.Rows, ds.Columns) == (IN_PLANE, IN_PLANE)
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientName",
                            "PatientBirthDate", "AccessionNumber", "StudyDate", "PixelSpacing"):
                assert ds.get(keyword) == first.get(keyword), keyword
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID):
                assert uid.is_valid and uid.startswith("2.25.")
            sop_uids.add(ds.SOPInstanceUID)
        assert float(first.RescaleSlope) != 1.0 and float(first.RescaleIntercept) != 0.0
        thickness, step = float(first.SliceThickness), float(first.SpacingBetweenSlices)
        assert 3.0 <= thickness <= 6.0 and thickness <= step <= thickness + 1.0
        z = [float(ds.ImagePositionPatient[2]) for ds in headers]
        assert np.allclose(np.diff(z), float(first.SpacingBetweenSlices))
        assert [ds.InstanceNumber for ds in headers] == list(range(1, len(files) + 1))
        assert len(str(first.PatientName).split("^")) == 2 and len(first.PatientBirthDate) == 8

        image = load(folder)
        row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
        assert tuple(image.shape) == (IN_PLANE, IN_PLANE, len(files))
        assert np.allclose(image.pixdim, [column_spacing, row_spacing, float(first.SpacingBetweenSlices)])
        x, y, z0 = (float(v) for v in first.ImagePositionPatient)
        assert np.allclose(np.asarray(image.affine)[:3, 3], [-x, -y, z0], atol=1e-3)  # RAS of the first pixel
        real = first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept)
        assert np.allclose(np.asarray(image[:, :, 0]), real.T, atol=1e-3)
    assert len(sop_uids) == sum(len(list((c).glob("*.dcm"))) for c in series)


def test_nifti_images_and_masks_align_and_lesions_reach_the_central_slices(cohort: Path) -> None:
    rows = [r for r in demo.read_labels(cohort) if r["path"].startswith("nifti/")]
    assert len(rows) == 4
    for row in rows:
        image, mask = load(cohort / row["path"]), load(cohort / row["mask"])
        header = nib.load(cohort / row["path"]).header
        assert header.get_data_dtype() == np.int16 and int(header["sform_code"]) == 1
        assert nib.load(cohort / row["mask"]).get_data_dtype() == np.uint8
        assert image.shape == mask.shape and image.shape[:2] == (IN_PLANE, IN_PLANE)
        assert MIN_SLICES <= image.shape[2] <= MAX_SLICES
        assert np.allclose(image.affine, mask.affine)
        assert nib.aff2axcodes(np.asarray(image.affine)) == ("R", "A", "S")
        assert np.allclose(np.diag(np.asarray(image.affine))[:3], image.pixdim)
        values = np.asarray(mask)
        assert set(np.unique(values)) <= {0, 1}
        central = [k for k in range(values.shape[2]) if abs(k - (values.shape[2] - 1) / 2) <= 2]
        assert central == central_slices(values.shape[2])[-len(central):]
        per_slice = values[:, :, central_slices(values.shape[2])].sum(axis=(0, 1))
        if row["label"] == "notumor":
            assert values.sum() == 0
        else:
            assert np.all(per_slice >= 8) and values.sum() > 100


def test_demo_identifiers_reads_back_every_fake_identity(cohort: Path) -> None:
    found = demo.demo_identifiers(cohort)
    rows = demo.read_labels(cohort)
    assert {r["patient_id"] for r in rows} <= found
    first = pydicom.dcmread(next((cohort / rows[0]["path"]).glob("*.dcm")), stop_before_pixels=True)
    family, given = str(first.PatientName).split("^")
    assert {str(first.PatientName), family, given, first.PatientBirthDate, first.AccessionNumber} <= found
    assert all(len(value) >= 8 for value in found)


def slice_features(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per slice (the lesion slices, else the central ones): mean and max intensity, class, patient;
    per lesion volume: distance of the lesion centroid from the head centre, in head radii."""
    intensity, labels, groups, spatial = [], [], [], []
    for row in demo.read_labels(root):
        volume = np.asarray(load(root / row["path"]), dtype=np.float64)
        picked = central_slices(volume.shape[2])
        if row["mask"] and row["label"] != "notumor":
            mask = np.asarray(load(root / row["mask"])) > 0
            picked = [k for k in range(volume.shape[2]) if mask[:, :, k].any()]
            best = int(np.argmax(mask.sum(axis=(0, 1))))
            head = volume[:, :, best] > 0.3 * np.percentile(volume[:, :, best], 99)
            offset = np.subtract(np.argwhere(mask[:, :, best]).mean(0), np.argwhere(head).mean(0))
            radius = np.sqrt(head.sum() / np.pi)
            spatial.append((np.linalg.norm(offset) / radius, CLASSES.index(row["label"])))
        for k in picked:
            intensity.append((volume[:, :, k].mean(), volume[:, :, k].max()))
            labels.append(CLASSES.index(row["label"]))
            groups.append(row["patient_id"])
    return np.array(intensity), np.array(labels), np.array(groups), np.array(spatial)


def test_intensity_thresholds_are_near_chance_but_lesion_position_separates(larger_cohort: Path) -> None:
    intensity, labels, groups, spatial = slice_features(larger_cohort)
    assert set(labels) == set(range(4))
    for columns in ([0], [1], [0, 1]):
        tree = DecisionTreeClassifier(max_depth=2, random_state=0)
        predicted = cross_val_predict(tree, intensity[:, columns], labels, groups=groups, cv=GroupKFold(4))
        assert balanced_accuracy_score(labels, predicted) < 0.5, columns
    # lesion centroid distance from the head centre (in head radii): sella < intra-axial < dural
    distance = {CLASSES[int(c)]: spatial[spatial[:, 1] == c, 0] for c in np.unique(spatial[:, 1])}
    assert distance["pituitary"].max() < distance["glioma"].min()
    assert distance["glioma"].max() < distance["meningioma"].min()


def test_refuses_user_data_and_replaces_a_previous_demo(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a demo cohort"):
        demo.generate_cohort(user, cases=4, seed=0, progress=False)
    assert (user / "notes.txt").read_text() == "mine" and len(list(user.iterdir())) == 1

    previous = tmp_path / "previous"
    demo.generate_cohort(previous, cases=8, seed=1, progress=False)
    demo.generate_cohort(previous, cases=4, seed=2, progress=False)
    assert len(demo.read_labels(previous)) == 4
    assert not any(previous.glob("dicom/case00[4-7]")) and not any(previous.glob("nifti/case00[0-3]*"))

    (previous / "dicom" / "mine").mkdir()
    with pytest.raises(FileExistsError, match="did not write"):
        demo.generate_cohort(previous, cases=4, seed=2, progress=False)
    (previous / "dicom" / "mine").rmdir()
    (previous / "dicom" / "case000" / "extra.dcm").write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="did not write"):
        demo.generate_cohort(previous, cases=4, seed=2, progress=False)
    assert (previous / "dicom" / "case000" / "extra.dcm").read_bytes() == b"user data"
    assert len(demo.read_labels(previous)) == 4


def test_cli_subprocess_writes_a_cohort_and_prints_counts(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "demo-data", "--output", str(tmp_path / "c"), "--cases", "4",
         "--seed", "5", "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "4 scans" in done.stdout and all(f"{c} 1" in done.stdout for c in CLASSES)
    assert len(demo.read_labels(tmp_path / "c")) == 4


def test_cli_explains_options_and_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as help_exit:
        demo.main(["--help"])
    helptext = capsys.readouterr().out
    assert help_exit.value.code == 0
    assert all(option in helptext for option in ("--output", "--cases", "--seed", "--quiet", demo.MARKER))

    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "scan.dcm").write_bytes(b"x")
    assert demo.main(["--output", str(tmp_path / "user"), "--cases", "4", "--quiet"]) == 1
    assert "refusing" in capsys.readouterr().err
    assert (tmp_path / "user" / "scan.dcm").read_bytes() == b"x"
    with pytest.raises(SystemExit) as bad_cases:
        demo.main(["--output", str(tmp_path / "d"), "--cases", "2"])
    assert bad_cases.value.code == 2 and "at least 4" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
