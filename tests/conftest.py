"""Test-session settings: one compute thread per pytest worker, no telemetry.

`pytest -n 2` on a 2-core machine runs two workers; with torch's default of one OpenMP
thread per core each, the workers oversubscribe the cores and spin-waiting threads slow
small steps by an order of magnitude. Subprocesses started by tests inherit the variables.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import torch  # imported after the thread settings on purpose

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fail_runs_left_running() -> Iterator[None]:
    """MLflow runs a test opened in this process and left RUNNING (e.g. to resume them) are marked FAILED
    when the test ends, as the exit hook of pipeline.tracking would at process exit, but while pytest
    still captures the warning it logs."""
    yield
    tracking = sys.modules.get("pipeline.tracking")
    if tracking is not None:
        tracking.fail_unfinished_runs()
