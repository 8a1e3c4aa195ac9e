"""ClassificationReportHandler under DDP: 2 gloo processes, each evaluating half of the slices."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import ignite.distributed as idist
import pytest
from test_evaluate_handler import N_PATIENTS, NAMES, expected_confusion, items, run_evaluator

from pipeline.evaluate.handler import ClassificationReportHandler


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def evaluate_share(local_rank: int, output: str) -> None:
    """Every rank evaluates every other slice (its patients' ids included) into its own folder."""
    rank, world = idist.get_rank(), idist.get_world_size()
    handler = ClassificationReportHandler(
        Path(output) / f"rank{rank}", NAMES, n_bootstrap=100, figures=rank != 0
    )
    run_evaluator(handler, items()[rank::world])


def test_ranks_are_gathered_and_only_rank_0_writes(tmp_path):
    with idist.Parallel(backend="gloo", nproc_per_node=2, master_port=free_port()) as parallel:
        parallel.run(evaluate_share, str(tmp_path))
    assert not (tmp_path / "rank1").exists()
    report = json.loads((tmp_path / "rank0/metrics.json").read_text())
    assert report["n"] == 24 and report["n_groups"] == N_PATIENTS
    assert report["confusion_matrix"] == expected_confusion().tolist()
    assert report["ci"]["accuracy"] == [pytest.approx(16 / 24)] * 2
