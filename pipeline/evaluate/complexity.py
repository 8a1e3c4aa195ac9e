"""Size and cost of a network: parameters, forward GFLOPs and CPU latency."""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from pipeline.networks.flops import forward_flops


def count_parameters(network: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad or not trainable_only)


def forward_gflops(network: nn.Module, image_size: int, in_channels: int) -> float:
    """GFLOPs of one eval-mode forward pass of one image, from ``torch.utils.flop_counter.FlopCounterMode``
    (via ``pipeline.networks.flops.forward_flops``): a multiply-add counts as 2 FLOPs; convolutions,
    linear layers and (math-backend) attention matrix products are counted, element-wise work is not."""
    return forward_flops(network, image_size, in_channels) / 1e9


def cpu_latency_ms(
    network: nn.Module,
    image_size: int,
    in_channels: int,
    batch: int = 1,
    threads: int = 2,
    repeats: int = 30,
    warmup: int = 5,
) -> float:
    """Median wall time in milliseconds of an eval-mode, inference-mode forward pass of a ``batch`` of
    random images on the CPU with ``threads`` intra-op threads, after ``warmup`` untimed passes. A CPU copy
    of ``network`` is timed; ``network`` and the global thread setting are left unchanged."""
    if batch < 1 or threads < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            f"need batch, threads, repeats >= 1 and warmup >= 0; got {batch}, {threads}, {repeats}, {warmup}"
        )
    model = copy.deepcopy(network).cpu().eval()
    x = torch.rand(batch, in_channels, image_size, image_size)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = []
        with torch.inference_mode():
            for step in range(warmup + repeats):
                start = time.perf_counter()
                model(x)
                if step >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 1000 * statistics.median(times)
