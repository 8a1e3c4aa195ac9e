"""Ingest: every format and transfer syntax we can write here is found by content, ordered and decoded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydicom import uid
from test_ingest_factory import (
    SYNTAXES,
    dicom_dataset,
    enhanced_multiframe,
    phantom,
    run,
    save_dicom,
    write_nifti,
    write_series,
)

from pipeline.data.loaders import load_files, load_item
from pipeline.data.manifest import item_files, read_manifest


def _as_xyz(volume: np.ndarray) -> np.ndarray:
    """(slices, rows, cols) -> (x = col, y = row, z), the loader's spatial order."""
    return volume.transpose(2, 1, 0).astype(np.float64)


@pytest.mark.parametrize("syntax", list(SYNTAXES), ids=lambda s: uid.UID(s).keyword)
def test_transfer_syntax_decodes_to_original(tmp_path, syntax):
    method, tolerance = SYNTAXES[syntax]
    dtype, high = (np.uint8, 250) if method == "jpeg8" else (np.uint16, 3000)
    volume = phantom((3, 32, 32), seed=1, high=high, dtype=dtype)
    paths = write_series(tmp_path / "series", volume, syntax=syntax)
    image = load_files(paths, "dicom")
    assert tuple(image.shape) == (1, 32, 32, 3)
    error = np.abs(np.asarray(image[0], dtype=np.float64) - _as_xyz(volume)).max()
    assert error <= tolerance, f"{uid.UID(syntax).name}: max error {error} > {tolerance}"


def test_series_out_of_order_on_disk_is_sorted_by_position(tmp_path):
    volume = phantom((5, 16, 16), seed=2)
    # file names in reverse slice order, InstanceNumber shuffled, positions along an oblique normal
    angle = np.deg2rad(20)
    orientation = (1.0, 0.0, 0.0, 0.0, np.cos(angle), np.sin(angle))
    normal = np.cross(orientation[:3], orientation[3:])
    root = tmp_path / "in"
    for k in range(5):
        ds = dicom_dataset(volume[k], position=tuple(normal * 2.5 * k), orientation=orientation,
                           instance=(3 * k) % 5 + 1)
        save_dicom(ds, root / "cls" / "case" / f"slice_{9 - k:02d}.dcm")
    assert run(root, tmp_path / "out") == 0
    manifest = tmp_path / "out" / "manifest.csv"
    [row] = read_manifest(manifest)
    assert (row.kind, row.format, row.path, row.label) == ("volume", "dicom", "cls/case", "cls")
    assert row.shape == (1, 16, 16, 5)
    assert row.spacing == pytest.approx((0.6, 0.8, 2.5))
    assert [p.name for p in item_files(manifest, row)] == [f"slice_{9 - k:02d}.dcm" for k in range(5)]
    image = load_item(manifest, row)
    np.testing.assert_array_equal(np.asarray(image[0]), _as_xyz(volume))
    lps = np.eye(4)
    row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
    lps[:3, :3] = np.stack([row_dir * 0.6, col_dir * 0.8, normal * 2.5], axis=1)  # x: columns, y: rows, z
    np.testing.assert_allclose(np.asarray(image.affine), np.diag([-1, -1, 1, 1]) @ lps, atol=1e-9)  # RAS
    assert row.warnings == ()


def test_rescale_and_monochrome1_are_applied(tmp_path):
    volume = phantom((2, 16, 16), seed=3)
    plain = load_files(write_series(tmp_path / "a", volume, rescale=(2.0, -1024.0)), "dicom")
    np.testing.assert_allclose(np.asarray(plain[0]), _as_xyz(volume) * 2.0 - 1024.0)
    paths = write_series(tmp_path / "b", volume, rescale=(2.0, -1024.0), photometric="MONOCHROME1")
    inverted = load_files(paths, "dicom")
    # BitsStored 12: stored range [0, 4095] -> rescaled [-1024, 7166]; MONOCHROME1 maps v to low + high - v
    np.testing.assert_allclose(np.asarray(inverted[0]), (-1024.0 + 7166.0) - (_as_xyz(volume) * 2.0 - 1024.0))


def test_irregular_gaps_and_wrong_spacing_tag_warn(tmp_path):
    volume = phantom((4, 16, 16), seed=4)
    root = tmp_path / "in"
    write_series(root / "a" / "gaps", volume, positions=[0.0, 3.0, 6.0, 12.0],
                 series_uid="1.2.826.0.1.3680043.10.1.2")
    write_series(root / "a" / "tag", volume, spacing_between=5.0, series_uid="1.2.826.0.1.3680043.10.1.3")
    assert run(root, tmp_path / "out") == 0
    rows = {r.path: r for r in read_manifest(tmp_path / "out" / "manifest.csv")}
    gaps, tag = rows["a/gaps"], rows["a/tag"]
    assert gaps.spacing[2] == pytest.approx(4.0)  # mean step (12 - 0) / 3
    assert any("irregular slice gaps (3 to 6 mm)" in w for w in gaps.warnings)
    assert tag.spacing[2] == pytest.approx(3.0)
    assert tag.warnings == ("SpacingBetweenSlices tag says 5 mm but the slice positions give 3 mm; using the "
                            "positions",)


def test_multiframe_and_enhanced_multiframe(tmp_path):
    volume = phantom((4, 16, 16), seed=5)
    root = tmp_path / "in"
    save_dicom(dicom_dataset(volume, rescale=(1.0, 10.0)), root / "mr" / "multi.dcm")
    # enhanced: frames stored in the order z = 6, 0, 9, 3, rescale only in the functional groups
    enhanced_multiframe(root / "mr" / "enhanced.dcm", volume, [6.0, 0.0, 9.0, 3.0], rescale=(0.5, 7.0))
    assert run(root, tmp_path / "out") == 0
    manifest = tmp_path / "out" / "manifest.csv"
    rows = {r.path: r for r in read_manifest(manifest)}
    multi, enhanced = rows["mr/multi.dcm"], rows["mr/enhanced.dcm"]
    assert multi.kind == enhanced.kind == "volume"
    assert multi.shape == enhanced.shape == (1, 16, 16, 4)
    np.testing.assert_allclose(np.asarray(load_item(manifest, multi)[0]), _as_xyz(volume) + 10.0)
    assert any(w.startswith("no per-slice positions: frames kept in stored order") for w in multi.warnings)
    assert enhanced.spacing == pytest.approx((0.6, 0.8, 3.0))
    assert (multi.rescale, enhanced.rescale) == ("1,10", "0.5,7")
    assert enhanced.transfer_syntax == "Explicit VR Little Endian"
    expected = _as_xyz(volume[[1, 3, 0, 2]]) * 0.5 + 7.0
    np.testing.assert_allclose(np.asarray(load_item(manifest, enhanced)[0]), expected, rtol=1e-6)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_versions_byte_orders_and_compression(tmp_path, version, big_endian, suffix):
    volume = phantom((12, 10, 6), seed=6).astype(np.int16)
    root = tmp_path / "in"
    path = write_nifti(root / "cls" / f"vol{suffix}", volume, version=version, big_endian=big_endian)
    stored_big_endian = path.read_bytes()[:4] == b"\x00\x00\x01\x5c"  # sizeof_hdr 348, big endian
    assert stored_big_endian == (big_endian and version == 1 and suffix == ".nii")
    assert run(root, tmp_path / "out") == 0
    manifest = tmp_path / "out" / "manifest.csv"
    [row] = read_manifest(manifest)
    assert (row.kind, row.format, row.shape) == ("volume", "nifti", (1, 12, 10, 6))
    assert row.spacing == pytest.approx((0.9, 0.8, 2.5))
    assert "no patient id: the item counts as its own patient" in row.warnings
    np.testing.assert_array_equal(np.asarray(load_item(manifest, row)[0]), volume)


def test_2d_images_and_single_frame_dicom(tmp_path):
    root = tmp_path / "in"
    gray = phantom((24, 20), seed=7, high=250, dtype=np.uint8)
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    (root / "derm").mkdir(parents=True)
    Image.fromarray(gray).save(root / "derm" / "a.png")
    Image.fromarray(rgb).save(root / "derm" / "b.bmp")
    Image.fromarray(gray).save(root / "derm" / "c.tif")
    Image.fromarray(rgb).save(root / "derm" / "d.jpg", quality=95)
    Image.fromarray(gray).save(root / "derm" / "png_named.dat", format="PNG")  # judged by content
    xray = phantom((24, 20), seed=8)
    xray_class = uid.DigitalXRayImageStorageForPresentation
    xray_ds = dicom_dataset(xray, photometric="MONOCHROME1", sop_class=xray_class)
    save_dicom(xray_ds, root / "derm" / "xray")
    assert run(root, tmp_path / "out") == 0
    manifest = tmp_path / "out" / "manifest.csv"
    rows = {r.path: r for r in read_manifest(manifest)}
    expected = {"derm/a.png": ("png", 1), "derm/b.bmp": ("bmp", 3), "derm/c.tif": ("tiff", 1),
                "derm/d.jpg": ("jpeg", 3), "derm/png_named.dat": ("png", 1), "derm/xray": ("dicom", 1)}
    assert {p: (r.format, r.shape[0]) for p, r in rows.items()} == expected
    assert all(r.kind == "image" and r.shape[1:] == (20, 24) for r in rows.values())
    np.testing.assert_array_equal(np.asarray(load_item(manifest, rows["derm/a.png"])[0]), gray.T)
    np.testing.assert_array_equal(np.asarray(load_item(manifest, rows["derm/b.bmp"])).transpose(2, 1, 0), rgb)
    assert (rows["derm/xray"].photometric, rows["derm/xray"].rescale) == ("MONOCHROME1", "1,0")
    assert rows["derm/a.png"].photometric == rows["derm/a.png"].transfer_syntax == ""
    xray_loaded = np.asarray(load_item(manifest, rows["derm/xray"])[0])
    np.testing.assert_array_equal(xray_loaded, 4095.0 - xray.T)  # MONOCHROME1 inverted, 12 bits stored


def test_series_that_is_not_a_stack_becomes_2d_images(tmp_path):
    root = tmp_path / "in"
    frames = phantom((2, 16, 16), seed=9)
    for k in range(2):  # one series, no geometry tags: cannot be stacked
        save_dicom(dicom_dataset(frames[k], orientation=None, instance=k + 1), root / "cr" / f"view{k}.dcm")
    assert run(root, tmp_path / "out") == 0
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    assert [(r.path, r.kind, r.shape) for r in rows] == [("cr/view0.dcm", "image", (1, 16, 16)),
                                                         ("cr/view1.dcm", "image", (1, 16, 16))]
    note = "its series is not one 3D stack (some files have no ImageOrientationPatient/ImagePositionPatient)"
    assert all(any(w.startswith(note) for w in r.warnings) for r in rows)
