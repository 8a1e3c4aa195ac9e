"""Atomic outputs: a failed write leaves the previous complete file (or none) and no temporary file; a full
disk or a read-only output folder is a one-line error, found before any input is read.

A full disk is stood in for by RLIMIT_FSIZE in the command's process (every write past the limit fails
with EFBIG, "File too large", as ENOSPC would); a read-only folder by `chattr +i`, which holds even for
root (the tests run as root here, so file modes would not)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_ingest_factory import SALT, phantom, write_nifti

from pipeline import atomic
from pipeline.data.slice_table import SLICE_COLUMNS

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def _command(args: list[str], file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` in a new process, with RLIMIT_FSIZE at ``file_size_limit`` bytes."""
    code = "import sys\nfrom pipeline.__main__ import main\n"
    if file_size_limit is not None:
        limit = (file_size_limit, file_size_limit)
        code += f"import resource\nresource.setrlimit(resource.RLIMIT_FSIZE, {limit})\n"
    code += f"sys.exit(main({args!r}))\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    """The command's only stderr line, checked to be an error line without a traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(atomic.TEMP_SUFFIX) or ".tmp." in p.name]


@pytest.fixture
def immutable(tmp_path):
    """Make folders immutable (`chattr +i`: no new entries, even for root); undone afterwards."""
    made: list[Path] = []

    def freeze(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["chattr", "+i", str(folder)], check=True)
        made.append(folder)
        return folder

    yield freeze
    for folder in made:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def _slice_table(path: Path, patients: int = 12) -> Path:
    """A slices.csv of ``patients`` patients per class, two slices each (split reads only the table)."""
    rows = [
        {"slice_id": f"{label}{p}_{k}", "path": f"slices/{label}{p}_{k}.npy", "source_id": f"{label}{p}",
         "patient": f"{label}-p{p}", "label": label, "slice_index": str(k), "given_split": "",
         "modality": "MR"}
        for label in CLASSES for p in range(patients) for k in range(2)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SLICE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_write_that_fails_midway_keeps_the_previous_file(tmp_path):
    target = tmp_path / "table.csv"
    atomic.write_csv(target, ["a", "b"], [[1, 2]])
    before = target.read_bytes()

    def rows():
        yield [3, 4]
        raise RuntimeError("a value that cannot be written")

    with pytest.raises(RuntimeError, match="cannot be written"):
        atomic.write_csv(target, ["a", "b"], rows())
    assert target.read_bytes() == before and _temporaries(tmp_path) == []
    with pytest.raises(TypeError):  # not JSON: the previous file stays, nothing half-written
        atomic.write_json(target.with_suffix(".json"), {"x": object()})
    assert not target.with_suffix(".json").exists() and _temporaries(tmp_path) == []


def test_full_disk_during_split_keeps_the_previous_split_and_says_so_in_one_line(tmp_path):
    slices = _slice_table(tmp_path / "slices" / "slices.csv")
    output = tmp_path / "split" / "split.csv"
    args = ["split", "--slices", str(slices), "--output", str(output), "--val", "0.2", "--test", "0.2"]
    first = _command(args)
    assert first.returncode == 0, first.stderr
    before = output.read_bytes()
    assert len(before) > 2000
    # a new split (other seed) whose table no longer fits: the write fails with "File too large"
    full = _command([*args, "--seed", "7"], file_size_limit=1024)
    assert full.returncode == 2
    line = _one_line_error(full)
    assert str(output) in line and "File too large" in line and "free disk space" in line
    assert output.read_bytes() == before  # the previous complete split, not a cut one
    assert _temporaries(output.parent) == []


def test_full_disk_during_ingest_leaves_no_cut_manifest(tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    for k in range(6):
        volume = phantom((8, 16, 16), seed=k).astype(np.float32)
        write_nifti(root / CLASSES[k % 4] / f"case{k}.nii.gz", volume)
    args = ["ingest", "--input", str(root), "--output", str(out), "--salt", SALT, "--no-progress"]
    assert _command(args).returncode == 0
    assert len((out / "manifest.csv").read_bytes()) > 600
    full = _command(args, file_size_limit=600)
    assert full.returncode == 2
    line = _one_line_error(full)
    assert "manifest.csv" in line and "File too large" in line
    # the old manifest was removed before the new outputs were written: none rather than a cut one
    assert not (out / "manifest.csv").exists() and _temporaries(out) == []
    slices = _command(["slices", "--manifest", str(out / "manifest.csv"), "--output", str(tmp_path / "s")])
    assert slices.returncode == 2 and "run `python -m pipeline ingest` first" in _one_line_error(slices)


@pytest.mark.parametrize("stage", ["ingest", "slices", "split"])
def test_read_only_output_folder_is_one_line_before_any_input_is_read(tmp_path, immutable, stage):
    output = immutable(tmp_path / "locked")
    missing = tmp_path / "no-such-input"  # never read: the output check comes first
    (tmp_path / "in").mkdir()
    args = {
        "ingest": ["ingest", "--input", str(tmp_path / "in"), "--output", str(output), "--salt", SALT],
        "slices": ["slices", "--manifest", str(missing / "manifest.csv"), "--output", str(output)],
        "split": ["split", "--slices", str(missing / "slices.csv"), "--output", str(output / "split.csv")],
    }[stage]
    result = _command(args)
    assert result.returncode == 2
    line = _one_line_error(result)
    assert str(output) in line and "cannot be written" in line and "choose another" in line
    assert not any(output.iterdir())


def test_output_folder_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = _command(["split", "--slices", str(_slice_table(tmp_path / "s.csv")), "--output",
                       str(blocker / "split" / "split.csv")])
    assert result.returncode == 2
    line = _one_line_error(result)
    assert str(blocker / "split") in line and "Not a directory" in line


def test_inference_checks_its_output_folder_before_reading_inputs(tmp_path, immutable):
    from pipeline.bundle.inference import predict
    from pipeline.networks import build_network

    output = immutable(tmp_path / "locked")
    network = build_network("teacher", "demo", num_classes=len(CLASSES))
    with pytest.raises(atomic.OutputError, match=r"--output_dir .*locked cannot be written.*choose another"):
        predict(network, tmp_path / "no-such-input", output, list(CLASSES), 64, 1)
    assert not any(output.iterdir())
