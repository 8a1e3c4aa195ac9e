"""`pipeline slices`: selection rules, RAS orientation, normalisation, 2D pass-through, outputs, errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data import slices
from pipeline.data.manifest import ManifestRow, write_outputs
from pipeline.data.slice_table import SLICE_COLUMNS
from pipeline.data.slices import SkipItem, SliceSettings, select_slices
from pipeline.demo.dicom_writer import PatientInfo, SeriesInfo, write_series
from pipeline.demo.phantom import Grid

SETTINGS = SliceSettings()


# ---------------------------------------------------------------- selection rules on arrays


def _volume(z: int = 10, tissue: range | None = None) -> np.ndarray:
    volume = np.zeros((1, 20, 20, z), np.float32)
    for k in tissue if tissue is not None else range(z):
        volume[0, 4:16, 4:16, k] = 0.5  # 36 % foreground
    return volume


def test_lesion_class_keeps_slices_with_enough_lesion() -> None:
    mask = np.zeros((20, 20, 10), np.uint8)
    mask[5:10, 5:7, 3:6] = 1  # 10 pixels = 2.5 % of the slice on z 3-5
    mask[5, 5, 6] = 1  # 1 pixel = 0.25 %: below the default 0.5 %
    assert select_slices(_volume(), mask, "glioma", SETTINGS) == [3, 4, 5]
    strict = SliceSettings(lesion_min_pixels=10)
    with pytest.raises(SkipItem, match="lesion area"):
        select_slices(_volume(), mask, "glioma", strict)


def test_no_lesion_class_keeps_lesion_free_tissue_slices_near_the_middle() -> None:
    mask = np.zeros((20, 20, 10), np.uint8)
    mask[5:10, 5:10, 4:6] = 1
    chosen = select_slices(_volume(tissue=range(1, 9)), mask, "notumor", SETTINGS)
    assert chosen == [1, 2, 3, 6, 7]  # middle 4.5; ties (1 and 8) go to the lower index


def test_without_mask_central_slices_with_foreground() -> None:
    chosen = select_slices(_volume(tissue=range(2, 9)), None, "glioma", SETTINGS)
    assert chosen == [3, 4, 5, 6, 7]
    few = SliceSettings(central_slices=2)
    assert select_slices(_volume(tissue=range(2, 9)), None, "glioma", few) == [4, 5]
    with pytest.raises(SkipItem, match="foreground"):
        select_slices(_volume(tissue=range(0)), None, "glioma", SETTINGS)


def test_cap_spreads_the_kept_slices_evenly() -> None:
    mask = np.zeros((20, 20, 10), np.uint8)
    mask[5:10, 5:10, :] = 1
    assert select_slices(_volume(), mask, "glioma", SliceSettings(max_per_volume=4)) == [0, 3, 6, 9]


# ---------------------------------------------------------------- whole command on small files


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path.name


def _row(
    item_id: str,
    path: str,
    label: str,
    kind: str = "volume",
    fmt: str = "nifti",
    mask: str = "",
    patient: str = "p1",
    warnings: tuple[str, ...] = (),
) -> ManifestRow:
    return ManifestRow(
        id=item_id,
        path=path,
        kind=kind,
        format=fmt,
        label=label,
        patient=patient,
        modality="MR",
        shape=(1,),
        spacing=(1.0,),
        given_split="",
        warnings=warnings,
        mask=mask,
    )


def _manifest(tmp_path: Path, rows: list[ManifestRow]) -> Path:
    out = tmp_path / "ingest"
    write_outputs(out, rows, [], {"input_root": "../raw", "files": {}})
    return out / "manifest.csv"


def _head(rng: np.random.Generator, shape: tuple[int, int, int] = (24, 20, 12)) -> np.ndarray:
    """An asymmetric 'head': noisy ellipsoid with a bright blob off-centre, background 0."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = ((x / 0.9) ** 2 + (y / 0.8) ** 2 + (z / 1.1) ** 2 < 1).astype(np.float32)
    head *= 100 + 20 * rng.random(shape, dtype=np.float32)
    head[14:20, 3:8, 4:9] += 150
    return head


def _run(tmp_path: Path, rows: list[ManifestRow], *options: str, name: str = "slices") -> tuple[int, Path]:
    manifest = _manifest(tmp_path, rows)
    out = tmp_path / name
    code = slices.main(["--manifest", str(manifest), "--output", str(out), "--no-progress", *options])
    return code, out


def _arrays(out: Path) -> dict[tuple[str, str], np.ndarray]:
    table = pd.read_csv(out / "slices.csv", dtype=str, keep_default_na=False)
    return {(r.source_id, r.slice_index): np.load(out / r.path) for r in table.itertuples()}


def test_flipped_affine_gives_the_same_slices_as_its_ras_twin(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = _head(rng)
    mask = np.zeros(data.shape, np.uint8)
    mask[14:20, 3:8, 4:9] = 1
    ras = np.diag([1.0, 1.2, 2.0, 1.0])
    # the twin stores x and z reversed; its affine maps every voxel to the same world point
    flipped = ras @ np.array([[-1, 0, 0, 23], [0, 1, 0, 0], [0, 0, -1, 11], [0, 0, 0, 1]], float)
    raw = tmp_path / "raw"
    _nifti(raw / "ras.nii.gz", data, ras)
    _nifti(raw / "ras_mask.nii.gz", mask, ras)
    _nifti(raw / "flip.nii.gz", data[::-1, :, ::-1].copy(), flipped)
    _nifti(raw / "flip_mask.nii.gz", mask[::-1, :, ::-1].copy(), flipped)
    rows = [
        _row("a_ras", "ras.nii.gz", "glioma", mask="ras_mask.nii.gz"),
        _row("b_flip", "flip.nii.gz", "glioma", mask="flip_mask.nii.gz"),
        _row("c_ras", "ras.nii.gz", "notumor"),
        _row("d_flip", "flip.nii.gz", "notumor"),
    ]
    code, out = _run(tmp_path, rows)
    assert code == 0
    arrays = _arrays(out)
    for first, twin in (("a_ras", "b_flip"), ("c_ras", "d_flip")):
        mine = {z: a for (s, z), a in arrays.items() if s == first}
        theirs = {z: a for (s, z), a in arrays.items() if s == twin}
        assert mine and mine.keys() == theirs.keys()
        for z in mine:
            np.testing.assert_allclose(mine[z], theirs[z], atol=1e-6)
    lesion_slices = sorted(int(z) for s, z in arrays if s == "a_ras")
    assert lesion_slices == [4, 5, 6, 7, 8]
    # display orientation: rows from anterior (high y) to posterior, columns from right (high x)
    some = arrays[("a_ras", "6")][0]
    assert some.shape == (20, 24)
    bright_rows, bright_cols = np.nonzero(some > 0.9)
    assert bright_rows.min() >= 20 - 8 and bright_cols.max() <= 24 - 14


def test_percentile_normalisation_clips_outliers_into_0_1(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = _head(rng)
    data[12, 10, 6] = 1e6  # one hot voxel must not squash the rest
    _nifti(tmp_path / "raw" / "v.nii.gz", data, np.eye(4))
    code, out = _run(tmp_path, [_row("v", "v.nii.gz", "notumor")], "--percentiles", "1", "99")
    assert code == 0
    arrays = list(_arrays(out).values())
    values = np.concatenate([a.ravel() for a in arrays])
    assert all(a.dtype == np.float32 and a.ndim == 3 for a in arrays)
    assert values.min() == 0.0 and values.max() == 1.0
    tissue = values[values > 0]
    assert np.median(tissue) > 0.2  # a min-max scaling would put the tissue near 1e-4
    assert (values == 1.0).sum() > 10  # the brightest percent clips to 1


def test_2d_images_pass_through_gray_and_rgb(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    gray = np.zeros((30, 40), np.uint8)
    gray[5:10, 30:38] = 200  # top right, so a transposition would show
    gray[20:25, 2:6] = 90
    Image.fromarray(gray).save(raw / "gray.png")
    colour = np.zeros((30, 40, 3), np.uint8)
    colour[..., 0], colour[5:10, 30:38, 1] = 255, 128
    Image.fromarray(colour).save(raw / "colour.png")
    Image.fromarray(np.repeat(gray[..., None], 3, axis=2)).save(raw / "gray_rgb.png")
    rows = [
        _row("gray", "gray.png", "glioma", kind="image", fmt="png"),
        _row("colour", "colour.png", "glioma", kind="image", fmt="png"),
        _row("gray_rgb", "gray_rgb.png", "glioma", kind="image", fmt="png"),
    ]
    code, out = _run(tmp_path, rows)
    assert code == 0
    arrays = _arrays(out)
    one = arrays[("gray", "0")]
    assert one.shape == (1, 30, 40) and one.dtype == np.float32
    assert one.min() == 0.0 and one.max() == 1.0
    assert (one[0, 5:10, 30:38] == 1.0).all()
    np.testing.assert_allclose(arrays[("colour", "0")], colour.transpose(2, 0, 1) / 255.0, atol=1e-6)
    np.testing.assert_array_equal(arrays[("gray_rgb", "0")], one)
    sized = _run(tmp_path, rows, "--size", "16", name="sized")[1]
    assert {a.shape[1:] for a in _arrays(sized).values()} == {(16, 16)}


def test_csv_columns_relative_paths_summary_and_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    raw = tmp_path / "raw"
    _nifti(raw / "v.nii.gz", _head(rng), np.eye(4))
    (raw / "broken.nii.gz").write_bytes(b"not a nifti at all")
    rows = [
        _row("good", "v.nii.gz", "notumor", warnings=("no patient id: the item counts as its own patient",)),
        _row("bad", "broken.nii.gz", "glioma"),
    ]
    code, out = _run(tmp_path, rows, "--central-slices", "3")
    assert code == 0
    table = pd.read_csv(out / "slices.csv", dtype=str, keep_default_na=False)
    assert tuple(table.columns) == SLICE_COLUMNS
    assert len(table) == 3 and set(table["source_id"]) == {"good"}
    assert set(table["patient"]) == {""}  # unknown patient stays empty, so split can say so
    assert all(not Path(p).is_absolute() and (out / p).is_file() for p in table["path"])
    skipped = pd.read_csv(out / "skipped.csv", dtype=str)
    assert skipped["source_id"].tolist() == ["bad"] and "failed to load" in skipped["reason"][0]
    summary = pd.read_json(out / "slices.json", typ="series")
    assert summary["slices"] == 3 and summary["volumes_used"] == 1 and summary["skipped"] == 1


def test_output_is_deterministic_and_rerun_replaces_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    _nifti(tmp_path / "raw" / "v.nii.gz", _head(rng), np.eye(4))
    _nifti(tmp_path / "raw" / "w.nii.gz", _head(rng), np.diag([-1.0, 1.0, 1.0, 1.0]))
    rows = [_row("v", "v.nii.gz", "notumor"), _row("w", "w.nii.gz", "glioma")]
    _, out = _run(tmp_path, rows)
    first = {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    _, out = _run(tmp_path, rows, "--workers", "2")  # a rerun, in worker processes this time
    second = {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert first == second
    (out / "notes.txt").write_text("user data")
    assert _run(tmp_path, rows)[0] == 2
    assert (out / "notes.txt").read_text() == "user data"


def test_errors_missing_manifest_and_no_slice_at_all(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "none" / "manifest.csv"
    assert slices.main(["--manifest", str(missing), "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    assert str(missing) in capsys.readouterr().err
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "broken.nii.gz").write_bytes(b"junk")
    code, _ = _run(tmp_path, [_row("bad", "broken.nii.gz", "glioma")])
    assert code == 2
    assert "no slice" in capsys.readouterr().err
    assert slices.main(["--manifest", str(missing), "--output", str(tmp_path / "o"), "--size", "0"]) == 2
    assert "--size" in capsys.readouterr().err
    manifest = _manifest(tmp_path / "moved", [_row("v", "v.nii.gz", "glioma")])  # no ../raw beside it
    assert slices.main(["--manifest", str(manifest), "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "input folder" in capsys.readouterr().err


def test_dicom_series_gives_the_same_slices_as_its_nifti_twin(tmp_path: Path) -> None:
    data = np.rint(_head(np.random.default_rng(4)))  # integers: stored exactly with slope 1
    grid = Grid(shape=data.shape, spacing=(1.0, 1.2, 3.0), thickness=3.0, origin=(-12.0, -10.0, -15.0))
    raw = tmp_path / "raw"
    _nifti(raw / "v.nii.gz", data.astype(np.float32), grid.affine())
    patient = PatientInfo(name="Demo^Twin", patient_id="TWIN1", birth_date="19700101", sex="O")
    series = SeriesInfo(("twin",), "ACC1", "20240101", "120000", 1, 1.0, 0.0)
    files = write_series(raw / "series", data, grid, patient, series)
    rows = [_row("a_nifti", "v.nii.gz", "notumor"), _row("b_dicom", "series", "notumor", fmt="dicom")]
    manifest = tmp_path / "ingest"
    info = {"input_root": "../raw", "files": {"b_dicom": [f.relative_to(raw).as_posix() for f in files]}}
    write_outputs(manifest, rows, [], info)
    out = tmp_path / "slices"
    assert (
        slices.main(["--manifest", str(manifest / "manifest.csv"), "--output", str(out), "--no-progress"])
        == 0
    )
    arrays = _arrays(out)
    nifti = {z: a for (s, z), a in arrays.items() if s == "a_nifti"}
    dicom = {z: a for (s, z), a in arrays.items() if s == "b_dicom"}
    assert nifti and nifti.keys() == dicom.keys()
    for z in nifti:
        np.testing.assert_allclose(dicom[z], nifti[z], atol=1e-5)
