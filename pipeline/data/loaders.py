"""Load any ingested item as a float32 channel-first array through MONAI's readers, and validate it.

One entry point per use: ingest and inference call :func:`read_item` (:func:`load_files`, with any
reader failure on a damaged file as LoadError) on what they found; later stages call
:func:`load_item` on a manifest row. Both return a float32 MONAI ``MetaTensor``, channel-first:
(C, X, Y) for a 2D image or (C, X, Y, Z) for a volume, with ``.affine`` in RAS millimetres.
Readers are passed to ``LoadImage`` explicitly, so a file that one reader rejects is never silently
read by another.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import nibabel
import numpy as np
import torch
from monai.data import MetaTensor, NibabelReader, PILReader
from monai.data.utils import affine_to_spacing
from monai.transforms import LoadImage
from nibabel.openers import ImageOpener
from PIL import Image

from pipeline.data.dicom import DicomError, DicomFile, load_series
from pipeline.data.discovery import sniff_format
from pipeline.data.manifest import ManifestRow, item_files

# Creating a LoadImage registers every MONAI reader, whose GPU-only nvImageCodec variant logs and warns that
# it is unavailable; that is irrelevant on the CPU path used here.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

IMAGE_FORMATS = ("png", "jpeg", "bmp", "tiff")
# Least share of a 2D image's pixels that must differ from its darkest value: below it the image is blank or
# a placeholder (1x1, all black) and would become an empty training slice.
MIN_FOREGROUND_FRACTION = 0.01
FORMATS = ("dicom", "nifti", *IMAGE_FORMATS)


class LoadError(ValueError):
    """An item whose pixels cannot be used; the message says why in plain words."""


def kind_of(image: MetaTensor) -> str:
    """``volume`` for three spatial axes, ``image`` for two."""
    return "volume" if image.ndim == 4 else "image"


def spacing_of(image: MetaTensor) -> tuple[float, ...]:
    """Millimetres per spatial axis, from the affine."""
    return tuple(float(s) for s in affine_to_spacing(image.affine, r=image.ndim - 1))


def _plain_mode(image: Image.Image) -> Image.Image:
    """Palette, alpha, bilevel and CMYK images as L or RGB; 8/16-bit grey and RGB unchanged."""
    conversions = {"P": "RGB", "PA": "RGB", "RGBA": "RGB", "LA": "L", "1": "L", "CMYK": "RGB", "YCbCr": "RGB"}
    return image.convert(conversions[image.mode]) if image.mode in conversions else image


@functools.lru_cache(maxsize=1)
def _readers() -> tuple[LoadImage, NibabelReader, PILReader]:
    """One channel-first MONAI loader with the NIfTI and 2D-image readers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        load = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)
    return (
        load,
        NibabelReader(),
        PILReader(converter=_plain_mode),
    )


def _load_nifti(path: Path) -> MetaTensor:
    """A NIfTI as a volume (a 2D file becomes one slice); 4D and higher is refused with how to split it."""
    load, nifti, _ = _readers()
    image = load(str(path), reader=nifti)  # a 4th (time or vector) axis comes first as channels
    spatial = tuple(image.shape[1:])
    if image.shape[0] != 1 or len(spatial) > 3:
        raise LoadError(f"4D volume {(*spatial, image.shape[0])}: split it into 3D files first "
                        "(e.g. nibabel.funcs.four_to_three or fslsplit) and label each")
    return image.reshape((1, *(*spatial, 1)[:3]))


def _load_2d(path: Path) -> MetaTensor:
    """PNG, JPEG, BMP or TIFF through MONAI's PILReader."""
    load, _, pil = _readers()
    return load(str(path), reader=pil)


def _validate(image: MetaTensor, what: str) -> MetaTensor:
    """LoadError for zero-size or non-finite data."""
    if image.numel() == 0:
        raise LoadError(f"zero-size {what} {tuple(image.shape)}")
    finite = torch.isfinite(image.as_tensor())
    bad = 0 if bool(finite.all()) else int(finite.numel() - finite.count_nonzero())  # no int64 copy
    if bad:
        raise LoadError(f"{what} holds {bad} NaN/Inf values")
    return image


def load_files(files: Sequence[str | os.PathLike | DicomFile], fmt: str) -> MetaTensor:
    """Load one item made of ``files`` in format ``fmt`` (``FORMATS``); LoadError/DicomError say why not.
    DICOM files may be given as their headers when already read (:func:`pipeline.data.dicom.read_header`)."""
    if fmt == "dicom":
        array, affine = load_series(files)  # type: ignore[arg-type]
        return _validate(MetaTensor(torch.from_numpy(array), affine=torch.from_numpy(affine)), "DICOM image")
    paths = [Path(f) for f in files]  # type: ignore[arg-type]
    if len(paths) != 1:
        raise LoadError(f"a {fmt} item is one file, got {len(paths)}")
    if fmt == "nifti":
        return _validate(_load_nifti(paths[0]), "NIfTI volume")
    if fmt in IMAGE_FORMATS:
        return _validate(_load_2d(paths[0]), f"{fmt.upper()} image")
    raise LoadError(f"unknown format '{fmt}' (expected one of {FORMATS})")


def error_line(err: BaseException) -> str:
    """An exception as one short line for a rejected row: its type and the first line of its message."""
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"


def check_foreground(image: MetaTensor) -> None:
    """LoadError for a near-empty 2D image: fewer than ``MIN_FOREGROUND_FRACTION`` of its pixels differ
    from its darkest value (in any channel)."""
    pixels = image.as_tensor()
    foreground = (pixels > pixels.amin(dim=tuple(range(1, pixels.ndim)), keepdim=True)).any(dim=0)
    share = int(foreground.count_nonzero()) / max(foreground.numel(), 1)
    if share < MIN_FOREGROUND_FRACTION:
        raise LoadError(f"near-empty image {tuple(image.shape[1:])}: {100 * share:.2f} % of its pixels "
                        f"differ from the background value (needs {100 * MIN_FOREGROUND_FRACTION:g} %)")


def read_item(files: Sequence[str | os.PathLike | DicomFile], fmt: str) -> MetaTensor:
    """:func:`load_files` for untrusted inputs, with 2D images held to :func:`check_foreground`: any reader
    failure on a damaged file becomes a LoadError naming the format and the error (nibabel, PIL, gzip and
    MONAI raise many types)."""
    try:
        image = load_files(files, fmt)
    except (DicomError, LoadError):
        raise
    except Exception as err:  # a damaged file: say so and go on with the other inputs
        raise LoadError(f"cannot read {fmt} (damaged or truncated?): {error_line(err)}") from err
    if kind_of(image) == "image":
        check_foreground(image)
    return image


def header_notes(path: Path, fmt: str, image: MetaTensor) -> list[str]:
    """Warnings about what a NIfTI or TIFF header says beyond the pixels: NIfTI voxel sizes (pixdim) that
    are zero or negative, an orientation matrix that is singular (all-zero sform/qform), a TIFF with
    several pages (only the first is read)."""
    notes = []
    if fmt == "nifti":
        with ImageOpener(path) as stream:  # unchecked: nibabel's load silently sets zero pixdim to 1
            raw = type(nibabel.load(path).header).from_fileobj(stream, check=False)
        zooms = tuple(raw["pixdim"][1:min(4, int(raw["dim"][0]) + 1)])
        if any(z <= 0 for z in zooms):
            notes.append(f"NIfTI pixdim {tuple(float(z) for z in zooms)} has zero or negative voxel sizes: "
                         f"the spacing {spacing_of(image)} mm comes from the affine, check it")
        if abs(float(np.linalg.det(np.asarray(image.affine)[:3, :3]))) < 1e-12:
            notes.append("NIfTI orientation matrix is singular (all-zero sform/qform?): the slices stage "
                         "cannot orient it and will skip it; fix the header")
    if fmt == "tiff":
        with Image.open(path) as tiff:
            pages = getattr(tiff, "n_frames", 1)
        if pages > 1:
            notes.append(f"multi-page TIFF: only page 1 of {pages} is used (TIFF pages can be thumbnails, "
                         "pyramid levels or unrelated images); save each page as its own file to use it")
    return notes


def load_item(manifest_path: str | os.PathLike, row: ManifestRow) -> MetaTensor:
    """Pixels of a manifest row: (C, X, Y, Z) for ``kind == "volume"``, (C, X, Y) for ``"image"``."""
    return load_files(item_files(manifest_path, row), row.format)


def load_mask(path: str | os.PathLike) -> MetaTensor:
    """A mask file in any supported format (recognised by content) loaded like any item."""
    fmt = sniff_format(Path(path))
    if fmt is None:
        raise LoadError("mask is not DICOM, NIfTI, PNG, JPEG, BMP or TIFF")
    return load_files([path], fmt)
