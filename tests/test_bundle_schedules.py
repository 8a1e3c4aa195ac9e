"""Learning-rate schedules chosen by name in the bundles (``--lr_schedule``)."""

from __future__ import annotations

import itertools

import pytest
import torch

from pipeline.bundle import lr_schedule


def _rates(name: str, epochs: int, warmup: int) -> list[float]:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = lr_schedule(optimizer, name, epochs, warmup)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_constant_keeps_the_rate_and_cosine_warms_up_then_decays():
    assert _rates("constant", 4, 0) == pytest.approx([0.1] * 4)
    cosine = _rates("cosine", 6, 1)
    assert cosine[0] == pytest.approx(0.002)  # warm-up starts at 2 % of the rate
    assert cosine[1] == pytest.approx(0.1)
    assert all(later < earlier for earlier, later in itertools.pairwise(cosine[1:]))
    assert cosine[-1] < 0.015
    assert _rates("cosine", 4, 0)[0] == pytest.approx(0.1)


def test_bad_schedule_names_the_option():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="--lr_schedule must be one of"):
        lr_schedule(optimizer, "linear", 4)
    with pytest.raises(ValueError, match="--warmup_epochs must be >= 0"):
        lr_schedule(optimizer, "cosine", 4, -1)
