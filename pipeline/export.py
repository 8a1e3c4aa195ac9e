"""Export a trained network to ONNX (dynamic batch) and TorchScript, verified against PyTorch.

`python -m pipeline export --checkpoint F --output DIR` rebuilds the network from the settings the
training checkpoint records (pipeline.networks.NetworkSettings; ``--role`` / ``--profile`` /
``--class-names`` given explicitly must agree with them), loads the weights strictly, writes
``DIR/<name>.onnx``,
``DIR/<name>.ts`` and ``DIR/<name>.export.json`` (configuration, checks, size), and fails unless ONNX
Runtime and the TorchScript module reproduce the eval-mode PyTorch logits within the tolerance. With
``--int8-split SPLIT_CSV`` it also writes ``DIR/<name>.int8.onnx``, statically
quantized on training slices and checked on validation slices (``pipeline.quantize``).

ONNX: the ``torch.export``-based exporter (``dynamo=True``, the default of recent PyTorch; the older
TorchScript-based exporter is deprecated), input ``image`` [batch, C, H, W] with a dynamic batch axis,
output ``logits`` [batch, classes], weights inside the one .onnx file. TorchScript: ``torch.jit.trace`` of
the logits path (TorchScript is deprecated upstream but still what many serving tools load).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from pipeline.atomic import atomic_path, write_json
from pipeline.digest import file_sha256
from pipeline.evaluate.complexity import count_parameters, forward_gflops
from pipeline.networks import PROFILES, NetworkSettings, load_trained
from pipeline.quantize import compare_predictions, quantize_int8, split_images
from pipeline.roles import MODELS

INPUT_NAME, OUTPUT_NAME = "image", "logits"
DEFAULT_OPSET = 18
DEFAULT_ATOL = 1e-4


def _eval_copy(network: nn.Module) -> nn.Module:
    """An eval-mode CPU copy, so exporting never changes the caller's network (mode, device)."""
    return copy.deepcopy(network).cpu().eval()


def _example(batch: int, in_channels: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """Reproducible random images in [0, 1] (the range of the pipeline's slices)."""
    generator = torch.Generator().manual_seed(seed + batch)
    return torch.rand(batch, in_channels, image_size, image_size, generator=generator)


def export_onnx(
    network: nn.Module, path: str | Path, image_size: int, in_channels: int, opset: int = DEFAULT_OPSET
) -> Path:
    """Write ``network``'s eval-mode logits path to ``path`` as ONNX with a dynamic batch axis."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _eval_copy(network)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad(), atomic_path(path) as temporary:
        torch.onnx.export(
            model,
            (_example(2, in_channels, image_size),),
            temporary,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        onnx.checker.check_model(str(temporary))
    return path


def file_opset(path: str | Path) -> int:
    """The default-domain opset an ONNX file really declares (torch may write a newer one than asked)."""
    model = onnx.load(str(path), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def export_torchscript(network: nn.Module, path: str | Path, image_size: int, in_channels: int) -> Path:
    """Trace ``network``'s eval-mode logits path and save it as TorchScript at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _eval_copy(network)
    with torch.no_grad():
        traced = torch.jit.trace(model, _example(2, in_channels, image_size), check_trace=False)
    with atomic_path(path) as temporary:
        torch.jit.save(traced, str(temporary))
    return path


def _max_difference(
    network: nn.Module,
    candidate: Callable[[np.ndarray], np.ndarray],
    shape: tuple[int, int],
    batch_sizes: Sequence[int],
    atol: float,
    label: str,
) -> float:
    """Largest |candidate - torch| logit difference over ``batch_sizes``; raise above ``atol``."""
    model = _eval_copy(network)
    in_channels, image_size = shape
    worst = 0.0
    for batch in batch_sizes:
        x = _example(batch, in_channels, image_size, seed=1)
        with torch.no_grad():
            expected = model(x).numpy()
        got = np.asarray(candidate(x.numpy()))
        if got.shape != expected.shape:
            raise ValueError(
                f"{label}: output shape {got.shape} at batch {batch}, torch gives {expected.shape}"
            )
        worst = max(worst, float(np.abs(got - expected).max()))
    if not worst <= atol:
        raise ValueError(
            f"{label}: max abs logit difference {worst:.3g} vs PyTorch exceeds {atol:g} "
            f"(batch sizes {list(batch_sizes)}); the exported model does not reproduce the network"
        )
    return worst


def verify_onnx(
    network: nn.Module,
    onnx_path: str | Path,
    batch_sizes: Sequence[int] = (1, 3),
    atol: float = DEFAULT_ATOL,
) -> float:
    """Max abs difference between ONNX Runtime (CPU) and eval-mode torch logits on random inputs of each
    batch size (the channel count and image size are read from the ONNX input); ValueError above
    ``atol``."""
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    _, in_channels, height, width = model_input.shape
    if not all(isinstance(d, int) for d in (in_channels, height, width)) or height != width:
        raise ValueError(
            f"{onnx_path}: expected input [batch, C, S, S] with fixed C and S, got {model_input.shape}"
        )
    return _max_difference(
        network,
        lambda x: session.run(None, {model_input.name: x})[0],
        (in_channels, height),
        batch_sizes,
        atol,
        f"ONNX model {onnx_path}",
    )


def verify_torchscript(
    network: nn.Module,
    torchscript_path: str | Path,
    image_size: int,
    in_channels: int,
    batch_sizes: Sequence[int] = (1, 3),
    atol: float = DEFAULT_ATOL,
) -> float:
    """Max abs difference between the loaded TorchScript module and eval-mode torch logits; ValueError
    above ``atol``."""
    scripted = torch.jit.load(str(torchscript_path), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return scripted(torch.from_numpy(x)).numpy()

    return _max_difference(
        network, run, (in_channels, image_size), batch_sizes, atol, f"TorchScript model {torchscript_path}"
    )


def export_network(
    network: nn.Module,
    output: str | Path,
    name: str,
    image_size: int,
    in_channels: int,
    opset: int = DEFAULT_OPSET,
    batch_sizes: Sequence[int] = (1, 3),
    atol: float = DEFAULT_ATOL,
) -> dict[str, Any]:
    """ONNX + TorchScript export of ``network`` into ``output`` as ``<name>.onnx`` / ``<name>.ts``, both
    verified; returns the facts for ``<name>.export.json`` (files, hashes, max differences)."""
    output = Path(output)
    onnx_path = export_onnx(network, output / f"{name}.onnx", image_size, in_channels, opset)
    torchscript_path = export_torchscript(network, output / f"{name}.ts", image_size, in_channels)
    return {
        "image_size": image_size,
        "in_channels": in_channels,
        "parameters": count_parameters(network),
        "gflops": forward_gflops(network, image_size, in_channels),
        "onnx": {
            "file": onnx_path.name,
            "sha256": file_sha256(onnx_path),
            "opset": file_opset(onnx_path),
            "input": f"{INPUT_NAME} [batch, {in_channels}, {image_size}, {image_size}] float32",
            "output": f"{OUTPUT_NAME} [batch, classes]",
            "max_abs_diff": verify_onnx(network, onnx_path, batch_sizes, atol),
        },
        "torchscript": {
            "file": torchscript_path.name,
            "sha256": file_sha256(torchscript_path),
            "max_abs_diff": verify_torchscript(
                network, torchscript_path, image_size, in_channels, batch_sizes, atol
            ),
        },
        "verified_batch_sizes": list(batch_sizes),
        "atol": atol,
        "torch": torch.__version__,
    }


def build_parser() -> argparse.ArgumentParser:
    """The `python -m pipeline export` command line."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline export",
        description="Export a trained HDKD network to ONNX (dynamic batch) and TorchScript and verify both "
        "against PyTorch (max abs logit difference at the given batch sizes).",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="a training checkpoint (model.pt of a bundle): the network is rebuilt from the settings it "
        "records and its weights are loaded strictly",
    )
    parser.add_argument(
        "--output", type=Path, required=True, help="folder for <name>.onnx, .ts, .export.json"
    )
    parser.add_argument(
        "--role",
        choices=MODELS,
        help="expected network role (default: the checkpoint's; an error if it differs)",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help="expected network profile (default: the checkpoint's; an error if it differs)",
    )
    parser.add_argument("--name", help="file name stem (default: the role)")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[1, 3],
        help="batch sizes of the verification (default: 1 3)",
    )
    parser.add_argument(
        "--int8-split",
        type=Path,
        metavar="SPLIT_CSV",
        help="also write <name>.int8.onnx, calibrated on training slices of this split file and checked "
        "against the float model on validation slices",
    )
    parser.add_argument(
        "--class-names",
        help="expected comma-separated class names (default: the checkpoint's; an error if they differ)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=64,
        help="training slices for the int8 calibration, and validation slices for its check (default 64)",
    )
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=0.9,
        help="least fraction of validation slices on which int8 and float predict the same class; below "
        "it the int8 file is not shipped and the record says why (default 0.9)",
    )
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="register the exported model in the MLflow Model Registry as a version of NAME (the store of "
        "MLFLOW_TRACKING_URI; checked before anything is written), with the ONNX files inside it",
    )
    parser.add_argument(
        "--test-report",
        type=Path,
        help="with --register: the model's evaluation report (metrics.json) whose headline test metrics "
        "tag the version",
    )
    parser.add_argument(
        "--experiment", default="hdkd", help="MLflow experiment of the export run (default %(default)s)"
    )
    parser.add_argument(
        "--atol",
        type=float,
        default=DEFAULT_ATOL,
        help=f"largest allowed max abs logit difference (default {DEFAULT_ATOL:g})",
    )
    return parser


def _export_int8(args: argparse.Namespace, output_stem: Path, settings: NetworkSettings) -> dict[str, Any]:
    """Quantize ``<stem>.onnx`` to ``<stem>.int8.onnx`` (calibrated on the training split, checked on the
    validation split); returns its facts for the export record."""
    calibration, holdout = (
        split_images(
            args.int8_split,
            split,
            list(settings.class_names),
            image_size=settings.image_size,
            in_channels=settings.in_channels,
            count=args.calibration_images,
        )
        for split in ("train", "val")
    )
    float_path = output_stem.with_suffix(".onnx")
    int8_path = quantize_int8(float_path, output_stem.with_suffix(".int8.onnx"), calibration)
    facts = {
        "file": int8_path.name,
        "sha256": file_sha256(int8_path),
        "quantization": "static QDQ, per-channel int8 weights, uint8 activations (ONNX Runtime)",
        "calibration": {"split": "train", "images": len(calibration)},
        "check_split": "val",
        **compare_predictions(float_path, int8_path, holdout),
    }
    if facts["top1_agreement"] >= args.min_agreement:
        return {**facts, "shipped": True}
    # an int8 model that disagrees with the float one is not shipped; the float ONNX model stands
    int8_path.unlink()
    reason = (
        f"top-1 agreement with the float model {facts['top1_agreement']:.1%} on {facts['images']} validation "
        f"slices is below --min-agreement {args.min_agreement:.1%}: not shipped, use {float_path.name}"
    )
    return {**facts, "file": None, "sha256": None, "shipped": False, "reason": reason}


def main(argv: list[str]) -> int:
    """CLI entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.register and not args.test_report:
        parser.error("--register needs --test-report")
    class_names = args.class_names.split(",") if args.class_names else None
    try:
        settings, network = load_trained(
            args.checkpoint, role=args.role, profile=args.profile, class_names=class_names
        )
        name = args.name or settings.role
        if args.register:
            from pipeline.tracking.registry import check_registry

            check_registry(args.register, settings.state_dict(), args.experiment)
            test_metrics = _test_metrics(args.test_report)
        facts = export_network(
            network,
            args.output,
            name,
            network.image_size,
            network.in_channels,
            args.opset,
            args.batch_sizes,
            args.atol,
        )
        if args.int8_split:
            facts["onnx_int8"] = _export_int8(args, output_stem=args.output / name, settings=settings)
    except (ValueError, FileNotFoundError, TypeError) as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 2
    record = {
        **settings.state_dict(),
        "checkpoint_sha256": file_sha256(args.checkpoint),
        "num_classes": settings.num_classes,
        **facts,
    }
    write_json(args.output / f"{name}.export.json", record, indent=2)
    for kind in ("onnx", "torchscript"):
        written = facts[kind]
        print(f"wrote {args.output / written['file']} (max abs logit diff {written['max_abs_diff']:.2g})")
    if "onnx_int8" in facts:
        written = facts["onnx_int8"]
        if written["shipped"]:
            print(
                f"wrote {args.output / written['file']} (top-1 agreement with float "
                f"{written['top1_agreement']:.1%} on {written['images']} validation slices)"
            )
        else:
            print(f"export: warning: int8 model {written['reason']}", file=sys.stderr)
    if args.register:
        _register(args, settings, facts, test_metrics)
    return 0


def _test_metrics(report: Path) -> dict[str, float]:
    """``test_<metric>`` for the headline metrics of an evaluation report."""
    from pipeline.evaluate.metrics import HEADLINE

    if not report.is_file():
        raise FileNotFoundError(f"{report}: evaluation report not found (run the evaluate stage first)")
    values = json.loads(report.read_text())
    return {f"test_{key}": float(values[key]) for key in HEADLINE if values.get(key) is not None}


def _register(
    args: argparse.Namespace, settings: NetworkSettings, facts: dict[str, Any], test_metrics: dict[str, float]
) -> None:
    """Register the checkpoint with the ONNX files as a version of ``args.register``."""
    from pipeline.tracking import training_run_of
    from pipeline.tracking.registry import register_model

    files = {
        kind: args.output / facts[kind]["file"]
        for kind in ("onnx", "onnx_int8")
        if kind in facts and facts[kind]["file"] is not None
    }
    version, new = register_model(
        args.register,
        args.checkpoint,
        settings.state_dict(),
        files,
        training_run_of(args.checkpoint),
        test_metrics,
        args.experiment,
    )
    state = "registered" if new else "already registered (same files)"
    print(f"{state}: models:/{version.name}/{version.version}")
