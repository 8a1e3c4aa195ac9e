"""Write a volume as a reproducible DICOM MR series (one uncompressed file per axial slice).

Every UID is a ``2.25.<int>`` UID of a name-based UUID (uuid5) of caller-given strings, dates and
times are the caller's, and the file meta carries a fixed implementation UID/version, so the same
inputs give byte-identical files. (``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)``
would not do: with ``prefix=None`` pydicom 3 ignores the entropy and returns a random UUID.)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

from pipeline.demo.phantom import Grid

_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:hdkd-pipeline:demo-dicom")
IMPLEMENTATION_VERSION = "HDKD_DEMO_1"
MANUFACTURER = "HDKD synthetic phantom"


@dataclass(frozen=True)
class PatientInfo:
    """Fake patient identity written to every file of a series."""

    name: str  # DICOM PN, "Family^Given"
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str  # "F", "M" or "O"


@dataclass(frozen=True)
class SeriesInfo:
    """One study with one series: identifiers, date/time and rescale of the stored values."""

    uid_entropy: tuple[str, ...]  # every UID of the series is derived from this plus a role
    accession: str
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS
    series_number: int
    rescale_slope: float
    rescale_intercept: float


def uid_for(entropy: Sequence[str], role: str) -> UID:
    """A reproducible ``2.25.`` UID for ``role`` (e.g. "study", "sop-3") of the given series entropy."""
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, '|'.join([*entropy, role])).int}")


IMPLEMENTATION_UID = uid_for(("implementation",), "1")


def _ds(value: float) -> str:
    """A decimal string (DS) of at most 16 characters, exact for the 3-decimal values used here."""
    text = repr(round(float(value), 4))
    if len(text) > 16:
        raise ValueError(f"value {value} does not fit a DICOM decimal string")
    return text


def _slice_positions(grid: Grid) -> tuple[np.ndarray, float, float]:
    """LPS position of the first pixel of each slice, plus row and column spacing.

    Slices are written with rows running anterior -> posterior and columns right -> left
    (ImageOrientationPatient 1\\0\\0\\0\\1\\0), so pixel (0, 0) is the grid voxel (nx-1, ny-1, k).
    """
    nx, ny, nz = grid.shape
    affine = grid.affine()
    corners = affine @ np.array([[nx - 1, ny - 1, k, 1.0] for k in range(nz)]).T
    lps = corners[:3].T * np.array([-1.0, -1.0, 1.0])
    return lps, grid.spacing[1], grid.spacing[0]


def to_stored(volume: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Stored uint16 values whose rescale (stored * slope + intercept) approximates ``volume``."""
    stored = np.rint((volume.astype(np.float64) - intercept) / slope)
    if stored.min() < 0 or stored.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"volume range [{volume.min()}, {volume.max()}] does not fit uint16 with "
                         f"slope {slope} and intercept {intercept}")
    return stored.astype(np.uint16)


def write_series(folder: Path, volume: np.ndarray, grid: Grid, patient: PatientInfo,
                 series: SeriesInfo) -> list[Path]:
    """Write ``volume`` (RAS voxel order (x, y, z), real-world values) as an MR series in ``folder``."""
    if volume.shape != grid.shape:
        raise ValueError(f"volume shape {volume.shape} does not match grid shape {grid.shape}")
    folder.mkdir(parents=True, exist_ok=False)
    stored = to_stored(volume, series.rescale_slope, series.rescale_intercept)
    positions, row_spacing, column_spacing = _slice_positions(grid)
    nx, ny, nz = grid.shape
    entropy = series.uid_entropy
    window_low, window_high = np.percentile(volume, [1, 99.5])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = series.study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = series.study_time
    ds.AccessionNumber = series.accession
    ds.Modality = "MR"
    ds.Manufacturer = MANUFACTURER
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MRI head (synthetic demo)"
    ds.SeriesDescription = "AX T1 SE +C (synthetic)"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.BodyPartExamined = "HEAD"
    ds.ContrastBolusAgent = "gadolinium (simulated)"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = "500"
    ds.EchoTime = "12"
    ds.EchoTrainLength = 1
    ds.MagneticFieldStrength = "1.5"
    ds.SliceThickness = _ds(grid.thickness)
    ds.SpacingBetweenSlices = _ds(grid.spacing[2])
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uid_for(entropy, "study")
    ds.SeriesInstanceUID = uid_for(entropy, "series")
    ds.StudyID = "1"
    ds.SeriesNumber = series.series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = uid_for(entropy, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.PixelSpacing = [_ds(row_spacing), _ds(column_spacing)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenter = _ds((window_low + window_high) / 2)
    ds.WindowWidth = _ds(max(window_high - window_low, 1.0))
    ds.RescaleIntercept = _ds(series.rescale_intercept)
    ds.RescaleSlope = _ds(series.rescale_slope)
    ds.RescaleType = "US"
    # rows run anterior -> posterior (-y), columns right -> left (-x)
    pixels = np.ascontiguousarray(np.transpose(stored[::-1, ::-1, :], (2, 1, 0)))
    paths = []
    for k in range(nz):  # the same dataset, with the per-slice elements replaced
        path = folder / f"IM{k + 1:04d}.dcm"
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid_for(entropy, f"sop-{k}")
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
        ds.SliceLocation = _ds(positions[k][2])
        ds.PixelData = pixels[k].tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
