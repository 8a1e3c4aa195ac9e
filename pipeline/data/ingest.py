"""`python -m pipeline ingest`: find the images under a folder, label them, write manifest and rejected CSVs.

The walk (:mod:`pipeline.data.discovery`) recognises files by content and decodes each DICOM file's pixel
data once; files that do not decode and copies of one SOP instance are rejected one by one
(:func:`screen_dicom`) before the rest are grouped into series (split by acquisition where needed) and
stacked along the slice normal (:mod:`pipeline.data.dicom`); every item is read once through MONAI
(:mod:`pipeline.data.loaders`) to record its shape and spacing and to reject unusable data; labels come from
the detected layout (:mod:`pipeline.data.labels`). Input files are only ever read. Patient identifiers are
replaced by salted hashes (:mod:`pipeline.data.privacy`) and never printed.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from pipeline.atomic import OutputError, check_writable
from pipeline.data.dicom import ACQUISITION_TAGS, DicomError, DicomFile, check_stackable, stack_geometry
from pipeline.data.discovery import OUTSIDE_INPUT, Found, Unreadable, classify, inside, printable, walk
from pipeline.data.labels import ItemKey, LabelSource, NoLabel, detect_layout
from pipeline.data.limits import MAX_ITEM_BYTES
from pipeline.data.loaders import header_notes, kind_of, load_mask, read_item, spacing_of
from pipeline.data.manifest import MANIFEST_NAME, REJECTED_NAME, ManifestRow, write_outputs
from pipeline.data.parallel import map_in_order, one_torch_thread
from pipeline.data.privacy import DEMO_SALT, SALT_ENV, resolve_salt, salted_hash
from pipeline.demo.cohort import is_demo_cohort

NO_PATIENT = "no patient id: the item counts as its own patient"
SEVERAL_LABELS = "patient has items labelled"  # + the labels: a manifest warning
SEG_UNUSED = "DICOM SEG {path} not used as the mask"
SEG_ALONE = ("DICOM SEG without its image: the series it references is not among the accepted inputs "
             "(a SEG is used as the mask of that series, never as an image)")


@dataclass
class Candidate:
    """Files that make one item, before labelling and loading."""

    relpath: str
    format: str
    found: list[Found]
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # slice order, once known
    part: str = ""  # which acquisition of a series split in several (e.g. "EchoNumbers=2"), else empty
    mask: str = ""  # a DICOM SEG referencing the candidate's series (relative path), else empty

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
    return ""


def screen_dicom(found: list[Found]) -> tuple[list[Found], list[Found], list[tuple[str, str]], Counter[str]]:
    """The DICOM files among ``found``, each checked on its own before series are assembled: (images, one
    file per SOP instance; DICOM SEGs; rejected rows; files rejected per SeriesInstanceUID). A file is
    rejected for no pixel data, pixel data that does not decode, or being a copy of a kept instance."""
    images, segmentations, rejected, dropped = [], [], [], Counter[str]()
    for item in (f for f in found if f.dicom is not None):
        if item.dicom.segmentation:
            segmentations.append(item)
            continue
        try:
            check_stackable([item.dicom])
            images.append(item)
        except DicomError as err:
            rejected.append((item.relpath, str(err)))
            dropped[item.dicom.series_uid] += 1
    images, duplicates = deduplicate(images)
    return images, segmentations, rejected + duplicates, dropped


def deduplicate(found: list[Found]) -> tuple[list[Found], list[tuple[str, str]]]:
    """One file per SOPInstanceUID (files whose pixel data decodes only): the shortest path, then the first
    in path order; the other copies as rejected rows ``duplicate of <kept path>``. Input order is kept."""
    copies: dict[str, list[Found]] = defaultdict(list)
    for item in found:
        copies[item.dicom.sop_uid or f"file:{item.relpath}"].append(item)  # type: ignore[union-attr]
    rejected = []
    for same in copies.values():
        kept, *others = sorted(same, key=lambda f: (len(f.relpath), f.relpath))
        rejected += [(o.relpath, f"duplicate of {kept.relpath} (same SOPInstanceUID)") for o in others]
    dropped = {path for path, _ in rejected}
    return [f for f in found if f.relpath not in dropped], rejected


def _has_duplicate_positions(members: list[Found]) -> bool:
    """True when two of the single-frame files sit at the same slice position."""
    try:
        stack_geometry([m.dicom for m in members])  # type: ignore[misc]
    except DicomError:
        return True
    return False


def _acquisitions(members: list[Found]) -> tuple[str, dict[str, list[Found]]] | None:
    """Files of one series at repeated positions split by the first of ``ACQUISITION_TAGS`` that leaves
    each part a stack of several files without repeats: (tag, {value: files}); None when no tag does."""
    for tag in ACQUISITION_TAGS:
        parts: dict[str, list[Found]] = defaultdict(list)
        for member in members:
            parts[dict(member.dicom.acquisition).get(tag, "")].append(member)  # type: ignore[union-attr]
        if len(parts) > 1 and all(len(p) > 1 and not _has_duplicate_positions(p) for p in parts.values()):
            return tag, dict(sorted(parts.items()))
    return None


def _stacks(members: list[Found], folder: str) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """A regular single-frame series as one candidate, or one per acquisition when several share its slice
    positions; every file rejected with the reason when nothing tells the acquisitions apart."""
    if not _has_duplicate_positions(members):
        return [Candidate(folder, "dicom", members)], []
    split = _acquisitions(members)
    if split is None:
        reason = (f"its series has files at the same slice position and no tag "
                  f"({', '.join(ACQUISITION_TAGS)}) tells the acquisitions apart: put each acquisition in "
                  "its own series folder")
        return [], [(m.relpath, reason) for m in members]
    tag, parts = split
    note = f"one of {len(parts)} acquisitions at the same slice positions in its series, told apart by {tag}"
    return [Candidate(folder, "dicom", part, [f"{note}: {tag} {value}"], part=f"{tag}={value}")
            for value, part in parts.items()], []


def _largest_size(members: list[Found]) -> tuple[list[Found], list[tuple[str, str]]]:
    """Single-frame files of one series that share the most common matrix size (rows, columns, samples;
    the larger size on a tie), and the others as rejected rows: a series mixing image sizes keeps its
    largest consistent group, in ingest and inference alike."""
    groups: dict[tuple[int, int, int], list[Found]] = defaultdict(list)
    for member in members:
        header: DicomFile = member.dicom  # type: ignore[assignment]
        groups[(header.rows, header.columns, header.samples)].append(member)
    if len(groups) < 2:
        return members, []
    size, kept = max(groups.items(), key=lambda pair: (len(pair[1]), pair[0]))
    reason = "{}x{} pixels while {} file(s) of its series have {}x{}: only that group is used"
    return kept, [(m.relpath, reason.format(*other[:2], len(kept), *size[:2]))
                  for other, group in groups.items() if group is not kept for m in group]


def group_dicom(found: list[Found], dropped: Counter[str] | None = None
                ) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """DICOM files as items: one per multi-frame file, one per regular single-frame series (one per
    acquisition when several share a series), else one per file; and the files rejected while grouping.
    ``dropped`` counts per SeriesInstanceUID the files already rejected (noted on what is left)."""
    series: dict[str, list[Found]] = defaultdict(list)
    for item in found:
        series[item.dicom.series_uid or f"file:{item.relpath}"].append(item)  # type: ignore[union-attr]
    candidates: list[Candidate] = []
    rejected: list[tuple[str, str]] = []
    dropped = Counter(dropped or {})
    for uid, members in series.items():
        single = [m for m in members if m.dicom.frames == 1]  # type: ignore[union-attr]
        candidates += [Candidate(m.relpath, "dicom", [m]) for m in members if m.dicom.frames > 1]  # type: ignore[union-attr]
        single, refused = _largest_size(single)
        rejected += refused
        dropped[uid] += len(refused)
        if len(single) > 1:
            why_not = _regular_stack([m.dicom for m in single])  # type: ignore[misc]
            if not why_not:
                stacks, refused = _stacks(single, _folder_of(single))
                if dropped[uid]:
                    for stack in stacks:
                        stack.notes.append(f"{dropped[uid]} file(s) of its series rejected (see "
                                           "rejected.csv); the volume is built from the rest")
                candidates += stacks
                rejected += refused
                continue
            note = f"its series is not one 3D stack ({why_not}): each file taken as a 2D image"
            candidates += [Candidate(m.relpath, "dicom", [m], [note]) for m in single]
        elif single:
            candidates.append(Candidate(single[0].relpath, "dicom", single))
    return candidates, rejected


def _patient_of(item: Found) -> str:
    """The raw PatientID of a DICOM file, or the file itself when it has none (compared, never written)."""
    return item.dicom.patient_id or f"file:{item.relpath}"  # type: ignore[union-attr]


def _same_pixels_notes(candidates: list[Candidate]) -> None:
    """Add a warning to candidates holding pixel data identical to a file of another patient (the same image
    under two patients would sit on both sides of a patient-level split)."""
    owners: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for candidate in candidates:
        for item in candidate.found:
            if item.dicom is not None and item.dicom.pixel_digest:
                owners[item.dicom.pixel_digest].append((_patient_of(item), item.relpath))
    for candidate in candidates:
        others = sorted({path for item in candidate.found
                         if item.dicom is not None and item.dicom.pixel_digest
                         for patient, path in owners[item.dicom.pixel_digest]
                         if patient != _patient_of(item)})
        if others:
            candidate.notes.append(f"pixel data identical to {', '.join(others[:3])} of another patient (a "
                                   "leak between splits if both are used): check for a re-identified copy")


def several_labels_notes(rows: list[ManifestRow]) -> list[ManifestRow]:
    """``rows`` with a :data:`SEVERAL_LABELS` warning on every item of a patient whose items carry
    different labels (a labelling error, or a patient whose classes a split cannot keep apart)."""
    labels: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if NO_PATIENT not in row.warnings:
            labels[row.patient].add(row.label)
    return [replace(row, warnings=(*row.warnings, f"{SEVERAL_LABELS} {', '.join(sorted(found))}: check the "
                                                   "labels"))
            if len(found := labels.get(row.patient, set())) > 1 and NO_PATIENT not in row.warnings else row
            for row in rows]


def _segmentations(found: list[Found]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """DICOM SEG files as {referenced SeriesInstanceUID: SEG path} (first SEG by path for each series) and
    the SEGs refused (no referenced series, or a second SEG for one series)."""
    masks: dict[str, str] = {}
    rejected = []
    for item in sorted(found, key=lambda f: f.relpath):
        references = item.dicom.referenced_series  # type: ignore[union-attr]
        if len(references) != 1:
            rejected.append((item.relpath, f"DICOM SEG referencing {len(references)} series: a SEG is used "
                             "as the mask of exactly one series"))
        elif references[0] in masks:
            rejected.append((item.relpath, f"a second DICOM SEG for one series; {masks[references[0]]} is "
                             "used"))
        else:
            masks[references[0]] = item.relpath
    return masks, rejected


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
    if not inside(path, root):
        raise ValueError(f"mask '{mask}' named in the labels is {OUTSIDE_INPUT}")
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
    image = read_item(candidate.dicom or [f.path for f in candidate.found], candidate.format)
    mask = info.mask or candidate.mask
    notes = list(candidate.notes)
    try:
        if mask:
            _check_mask(root, mask, tuple(image.shape[1:]))
    except ValueError as err:
        if mask != candidate.mask:
            raise  # a mask the labels name must fit
        notes.append(f"{SEG_UNUSED.format(path=mask)}: {err}")  # the image is good without its SEG
        mask = ""
    if not candidate.dicom:
        notes += header_notes(candidate.found[0].path, candidate.format, image)
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
        id=salted_hash(f"item:{candidate.relpath}|{key.series_uid}" + (f"|{candidate.part}" if candidate.part
                                                                       else ""), salt),
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
        mask=mask,
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


def _classified(root: Path, max_item_bytes: int, path: Path) -> Found | Unreadable:
    """What ``path`` holds, or why it cannot be used (returned, so worker processes can report it)."""
    try:
        return classify(path, root, max_item_bytes)
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
           progress: bool = True, workers: int = 0, max_item_bytes: int = MAX_ITEM_BYTES) -> Result:
    """Walk ``root`` and return the accepted rows, rejected inputs (one row per file) and multi-file item
    lists; ``workers`` > 0 reads the files in that many processes (the result is the same).

    Order of checks: every file is classified by content and DICOM pixel data decoded once (a file that
    does not decode, or whose header claims a decoded size above ``max_item_bytes``, is rejected on its
    own); DICOM copies of one SOP instance are reduced to one; series are assembled from what is left."""
    result = Result()
    found: list[Found] = []
    paths = list(walk(root, source.skip))
    headers = map_in_order(
        functools.partial(_classified, root, max_item_bytes), paths, workers, chunksize=16,
        initializer=one_torch_thread)
    for path, outcome in zip(paths, tqdm(headers, total=len(paths), desc="reading headers", unit="file",
                                         disable=not progress), strict=True):
        if isinstance(outcome, Unreadable):
            result.rejected.append((printable(path.relative_to(root).as_posix()), str(outcome)))
        else:
            found.append(outcome)
    dicom, segmentations, refused, dropped = screen_dicom(found)
    result.rejected += refused
    candidates = [Candidate(f.relpath, f.format, [f]) for f in found if f.dicom is None]
    series, refused = group_dicom(dicom, dropped)
    candidates += series
    result.rejected += refused
    _same_pixels_notes(candidates)
    masks, refused = _segmentations(segmentations)
    result.rejected += refused
    for candidate in candidates:
        if candidate.dicom and (len(candidate.found) > 1 or candidate.dicom[0].frames > 1):
            candidate.mask = masks.get(candidate.dicom[0].series_uid, "")
    candidates.sort(key=lambda c: c.relpath)
    load = functools.partial(_loaded, root, source, salt, classes)
    rows = map_in_order(load, candidates, workers, initializer=one_torch_thread)
    for candidate, outcome in zip(candidates, tqdm(rows, total=len(candidates), desc="loading", unit="item",
                                                   disable=not progress), strict=True):
        if isinstance(outcome, str):
            result.rejected += [(f.relpath, outcome) for f in candidate.found]
            continue
        row, files = outcome
        result.rows.append(row)
        if len(candidate.found) > 1:
            result.files[row.id] = files
    used = {row.mask for row in result.rows}
    unfit = {w.split(": ", 1)[0]: w for row in result.rows for w in row.warnings
             if w.startswith("DICOM SEG ")}
    result.rejected += [(path, unfit.get(SEG_UNUSED.format(path=path), SEG_ALONE))
                        for path in masks.values() if path not in used]
    result.rejected += source.missing(root)
    result.rows = several_labels_notes(result.rows)
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
    "modified; hidden files and folders are skipped. Every other file is either part of an accepted item or "
    "has its own row in rejected.csv: DICOM files whose pixel data does not decode are rejected one by one "
    "before series are assembled, copies of one SOPInstanceUID are kept once, two acquisitions in one series "
    "are split by AcquisitionNumber / EchoNumbers / TemporalPositionIdentifier / TriggerTime, and a DICOM "
    "SEG becomes the mask of the series it references. Links that leave --input, file names that are not "
    "UTF-8 and headers claiming more than --max-item-bytes are rejected unread. Exit status: 0 when at "
    "least one item is accepted, 2 when none is (or on a usage error), 1 with --strict when anything is "
    "rejected."
)
LABELS_HELP = (
    "labels CSV: a 'label' column keyed by 'path' (file or series folder, relative to --input) or by "
    "'series_uid' / 'study_uid' / 'patient_id'; optional columns 'patient_id' (raw id, hashed), 'mask' "
    "(mask file relative to --input; attached to its image, not ingested itself) and 'given_split'. "
    "Default: INPUT/labels.csv if present"
)
SALT_HELP = (
    f"secret salt for the patient and item hashes; default: ${SALT_ENV}, else the public demo salt "
    f"'{DEMO_SALT}', which is fine for the synthetic demo only: real data needs its own secret salt (ingest "
    "refuses any --input that is not an unchanged demo cohort without one)"
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
    parser.add_argument("--max-item-bytes", type=int, default=MAX_ITEM_BYTES,
                        help="reject an item whose header claims more memory to read (voxels x channels x "
                        "(stored bytes + 16 for its float32 copies)) before reading its data (default "
                        f"{MAX_ITEM_BYTES:,} = 1 GiB)")
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
    try:
        check_writable(output)
    except OutputError as err:
        print(f"ingest: error: {err}", file=sys.stderr)
        return 2
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip()) if args.classes else None
    salt, demo_salt = resolve_salt(args.salt)
    if demo_salt and not is_demo_cohort(root):
        print(f"ingest: error: --input {args.input} is not the synthetic demo cohort and no secret salt "
              f"is set (the demo salt is public, so its hashes can be reversed): set one with --salt or "
              f"{SALT_ENV}, e.g. export {SALT_ENV}=$(python -c 'import secrets; print(secrets.token_hex(16))'"
              "), and keep it private and the same for every run of this cohort", file=sys.stderr)
        return 2
    try:
        source = detect_layout(root, args.labels.resolve() if args.labels else None)
    except ValueError as err:
        print(f"ingest: error: {err}", file=sys.stderr)
        return 2
    if args.max_item_bytes < 1:
        print(f"ingest: error: --max-item-bytes must be >= 1, got {args.max_item_bytes}", file=sys.stderr)
        return 2
    result = ingest(root, source, salt, classes, progress=not args.no_progress, workers=args.workers,
                    max_item_bytes=args.max_item_bytes)
    several = {row.patient for row in result.rows if any(w.startswith(SEVERAL_LABELS) for w in row.warnings)}
    if several:
        print(f"ingest: warning: {len(several)} patients have items with different labels (see the warnings "
              f"column of {output / MANIFEST_NAME})", file=sys.stderr)
    info = {"input_root": _relative_root(root, output), "layout": source.name, "demo_salt": demo_salt,
            "patients_with_several_labels": len(several),
            "classes": sorted({row.label for row in result.rows}), "files": result.files}
    try:
        write_outputs(output, result.rows, result.rejected, info)
    except OutputError as err:
        print(f"ingest: error: {err}", file=sys.stderr)
        return 2
    print(_summary(source.name, result, output))
    if not result.rows:
        print(f"ingest: error: no usable image under {args.input}; see {output / REJECTED_NAME} for why",
              file=sys.stderr)
        return 2
    absent = [name for name in classes or () if name not in info["classes"]]
    if absent:
        unlisted = sorted({m[1] for _, reason in result.rejected
                           if (m := re.match(r"label '(.+)' is not in --classes", reason))})
        print(f"ingest: error: --classes {absent} match no image under {args.input}; labels found: "
              f"{info['classes'] + unlisted} (set data.class_names to the labels of the data)",
              file=sys.stderr)
        return 2
    if args.strict and result.rejected:
        print(f"ingest: error: --strict and {len(result.rejected)} inputs rejected (see "
              f"{output / REJECTED_NAME})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
