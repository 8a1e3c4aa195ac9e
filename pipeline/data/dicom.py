"""DICOM: header summaries, series stacking geometry, and the one pixel loader every stage uses.

What MONAI's ``PydicomReader`` does and we rely on: decoding through pydicom (every transfer syntax pydicom
and its pylibjpeg / pillow plugins decode) and RescaleSlope/RescaleIntercept at the top level of a dataset.
What it does not do, and this module adds: ordering slices by position along the slice normal (MONAI sorts by
InstanceNumber and measures spacing on z only), spacing from the positions with warnings for irregular gaps
or a disagreeing SpacingBetweenSlices tag, multi-frame files (MONAI's ``swap_ij`` swaps the frame axis into
the image; we read with ``swap_ij=False`` and transpose ourselves), enhanced multi-frame geometry and
rescale from the functional groups, and MONOCHROME1 inversion.

Array convention (as MONAI's readers): channel-first, spatial axes (x = column, y = row, z = slice),
affine in RAS millimetres.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pydicom.config
from monai.data import PydicomReader
from monai.data.utils import orientation_ras_lps
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut

from pipeline.data.limits import decoded_bytes, too_large

SEG_SOP_CLASS = pydicom.uid.SegmentationStorage
# Tags that tell apart two acquisitions stored under one SeriesInstanceUID at the same slice positions.
ACQUISITION_TAGS = ("AcquisitionNumber", "EchoNumbers", "TemporalPositionIdentifier", "TriggerTime")
GAP_TOLERANCE = 0.01  # relative difference in slice gaps (and in the SpacingBetweenSlices tag) that warns
POSITION_TOLERANCE_MM = 1e-3


class DicomError(ValueError):
    """A DICOM file or series that cannot be used; the message says why in plain words."""


@dataclass(frozen=True)
class DicomFile:
    """The header facts ingest and the loader need from one DICOM file (no pixel data).

    ``patient_id`` is the raw identifier: it is only ever passed to ``salted_hash`` and is kept out of repr.
    ``positions`` has one ImagePositionPatient per frame (empty when the file carries none).
    """

    path: Path
    sop_class: str
    series_uid: str
    study_uid: str
    modality: str
    transfer_syntax: str
    compressed: bool
    rows: int
    columns: int
    frames: int
    samples: int
    photometric: str
    bits_stored: int
    signed: bool
    has_pixels: bool
    orientation: tuple[float, ...] | None
    positions: tuple[tuple[float, float, float], ...]
    pixel_spacing: tuple[float, float] | None
    spacing_between_slices: float | None
    rescale: tuple[float, float] | None
    frame_rescale: tuple[tuple[float, float], ...] | None
    patient_id: str = field(repr=False, default="")
    sop_uid: str = ""
    acquisition: tuple[tuple[str, str], ...] = ()
    referenced_series: tuple[str, ...] = ()
    pixel_digest: str = ""
    pixel_error: str = ""

    @property
    def monochrome1(self) -> bool:
        """True when low stored values mean white (the image must be inverted)."""
        return self.photometric == "MONOCHROME1"

    @property
    def palette(self) -> bool:
        """True for PALETTE COLOR: stored values index a colour lookup table (decoded to RGB)."""
        return self.photometric == "PALETTE COLOR"

    @property
    def channels(self) -> int:
        """Channels of the decoded image (3 for PALETTE COLOR, else SamplesPerPixel)."""
        return 3 if self.palette else self.samples

    @property
    def segmentation(self) -> bool:
        """True for a DICOM SEG: a mask of another series, never an image of its own."""
        return self.sop_class == SEG_SOP_CLASS


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Read without pydicom's value-validation warnings: they quote header values (names, dates)."""
    previous = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom.config.settings.reading_validation_mode = previous


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    """``value`` as ``count`` finite floats, or None when absent or malformed."""
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count and np.all(np.isfinite(numbers)) else None


def _first_item(ds: Dataset, sequence: str, inner: str) -> Dataset | None:
    """``ds.<sequence>[0].<inner>[0]`` or None."""
    outer = ds.get(sequence)
    if not outer or inner not in outer[0] or not outer[0][inner].value:
        return None
    return outer[0][inner][0]


def _functional(ds: Dataset, frame: int, inner: str) -> Dataset | None:
    """A functional-group macro for ``frame``: per-frame if present, else shared (enhanced multi-frame)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame) and inner in per_frame[frame] and per_frame[frame][inner].value:
        return per_frame[frame][inner][0]
    return _first_item(ds, "SharedFunctionalGroupsSequence", inner)


def _geometry_tags(ds: Dataset, frames: int) -> tuple:
    """Orientation, per-frame positions, pixel spacing, spacing between slices and per-frame rescale."""
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    position = _floats(ds.get("ImagePositionPatient"), 3)
    positions = (position,) if position else ()
    spacing = _floats(ds.get("PixelSpacing"), 2) or _floats(ds.get("ImagerPixelSpacing"), 2)
    between = _floats([ds.get("SpacingBetweenSlices")], 1) if "SpacingBetweenSlices" in ds else None
    rescale = None
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        plane = _functional(ds, 0, "PlaneOrientationSequence")
        orientation = orientation or (_floats(plane.get("ImageOrientationPatient"), 6) if plane else None)
        measures = _functional(ds, 0, "PixelMeasuresSequence")
        if measures is not None:
            spacing = spacing or _floats(measures.get("PixelSpacing"), 2)
            if "SpacingBetweenSlices" in measures:
                between = between or _floats([measures.SpacingBetweenSlices], 1)
        found = [_functional(ds, i, "PlanePositionSequence") for i in range(frames)]
        framed = [_floats(f.get("ImagePositionPatient"), 3) if f else None for f in found]
        if all(framed):
            positions = tuple(framed)  # type: ignore[arg-type]
        if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
            transforms = [_functional(ds, i, "PixelValueTransformationSequence") for i in range(frames)]
            if any(t is not None for t in transforms):
                rescale = tuple(
                    (float(t.get("RescaleSlope", 1.0)), float(t.get("RescaleIntercept", 0.0)))
                    if t is not None else (1.0, 0.0)
                    for t in transforms
                )
    return orientation, positions, spacing, (between[0] if between else None), rescale


def _claimed_bytes(ds: Dataset, frames: int) -> int:
    """Decoded size the header claims: rows x columns x frames x channels at BitsAllocated (as loaded)."""
    channels = 3 if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR" else \
        int(ds.get("SamplesPerPixel") or 1)
    values = int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0) * frames * channels
    return decoded_bytes(values, -(-int(ds.get("BitsAllocated") or 8) // 8))


def read_header(path: str | Path, max_item_bytes: int = 0) -> DicomFile:
    """Summarise one file's DICOM header; DicomError when it is not a parseable DICOM dataset.

    With ``max_item_bytes`` > 0 a header claiming a larger decoded size is a DicomError (before anything
    else is read), and the pixel data is decoded once: a file that does not decode gets the reason in
    ``pixel_error``, so it can be rejected on its own; one that decodes gets a ``pixel_digest`` (unless all
    its values are equal).
    """
    path = Path(path)
    with _quiet_pydicom():
        try:
            ds = pydicom.dcmread(path, defer_size="256 KB", force=True)
            if not _looks_like_dicom(ds):
                raise DicomError("corrupt or truncated DICOM: no recognisable DICOM header")
            frames = int(ds.get("NumberOfFrames") or 1)
            if frames < 1:
                raise DicomError(f"NumberOfFrames is {frames}: not an image")
            if max_item_bytes and _claimed_bytes(ds, frames) > max_item_bytes:
                raise DicomError(too_large(_claimed_bytes(ds, frames), max_item_bytes))
            orientation, positions, spacing, between, rescale = _geometry_tags(ds, frames)
            syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
            header = DicomFile(
                path=path,
                sop_class=str(ds.get("SOPClassUID", "")),
                series_uid=str(ds.get("SeriesInstanceUID", "")),
                study_uid=str(ds.get("StudyInstanceUID", "")),
                modality=str(ds.get("Modality", "")),
                transfer_syntax=syntax.name if syntax else "Implicit VR Little Endian (no file meta)",
                compressed=bool(syntax and syntax.is_compressed),
                rows=int(ds.get("Rows") or 0),
                columns=int(ds.get("Columns") or 0),
                frames=frames,
                samples=int(ds.get("SamplesPerPixel") or 1),
                photometric=str(ds.get("PhotometricInterpretation", "")),
                bits_stored=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16),
                signed=int(ds.get("PixelRepresentation") or 0) == 1,
                has_pixels=any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")),
                orientation=orientation,
                positions=positions,
                pixel_spacing=spacing,  # type: ignore[arg-type]
                spacing_between_slices=between,
                rescale=(float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0)))
                if "RescaleSlope" in ds or "RescaleIntercept" in ds else None,
                frame_rescale=rescale,
                patient_id=str(ds.get("PatientID", "") or "").strip(),
                sop_uid=str(ds.get("SOPInstanceUID", "")),
                acquisition=tuple((t, str(ds.get(t))) for t in ACQUISITION_TAGS
                                  if ds.get(t) not in (None, "")),
                referenced_series=_referenced_series(ds),
            )
        except DicomError:
            raise
        except Exception as err:  # pydicom raises many types for truncated or corrupt files
            reason = f"corrupt or truncated DICOM: header cannot be parsed ({type(err).__name__})"
            raise DicomError(reason) from err
        if max_item_bytes and header.has_pixels:
            return _checked(header, ds)
        return header


def _referenced_series(ds: Dataset) -> tuple[str, ...]:
    """SeriesInstanceUIDs a DICOM SEG refers to (ReferencedSeriesSequence), empty for other objects."""
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        return ()
    return tuple(str(item.get("SeriesInstanceUID", "")) for item in ds.get("ReferencedSeriesSequence", []))


def _checked(header: DicomFile, ds: Dataset) -> DicomFile:
    """``header`` with the outcome of decoding the pixel data of ``ds``: a digest, or the error."""
    expected = header.frames * header.rows * header.columns * header.samples
    try:
        pixels = np.ascontiguousarray(ds.pixel_array)
    except Exception as err:  # decoders raise many types; the file is unusable either way
        return dataclasses.replace(header, pixel_error=_decode_error(header, err))
    if pixels.size != expected:
        return dataclasses.replace(header, pixel_error=f"pixel data holds {pixels.size} values, header says "
                                   f"{header.frames}x{header.rows}x{header.columns}x{header.samples}")
    if pixels.size == 0 or pixels.min() == pixels.max():
        return header  # a blank image says nothing about who it belongs to: no digest to compare
    return dataclasses.replace(header, pixel_digest=hashlib.sha256(pixels.tobytes()).hexdigest())


def _decode_error(item: DicomFile, err: Exception) -> str:
    """The rejection reason for pixel data that does not decode."""
    detail = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
    codec = f", or no decoder installed for {item.transfer_syntax}" if item.compressed else ""
    return f"truncated or corrupt pixel data{codec} ({detail})"


def _looks_like_dicom(ds: Dataset) -> bool:
    """A forced parse of a non-DICOM file yields an empty or nonsense dataset; a real one has these."""
    meta = getattr(ds, "file_meta", None)
    return bool(meta and "TransferSyntaxUID" in meta) or any(
        t in ds for t in ("SOPClassUID", "SeriesInstanceUID", "Modality")
    )


@dataclass(frozen=True)
class StackGeometry:
    """Where each frame goes: ``order`` lists (file index, frame index) from the first slice to the last."""

    order: tuple[tuple[int, int], ...]
    affine: np.ndarray
    warnings: tuple[str, ...]


def _in_plane(first: DicomFile) -> tuple[np.ndarray, np.ndarray, tuple[float, float], list[str]]:
    """Row/column direction cosines and (x, y) pixel spacing of a file, with warnings for what is assumed."""
    notes = []
    if first.orientation is None:
        notes.append("no ImageOrientationPatient: axial orientation assumed")
        orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    else:
        orientation = first.orientation
    if first.pixel_spacing is None:
        notes.append("no PixelSpacing: 1 mm pixels assumed")
        row_mm, col_mm = 1.0, 1.0
    else:
        row_mm, col_mm = first.pixel_spacing
    return np.asarray(orientation[:3]), np.asarray(orientation[3:]), (col_mm, row_mm), notes


def _affine(row_dir: np.ndarray, col_dir: np.ndarray, xy_mm: tuple[float, float], origin: Sequence[float],
            slice_step: np.ndarray) -> np.ndarray:
    """4x4 RAS affine for arrays indexed (x = column, y = row, z = slice), as MONAI's PydicomReader gives."""
    lps = np.eye(4)
    lps[:3, 0] = row_dir * xy_mm[0]
    lps[:3, 1] = col_dir * xy_mm[1]
    lps[:3, 2] = slice_step
    lps[:3, 3] = origin
    return orientation_ras_lps(lps)


def stack_geometry(files: Sequence[DicomFile]) -> StackGeometry:
    """Slice order along the normal and affine of one image: a 2D file, a 3D stack or a multi-frame file.

    Irregular gaps or a SpacingBetweenSlices tag that disagrees with the positions give warnings (the spacing
    is the mean step from the first to the last position); duplicate positions raise DicomError.
    """
    first = files[0]
    row_dir, col_dir, xy_mm, notes = _in_plane(first)
    frames = [(i, f) for i, item in enumerate(files) for f in range(item.frames)]
    if len(frames) == 1:
        origin = first.positions[0] if first.positions else (0.0, 0.0, 0.0)
        affine = _affine(row_dir, col_dir, xy_mm, origin, np.cross(row_dir, col_dir))
        return StackGeometry(((0, 0),), affine, tuple(notes))
    normal = np.cross(row_dir, col_dir)
    positions = [files[i].positions[f] if len(files[i].positions) > f else None for i, f in frames]
    if any(p is None for p in positions):
        step = first.spacing_between_slices or 1.0
        notes.append(f"no per-slice positions: frames kept in stored order, slice spacing {step:g} mm "
                     + ("from SpacingBetweenSlices" if first.spacing_between_slices else "assumed"))
        origin = first.positions[0] if first.positions else (0.0, 0.0, 0.0)
        affine = _affine(row_dir, col_dir, xy_mm, origin, normal * step)
        return StackGeometry(tuple(frames), affine, tuple(notes))
    points = np.asarray(positions, dtype=float)
    distance = points @ normal
    sort = np.argsort(distance, kind="stable")
    distance, points = distance[sort], points[sort]
    gaps = np.diff(distance)
    if np.any(gaps < POSITION_TOLERANCE_MM):
        raise DicomError(f"duplicate slice positions ({int(np.sum(gaps < POSITION_TOLERANCE_MM))} repeated): "
                         "two acquisitions in one series? Put each acquisition in its own series folder")
    step_mm = float(distance[-1] - distance[0]) / (len(distance) - 1)
    if np.any(np.abs(gaps - step_mm) > GAP_TOLERANCE * step_mm + POSITION_TOLERANCE_MM):
        notes.append(f"irregular slice gaps ({gaps.min():.4g} to {gaps.max():.4g} mm): spacing "
                     f"{step_mm:.4g} mm is the mean step; resample before measuring distances")
    tag = first.spacing_between_slices
    if tag is not None and abs(tag - step_mm) > GAP_TOLERANCE * step_mm + POSITION_TOLERANCE_MM:
        notes.append(f"SpacingBetweenSlices tag says {tag:g} mm but the slice positions give "
                     f"{step_mm:.4g} mm; using the positions")
    slice_step = (points[-1] - points[0]) / (len(points) - 1)
    affine = _affine(row_dir, col_dir, xy_mm, points[0], slice_step)
    return StackGeometry(tuple(frames[i] for i in sort), affine, tuple(notes))


@functools.lru_cache(maxsize=1)
def _reader() -> PydicomReader:
    """MONAI's pydicom reader, keeping frames first (``swap_ij=False``)."""
    return PydicomReader(swap_ij=False)


def _decode(item: DicomFile) -> np.ndarray:
    """Frames of one file as float32 (frames, rows, columns, samples), rescaled, MONOCHROME1 inverted."""
    reader = _reader()
    with _quiet_pydicom():
        try:
            if item.segmentation:  # MONAI re-arranges SEG frames by segment; keep them stored, ordered here
                dataset = pydicom.dcmread(item.path)
                pixels = np.asarray(dataset.pixel_array, dtype=np.float32)
            else:
                dataset = reader.read(str(item.path))
                pixels = np.asarray(reader.get_data(dataset)[0], dtype=np.float32)
        except Exception as err:  # decoders raise many types; the file is unusable either way
            raise DicomError(_decode_error(item, err)) from err
    expected = (item.frames, item.rows, item.columns, item.samples)
    if pixels.size != int(np.prod(expected)):
        raise DicomError(f"pixel data holds {pixels.size} values, header says {'x'.join(map(str, expected))}")
    pixels = pixels.reshape(expected)
    if item.palette:  # the stored values are indices into the file's colour lookup tables
        with _quiet_pydicom():
            return np.asarray(apply_color_lut(pixels[..., 0].astype(np.uint16), dataset), dtype=np.float32)
    slopes = np.ones(item.frames, np.float32)
    intercepts = np.zeros(item.frames, np.float32)
    if item.frame_rescale:  # enhanced multi-frame: MONAI only applies the top-level tags
        slopes[:], intercepts[:] = np.asarray(item.frame_rescale, dtype=np.float32).T
        pixels = pixels * slopes[:, None, None, None] + intercepts[:, None, None, None]
    if item.monochrome1:
        low, high = (-(2 ** (item.bits_stored - 1)), 2 ** (item.bits_stored - 1) - 1) if item.signed \
            else (0, 2**item.bits_stored - 1)
        slope, intercept = item.rescale or (1.0, 0.0)
        span = (slopes * slope) * (low + high) + 2 * (intercepts + slopes * intercept)
        pixels = span[:, None, None, None] - pixels
    return pixels


def check_stackable(files: Sequence[DicomFile]) -> None:
    """DicomError unless the files can form one image: pixels present, one matrix size and sample count."""
    for item in files:
        if item.pixel_error:
            raise DicomError(item.pixel_error)
        if not item.has_pixels:
            raise DicomError(f"DICOM without pixel data ({sop_name(item.sop_class)}): not an image")
        if item.rows * item.columns * item.frames == 0:
            raise DicomError("zero-size image (Rows or Columns is 0)")
    sizes = {(f.rows, f.columns, f.channels) for f in files}
    if len(sizes) > 1:
        raise DicomError(f"files of one series differ in size or samples per pixel: {sorted(sizes)}")


def sop_name(sop_class: str) -> str:
    """Readable SOP class name, e.g. 'Basic Text SR Storage'."""
    return pydicom.uid.UID(sop_class).name if sop_class else "unknown SOP class"


def load_series(items: Sequence[str | Path | DicomFile]) -> tuple[np.ndarray, np.ndarray]:
    """Float32 channel-first array and RAS affine of one DICOM image: a 2D file, multi-frame file or series.

    ``items`` are file paths, or their headers when already read (:func:`read_header`). Returns (C, X, Y)
    for a single frame and (C, X, Y, Z) otherwise, slices ordered along the slice normal (whatever the
    order of ``items``), rescale applied, MONOCHROME1 inverted. DicomError says what is wrong.
    """
    files = [item if isinstance(item, DicomFile) else read_header(item) for item in items]
    check_stackable(files)
    geometry = stack_geometry(files)
    decoded = []
    for item in files:
        try:
            decoded.append(_decode(item))
        except DicomError as err:
            raise DicomError(f"{item.path.name}: {err}" if len(files) > 1 else str(err)) from err
    frames = np.stack([decoded[i][f] for i, f in geometry.order])  # (Z, rows, cols, samples)
    volume = np.transpose(frames, (3, 2, 1, 0))  # (samples, x = column, y = row, z)
    if len(geometry.order) == 1:
        volume = volume[..., 0]
    return np.ascontiguousarray(volume), geometry.affine
