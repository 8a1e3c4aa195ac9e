"""CPU inference speed of the HDKD networks (published profile), next to the machine's matmul speed.

    PYTHONPATH=. python benchmarks/inference.py [--threads 2] [--seconds 4] [--engines eager ...]

For every engine x network x batch size: one warm-up call, then timed calls for at least ``--seconds``
(and at least one call), in eval mode under ``torch.inference_mode``. Reports images/s, ms per image
and the achieved GFLOP/s (forward FLOPs per image, counted as in the paper, times images/s), beside a
plain float32 matmul GFLOP/s measured in the same run. An engine turns a network and an example batch
into a callable; add TorchScript / ONNX Runtime rows by adding entries to ENGINES.

On a shared, oversubscribed machine, OpenMP threads that spin while waiting for each other make a
multi-threaded run many times slower; ``OMP_WAIT_POLICY=PASSIVE`` (set before starting Python) avoids
that. The header shows the 1-minute load average and the wait policy so the figures can be judged.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from torch import nn

from pipeline.networks import build_network
from pipeline.networks.flops import forward_flops

Runner = Callable[[torch.Tensor], torch.Tensor]


def eager(network: nn.Module, example: torch.Tensor) -> tuple[Runner, torch.Tensor]:
    """The network as it is, NCHW contiguous input."""
    return network, example


def eager_channels_last(network: nn.Module, example: torch.Tensor) -> tuple[Runner, torch.Tensor]:
    """The network and its input in ``torch.channels_last`` memory format."""
    return network.to(memory_format=torch.channels_last), example.contiguous(
        memory_format=torch.channels_last
    )


ENGINES: dict[str, Callable[[nn.Module, torch.Tensor], tuple[Runner, torch.Tensor]]] = {
    "eager": eager,
    "eager-channels_last": eager_channels_last,
}


def time_calls(run: Callable[[], object], seconds: float) -> float:
    """Seconds per call: one warm-up call, then calls until ``seconds`` have passed (at least one)."""
    run()
    calls, start = 0, time.perf_counter()
    while calls < 1 or time.perf_counter() - start < seconds:
        run()
        calls += 1
    return (time.perf_counter() - start) / calls


def matmul_gflops(seconds: float, size: int = 1024) -> float:
    """GFLOP/s of a float32 ``size`` x ``size`` matrix product (2 * size^3 FLOPs)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    with torch.inference_mode():
        per_call = time_calls(lambda: a @ b, seconds)
    return 2 * size**3 / per_call / 1e9


def benchmark(
    roles: list[str], batch_sizes: list[int], engines: list[str], seconds: float, image_size: int
) -> list[dict[str, object]]:
    """One row per engine, network and batch size."""
    rows = []
    for role in roles:
        network = build_network(role, "published", image_size=image_size, in_channels=3, num_classes=4).eval()
        gflop = forward_flops(network, image_size, 3) / 1e9
        for engine in engines:
            for batch in batch_sizes:
                run, x = ENGINES[engine](network, torch.rand(batch, 3, image_size, image_size))
                with torch.inference_mode():
                    per_call = time_calls(lambda run=run, x=x: run(x), seconds)
                images_per_s = batch / per_call
                rows.append(
                    {
                        "engine": engine,
                        "network": role,
                        "batch": batch,
                        "img/s": images_per_s,
                        "ms/img": 1000 / images_per_s,
                        "GFLOP/img": gflop,
                        "GFLOP/s": gflop * images_per_s,
                    }
                )
    return rows


def print_table(rows: list[dict[str, object]], matmul: float) -> None:
    """Rows as an aligned table, with the achieved GFLOP/s also as a percentage of the matmul figure."""
    header = f"{'engine':<20} {'network':<8} {'batch':>5} {'img/s':>8} {'ms/img':>8} {'GFLOP/img':>9} "
    print(header + f"{'GFLOP/s':>8} {'% matmul':>8}")
    for row in rows:
        print(
            f"{row['engine']:<20} {row['network']:<8} {row['batch']:>5} {row['img/s']:>8.2f} "
            f"{row['ms/img']:>8.1f} {row['GFLOP/img']:>9.2f} {row['GFLOP/s']:>8.1f} "
            f"{100 * row['GFLOP/s'] / matmul:>7.0f}%"
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
        "--roles", nargs="+", default=["teacher", "student", "hdkd"], choices=["teacher", "student", "hdkd"]
    )
    parser.add_argument(
        "--engines", nargs="+", default=["eager"], choices=sorted(ENGINES), help="default: eager"
    )
    parser.add_argument("--image-size", type=int, default=224, help="default 224 (the published size)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load = os.getloadavg()[0]
    matmul_before = matmul_gflops(min(args.seconds, 3.0))
    rows = benchmark(args.roles, args.batch_sizes, args.engines, args.seconds, args.image_size)
    matmul_after = matmul_gflops(min(args.seconds, 3.0))
    matmul = (matmul_before + matmul_after) / 2
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"1-min load average {load:.1f} at start / {os.getloadavg()[0]:.1f} at end, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, inference_mode, eval"
    )
    print(
        f"float32 1024x1024 matmul: {matmul:.1f} GFLOP/s "
        f"(before {matmul_before:.1f}, after {matmul_after:.1f})"
    )
    print_table(rows, matmul)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
