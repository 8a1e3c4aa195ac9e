"""The stage launcher: several commands per stage, in order, stopping at the first failure; its
garbage-collector tuning applies only to a process of its own."""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.params import load_params
from pipeline.stages.__main__ import main as stages_main
from pipeline.stages.launcher import split_commands, startup_without_gc

ROOT = Path(__file__).resolve().parents[1]


def test_each_double_dash_starts_a_command() -> None:
    assert split_commands(["--", "a", "1", "--", "b"]) == [["a", "1"], ["b"]]
    assert split_commands(["a", "1", "--", "b", "-x"]) == [["a", "1"], ["b", "-x"]]
    for tokens in ([], ["--"], ["--", "a", "--"], ["a", "--", "--", "b"]):
        with pytest.raises(ValueError, match="after a `--`"):
            split_commands(tokens)


def _append(log: Path, text: str, code: int = 0) -> list[str]:
    """A command that appends ``text`` to ``log`` and exits with ``code``."""
    script = f"open({str(log)!r}, 'a').write({text!r}); raise SystemExit({code})"
    return ["--", sys.executable, "-c", script]


@pytest.fixture()
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(load_params(ROOT / "params.yaml")))
    return path


def test_commands_run_in_order_until_one_fails(tmp_path: Path, params_file: Path) -> None:
    log = tmp_path / "log.txt"
    launcher = ["exec", "--no-network-check", "--params", str(params_file)]
    assert stages_main([*launcher, *_append(log, "a"), *_append(log, "b")]) == 0
    assert log.read_text() == "ab"
    log.unlink()
    assert stages_main([*launcher, *_append(log, "a"), *_append(log, "b", 3), *_append(log, "c")]) == 3
    assert log.read_text() == "ab"


def test_python_m_commands_run_in_turn_in_the_stage_process(params_file: Path) -> None:
    """`python -m` commands run in the launcher's process (runpy): one that ends with SystemExit(0),
    as `--help` does, hands over to the next instead of ending the stage."""
    launcher = [sys.executable, "-m", "pipeline.stages", "exec", "--no-network-check"]
    launcher += ["--params", str(params_file)]
    first = ["--", "python", "-m", "pipeline", "split", "--help"]
    second = ["--", "python", "-m", "pipeline.stages", "efficiency", "--help"]
    result = subprocess.run(
        [*launcher, *first, *second],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.index("--train-fraction") < result.stdout.index("--cells-dir")


def test_startup_freezes_what_it_created_and_resumes_collecting() -> None:
    before = gc.get_freeze_count()
    try:
        with startup_without_gc():
            assert not gc.isenabled()
            held = [[index] for index in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= before + len(held)
    finally:
        gc.unfreeze()


def test_in_process_calls_leave_the_collector_alone(tmp_path: Path, params_file: Path) -> None:
    """`main()` called from Python (as here) is not the process entry point: nothing is frozen."""
    gc.unfreeze()
    command = _append(tmp_path / "x.txt", "")
    assert stages_main(["exec", "--no-network-check", "--params", str(params_file), *command]) == 0
    assert gc.get_freeze_count() == 0 and gc.isenabled()


def test_an_unusable_mlflow_store_stops_the_stage_before_its_commands(
    tmp_path: Path, params_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    log = tmp_path / "log.txt"
    launcher = ["exec", "--no-network-check", "--mlflow", "--stage", "distill", "--params", str(params_file)]
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    assert stages_main([*launcher, *_append(log, "a")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"http://127.0.0.1:{port} is unreachable" in line and "MLFLOW_TRACKING_URI" in line
    assert not log.exists()
    # the same store as a SQLite file that does not take writes (immutable: read-only even for root)
    database = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    assert stages_main([*launcher, *_append(log, "a")]) == 0 and log.read_text() == "a"
    subprocess.run(["chattr", "+i", str(database)], check=True)
    try:
        assert stages_main([*launcher, *_append(log, "b")]) == 2
    finally:
        subprocess.run(["chattr", "-i", str(database)], check=True)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"sqlite:///{database} does not take writes" in line and log.read_text() == "a"
