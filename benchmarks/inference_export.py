"""Throughput of the published HDKD student through every inference engine, and the engine "auto" picks.

    PYTHONPATH=. python benchmarks/inference_export.py [--threads 2] [--seconds 5] [--batches 1 16]

The student (distillation token on, 224 px, 3 channels, 4 classes, random weights: speed does not depend
on them) runs through each ``pipeline.engines`` engine installed here (torch float32 eager, torch bf16
autocast where bf16 is native, ONNX Runtime float32 and int8, OpenVINO float32 when installed) and
TorchScript; ONNX files go to a temporary folder, int8 is calibrated on 32 random images (the pipeline
calibrates on training slices; speed does not depend on the ranges). With ``OMP_WAIT_POLICY=PASSIVE``
ONNX Runtime's threads do not spin either. Each engine x batch size gets one warm-up call, then timed
calls for at least ``--seconds``; printed as images/s, the speed-up over torch float32 eager at the same
batch size, and the top-1 agreement / largest probability change against torch float32 on that batch.
Then ``pipeline.engines.select_engine`` chooses for batch 16 with a fresh cache, as bundle inference does.
The LAST line is ``best_vs_eager_b16=<x>``: the fastest engine that agrees with float32 (top-1 agreement
>= ``pipeline.engines.DEFAULT_MIN_AGREEMENT``) over torch float32 eager, batch 16. On a loaded machine set
``OMP_WAIT_POLICY=PASSIVE`` before starting Python; the header shows the load average and the CPU.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import onnxruntime
import torch

from pipeline.device import cpu_report
from pipeline.engines import (
    DEFAULT_MIN_AGREEMENT,
    TORCH_FP32,
    Runner,
    auto_candidates,
    available_engines,
    build_runner,
    compare,
    seconds_per_call,
    select_engine,
)
from pipeline.export import export_torchscript
from pipeline.networks import build_network

IMAGE_SIZE, CHANNELS = 224, 3
TORCHSCRIPT = "TorchScript"


def runners(network: torch.nn.Module, folder: Path, names: tuple[str, ...]) -> dict[str, Runner]:
    """Engines ``names``, and TorchScript, for ``network``."""
    shape = (CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    calibration = torch.rand(32, *shape, generator=torch.Generator().manual_seed(1)).numpy()
    engines = {name: build_runner(name, network, shape, folder, calibration) for name in names}
    script = torch.jit.load(str(export_torchscript(network, folder / "student.ts", IMAGE_SIZE, CHANNELS)))
    engines[TORCHSCRIPT] = build_runner(TORCH_FP32, script, shape, folder)
    return engines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every engine")
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per measurement")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="batch sizes (16 is needed)")
    parser.add_argument(
        "--all-engines",
        action="store_true",
        help="also time torch-bf16 where bf16 is emulated (tens of times slower than float32 there)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_report().summary())
    print(
        f"threads {args.threads}, load average {os.getloadavg()[0]:.1f}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}"
    )
    network = build_network("hdkd", "published").eval()
    generator = torch.Generator().manual_seed(0)
    best = {}
    with tempfile.TemporaryDirectory() as folder:
        names = available_engines() if args.all_engines else auto_candidates()
        if len(names) < len(available_engines()):
            print("torch-bf16 not timed: bf16 is emulated on this CPU (--all-engines times it)")
        engines = runners(network, Path(folder), names)
        header = f"{'images/s':>9} {'vs eager':>9} {'top-1 agree':>11} {'max dp':>8}"
        print(f"{'engine':<18} {'batch':>5} {header}")
        for size in args.batches:
            batch = torch.rand(size, CHANNELS, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
            reference = engines[TORCH_FP32](batch)
            speeds = {}
            for name, run in engines.items():
                agreement, change = compare(reference, run(batch))
                speeds[name] = size / seconds_per_call(lambda run=run, x=batch: run(x), args.seconds)
                ratio = speeds[name] / speeds[TORCH_FP32]
                figures = f"{speeds[name]:>9.1f} {ratio:>8.2f}x {agreement:>11.1%} {change:>8.2g}"
                print(f"{name:<18} {size:>5} {figures}")
                if agreement >= DEFAULT_MIN_AGREEMENT:
                    best[size] = max(best.get(size, 0.0), ratio)
        sample = torch.rand(4, CHANNELS, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        selection = select_engine(network, sample, batch_size=16, cache=Path(folder) / "cache")
        print(f"auto at batch 16: {selection.engine} ({selection.how})")
    if 16 in best:
        print(f"best_vs_eager_b16={best[16]:.2f}")


if __name__ == "__main__":
    main()
