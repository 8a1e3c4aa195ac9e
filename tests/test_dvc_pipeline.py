"""The DVC pipeline end to end, in a temporary copy of the repository, with a tiny profile.

`dvc repro` runs every stage for real (demo cohort -> ingest -> slices -> split -> teacher, baseline,
HDKD training -> evaluation and report -> ONNX export) with MLflow in a SQLite store inside the copy;
then the outputs, metrics, MLflow runs, `dvc status` and privacy are checked. A second test walks the
README's "Bring your own data" flow: data/raw tracked by data.dvc, pushed to a local remote, pulled
into a fresh clone.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pydicom
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("teacher", "baseline", "hdkd")
# Small enough for ~2-3 minutes on 2 CPU cores, big enough that every split holds every class.
TINY = {
    "demo.cases": 16,
    "slices.max_per_volume": 3,
    "model.image_size": 32,
    "teacher.epochs": 1,
    "student.epochs": 1,
    "teacher.batch_size": 8,
    "student.batch_size": 8,
    "student.warmup_epochs": 0,
    "evaluate.n_bootstrap": 50,
    "evaluate.latency_runs": 2,
    "export.calibration_images": 16,
    # a 1-epoch network on 16 cases predicts one class for every image with margins of ~0.01, which int8
    # rounding may flip on every image (0 of 12 agreed after issue 10's loss and optimiser changes): the
    # agreement check is tested on real predictions in test_quantize.py, here only its record
    "export.int8_min_agreement": 0.0,
}

TEXT_SUFFIXES = {".csv", ".json", ".txt", ".yaml", ".lock", ".md", ".log", ".html"}

pytestmark = pytest.mark.slow


def copy_repository(destination: Path) -> Path:
    """The repository's files (tracked and untracked-but-not-ignored) as a new git repository."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    git(destination, "init", "-q")
    commit(destination, "copy of the repository")
    return destination


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "-q", "-m", message)


def set_params(repo: Path, values: dict[str, object]) -> None:
    """Edit params.yaml of ``repo`` (dotted keys)."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in values.items():
        section, name = key.split(".")
        params[section][name] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def dvc(repo: Path, env: dict[str, str], *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a DVC command in ``repo``; fail the test with its output if it fails."""
    done = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def environment(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("HDKD_MLFLOW_PARENT_RUN_ID", "DVC_EXP_NAME"):
        env.pop(name, None)
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlflow.db'}",
        MLFLOW_DISABLE_TELEMETRY="true",
        DVC_NO_ANALYTICS="1",
        OMP_NUM_THREADS="1",
    )
    return env


def demo_identifiers(cohort: Path) -> set[str]:
    """Patient names (and their parts), IDs, birth dates and accession numbers in the demo cohort's
    DICOM headers, plus the raw patient ids of its labels.csv."""
    found: set[str] = set()
    for path in (cohort / "dicom").rglob("*.dcm"):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        name = str(header.get("PatientName", ""))
        found.update({name, *name.split("^")})
        found.update(str(header.get(tag, "")) for tag in ("PatientID", "PatientBirthDate", "AccessionNumber"))
    for line in (cohort / "labels.csv").read_text().splitlines()[1:]:
        found.add(line.split(",")[2])
    return {value for value in found if len(value) >= 6}


def scanned_files(repo: Path) -> list[Path]:
    """Every file the pipeline wrote outside the raw cohort: stage outputs, DVC's lock file, the MLflow
    store and its artifacts."""
    outputs = ["data/ingested", "data/slices", "data/split", "models", "eval", "metrics", "plots", "export"]
    files = [path for folder in outputs for path in (repo / folder).rglob("*") if path.is_file()]
    files += [path for path in (repo / "mlartifacts").rglob("*") if path.is_file()]
    return [*files, repo / "dvc.lock", repo / "mlflow.db"]


def test_dvc_repro_runs_the_whole_pipeline(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "repo")
    set_params(repo, TINY)
    commit(repo, "tiny profile")
    env = environment(repo)
    done = dvc(repo, env, "repro")
    log = done.stdout + done.stderr

    # outputs of every stage
    for model in MODELS:
        assert (repo / "models" / model / "model.pt").is_file()
        assert (repo / "eval" / model / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert (repo / "export" / "hdkd.onnx").stat().st_size > 10_000
    int8 = json.loads((repo / "export" / "hdkd.export.json").read_text())["onnx_int8"]
    assert (repo / "export" / int8["file"]).is_file() and int8["calibration"]["split"] == "train"
    assert 0.0 <= int8["top1_agreement"] <= 1.0 and int8["images"] > 0
    for name in ("comparison.png", "training_curves.png"):
        assert (repo / "plots" / name).read_bytes()[:4] == b"\x89PNG"

    # one metrics file per model, with plausible values; CIs, per-class scores and the CPU latency in a
    # details file that is not a DVC metric (readable `dvc exp show`, latency never "changed")
    shown = json.loads(dvc(repo, env, "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    assert set(files) == {f"metrics/{model}.json" for model in MODELS} | {"metrics/paired.json"}
    for model in MODELS:
        metrics = files[f"metrics/{model}.json"]["data"]
        details = json.loads((repo / "metrics" / "details" / f"{model}_details.json").read_text())
        assert not {"ci95", "per_class", "cpu_latency_ms"} & set(metrics)
        for name in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
            value, ci = metrics[name], details["ci95"][name]
            assert 0.0 <= value <= 1.0
            assert 0.0 <= ci["low"] <= ci["high"] <= 1.0
        assert 0.0 <= metrics["ece"] <= 1.0
        assert set(details["per_class"]) == {"glioma", "meningioma", "pituitary", "notumor"}
        assert {"sensitivity", "specificity", "auc"} <= set(details["per_class"]["glioma"])
        assert metrics["parameters"] > 1000 and metrics["gflops"] > 0 and details["cpu_latency_ms"] > 0
    assert (
        files["metrics/hdkd.json"]["data"]["parameters"]
        > files["metrics/baseline.json"]["data"]["parameters"]
    )
    # the paired HDKD - baseline difference, from the same patient resamples for both models
    paired = json.loads((repo / "metrics" / "details" / "paired_details.json").read_text())
    assert paired["comparison"] == "hdkd - baseline"
    for name in ("balanced_accuracy", "macro_f1", "macro_auc"):
        entry = paired[name]
        headline = files["metrics/paired.json"]["data"][name]
        assert headline == {"difference": entry["difference"], "ci95": entry["ci95"]}
        hdkd, baseline = (files[f"metrics/{model}.json"]["data"][name] for model in ("hdkd", "baseline"))
        assert (entry["hdkd"], entry["baseline"]) == (pytest.approx(hdkd), pytest.approx(baseline))
        assert entry["difference"] == pytest.approx(hdkd - baseline, abs=1e-9)
        low, high = entry["ci95"]["low"], entry["ci95"]["high"]
        assert -1.0 <= low <= high <= 1.0
        assert low - 1e-9 <= entry["mean"] <= high + 1e-9  # equal up to rounding when every resample agrees

    # nothing left to do, and git sees only what DVC tracks for it
    assert json.loads(dvc(repo, env, "status", "dvc.yaml", "--json").stdout) == {}
    changed = [line[3:] for line in git(repo, "status", "--porcelain", "--untracked-files=all").splitlines()]
    expected = {"dvc.lock", "metrics/paired.json", *(f"metrics/{model}.json" for model in MODELS)}
    expected |= {f"metrics/details/{model}_details.json" for model in (*MODELS, "paired")}
    assert [path for path in changed if path not in expected and not path.endswith(".gitignore")] == []

    # exact dependencies: only `distill` reads distill.lambda (its new weights then re-run evaluate
    # and export); where MLflow logs is not a dependency of any stage
    params = (repo / "params.yaml").read_text()
    set_params(repo, {"distill.lambda": 5.0})
    assert set(json.loads(dvc(repo, env, "status", "dvc.yaml", "--json").stdout)) == {"distill"}
    (repo / "params.yaml").write_text(params)
    moved = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'elsewhere.db'}"}
    assert json.loads(dvc(repo, moved, "status", "dvc.yaml", "--json").stdout) == {}

    # plots render offline: no script loaded from the internet
    # (no target: `dvc plots show dvc.yaml` would also try to plot dvc.yaml itself as data)
    dvc(repo, env, "plots", "show", "-o", str(tmp_path / "plots_html"))
    html = (tmp_path / "plots_html" / "index.html").read_text()
    assert html.count("<img") == 11 and "<script" not in html

    # MLflow: one parent run holding the stages' runs and the side-by-side metrics
    db = sqlite3.connect(repo / "mlflow.db")
    tags = db.execute("SELECT run_uuid, key, value FROM tags").fetchall()
    parents = {run for run, key, value in tags if key == "hdkd.run_kind" and value == "pipeline"}
    assert len(parents) == 1
    parent = parents.pop()
    children = {run for run, key, value in tags if key == "mlflow.parentRunId" and value == parent}
    names = {name for (run, name) in db.execute("SELECT run_uuid, name FROM runs") if run in children}
    assert {"teacher", "baseline", "hdkd"} <= names
    assert len(children) >= 6  # three trainings and three evaluations
    side_by_side = {key for (key,) in db.execute("SELECT key FROM metrics WHERE run_uuid = ?", (parent,))}
    assert {f"{model}.balanced_accuracy" for model in MODELS} <= side_by_side
    assert {"paired.balanced_accuracy.difference", "paired.macro_f1.ci95.low"} <= side_by_side
    # each run names its DVC stage; the export registered the HDKD student, tagged with its training run
    stages = {value for run, key, value in tags if key == "dvc.stage" and run in children}
    assert stages == {"train_teacher", "train_student", "distill", "evaluate", "export"}
    hdkd_run = next(run for (run, name) in db.execute("SELECT run_uuid, name FROM runs") if name == "hdkd")
    # provenance: the data the HDKD run read, as DVC recorded it
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    hdkd_tags = {key: value for run, key, value in tags if run == hdkd_run}
    assert hdkd_tags["dvc.md5.data/split"] == lock["split"]["outs"][0]["md5"]
    assert len(hdkd_tags["mlflow.source.git.commit"]) == 40
    ((version, version_run),) = db.execute(
        "SELECT version, run_id FROM model_versions WHERE name = 'hdkd-student'"
    ).fetchall()
    version_tags = dict(
        db.execute("SELECT key, value FROM model_version_tags WHERE name = 'hdkd-student'").fetchall()
    )
    assert version == 1 and version_run in children and version_tags["hdkd.training_run_id"] == hdkd_run
    hdkd_metrics = files["metrics/hdkd.json"]["data"]
    assert float(version_tags["test_balanced_accuracy"]) == hdkd_metrics["balanced_accuracy"]
    db.close()

    # privacy: no identifier of the raw DICOM headers in any output, log or MLflow record
    identifiers = demo_identifiers(repo / "data" / "demo")
    assert len(identifiers) > 10
    for path in scanned_files(repo):
        content = path.read_bytes()
        # all-digit values (birth dates) only in text files: binary weights could hold 8 digits by chance
        text = path.suffix in TEXT_SUFFIXES
        leaked = [
            value for value in identifiers if (text or not value.isdigit()) and value.encode() in content
        ]
        assert not leaked, f"{path.relative_to(repo)} holds patient identifiers {leaked[:3]}"
    assert not [value for value in identifiers if value in log]


def test_bring_your_own_data_flow(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "repo")
    env = environment(repo)
    cohort = subprocess.run(
        ["python", "-m", "pipeline", "demo-data", "--output", "data/raw", "--cases", "8", "--quiet"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert cohort.returncode == 0, cohort.stderr
    dvc(repo, env, "add", "data/raw")
    assert "path: data/raw" in (repo / "data.dvc").read_text()
    set_params(repo, {"data.raw_dir": "data/raw", "demo.cases": 8, "slices.max_per_volume": 2})
    dvc(repo, env, "repro", "split")
    manifest = (repo / "data" / "ingested" / "manifest.csv").read_text()
    assert manifest.count("\n") == 9  # header + the 8 scans of data/raw
    assert (repo / "data" / "split" / "split.csv").is_file()

    remote = tmp_path / "remote"
    dvc(repo, env, "remote", "add", "-d", "local", str(remote))
    dvc(repo, env, "push")
    commit(repo, "my cohort")

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    dvc(clone, env, "pull", "data.dvc")
    assert sorted(p.name for p in (clone / "data" / "raw").iterdir()) == sorted(
        p.name for p in (repo / "data" / "raw").iterdir()
    )
    assert json.loads(dvc(clone, env, "status", "data.dvc", "--json").stdout) == {}
    assert json.loads(dvc(clone, env, "status", "--cloud", "data.dvc", "--json").stdout) == {}


def test_missing_raw_dir_stops_ingest_with_how_to_bring_data(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "repo")
    params = repo / "params.yaml"
    set_params(repo, {"data.raw_dir": "data/raw"})
    done = subprocess.run(
        ["python", "-m", "pipeline.stages", "exec", "--params", str(params), "--raw-dir", "--", "true"],
        cwd=repo,
        env=environment(repo),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "data.raw_dir = 'data/raw'" in done.stderr and "dvc add data/raw" in done.stderr
