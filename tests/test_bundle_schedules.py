"""Learning-rate schedules chosen by name in the bundles (``--lr_schedule``) and the weight-decay groups."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from pipeline.bundle import lr_schedule, training_epochs, weight_decay_groups
from pipeline.networks import build_network


def _rates(
    name: str, lr: float, epochs: int, warmup: int, run: int | None = None, **options: float
) -> list[float]:
    """The learning rate of each of ``run`` (default ``epochs``) epochs, stepping once per epoch."""
    optimizer = torch.optim.AdamW(
        [
            {"params": [nn.Parameter(torch.zeros(1))]},
            {"params": [nn.Parameter(torch.zeros(1))], "weight_decay": 0},
        ],
        lr=lr,
    )
    schedule = lr_schedule(optimizer, name, epochs, warmup, **options)
    rates = []
    for _ in range(run or epochs):
        assert optimizer.param_groups[0]["lr"] == optimizer.param_groups[1]["lr"]
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_constant_keeps_the_rate():
    assert _rates("constant", 0.1, 4, 0) == pytest.approx([0.1] * 4)


def test_cosine_is_the_published_timm_schedule_with_cooldown():
    # timm CosineLRScheduler(t_initial=200, lr_min=2e-5, warmup_t=5, warmup_lr_init=2e-5), stepped per
    # epoch, then 10 cool-down epochs: written out from its definition
    rates = _rates("cosine", 5e-5, 200, 5, run=210, warmup_lr=2e-5, min_lr=2e-5)
    assert rates[:5] == pytest.approx([2e-5, 2.6e-5, 3.2e-5, 3.8e-5, 4.4e-5])
    for epoch in (5, 50, 100, 199):
        expected = 2e-5 + 0.5 * 3e-5 * (1 + math.cos(math.pi * epoch / 200))  # the cosine counts from 0
        assert rates[epoch] == pytest.approx(expected), epoch
    assert rates[100] == pytest.approx(3.5e-5)
    assert rates[200:] == pytest.approx([2e-5] * 10)
    assert all(later <= earlier for earlier, later in itertools.pairwise(rates[5:]))


def test_cosine_without_warmup_or_floor_decays_to_zero():
    rates = _rates("cosine", 0.1, 4, 0)
    assert rates == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)])


def test_training_epochs_add_the_cooldown():
    assert training_epochs(200, 10) == 210 and training_epochs(15, 0) == 15
    with pytest.raises(ValueError, match="--cooldown_epochs must be >= 0"):
        training_epochs(15, -1)


def test_bad_schedule_names_the_option():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="--lr_schedule must be one of"):
        lr_schedule(optimizer, "linear", 4)
    with pytest.raises(ValueError, match="--warmup_epochs must be >= 0"):
        lr_schedule(optimizer, "cosine", 4, -1)
    with pytest.raises(ValueError, match="--min_lr must be a number >= 0"):
        lr_schedule(optimizer, "cosine", 4, 1, min_lr=-1e-5)


def test_no_weight_decay_on_biases_and_norm_weights_as_timm_groups_them():
    network = build_network("hdkd", "demo", image_size=32)
    groups = weight_decay_groups(network, 0.05)
    decayed = {id(p) for p in groups[0]["params"]}
    exempt = {id(p) for p in groups[1]["params"]}
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"]) == (0.05, 0.0)
    assert decayed.isdisjoint(exempt) and len(decayed | exempt) == len(list(network.parameters()))
    norms = (nn.BatchNorm2d, nn.LayerNorm)
    for module in network.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if isinstance(module, norms) or name == "bias":
                assert id(parameter) in exempt, (type(module).__name__, name)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                assert id(parameter) in decayed, (type(module).__name__, name)
    # the published model does not exempt its tokens and position embedding
    assert id(network.dflt.tokens) in decayed and id(network.dflt.pos_embedding) in decayed


def test_adamw_decays_only_the_decayed_group():
    network = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    before = [p.detach().clone() for p in network.parameters()]
    optimizer = torch.optim.AdamW(weight_decay_groups(network, 0.5), lr=0.1)
    for parameter in network.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    after = list(network.parameters())
    assert torch.allclose(after[0], before[0] * (1 - 0.1 * 0.5))  # linear weight: decayed
    for index in (1, 2, 3):  # linear bias, norm weight, norm bias: unchanged
        assert torch.equal(after[index], before[index])
