"""Data-stage throughput and data-loader wait on the demo cohort.

Prints:
- ingest throughput (items/s) and slice extraction throughput (volumes/s, items/s, slices/s),
  both timed in-process (interpreter start-up and imports excluded);
- the CPU share of ingest spent validating DICOM pixel data before series assembly (each file read
  with and without its pixel data decoded, side by side). Target: at most ~20 % of ingest;
- the CPU share of ingest spent on the hostile-input checks (link confinement and UTF-8 name per file;
  the capped gzip stream pass per .nii.gz, with its header read; header warnings and the near-empty
  foreground check per item), timed on their own over the cohort;
- the share of each training step spent waiting on the DataLoader, with the cached training set
  (``make_dataset``, the training augmentation) and the demo student network, over whole epochs.
  Target: below 10 % of the step time.

Usage (from the repository root, with the package installed or ``PYTHONPATH=.``):
``python benchmarks/data.py [--workdir DIR] [--epochs 3] [--workers 2] [--batch-size 16] [--size 64]
[--threads N] [--slice-workers 0] [--split CSV] [--data-only]``. Without --workdir a temporary folder is
used and removed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from monai.data import DataLoader, set_track_meta
from monai.utils import set_determinism

from pipeline.data import ingest, slices, split
from pipeline.data.datasets import loader_worker_init, make_dataset
from pipeline.data.dicom import read_header
from pipeline.data.discovery import check_gzip_stream, inside, printable, sniff_format, walk
from pipeline.data.limits import MAX_ITEM_BYTES
from pipeline.data.loaders import check_foreground, header_notes, load_item
from pipeline.data.manifest import item_files, read_manifest
from pipeline.data.slices import SliceSettings, extract_slices
from pipeline.data.transforms import train_transforms
from pipeline.demo import cohort as demo
from pipeline.device import cpu_report
from pipeline.networks import build_network

CLASSES = ["glioma", "meningioma", "pituitary", "notumor"]


def _timed(label: str, function, *args, **kwargs):
    """Run ``function``; print and return its result, wall seconds and CPU seconds of this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label}: {wall:.1f} s wall, {cpu:.1f} s CPU (this process)")
    return result, wall, cpu


def prepare(workdir: Path, size: int, slice_workers: int) -> tuple[Path, dict]:
    """Demo cohort -> manifest -> slices -> split; returns the split CSV and the throughput figures.

    Figures per wall second and per CPU second of this process: the CPU figure does not depend on
    what else the machine runs (it misses worker processes, so use it with --slice-workers 0).
    """
    if demo.main(["--output", str(workdir / "demo")]) != 0:
        raise SystemExit("demo-data failed")
    code, ingest_wall, ingest_cpu = _timed(
        "ingest", ingest.main, ["--input", str(workdir / "demo"), "--output", str(workdir / "ingest")]
    )
    if code != 0:
        raise SystemExit("ingest failed")
    plain, checked = validation_cpu(workdir / "demo")
    validation = checked - plain
    items = len(read_manifest(workdir / "ingest" / "manifest.csv"))
    print(f"DICOM headers: {plain:.2f} s CPU; with pixel validation {checked:.2f} s CPU: validation "
          f"{validation:.2f} s = {100 * validation / ingest_cpu:.1f} % of ingest CPU (target <= 20 %); "
          f"ingest {items / ingest_cpu:.2f} items/s (CPU), without validation ~"
          f"{items / (ingest_cpu - validation):.2f}")
    manifest = workdir / "ingest" / "manifest.csv"
    rows = read_manifest(manifest)
    checks = hostile_checks_cpu(workdir / "demo", manifest)
    print(f"hostile-input checks: {checks:.3f} s CPU = {100 * checks / ingest_cpu:.2f} % of ingest CPU")
    summary, slices_wall, slices_cpu = _timed(
        "slices",
        extract_slices,
        manifest,
        workdir / "slices",
        SliceSettings(size=size),
        progress=False,
        workers=slice_workers,
    )
    split.split_slices(workdir / "slices" / slices.SLICES_CSV, workdir / "split.csv", 0.15, 0.15, 0)
    volumes, items = summary["volumes_used"], summary["volumes_used"] + summary["images_used"]
    figures = {}
    for clock, ingest_s, slices_s in (("wall", ingest_wall, slices_wall), ("CPU", ingest_cpu, slices_cpu)):
        figures[f"ingest items/s ({clock})"] = len(rows) / ingest_s
        figures[f"slices volumes/s ({clock})"] = volumes / slices_s
        figures[f"slices items/s ({clock})"] = items / slices_s
        figures[f"slices slices/s ({clock})"] = summary["slices"] / slices_s
    print(
        f"cohort: {len(rows)} manifest items ({sum(r.kind == 'volume' for r in rows)} volumes), "
        f"{summary['slices']} slices, {summary['skipped']} skipped"
    )
    return workdir / "split.csv", figures


def validation_cpu(root: Path) -> tuple[float, float]:
    """CPU seconds to read every DICOM header under ``root`` without and with its pixel data decoded
    (what ingest's per-file validation adds), median of three passes each."""
    files = [path for path in walk(root, set()) if sniff_format(path) == "dicom"]
    timings = {0: [], MAX_ITEM_BYTES: []}
    for _ in range(3):
        for max_item_bytes, runs in timings.items():
            start = time.process_time()
            for path in files:
                read_header(path, max_item_bytes)
            runs.append(time.process_time() - start)
    plain, checked = (sorted(runs)[1] for runs in timings.values())
    return plain, checked


def hostile_checks_cpu(root: Path, manifest: Path) -> float:
    """CPU seconds of the checks ingest runs against hostile inputs, timed alone (median of three passes):
    per file, whether it stays inside ``root`` and has a UTF-8 name; per NIfTI, its header size with the
    capped gzip stream pass (:func:`check_gzip_stream`); per manifest item, its header warnings
    (:func:`header_notes`) and, for 2D images, the foreground check (loading is not timed)."""
    files = list(walk(root, set()))
    nifti = [path for path in files if sniff_format(path) == "nifti"]
    items = [(row, load_item(manifest, row), item_files(manifest, row)[0]) for row in read_manifest(manifest)]
    runs = []
    for _ in range(3):
        start = time.process_time()
        for path in files:
            inside(path, root)
            printable(path.relative_to(root).as_posix())
        for path in nifti:
            check_gzip_stream(path)
        for row, image, first_file in items:
            if row.format != "dicom":
                header_notes(first_file, row.format, image)
            if row.kind == "image":
                check_foreground(image)
        runs.append(time.process_time() - start)
    return sorted(runs)[1]


def loader_wait(
    split_csv: Path, epochs: int, workers: int, batch_size: int, size: int
) -> list[tuple[float, float]]:
    """(waiting seconds, step seconds) per epoch for the demo student on the cached training set."""
    set_determinism(seed=0)
    dataset = make_dataset(split_csv, "train", CLASSES, train_transforms(size, 1), num_workers=workers)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        worker_init_fn=loader_worker_init,
        persistent_workers=workers > 0,
    )
    network = build_network("baseline", profile="demo", num_classes=len(CLASSES), image_size=size)
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-3)
    loss_function = torch.nn.CrossEntropyLoss()
    per_epoch = []
    step_cpu, steps = 0.0, 0
    for _ in range(epochs):
        waiting = total = 0.0
        iterator = iter(loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            loaded, cpu = time.perf_counter(), time.process_time()
            optimiser.zero_grad()
            loss = loss_function(network(batch["image"]), batch["label"])
            loss.backward()
            optimiser.step()
            waiting += loaded - start
            total += time.perf_counter() - start
            step_cpu += time.process_time() - cpu
            steps += 1
        per_epoch.append((waiting, total))
    print(f"training step: {1000 * step_cpu / steps:.0f} ms CPU per batch (main process, all its threads)")
    return per_epoch


def augmentation_cpu(split_csv: Path, batch_size: int, size: int) -> float:
    """CPU milliseconds to produce one training batch from the cache (as a loader worker does)."""
    dataset = make_dataset(split_csv, "train", CLASSES, train_transforms(size, 1))
    set_track_meta(False)  # as loader_worker_init does in the workers
    start = time.process_time()
    for index in range(len(dataset)):
        dataset[index]
    set_track_meta(True)
    return 1000 * (time.process_time() - start) * batch_size / len(dataset)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data here (default: temporary)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs timed (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default 16, as published)")
    parser.add_argument("--size", type=int, default=64, help="slice and network input size (default 64)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--slice-workers", type=int, default=0, help="slice extraction processes (default 0)")
    parser.add_argument(
        "--split",
        type=Path,
        default=None,
        help="time only the loader, on this existing split CSV (demo classes)",
    )
    parser.add_argument("--data-only", action="store_true", help="stop after ingest and slices (no loader)")
    args = parser.parse_args()
    print(cpu_report().summary())
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.workdir or Path(temporary)
        split_csv = args.split
        if split_csv is None:
            split_csv, figures = prepare(workdir, args.size, args.slice_workers)
            for name, value in figures.items():
                print(f"{name}: {value:.2f}")
        if args.data_only:
            return
        augment = augmentation_cpu(split_csv, args.batch_size, args.size)
        print(f"augmentation: {augment:.0f} ms CPU per batch in one worker")
        for epoch, (waiting, total) in enumerate(
            loader_wait(split_csv, args.epochs, args.workers, args.batch_size, args.size), 1
        ):
            print(
                f"epoch {epoch}: step {total:.2f} s, waiting on the loader {waiting:.3f} s "
                f"= {100 * waiting / total:.1f} % (target < 10 %)"
            )


if __name__ == "__main__":
    main()
