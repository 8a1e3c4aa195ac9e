"""Parameter count, forward GFLOPs and CPU latency."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.evaluate.complexity import count_parameters, cpu_latency_ms, forward_gflops


def test_parameters_and_flops_of_known_layers():
    conv = nn.Conv2d(1, 4, kernel_size=3, padding=1, bias=False)
    assert count_parameters(conv) == 36
    net = nn.Sequential(conv, nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    net[2].weight.requires_grad_(False)
    assert count_parameters(net) == 36 + 256 * 5 + 5
    assert count_parameters(net, trainable_only=True) == 36 + 5
    # a multiply-add counts as 2 FLOPs: conv 8*8 outputs x 4 channels x 9 taps, linear 256 x 5
    assert forward_gflops(net, image_size=8, in_channels=1) == pytest.approx(
        2 * (8 * 8 * 4 * 9 + 256 * 5) / 1e9
    )


def test_cpu_latency_leaves_network_and_threads_unchanged():
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 16 * 16, 2)
    )
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    threads = torch.get_num_threads()
    latency = cpu_latency_ms(net, image_size=16, in_channels=1, threads=1, repeats=3, warmup=1)
    assert 0 < latency < 10_000
    assert torch.get_num_threads() == threads and net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="batch, threads, repeats >= 1"):
        cpu_latency_ms(net, 16, 1, threads=0)
