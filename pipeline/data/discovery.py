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
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.dicom import DicomError, DicomFile, read_header

SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
)
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


def classify(path: Path, root: Path) -> Found:
    """What ``path`` holds; Unreadable (with the reason) when it cannot be read or is not an image."""
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
        return Found(relpath, path, fmt)
    try:
        return Found(relpath, path, "dicom", read_header(path))
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
