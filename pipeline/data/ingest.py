"""`python -m pipeline ingest`: find the images under a folder, label them, write manifest and rejected CSVs.

The walk (:mod:`pipeline.data.discovery`) recognises files by content; DICOM files are grouped into series
and stacked along the slice normal (:mod:`pipeline.data.dicom`); every item is read once through MONAI
(:mod:`pipeline.data.loaders`) to record its shape and spacing and to reject unusable data; labels come from
the detected layout (:mod:`pipeline.data.labels`). Input files are only ever read. Patient identifiers are
replaced by salted hashes (:mod:`pipeline.data.privacy`) and never printed.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from pipeline.data.dicom import DicomError, DicomFile, check_stackable, stack_geometry
from pipeline.data.discovery import Found, Unreadable, classify, walk
from pipeline.data.labels import ItemKey, LabelSource, NoLabel, detect_layout
from pipeline.data.loaders import LoadError, kind_of, load_files, load_mask, spacing_of
from pipeline.data.manifest import MANIFEST_NAME, REJECTED_NAME, ManifestRow, write_outputs
from pipeline.data.parallel import map_in_order, one_torch_thread
from pipeline.data.privacy import DEMO_SALT, SALT_ENV, resolve_salt, salted_hash

NO_PATIENT = "no patient id: the item counts as its own patient"


@dataclass
class Candidate:
    """Files that make one item, before labelling and loading."""

    relpath: str
    format: str
    found: list[Found]
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # slice order, once known

    @property
    def dicom(self) -> list[DicomFile]:
        """Header summaries (DICOM items only)."""
        return [f.dicom for f in self.found if f.dicom is not None]


@dataclass
class Result:
    """What an ingest run found."""

    rows: list[ManifestRow] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)


def _folder_of(found: list[Found]) -> str:
    """The folder holding all of ``found`` (relative; ``.`` for the root)."""
    parents = [str(PurePosixPath(f.relpath).parent) for f in found]
    return PurePosixPath(os.path.commonpath(parents)).as_posix() if parents else "."


def _regular_stack(files: list[DicomFile]) -> str:
    """Empty if single-frame ``files`` form one 3D stack, else why not."""
    if any(f.orientation is None or not f.positions for f in files):
        return "some files have no ImageOrientationPatient/ImagePositionPatient"
    if any(not np.allclose(f.orientation, files[0].orientation, atol=1e-4) for f in files):  # type: ignore[arg-type]
        return "files differ in orientation"
    if len({(f.rows, f.columns, f.samples) for f in files}) > 1:
        return "files differ in matrix size"
    return ""


def group_dicom(found: list[Found]) -> Iterable[Candidate]:
    """DICOM files as items: one per multi-frame file, one per regular single-frame series, else per file."""
    series: dict[str, list[Found]] = defaultdict(list)
    for item in found:
        series[item.dicom.series_uid or f"file:{item.relpath}"].append(item)  # type: ignore[union-attr]
    for members in series.values():
        single = [m for m in members if m.dicom.frames == 1]  # type: ignore[union-attr]
        for multi in (m for m in members if m.dicom.frames > 1):  # type: ignore[union-attr]
            yield Candidate(multi.relpath, "dicom", [multi])
        if len(single) > 1:
            why_not = _regular_stack([m.dicom for m in single])  # type: ignore[misc]
            if not why_not:
                yield Candidate(_folder_of(single), "dicom", single)
                continue
            note = f"its series is not one 3D stack ({why_not}): each file taken as a 2D image"
            yield from (Candidate(m.relpath, "dicom", [m], [note]) for m in single)
        elif single:
            yield Candidate(single[0].relpath, "dicom", single)


def _item_key(candidate: Candidate) -> ItemKey:
    """Lookup key of a candidate for the label source."""
    header = candidate.dicom[0] if candidate.dicom else None
    return ItemKey(
        path=candidate.relpath,
        files=tuple(f.relpath for f in candidate.found),
        series_uid=header.series_uid if header else "",
        study_uid=header.study_uid if header else "",
        patient_id=header.patient_id if header else "",
    )


def _check_mask(root: Path, mask: str, image_shape: tuple[int, ...]) -> None:
    """ValueError unless the mask exists, loads and has the image's spatial shape."""
    path = root / mask
    if not path.is_file():
        raise ValueError(f"mask '{mask}' named in the labels does not exist")
    try:
        spatial = tuple(load_mask(path).shape[1:])
    except Exception as err:  # any reader failure: the mask is unusable
        raise ValueError(f"mask '{mask}' cannot be read: {err}") from err
    if spatial != image_shape:
        raise ValueError(f"mask '{mask}' has shape {spatial}, the image {image_shape}")


def build_row(root: Path, candidate: Candidate, source: LabelSource, salt: str,
              classes: tuple[str, ...] | None) -> ManifestRow:
    """Label, load and describe one candidate; NoLabel/ValueError (with the reason) when it is unusable."""
    key = _item_key(candidate)
    info = source.lookup(key)
    if classes is not None and info.label not in classes:
        raise NoLabel(f"label '{info.label}' is not in --classes ({', '.join(classes)})")
    try:
        image = load_files(candidate.dicom or [f.path for f in candidate.found], candidate.format)
    except (DicomError, LoadError):
        raise
    except Exception as err:  # nibabel, PIL, gzip and MONAI raise many types for a damaged file; go on
        first_line = (str(err).splitlines() or [""])[0][:200]
        raise ValueError(f"cannot read {candidate.format} (damaged or truncated?): "
                         f"{type(err).__name__}: {first_line}") from err
    if info.mask:
        _check_mask(root, info.mask, tuple(image.shape[1:]))
    notes = list(candidate.notes)
    if candidate.dicom:
        geometry = stack_geometry(candidate.dicom)
        notes += geometry.warnings
        candidate.files = [candidate.found[i].relpath for i, _ in geometry.order]
    patient = info.patient or key.patient_id
    if not patient:
        notes.append(NO_PATIENT)
        patient = f"item:{candidate.relpath}"
    header = candidate.dicom[0] if candidate.dicom else None
    return ManifestRow(
        id=salted_hash(f"item:{candidate.relpath}|{key.series_uid}", salt),
        path=candidate.relpath,
        kind=kind_of(image),
        format=candidate.format,
        label=info.label,
        patient=salted_hash(patient, salt),
        modality=header.modality if header else "",
        shape=tuple(int(n) for n in image.shape),
        spacing=spacing_of(image),
        given_split=info.given_split,
        warnings=tuple(notes),
        mask=info.mask,
        **_pixel_facts(candidate.dicom),
    )


def _pixel_facts(headers: list[DicomFile]) -> dict[str, str]:
    """Transfer syntax, rescale and photometric interpretation of a DICOM item (empty for other formats)."""
    if not headers:
        return {}
    rescales = {pair for h in headers for pair in (h.frame_rescale or [h.rescale or (1.0, 0.0)])}
    rescale = "varies" if len(rescales) > 1 else "{:g},{:g}".format(*rescales.pop())
    return {
        "transfer_syntax": "; ".join(sorted({h.transfer_syntax for h in headers})),
        "rescale": rescale,
        "photometric": "; ".join(sorted({h.photometric for h in headers})),
    }


def _classified(root: Path, path: Path) -> Found | Unreadable:
    """What ``path`` holds, or why it cannot be used (returned, so worker processes can report it)."""
    try:
        return classify(path, root)
    except Unreadable as err:
        return err


def _loaded(root: Path, source: LabelSource, salt: str, classes: tuple[str, ...] | None,
            candidate: Candidate) -> tuple[ManifestRow, list[str]] | str:
    """``build_row`` of ``candidate`` with its files in slice order, or the reason it is rejected."""
    try:
        return build_row(root, candidate, source, salt, classes), candidate.files
    except (NoLabel, DicomError, ValueError, OSError) as err:
        return str(err)


def ingest(root: Path, source: LabelSource, salt: str, classes: tuple[str, ...] | None,
           progress: bool = True, workers: int = 0) -> Result:
    """Walk ``root`` and return the accepted rows, rejected inputs and multi-file item lists; ``workers``
    > 0 reads the files in that many processes (the result is the same)."""
    result = Result()
    found: list[Found] = []
    paths = list(walk(root, source.skip))
    headers = map_in_order(
        functools.partial(_classified, root), paths, workers, chunksize=16, initializer=one_torch_thread
    )
    for path, outcome in zip(paths, tqdm(headers, total=len(paths), desc="reading headers", unit="file",
                                         disable=not progress), strict=True):
        if isinstance(outcome, Unreadable):
            result.rejected.append((path.relative_to(root).as_posix(), str(outcome)))
        else:
            found.append(outcome)
    dicom = []
    for item in (f for f in found if f.dicom is not None):
        try:
            check_stackable([item.dicom])
            dicom.append(item)
        except DicomError as err:
            result.rejected.append((item.relpath, str(err)))
    candidates = [Candidate(f.relpath, f.format, [f]) for f in found if f.dicom is None]
    candidates += group_dicom(dicom)
    candidates.sort(key=lambda c: c.relpath)
    load = functools.partial(_loaded, root, source, salt, classes)
    rows = map_in_order(load, candidates, workers, initializer=one_torch_thread)
    for candidate, outcome in zip(candidates, tqdm(rows, total=len(candidates), desc="loading", unit="item",
                                                   disable=not progress), strict=True):
        if isinstance(outcome, str):
            result.rejected.append((candidate.relpath, outcome))
            continue
        row, files = outcome
        result.rows.append(row)
        if len(candidate.found) > 1:
            result.files[row.id] = files
    result.rejected += source.missing(root)
    result.rows.sort(key=lambda r: (r.path, r.id))
    result.rejected.sort()
    return result


DESCRIPTION = (
    "Find DICOM (series, multi-frame, enhanced; any common transfer syntax), NIfTI (.nii, .nii.gz) and 2D "
    "images (PNG, JPEG, BMP, TIFF) under --input by their content, label them and write OUTPUT/manifest.csv "
    "(accepted items), OUTPUT/rejected.csv (path, reason) and OUTPUT/ingest.json (input root and DICOM "
    "series file lists for later stages). Labels come from, in this order: --labels, INPUT/labels.csv, "
    "HAM10000_metadata.csv (HAM10000 layout, lesion_id is the patient), Training/ and Testing/ class folders "
    "(Kaggle Brain Tumor MRI, kept as given_split), or INPUT/<class>/ folders. Input files are never "
    "modified; hidden files and folders are skipped. Exit status: 0 when at least one item is accepted, 2 "
    "when none is (or on a usage error), 1 with --strict when anything is rejected."
)
LABELS_HELP = (
    "labels CSV: a 'label' column keyed by 'path' (file or series folder, relative to --input) or by "
    "'series_uid' / 'study_uid' / 'patient_id'; optional columns 'patient_id' (raw id, hashed), 'mask' "
    "(mask file relative to --input; attached to its image, not ingested itself) and 'given_split'. "
    "Default: INPUT/labels.csv if present"
)
SALT_HELP = (
    f"secret salt for the patient and item hashes; default: ${SALT_ENV}, else the public demo salt "
    f"'{DEMO_SALT}', which is fine for the synthetic demo only: real data needs its own secret salt"
)


def build_parser() -> argparse.ArgumentParser:
    """The ``ingest`` command line."""
    parser = argparse.ArgumentParser(prog="python -m pipeline ingest", description=DESCRIPTION)
    parser.add_argument("--input", required=True, type=Path, help="folder to search (recursively)")
    parser.add_argument("--output", required=True, type=Path,
                        help="folder for the outputs; must not be the input folder or inside it")
    parser.add_argument("--labels", type=Path, default=None, help=LABELS_HELP)
    parser.add_argument("--classes", default=None,
                        help="comma-separated class names to accept (e.g. glioma,meningioma,notumor,"
                        "pituitary); items with any other label are rejected. Default: every label found")
    parser.add_argument("--salt", default=None, help=SALT_HELP)
    parser.add_argument("--strict", action="store_true", help="exit 1 if any input is rejected")
    parser.add_argument("--workers", type=int, default=0,
                        help="read the files in this many processes (default 0: in this process); the "
                        "outputs are the same")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    return parser


def _summary(layout: str, result: Result, output: Path) -> str:
    """The one-line summary: layout, accepted counts per class, rejected count."""
    counts = Counter(row.label for row in result.rows)
    per_class = ", ".join(f"{label} {n}" for label, n in sorted(counts.items()))
    return (f"ingest: layout {layout}: {len(result.rows)} accepted ({per_class or 'none'}), "
            f"{len(result.rejected)} rejected -> {output / MANIFEST_NAME}")


def _relative_root(root: Path, output: Path) -> str:
    """``root`` relative to ``output`` when possible (keeps the outputs movable with the data)."""
    try:
        return Path(os.path.relpath(root, output)).as_posix()
    except ValueError:  # another drive on Windows
        return root.as_posix()


def main(argv: list[str] | None = None) -> int:
    """Run ingest; returns the exit status."""
    args = build_parser().parse_args(argv)
    root, output = args.input.resolve(), args.output.resolve()
    if not root.is_dir():
        print(f"ingest: error: --input {args.input} is not a folder", file=sys.stderr)
        return 2
    if output == root or output.is_relative_to(root):
        print(f"ingest: error: --output {args.output} is inside --input {args.input}; choose a folder "
              "outside it (ingest never writes into the input)", file=sys.stderr)
        return 2
    if args.workers < 0:
        print(f"ingest: error: --workers must be >= 0, got {args.workers}", file=sys.stderr)
        return 2
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip()) if args.classes else None
    salt, demo_salt = resolve_salt(args.salt)
    if demo_salt:
        print(f"ingest: warning: using the public demo salt; set --salt or {SALT_ENV} to a secret for "
              "real data", file=sys.stderr)
    try:
        source = detect_layout(root, args.labels.resolve() if args.labels else None)
    except ValueError as err:
        print(f"ingest: error: {err}", file=sys.stderr)
        return 2
    result = ingest(root, source, salt, classes, progress=not args.no_progress, workers=args.workers)
    info = {"input_root": _relative_root(root, output), "layout": source.name, "demo_salt": demo_salt,
            "classes": sorted({row.label for row in result.rows}), "files": result.files}
    write_outputs(output, result.rows, result.rejected, info)
    print(_summary(source.name, result, output))
    if not result.rows:
        print(f"ingest: error: no usable image under {args.input}; see {output / REJECTED_NAME} for why",
              file=sys.stderr)
        return 2
    if args.strict and result.rejected:
        print(f"ingest: error: --strict and {len(result.rejected)} inputs rejected (see "
              f"{output / REJECTED_NAME})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
