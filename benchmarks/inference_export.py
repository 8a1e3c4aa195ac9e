"""Throughput of the exported published HDKD student: torch eager vs TorchScript vs ONNX Runtime (float32
and int8).

    PYTHONPATH=. python benchmarks/inference_export.py [--threads 2] [--seconds 5] [--batches 1 16]

The student (distillation token on, 224 px, 3 channels, 4 classes, random weights: speed does not depend
on them) is exported with ``pipeline.export`` (TorchScript trace, ONNX with a dynamic batch axis) into a
temporary folder; the int8 model is quantized by ``pipeline.quantize`` with calibration on 32 random
images (the pipeline calibrates on training slices; speed does not depend on the ranges). Each engine x
batch size gets one warm-up call, then timed calls for at least ``--seconds``; printed as images/s and
the speed-up over eager at the same batch size. The target is at least 2x the published student's eager
figure in the same run (and, for reference, against the 8.7 images/s at batch 16 measured earlier).
On a loaded machine set ``OMP_WAIT_POLICY=PASSIVE`` before starting Python (spinning OpenMP threads slow
multi-threaded runs many times); the header shows the load average.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from pipeline.export import export_onnx, export_torchscript
from pipeline.networks import build_network
from pipeline.quantize import quantize_int8

IMAGE_SIZE, CHANNELS = 224, 3
EAGER_REFERENCE = (
    8.7  # images/s, published student, eager, batch 16, measured earlier on this kind of machine
)


def images_per_second(run: Callable[[np.ndarray], object], batch: np.ndarray, seconds: float) -> float:
    """Images/s of ``run`` on ``batch`` after one warm-up call, timed over at least ``seconds``."""
    run(batch)
    calls, start = 0, time.perf_counter()
    while True:
        run(batch)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * len(batch) / elapsed


def engines(folder: Path, threads: int) -> dict[str, Callable[[np.ndarray], object]]:
    """eager / TorchScript / ONNX Runtime callables taking a float32 numpy batch."""
    network = build_network("hdkd", "published").eval()
    script = torch.jit.load(str(export_torchscript(network, folder / "student.ts", IMAGE_SIZE, CHANNELS)))
    float_model = export_onnx(network, folder / "student.onnx", IMAGE_SIZE, CHANNELS)
    calibration = np.random.default_rng(1).random((32, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    int8_model = quantize_int8(float_model, folder / "student.int8.onnx", calibration)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1

    def onnx_runner(path: Path) -> Callable[[np.ndarray], object]:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: batch})

    def torch_runner(module: torch.nn.Module) -> Callable[[np.ndarray], object]:
        def run(batch: np.ndarray) -> object:
            with torch.inference_mode():
                return module(torch.from_numpy(batch))

        return run

    return {
        "torch eager": torch_runner(network),
        "TorchScript": torch_runner(script),
        "ONNX Runtime": onnx_runner(float_model),
        "ORT int8": onnx_runner(int8_model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of torch and ONNX Runtime")
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per measurement")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="batch sizes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"threads {args.threads}, load average {os.getloadavg()[0]:.1f}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}"
    )
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        runners = engines(Path(folder), args.threads)
        print(f"{'engine':<14} {'batch':>5} {'images/s':>9} {'vs eager':>9} {'vs 8.7 img/s':>13}")
        for size in args.batches:
            batch = rng.random((size, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
            eager = None
            for engine, run in runners.items():
                speed = images_per_second(run, batch, args.seconds)
                eager = eager or speed
                ratios = f"{speed / eager:>8.2f}x {speed / EAGER_REFERENCE:>12.2f}x"
                print(f"{engine:<14} {size:>5} {speed:>9.1f} {ratios}")


if __name__ == "__main__":
    main()
