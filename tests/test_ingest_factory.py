"""Small inputs for the ingest tests: DICOM datasets written by hand (every transfer syntax we can encode
here), NIfTI files and 2D images. No tests live here; the other test_ingest*.py files import it."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import imagecodecs
import nibabel as nib
import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import pack_bits

from pipeline.data import ingest

# Distinctive fake identifiers: none of them may appear in any ingest output.
FAKE_NAME = "Quixotic^Zebulon"
FAKE_ID = "PID-ZX81-4417"
FAKE_BIRTH = "19310217"
FAKE_ACCESSION = "ACCZZ90210"
SECRETS = ("Quixotic", "Zebulon", FAKE_ID, FAKE_BIRTH, FAKE_ACCESSION)
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SALT = "test-salt"

# transfer syntax -> (how it is encoded here, max abs error allowed after decoding)
SYNTAXES: dict[str, tuple[str, float]] = {
    uid.ExplicitVRLittleEndian: ("native", 0),
    uid.ImplicitVRLittleEndian: ("native", 0),
    uid.ExplicitVRBigEndian: ("native", 0),
    uid.DeflatedExplicitVRLittleEndian: ("native", 0),
    uid.RLELossless: ("pydicom", 0),
    uid.JPEGBaseline8Bit: ("jpeg8", 12),
    uid.JPEGExtended12Bit: ("jpeg12", 40),
    uid.JPEGLossless: ("jpeg-lossless", 0),
    uid.JPEGLosslessSV1: ("jpeg-lossless", 0),
    uid.JPEGLSLossless: ("jpegls", 0),
    uid.JPEGLSNearLossless: ("jpegls", 2),
    uid.JPEG2000Lossless: ("pydicom", 0),
    uid.JPEG2000: ("pydicom", 40),
    uid.HTJ2KLossless: ("htj2k", 0),
}


def phantom(shape: Sequence[int], seed: int = 0, high: int = 3000, dtype: type = np.uint16) -> np.ndarray:
    """A smooth test pattern (gradients plus a bright disc) with a little noise, values in [0, high]."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids[-2:]))
    image = 0.4 * (grids[-1] + 1) + 0.3 * (grids[-2] + 1) * (radius < 2) + 0.5 * (radius < 0.5)
    image = image / image.max() * high + rng.integers(0, 4, size=image.shape)
    return np.clip(image, 0, high).astype(dtype)


def dicom_dataset(
    frames: np.ndarray,
    *,
    series_uid: str = "1.2.826.0.1.3680043.10.1.1",
    position: Sequence[float] = (0.0, 0.0, 0.0),
    orientation: Sequence[float] | None = AXIAL,
    pixel_spacing: Sequence[float] = (0.8, 0.6),
    instance: int = 1,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    spacing_between: float | None = None,
    sop_class: str = uid.MRImageStorage,
    patient_id: str = FAKE_ID,
) -> Dataset:
    """An image dataset holding ``frames`` ((rows, cols) or (frames, rows, cols)) with fake identifiers."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid(
        entropy_srcs=[series_uid, str(instance), sop_class])  # one UID per object: copies share it
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = FAKE_NAME
    ds.PatientID = patient_id
    ds.PatientBirthDate = FAKE_BIRTH
    ds.AccessionNumber = FAKE_ACCESSION
    ds.StudyInstanceUID = series_uid + ".0"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "MR"
    ds.InstanceNumber = instance
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = frames.shape[-2:]
    if frames.ndim == 3:
        ds.NumberOfFrames = frames.shape[0]
    ds.BitsAllocated = frames.dtype.itemsize * 8
    ds.BitsStored = 12 if frames.dtype.itemsize == 2 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(frames.dtype.kind == "i")
    ds.PixelSpacing = list(pixel_spacing)
    if orientation is not None:
        ds.ImageOrientationPatient = list(orientation)
        ds.ImagePositionPatient = list(position)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if spacing_between is not None:
        ds.SpacingBetweenSlices = spacing_between
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    return ds


# A 4-entry 16-bit colour lookup table: index 0 black, 1 red, 2 green, 3 blue.
PALETTE = {"Red": [0, 65535, 0, 0], "Green": [0, 0, 65535, 0], "Blue": [0, 0, 0, 65535]}


def palette_dataset(indices: np.ndarray, series_uid: str = "1.2.826.0.1.3680043.10.1.7") -> Dataset:
    """A PALETTE COLOR image of ``indices`` (uint8, 0..3) with the :data:`PALETTE` lookup tables."""
    ds = dicom_dataset(indices, photometric="PALETTE COLOR", series_uid=series_uid)
    for colour, values in PALETTE.items():
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.asarray(values, "<u2").tobytes())
    return ds


def _encode_frame(frame: np.ndarray, method: str, syntax: str) -> bytes:
    """One frame compressed with imagecodecs for the JPEG-family syntaxes pydicom cannot encode."""
    if method == "jpeg8":
        return imagecodecs.jpeg8_encode(frame, level=95)
    if method == "jpeg12":
        return imagecodecs.jpeg8_encode(frame, level=95, bitspersample=12)
    if method == "jpeg-lossless":
        predictor = 1 if syntax == uid.JPEGLosslessSV1 else 6
        return imagecodecs.jpeg8_encode(frame, lossless=True, predictor=predictor, bitspersample=12)
    if method == "jpegls":
        return imagecodecs.jpegls_encode(frame, level=0 if syntax == uid.JPEGLSLossless else 2)
    if method == "htj2k":
        return imagecodecs.htj2k_encode(frame, level=0)
    raise ValueError(method)


def save_dicom(ds: Dataset, path: Path, syntax: str = uid.ExplicitVRLittleEndian) -> Path:
    """Write ``ds`` with its pixel data in transfer syntax ``syntax``."""
    method, _ = SYNTAXES[syntax]
    frames = ds.pixel_array
    if method == "pydicom":
        options = {"j2k_psnr": [70]} if syntax == uid.JPEG2000 else {}
        ds.compress(syntax, frames, generate_instance_uid=False, **options)
    elif method != "native":
        stack = frames if frames.ndim == 3 else frames[None]
        ds.PixelData = encapsulate([_encode_frame(f, method, syntax) for f in stack])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
        if method == "jpeg8":
            ds.PhotometricInterpretation = "MONOCHROME2"
    else:
        if syntax == uid.ExplicitVRBigEndian:
            ds.PixelData = frames.astype(frames.dtype.newbyteorder(">")).tobytes()
        ds.file_meta.TransferSyntaxUID = syntax
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, volume: np.ndarray, *, names: Sequence[str] | None = None,
                 positions: Sequence[float] | None = None, syntax: str = uid.ExplicitVRLittleEndian,
                 **kwargs: object) -> list[Path]:
    """A single-frame series of ``volume`` (slices, rows, cols); slice k at z = positions[k] (default 3k mm).

    File names (default ``IM{k}``) need not follow the slice order; InstanceNumber is deliberately shuffled.
    """
    count = len(volume)
    positions = positions if positions is not None else [3.0 * k for k in range(count)]
    names = names or [f"IM{k}" for k in range(count)]
    paths = []
    for k in range(count):
        position = (0.0, 0.0, positions[k])
        ds = dicom_dataset(volume[k], position=position, instance=(k * 7) % count + 1, **kwargs)
        paths.append(save_dicom(ds, folder / names[k], syntax))
    return paths


def enhanced_multiframe(path: Path, volume: np.ndarray, positions: Sequence[float],
                        rescale: tuple[float, float] = (1.0, 0.0)) -> Path:
    """An Enhanced MR Image (geometry and rescale only in the functional groups), frames in ``positions``."""
    ds = dicom_dataset(volume, sop_class=uid.EnhancedMRImageStorage, orientation=None)
    del ds.PixelSpacing
    shared = Dataset()
    measures, plane, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [0.8, 0.6]
    measures.SliceThickness = 2.0
    plane.ImageOrientationPatient = list(AXIAL)
    transform.RescaleSlope, transform.RescaleIntercept = rescale
    transform.RescaleType = "US"
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [plane]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for z in positions:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, float(z)]
        item.PlanePositionSequence = [position]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    return save_dicom(ds, path)


def write_seg(path: Path, mask: np.ndarray, series_uid: str) -> Path:
    """A BINARY DICOM SEG (one segment) of ``mask`` (slices, rows, cols) at z = 3k mm, referencing a
    series."""
    ds = dicom_dataset(mask.astype(np.uint8), series_uid=series_uid + ".9", sop_class=uid.SegmentationStorage,
                       orientation=None)
    ds.Modality = "SEG"
    ds.SegmentationType = "BINARY"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    segment = Dataset()
    segment.SegmentNumber, segment.SegmentLabel, segment.SegmentAlgorithmType = 1, "lesion", "MANUAL"
    ds.SegmentSequence = [segment]
    reference = Dataset()
    reference.SeriesInstanceUID = series_uid
    ds.ReferencedSeriesSequence = [reference]
    shared, measures, plane = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [0.8, 0.6]
    plane.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [plane]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in range(len(mask)):
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, 3.0 * k]
        item.PlanePositionSequence = [position]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    del ds.PixelSpacing
    ds.PixelData = pack_bits(mask.astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, volume: np.ndarray, *, version: int = 1, big_endian: bool = False,
                zooms: Sequence[float] = (0.9, 0.8, 2.5)) -> Path:
    """A NIfTI-1 or NIfTI-2 file (``.nii`` or ``.nii.gz`` by the name), either byte order."""
    affine = np.diag([*zooms[:3], 1.0])
    image_class = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    image = image_class(volume, affine)
    image.header.set_zooms(tuple(zooms[: volume.ndim]) + (1.0,) * max(0, volume.ndim - 3))
    if big_endian:
        header = image.header.as_byteswapped(">")
        image = image_class(volume.astype(volume.dtype.newbyteorder(">")), affine, header=header)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def run(input_dir: Path, output_dir: Path, *extra: str) -> int:
    """Run the CLI the way a user does (no progress bars, test salt)."""
    args = ["--input", str(input_dir), "--output", str(output_dir), "--salt", SALT, "--no-progress"]
    return ingest.main([*args, *extra])


def rejected(output_dir: Path) -> dict[str, str]:
    """rejected.csv as path -> reason."""
    with (output_dir / "rejected.csv").open(newline="") as handle:
        return {r["path"]: r["reason"] for r in csv.DictReader(handle)}
