"""Find input files and tell what they are from their bytes, never from their names.

Recognised: DICOM (the ``DICM`` marker after the 128-byte preamble, or failing that a dataset pydicom can
parse with a DICOM header), NIfTI-1/NIfTI-2 in either byte order, plain or gzipped (by the header size
field and magic string), PNG, JPEG, BMP and TIFF (by their signatures). Hidden files and folders (names
starting with ``.``) are skipped.

Hostile inputs are refused before their data is read: a file or folder reached through a link that resolves
outside the input folder (one row for the link, never followed), a name that is not valid UTF-8, and a
header claiming a decoded size above ``max_item_bytes`` (:func:`decoded_bytes`).
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

from pipeline.data.dicom import DicomError, DicomFile, read_header
from pipeline.data.limits import MAX_ITEM_BYTES, decoded_bytes, too_large

SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
)
OUTSIDE_INPUT = "a link to a place outside the input folder: not read (copy the data into the input folder)"
NOT_UTF8 = "file name is not valid UTF-8 (shown with \\x escapes): rename it"
GZIP_MAGIC = b"\x1f\x8b"
GZIP_BLOCK = 1 << 20  # bytes inflated at a time when a gzip stream is measured
GZIP_SLACK = 1 << 20  # bytes a gzipped NIfTI may hold past its data (padding) before it is refused
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


def _is_gzip(path: Path) -> bool:
    """True when ``path`` starts with the gzip magic bytes."""
    with path.open("rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def _head(path: Path, size: int = 544) -> bytes:
    """The first ``size`` bytes (decompressed when the file is gzip)."""
    with path.open("rb") as handle:
        head = handle.read(size)
    if head[:2] == GZIP_MAGIC:
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


def _stream_longer_than(path: Path, limit: int) -> bool:
    """True when the gzip file ``path`` inflates to more than ``limit`` bytes, decompressed block by block
    and stopped there (memory stays at one block whatever the stream holds); damaged streams count as not
    longer (the loader reports them)."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while block := stream.read(GZIP_BLOCK):
                total += len(block)
                if total > limit:
                    return True
    except (OSError, EOFError, zlib.error):
        return False
    return False


def check_gzip_stream(path: Path) -> None:
    """Unreadable for a gzipped NIfTI whose stream inflates past the bytes its header describes (a
    decompression bomb behind a modest header), found with a capped, streamed read."""
    try:
        header = nibabel.load(path).header
        values = int(np.prod(header.get_data_shape(), dtype=np.int64))
        described = int(header.get_data_offset()) + values * header.get_data_dtype().itemsize
    except Exception:  # a damaged header: the loader reports it
        return
    if _is_gzip(path) and _stream_longer_than(path, described + GZIP_SLACK):
        raise Unreadable(f"gzip stream inflates past the {described:,} bytes its NIfTI header describes: "
                         "refused (a decompression bomb or a damaged file)")


def claimed_bytes(path: Path, fmt: str) -> int:
    """The decoded size (:func:`decoded_bytes`) the header of a NIfTI or 2D image claims, read from the header
    only (nibabel's header, Pillow's lazy open); 0 when the header cannot be parsed (the loader says why)."""
    try:
        if fmt == "nifti":
            header = nibabel.load(path).header
            values = int(np.prod(header.get_data_shape(), dtype=np.int64))
            return decoded_bytes(values, header.get_data_dtype().itemsize)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return decoded_bytes(image.width * image.height * len(image.getbands()), 1)
    except Image.DecompressionBombError:
        return np.iinfo(np.int64).max  # PIL's own limit refuses it: larger than any sensible setting
    except Exception:  # nibabel and PIL raise many types for damaged headers; the loader reports them
        return 0


def inside(path: Path, root: Path) -> bool:
    """True when ``path``, with every link resolved, is ``root`` or under it (``root`` resolved too)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def printable(relpath: str) -> str:
    """``relpath`` safe to write as UTF-8: bytes that are not valid UTF-8 (kept by the file system API as
    surrogate escapes) become ``\\xNN``."""
    return os.fsencode(relpath).decode("utf-8", "backslashreplace")


def classify(path: Path, root: Path, max_item_bytes: int = MAX_ITEM_BYTES) -> Found:
    """What ``path`` holds; Unreadable (with the reason) when it lies outside ``root`` through a link, has a
    name that is not UTF-8, cannot be read, is not an image or its header claims a decoded size above
    ``max_item_bytes``. DICOM pixel data is decoded once here, so a file that does not decode is known
    before series are assembled (``DicomFile.pixel_error``)."""
    relpath = path.relative_to(root).as_posix()
    if not inside(path, root):
        raise Unreadable(OUTSIDE_INPUT)
    if printable(relpath) != relpath:
        raise Unreadable(NOT_UTF8)
    try:
        fmt = sniff_format(path)
    except FileNotFoundError as err:
        raise Unreadable("cannot read file: it does not exist (broken link?)") from err
    except PermissionError as err:
        raise Unreadable("cannot read file: permission denied") from err
    except OSError as err:
        raise Unreadable(f"cannot read file: {err.strerror or type(err).__name__}") from err
    if fmt not in (None, "dicom"):
        size = claimed_bytes(path, fmt)
        if size > max_item_bytes:
            raise Unreadable(too_large(size, max_item_bytes))
        if fmt == "nifti":
            check_gzip_stream(path)
        return Found(relpath, path, fmt)
    try:
        return Found(relpath, path, "dicom", read_header(path, max_item_bytes))
    except DicomError as err:
        if fmt == "dicom":
            raise Unreadable(str(err)) from err
        raise Unreadable("not an image: not DICOM, NIfTI, PNG, JPEG, BMP or TIFF (by content)") from err


def walk(root: Path, skip: set[str]) -> Iterator[Path]:
    """Every non-hidden file under ``root`` in a stable order, except relative paths in ``skip``.

    Linked folders inside ``root`` are followed once (a link back up the tree is not walked twice); a link
    to a folder outside ``root`` is yielded itself, never listed, so :func:`classify` rejects it in one row.
    """
    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        visible = [d for d in dirs if not d.startswith(".")]
        outside = [d for d in visible if not inside(Path(folder) / d, root)]
        dirs[:] = sorted(d for d in visible if d not in outside)
        for name in sorted([*names, *outside]):
            path = Path(folder) / name
            if not name.startswith(".") and path.relative_to(root).as_posix() not in skip:
                yield path
