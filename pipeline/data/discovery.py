"""Find input files and tell what they are from their bytes, never from their names.

Recognised: DICOM (the ``DICM`` marker after the 128-byte preamble, or failing that a dataset pydicom can
parse with a DICOM header), NIfTI-1/NIfTI-2 in either byte order, plain or gzipped (by the header size
field and magic string), PNG, JPEG, BMP and TIFF (by their signatures). Hidden files and folders (names
starting with ``.``) are skipped.
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel
import numpy as np
from PIL import Image

from pipeline.data.dicom import DicomError, DicomFile, read_header, too_large

SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
)
# Most values (voxels x channels) one input file may claim in its header; larger files are rejected before
# their data is read (a damaged or hostile header could otherwise ask for terabytes). 2**28 float32 values
# are 1 GiB. Ingest's --max-voxels overrides it.
MAX_VOXELS = 2**28
NIFTI_HEADERS = {348: (344, (b"n+1\x00", b"ni1\x00")), 540: (4, (b"n+2\x00", b"ni2\x00"))}


class Unreadable(ValueError):
    """A file that cannot be opened or is not an image; the message is the reason for rejected.csv."""


@dataclass(frozen=True)
class Found:
    """One input file: its path relative to the root, its format and (for DICOM) its header summary."""

    relpath: str
    path: Path
    format: str
    dicom: DicomFile | None = None


def _head(path: Path, size: int = 544) -> bytes:
    """The first ``size`` bytes (decompressed when the file is gzip)."""
    with path.open("rb") as handle:
        head = handle.read(size)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as handle:
                return handle.read(size)
        except (OSError, EOFError, zlib.error):
            return b""
    return head


def _is_nifti(head: bytes) -> bool:
    """NIfTI-1 or NIfTI-2 header, little or big endian."""
    for order in "<>":
        if len(head) < 4:
            return False
        size = struct.unpack(f"{order}i", head[:4])[0]
        if size in NIFTI_HEADERS:
            offset, magics = NIFTI_HEADERS[size]
            return head[offset:offset + 4] in magics
    return False


def sniff_format(path: Path) -> str | None:
    """The format told by the first bytes (``dicom`` only with the DICM marker), or None."""
    head = _head(path)
    if head[128:132] == b"DICM":
        return "dicom"
    if _is_nifti(head):
        return "nifti"
    return next((fmt for magic, fmt in SIGNATURES if head.startswith(magic)), None)


def claimed_values(path: Path, fmt: str) -> int:
    """How many values the header of a NIfTI or 2D image says it holds (read from the header only); 0 when
    the header cannot be parsed (the loader then says why)."""
    try:
        if fmt == "nifti":
            return int(np.prod(nibabel.load(path).header.get_data_shape(), dtype=np.int64))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.width * image.height * len(image.getbands())
    except Image.DecompressionBombError:
        return np.iinfo(np.int64).max  # PIL's own limit refuses it: larger than any sensible setting
    except Exception:  # nibabel and PIL raise many types for damaged headers; the loader reports them
        return 0


def classify(path: Path, root: Path, max_voxels: int = MAX_VOXELS) -> Found:
    """What ``path`` holds; Unreadable (with the reason) when it cannot be read, is not an image or its
    header claims more than ``max_voxels`` values. DICOM pixel data is decoded once here, so a file that
    does not decode is known before series are assembled (``DicomFile.pixel_error``)."""
    relpath = path.relative_to(root).as_posix()
    try:
        fmt = sniff_format(path)
    except FileNotFoundError as err:
        raise Unreadable("cannot read file: it does not exist (broken link?)") from err
    except PermissionError as err:
        raise Unreadable("cannot read file: permission denied") from err
    except OSError as err:
        raise Unreadable(f"cannot read file: {err.strerror or type(err).__name__}") from err
    if fmt not in (None, "dicom"):
        values = claimed_values(path, fmt)
        if values > max_voxels:
            raise Unreadable(too_large(values, max_voxels))
        return Found(relpath, path, fmt)
    try:
        return Found(relpath, path, "dicom", read_header(path, max_voxels))
    except DicomError as err:
        if fmt == "dicom":
            raise Unreadable(str(err)) from err
        raise Unreadable("not an image: not DICOM, NIfTI, PNG, JPEG, BMP or TIFF (by content)") from err


def walk(root: Path, skip: set[str]) -> Iterator[Path]:
    """Every non-hidden file under ``root`` in a stable order, except relative paths in ``skip``.

    Linked folders are followed once (a link back up the tree is not walked twice).
    """
    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(folder) / name
            if not name.startswith(".") and path.relative_to(root).as_posix() not in skip:
                yield path
