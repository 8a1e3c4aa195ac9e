"""No orphans: a stage killed with `dvc repro` (kill -9 of the dvc process) takes its launcher, the
commands it started and the data stages' worker processes with it."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.params import load_params

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")


def _wait_for(path: Path, timeout: float = 60.0) -> str:
    """The text of ``path`` once it exists and is complete (ends with a newline)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.is_file() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{path} did not appear within {timeout} s")


def _all_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    """The pids among ``pids`` still running (not zombies) after waiting up to ``timeout`` s."""
    end = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < end:
        time.sleep(0.2)
        alive = [pid for pid in alive if psutil.pid_exists(pid) and not _zombie(pid)]
    return alive


def _kill_left(pids: list[int]) -> None:
    """Kill whatever of ``pids`` a failed test left running."""
    for pid in pids:
        if psutil.pid_exists(pid):
            psutil.Process(pid).kill()


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _stage(tmp_path: Path) -> list[str]:
    """The launcher of a stage that builds no network, reading a copy of the repository's params."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(load_params(ROOT / "params.yaml")))
    return [sys.executable, "-m", "pipeline.stages", "exec", "--no-network-check", "--params", str(params)]


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_killing_dvc_ends_the_stage_launcher_and_its_command(tmp_path: Path, shell: str) -> None:
    """DVC runs the stage through ``$SHELL -c``: bash replaces itself with the launcher, dash (Debian's
    /bin/sh) stays between them and outlives DVC; the launcher ends either way."""
    pid_file = tmp_path / "command.pid"
    sleeper = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(f'{{os.getpid()}} {{os.getppid()}}\\n'); "
        "time.sleep(120)"
    )
    stage_cmd = [*_stage(tmp_path), "--", sys.executable, "-c", sleeper]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"sleepy": {"cmd": shlex.join(stage_cmd)}}}))
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    repro = subprocess.Popen(
        [*dvc, "repro"],
        cwd=tmp_path,
        env={**os.environ, "SHELL": shell},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started: list[int] = []
    try:
        command, launcher = started = [int(pid) for pid in _wait_for(pid_file).split()]
        assert psutil.Process(launcher).cmdline()[1:3] == ["-m", "pipeline.stages"]
        repro.send_signal(signal.SIGKILL)
        repro.wait(timeout=10)
        assert _all_gone([launcher, command]) == []
    finally:
        if repro.poll() is None:
            repro.kill()
        _kill_left(started)


def test_killing_a_data_stage_ends_its_workers(tmp_path: Path) -> None:
    """map_in_order's worker processes end when the stage process is killed with SIGKILL."""
    script = (
        "import time\n"
        "from pipeline.data.parallel import map_in_order\n"
        "for _ in map_in_order(time.sleep, [120, 120], workers=2):\n"
        "    pass\n"
    )
    stage = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
    try:
        end = time.monotonic() + 60
        workers: list[psutil.Process] = []
        while len(workers) < 2 and time.monotonic() < end:
            time.sleep(0.2)
            workers = [child for child in psutil.Process(stage.pid).children() if "python" in child.name()]
        assert len(workers) >= 2, "the stage did not start its workers"
        stage.send_signal(signal.SIGKILL)
        stage.wait(timeout=10)
        assert _all_gone([worker.pid for worker in workers]) == []
    finally:
        if stage.poll() is None:
            stage.kill()


def test_a_stage_killed_by_sigterm_runs_its_cleanup(tmp_path: Path) -> None:
    """SIGTERM (what the kernel sends when the parent ends) becomes SystemExit in the launcher, so its
    `finally` blocks (closing the MLflow parent run as FAILED) run and the exit code says why."""
    marker = tmp_path / "cleanup.json"
    ready = tmp_path / "ready"
    module = tmp_path / "slow_stage.py"
    module.write_text(
        "import json, time\n"
        "try:\n"
        f"    open({str(ready)!r}, 'w').write('ready\\n')\n"
        "    time.sleep(120)\n"
        "finally:\n"
        f"    open({str(marker)!r}, 'w').write(json.dumps({{'cleaned': True}}))\n"
    )
    stage = subprocess.Popen(
        [*_stage(tmp_path), "--", "python", "-m", "slow_stage"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    try:
        _wait_for(ready)
        stage.send_signal(signal.SIGTERM)
        assert stage.wait(timeout=30) == 128 + signal.SIGTERM
        assert json.loads(marker.read_text()) == {"cleaned": True}
    finally:
        if stage.poll() is None:
            stage.kill()
