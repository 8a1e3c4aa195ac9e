"""CPU inference speed of the HDKD networks (published profile), against the machine's own matmul peak.

    PYTHONPATH=. python benchmarks/inference.py [--threads 2] [--seconds 4] [--engines torch-fp32 ...]

For every engine x network x batch size: one warm-up call, then timed calls for at least ``--seconds``
(and at least one call), in eval mode. Engines are ``pipeline.engines``' (torch float32 / bf16 autocast,
ONNX Runtime float32 / int8, OpenVINO when installed) plus torch float32 in channels_last. Reports
images/s, ms per image and the achieved GFLOP/s (forward FLOPs per image, counted as in the paper, times
images/s) as a fraction of this machine's float32 and bf16 matmul GFLOP/s measured in the same run (the
better of before and after the rows). The header shows the CPU report (``pipeline.device``).

On a shared, oversubscribed machine, OpenMP threads that spin while waiting for each other make a
multi-threaded run many times slower; ``OMP_WAIT_POLICY=PASSIVE`` (set before starting Python) avoids
that. The header shows the 1-minute load average and the wait policy so the figures can be judged.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pipeline.device import cpu_report
from pipeline.engines import ENGINES as ENGINE_NAMES
from pipeline.engines import auto_candidates, build_runner, seconds_per_call
from pipeline.networks import build_network
from pipeline.networks.flops import forward_flops
from pipeline.roles import MODELS

Runner = Callable[[torch.Tensor], torch.Tensor]


def eager_channels_last(
    network: nn.Module, example: torch.Tensor, folder: Path
) -> tuple[Runner, torch.Tensor]:
    """The network and its input in ``torch.channels_last`` memory format (float32)."""
    network = network.to(memory_format=torch.channels_last)
    run = build_runner("torch-fp32", network, tuple(example.shape[1:]), folder)
    return run, example.contiguous(memory_format=torch.channels_last)


def engine(name: str) -> Callable[[nn.Module, torch.Tensor, Path], tuple[Runner, torch.Tensor]]:
    """A ``pipeline.engines`` engine (exports kept in ``folder``; int8 calibrated on the example)."""

    def make(network: nn.Module, example: torch.Tensor, folder: Path) -> tuple[Runner, torch.Tensor]:
        return build_runner(name, network, tuple(example.shape[1:]), folder, example.numpy()), example

    return make


ENGINES: dict[str, Callable[[nn.Module, torch.Tensor, Path], tuple[Runner, torch.Tensor]]] = {
    **{name: engine(name) for name in ENGINE_NAMES},
    "torch-fp32-channels_last": eager_channels_last,
}
COMPUTE = {"torch-bf16": "bf16", "onnxruntime-int8": "int8"}  # else float32


def matmul_gflops(seconds: float, dtype: torch.dtype, size: int = 1024) -> float:
    """GFLOP/s of a ``size`` x ``size`` matrix product in ``dtype`` (2 * size^3 FLOPs)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    with torch.inference_mode():
        per_call = seconds_per_call(lambda: a @ b, seconds)
    return 2 * size**3 / per_call / 1e9


def peaks(seconds: float) -> dict[str, float]:
    """float32 and bf16 matmul GFLOP/s of this machine now."""
    return {"fp32": matmul_gflops(seconds, torch.float32), "bf16": matmul_gflops(seconds, torch.bfloat16)}


def benchmark(
    roles: list[str], batch_sizes: list[int], engines: list[str], seconds: float, image_size: int
) -> list[dict[str, object]]:
    """One row per engine, network and batch size."""
    rows = []
    for role in roles:
        network = build_network(role, "published", image_size=image_size, in_channels=3, num_classes=4).eval()
        gflop = forward_flops(network, image_size, 3) / 1e9
        for name in engines:
            for batch in batch_sizes:
                with tempfile.TemporaryDirectory() as folder:
                    example = torch.rand(batch, 3, image_size, image_size)
                    run, x = ENGINES[name](network, example, Path(folder))
                    per_call = seconds_per_call(lambda run=run, x=x: run(x), seconds)
                network.to(memory_format=torch.contiguous_format)
                images_per_s = batch / per_call
                rows.append(
                    {
                        "engine": name,
                        "network": role,
                        "batch": batch,
                        "img/s": images_per_s,
                        "ms/img": 1000 / images_per_s,
                        "GFLOP/img": gflop,
                        "GFLOP/s": gflop * images_per_s,
                    }
                )
    return rows


def print_table(rows: list[dict[str, object]], peak: dict[str, float]) -> None:
    """Rows as an aligned table, the achieved GFLOP/s also as a percentage of the float32 and the bf16
    matmul figures (an engine's own compute type in the ``compute`` column; no int8 peak is measured)."""
    header = f"{'engine':<24} {'compute':<7} {'network':<8} {'batch':>5} {'img/s':>8} {'ms/img':>8} "
    print(header + f"{'GFLOP/img':>9} {'GFLOP/s':>8} {'% fp32 peak':>11} {'% bf16 peak':>11}")
    for row in rows:
        print(
            f"{row['engine']:<24} {COMPUTE.get(row['engine'], 'fp32'):<7} {row['network']:<8} "
            f"{row['batch']:>5} {row['img/s']:>8.2f} {row['ms/img']:>8.1f} {row['GFLOP/img']:>9.2f} "
            f"{row['GFLOP/s']:>8.1f} {100 * row['GFLOP/s'] / peak['fp32']:>10.0f}% "
            f"{100 * row['GFLOP/s'] / peak['bf16']:>10.0f}%"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="minimum timed seconds per row (default 4)"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="default: 1 16")
    parser.add_argument(
        "--roles", nargs="+", default=list(MODELS), choices=MODELS
    )
    parser.add_argument(
        "--engines",
        nargs="+",
        default=None,
        choices=sorted(ENGINES),
        help="default: every engine installed here (torch-bf16 only where bf16 is native), and "
        "torch-fp32-channels_last",
    )
    parser.add_argument("--image-size", type=int, default=224, help="default 224 (the published size)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    engines = args.engines or [*auto_candidates("cpu"), "torch-fp32-channels_last"]
    started = time.perf_counter()
    load = os.getloadavg()[0]
    before = peaks(min(args.seconds, 3.0))
    rows = benchmark(args.roles, args.batch_sizes, engines, args.seconds, args.image_size)
    after = peaks(min(args.seconds, 3.0))
    peak = {dtype: max(before[dtype], after[dtype]) for dtype in before}
    print(cpu_report().summary())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"1-min load average {load:.1f} at start / {os.getloadavg()[0]:.1f} at end, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, inference_mode, eval"
    )
    for dtype in peak:
        print(
            f"{dtype} 1024x1024 matmul peak: {peak[dtype]:.1f} GFLOP/s "
            f"(before the rows {before[dtype]:.1f}, after {after[dtype]:.1f})"
        )
    print_table(rows, peak)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
