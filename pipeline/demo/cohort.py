"""The built-in demo cohort: synthetic head MRI (DICOM series and NIfTI) in four tumour classes.

``python -m pipeline demo-data --output DIR [--cases N] [--seed S]`` writes::

    DIR/labels.csv                    path,label,patient_id,mask (paths relative to DIR)
    DIR/dicom/<case>/IM0001.dcm ...   one MR series per folder (no mask)
    DIR/nifti/<case>.nii.gz           int16 NIfTI-1, RAS affine
    DIR/masks/<case>_mask.nii.gz      uint8 lesion mask for every NIfTI case (all zero for notumor)
    DIR/.hdkd-demo.json               marker: generator, seed, cases and every file written

Scans cycle through the classes (glioma, meningioma, pituitary, notumor); in blocks of four they
alternate between DICOM and NIfTI (cases 0-3 DICOM, 4-7 NIfTI, ...), and ``cases // 6`` patients
have a second session (a DICOM scan and a NIfTI scan of the same head and tumour, with another
pose/grid/intensity scale), so patient grouping matters. Every lesion is drawn so that it covers the
5 axial slices nearest the volume's centre (>= 8 voxels each; :func:`phantom.central_slices`), so
central-slice selection finds it in DICOM series, which carry no mask.

Output is deterministic for a seed: fixed UIDs (derived from the seed), dates and implementation
version in DICOM, NIfTI gzipped with mtime 0 and no file name (byte-identical for one zlib build;
the decompressed bytes are identical everywhere).

A DIR that is not empty is only written to if it holds a previous demo cohort: the marker lists
every file the generator wrote (it is updated before each case's files are written, so an
interrupted run is recognised too); those files are removed first. Any other file or folder in DIR
makes the command refuse, so user data is never overwritten.
"""

from __future__ import annotations

import argparse
import csv
import functools
import gzip
import json
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from tqdm import tqdm

from pipeline.data.parallel import map_in_order
from pipeline.demo import phantom
from pipeline.demo.dicom_writer import PatientInfo, SeriesInfo, write_series

MARKER = ".hdkd-demo.json"
LABELS = "labels.csv"
LABEL_COLUMNS = ("path", "label", "patient_id", "mask")
GENERATOR = "pipeline.demo.cohort"
FORMAT_VERSION = 1
MIN_CASES = 4
SESSION_ATTEMPTS = 20
_SYLLABLES = ("zor", "quil", "vex", "brom", "thal", "wyn", "jask", "oru", "pell", "dra", "mirv", "kesh",
              "ulm", "tav", "yss", "gorv", "nax", "fen", "lio", "sabr", "quen", "zim", "orth", "byl")
_CODE_CHARS = "ACDEFGHJKLMNPQRTUVWXYZ2346789"


@dataclass(frozen=True)
class ScanPlan:
    """One scan of the cohort: case name, class, patient index, session (0/1) and format."""

    case: str
    label: str
    patient: int
    session: int
    fmt: str  # "dicom" or "nifti"


@dataclass(frozen=True)
class CaseRecord:
    """A written scan: its labels.csv row and its format."""

    path: str
    label: str
    patient_id: str
    mask: str
    fmt: str


def plan_cohort(cases: int) -> list[ScanPlan]:
    """Classes, patients, sessions and formats of a cohort of ``cases`` scans (see the module doc)."""
    if cases < MIN_CASES:
        raise ValueError(f"--cases must be at least {MIN_CASES} (one scan per class), got {cases}")
    repeats = cases // 6
    patient_of: dict[int, tuple[int, int]] = {}
    next_patient = 0
    for index in range(cases):
        if index in patient_of:
            continue
        patient_of[index] = (next_patient, 0)
        if repeats and (index // 4) % 2 == 0 and index + 4 < cases:
            patient_of[index + 4] = (next_patient, 1)
            repeats -= 1
        next_patient += 1
    return [
        ScanPlan(f"case{index:03d}", phantom.CLASSES[index % 4], *patient_of[index],
                 "dicom" if (index // 4) % 2 == 0 else "nifti")
        for index in range(cases)
    ]


def _code(rng: np.random.Generator, prefix: str, length: int) -> str:
    return prefix + "".join(rng.choice(list(_CODE_CHARS), length))


def _identities(seed: int, patients: int) -> list[PatientInfo]:
    """Made-up, distinctive and unique names, IDs and birth dates for every patient."""
    rng = np.random.default_rng([seed, 0])
    people: list[PatientInfo] = []
    seen: set[str] = set()
    while len(people) < patients:
        family = "".join(rng.choice(_SYLLABLES, 3)).capitalize()
        given = "".join(rng.choice(_SYLLABLES, 3)).capitalize()
        patient_id = _code(rng, "DMO", 7)
        birth = date(1940, 1, 1) + timedelta(days=int(rng.integers(0, 65 * 365)))
        if family in seen or patient_id in seen:
            continue
        seen.update((family, patient_id))
        people.append(PatientInfo(f"{family}^{given}", patient_id, birth.strftime("%Y%m%d"),
                                  str(rng.choice(["F", "M"]))))
    return people


def _series_info(rng: np.random.Generator, seed: int, scan: ScanPlan, first_study: date) -> SeriesInfo:
    """Study/series identity of a DICOM scan; a second session is 2-7 months after the first."""
    study = first_study + timedelta(days=int(rng.integers(60, 210)) if scan.session else 0)
    return SeriesInfo(
        uid_entropy=("hdkd-demo", str(seed), scan.case),
        accession=_code(rng, "ACN", 8),
        study_date=study.strftime("%Y%m%d"),
        study_time=f"{int(rng.integers(8, 18)):02d}{int(rng.integers(0, 60)):02d}00",
        series_number=int(rng.integers(2, 9)),
        rescale_slope=round(float(rng.uniform(0.25, 1.6)), 4),
        rescale_intercept=round(float(rng.uniform(-30.0, 0.0)), 2),
    )


def _render_scan(
    seed: int, index: int, anatomy: phantom.Anatomy, lesion: phantom.Lesion | None
) -> tuple[phantom.Session, np.ndarray, np.ndarray, np.random.Generator]:
    """Draw sessions until the lesion covers the central slices; the image, mask and scan rng."""
    rng = np.random.default_rng([seed, 2, index])
    for _ in range(SESSION_ATTEMPTS):
        session = phantom.sample_session(rng, anatomy, lesion)
        image, mask = phantom.render(anatomy, lesion, session, rng)
        if lesion is None or phantom.lesion_covers_centre(mask):
            return session, image, mask, rng
    raise RuntimeError(f"scan {index}: no session in {SESSION_ATTEMPTS} draws shows the lesion in the "
                       "central slices")


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """NIfTI-1 (sform = qform = scanner RAS, mm) gzipped with mtime 0 and no file name: reproducible bytes."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = b"HDKD synthetic demo phantom"
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=1, mtime=0))


class _Marker:
    """The marker file: what the generator wrote, rewritten before each case's files appear."""

    def __init__(self, root: Path, seed: int, cases: int) -> None:
        self.path = root / MARKER
        self.content = {"generator": GENERATOR, "format_version": FORMAT_VERSION, "seed": seed,
                        "cases": cases, "complete": False, "files": []}
        self._save()

    def add(self, files: list[str], complete: bool = False) -> None:
        self.content["files"] = sorted({*self.content["files"], *files})
        self.content["complete"] = complete
        self._save()

    def _save(self) -> None:
        self.path.write_text(json.dumps(self.content, indent=1, sort_keys=True) + "\n")


def _folders(listed: set[str]) -> set[str]:
    """The folders (relative) that hold the ``listed`` files."""
    return {parent.as_posix() for name in listed for parent in Path(name).parents if parent != Path(".")}


def _unlisted(root: Path, listed: set[str]) -> list[str]:
    """Entries under ``root`` (relative paths) that are neither the marker, a ``listed`` file nor a folder
    of one: what the generator did not write."""
    folders = _folders(listed)
    return sorted(
        relative for path in root.rglob("*")
        if (relative := path.relative_to(root).as_posix()) != MARKER
        and relative not in (folders if path.is_dir() and not path.is_symlink() else listed)
    )


def is_demo_cohort(root: Path) -> bool:
    """True when ``root`` holds a complete demo cohort and nothing else: its marker was written by this
    generator and lists every file under ``root``. A copied marker, a cohort cut short or any added file
    makes it False (then ingest asks for a secret salt: the demo salt is public)."""
    try:
        content = json.loads((root / MARKER).read_text())
        listed = set(content["files"])
        ours = content.get("generator") == GENERATOR and content.get("complete") is True
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return ours and not _unlisted(root, listed)


def clear_previous_output(root: Path) -> None:
    """Make ``root`` an empty folder, deleting a previous demo cohort; refuse anything else.

    Raises FileExistsError if ``root`` is a file, or holds any file or folder the marker does not
    account for (user data); ValueError if the marker cannot be read.
    """
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    if not any(root.iterdir()):
        return
    marker = root / MARKER
    if not marker.is_file():
        raise FileExistsError(f"{root} is not empty and holds no {MARKER} (not a demo cohort): refusing to "
                              "write into it; choose an empty or new folder")
    try:
        content = json.loads(marker.read_text())
        listed = set(content["files"]) if content.get("generator") == GENERATOR else None
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{marker}: unreadable demo marker ({error}); remove the folder by hand") from error
    if listed is None:
        raise FileExistsError(f"{marker} was not written by {GENERATOR}: refusing to write into {root}")
    folders = _folders(listed)
    unknown = _unlisted(root, listed)
    if unknown:
        raise FileExistsError(f"{root} holds a demo cohort plus {len(unknown)} entries it did not write "
                              f"(e.g. {unknown[:3]}): refusing to replace it; move them away first")
    for name in listed:
        (root / name).unlink(missing_ok=True)
    for folder in sorted(folders, key=lambda f: f.count("/"), reverse=True):
        if (root / folder).is_dir():
            (root / folder).rmdir()
    marker.unlink()


def _render_case(
    seed: int, task: tuple[int, ScanPlan, date]
) -> tuple[phantom.Session, np.ndarray, np.ndarray, SeriesInfo | None]:
    """Session, image, mask and (for DICOM) study/series identity of scan ``index``: everything but
    the writing, so that worker processes can draw scans while this one writes them."""
    index, scan, first_study = task
    patient_rng = np.random.default_rng([seed, 1, scan.patient])
    anatomy = phantom.sample_anatomy(patient_rng)
    lesion = phantom.sample_lesion(patient_rng, scan.label, anatomy)
    session, image, mask, rng = _render_scan(seed, index, anatomy, lesion)
    series = _series_info(rng, seed, scan, first_study) if scan.fmt == "dicom" else None
    return session, image, mask, series


def generate_cohort(
    root: Path, cases: int = 48, seed: int = 0, progress: bool = True, workers: int = 0
) -> list[CaseRecord]:
    """Write the demo cohort into ``root`` (see the module doc) and return its labels.csv rows.
    ``workers`` > 0 draws the scans in that many processes (the files are the same)."""
    plan = plan_cohort(cases)
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    clear_previous_output(root)
    marker = _Marker(root, seed, cases)
    people = _identities(seed, max(scan.patient for scan in plan) + 1)
    offsets = np.random.default_rng([seed, 3]).integers(300, size=len(people))
    first_study = [date(2024, 1, 1) + timedelta(days=int(days)) for days in offsets]
    tasks = [(index, scan, first_study[scan.patient]) for index, scan in enumerate(plan)]
    rendered = map_in_order(functools.partial(_render_case, seed), tasks, workers)
    records: list[CaseRecord] = []
    for scan, (session, image, mask, series) in zip(
        plan, tqdm(rendered, total=len(plan), desc="demo cohort", unit="scan", disable=not progress),
        strict=True,
    ):
        person = people[scan.patient]
        if series is not None:
            folder = f"dicom/{scan.case}"
            marker.add([f"{folder}/IM{k + 1:04d}.dcm" for k in range(session.grid.shape[2])])
            write_series(root / folder, image, session.grid, person, series)
            records.append(CaseRecord(folder, scan.label, person.patient_id, "", scan.fmt))
        else:
            path, mask_path = f"nifti/{scan.case}.nii.gz", f"masks/{scan.case}_mask.nii.gz"
            marker.add([path, mask_path])
            affine = session.grid.affine()
            _write_nifti(root / path, np.rint(image).astype(np.int16), affine)
            _write_nifti(root / mask_path, mask, affine)
            records.append(CaseRecord(path, scan.label, person.patient_id, mask_path, scan.fmt))
    marker.add([LABELS])
    with (root / LABELS).open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LABEL_COLUMNS)
        writer.writerows((r.path, r.label, r.patient_id, r.mask) for r in records)
    marker.add([], complete=True)
    return records


def read_labels(root: Path) -> list[dict[str, str]]:
    """The rows of ``root``/labels.csv; ValueError naming the file if its columns are not the contract's."""
    path = root / LABELS
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != LABEL_COLUMNS:
            raise ValueError(f"{path}: columns {reader.fieldnames}, expected {list(LABEL_COLUMNS)}")
        return list(reader)


def demo_identifiers(root: Path | str) -> set[str]:
    """Every fake identifier in a demo cohort, read back from its files (for privacy tests to grep for).

    Patient names (whole "Family^Given" and each part), patient IDs, birth dates and accession
    numbers from every DICOM header, plus the patient_id column of labels.csv.
    """
    root = Path(root)
    found: set[str] = set()
    for row in read_labels(root):
        found.add(row["patient_id"])
        series = root / row["path"]
        if not series.is_dir():
            continue
        for file in sorted(series.glob("*.dcm")):
            ds = pydicom.dcmread(file, stop_before_pixels=True)
            name = str(ds.PatientName)
            found.update((name, *name.split("^"), ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber))
    return {value for value in found if value}


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m pipeline demo-data --output DIR [--cases N] [--seed S]``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline demo-data",
        description="Write the built-in synthetic head-MRI demo cohort (DICOM series + NIfTI with lesion "
                    "masks, labels.csv) in four classes: glioma, meningioma, pituitary, notumor.",
    )
    parser.add_argument("--output", type=Path, required=True,
                        help=f"folder to write; must be new, empty, or a previous demo cohort (recognised by "
                             f"its {MARKER} marker, which lists every file the generator wrote; those files "
                             f"are replaced). Anything else in it makes the command refuse.")
    parser.add_argument("--cases", type=int, default=48,
                        help=f"number of scans (at least {MIN_CASES}; default 48). Classes cycle through "
                             "the four labels; blocks of four scans alternate DICOM / NIfTI (so 8 or more "
                             "give both formats); cases//6 patients get a second scan.")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed (default 0); the same seed and package versions give the same "
                             "bytes")
    parser.add_argument("--workers", type=int, default=0,
                        help="draw the scans in this many processes (default 0: in this process); the "
                             "files are the same")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.cases < MIN_CASES:
        parser.error(f"--cases must be at least {MIN_CASES}, got {args.cases}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    try:
        records = generate_cohort(args.output, args.cases, args.seed, progress=not args.quiet,
                                  workers=args.workers)
    except (FileExistsError, ValueError) as error:
        print(f"demo-data: error: {error}", file=sys.stderr)
        return 1
    per_class = Counter(r.label for r in records)
    formats = Counter(r.fmt for r in records)
    patients = len({r.patient_id for r in records})
    counts = ", ".join(f"{label} {per_class[label]}" for label in phantom.CLASSES)
    print(f"demo-data: wrote {len(records)} scans ({formats['dicom']} DICOM series, {formats['nifti']} "
          f"NIfTI) of {patients} patients to {args.output}: {counts} (seed {args.seed})")
    return 0
