"""Test-session settings: one compute thread per pytest worker, no telemetry.

`pytest -n 2` on a 2-core machine runs two workers; with torch's default of one OpenMP
thread per core each, the workers oversubscribe the cores and spin-waiting threads slow
small steps by an order of magnitude. Subprocesses started by tests inherit the variables.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import torch  # imported after the thread settings on purpose

torch.set_num_threads(1)
