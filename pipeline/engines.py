"""Inference engines for a trained network, and the choice of the fastest one on this machine.

Candidates: torch eager in float32 (``torch-fp32``, the reference) and under bfloat16 autocast
(``torch-bf16``, offered by "auto" only where bf16 is native), ONNX Runtime in float32
(``onnxruntime-fp32``) and int8 (``onnxruntime-int8``: static QDQ from ``pipeline.quantize``, calibrated
on the images it is first given), and OpenVINO float32 (``openvino-fp32``, only when the optional
``openvino`` package is installed). ONNX Runtime and OpenVINO run on the CPU only.

``select_engine(..., "auto")`` times every candidate once on a full batch, checks its predictions
against torch float32 on the same images (top-1 agreement and largest class-probability change), keeps
the fastest that agrees, and caches that choice under a key of this machine (CPU model and features,
threads, library versions), the model (hash of its weights) and the input shape, in the user cache
folder (``$HDKD_CACHE_DIR``, else ``$XDG_CACHE_HOME/hdkd-pipeline``, else ``~/.cache/hdkd-pipeline``;
never the repository). Later runs build the cached engine without timing anything.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from pipeline.device import autocast, cpu_report, native_bf16

logger = logging.getLogger(__name__)

TORCH_FP32 = "torch-fp32"
TORCH_BF16 = "torch-bf16"
ORT_FP32 = "onnxruntime-fp32"
ORT_INT8 = "onnxruntime-int8"
OPENVINO_FP32 = "openvino-fp32"
ENGINES = (TORCH_FP32, TORCH_BF16, ORT_FP32, ORT_INT8, OPENVINO_FP32)
AUTO = "auto"
CACHE_ENV = "HDKD_CACHE_DIR"
CACHE_FILE = "engines.json"
DEFAULT_MIN_AGREEMENT = 0.95  # least top-1 agreement with torch float32 for an engine to be chosen
DEFAULT_SECONDS = 1.0  # timed seconds per candidate when choosing

Runner = Callable[[torch.Tensor], torch.Tensor]  # [B, C, H, W] images -> [B, classes] float32 logits (CPU)


def seconds_per_call(run: Callable[[], object], seconds: float) -> float:
    """Seconds per call of ``run``: one warm-up call, then calls until ``seconds`` have passed (at least
    one)."""
    run()
    calls, start = 0, time.perf_counter()
    while calls < 1 or time.perf_counter() - start < seconds:
        run()
        calls += 1
    return (time.perf_counter() - start) / calls


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def available_engines(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """The engines that can run on ``device`` with the installed packages (torch-bf16 always listed:
    it runs anywhere, emulated where bf16 is not native)."""
    names = [TORCH_FP32, TORCH_BF16]
    if torch.device(device).type == "cpu":
        if _installed("onnxruntime") and _installed("onnx"):
            names += [ORT_FP32, ORT_INT8]
        if _installed("openvino") and _installed("onnx"):
            names.append(OPENVINO_FP32)
    return tuple(names)


def auto_candidates(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """The engines "auto" times on ``device``: the available ones, torch-bf16 only where bf16 is native
    (emulated bf16 is several times slower than float32, so timing it is wasted)."""
    return tuple(name for name in available_engines(device) if name != TORCH_BF16 or native_bf16(device))


def cache_dir() -> Path:
    """The user cache folder of the pipeline (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hdkd-pipeline"


def model_key(network: nn.Module, shape: tuple[int, ...]) -> str:
    """Hash of the network's class, weights and buffers, and the per-image input shape (C, H, W)."""
    digest = hashlib.sha256(f"{type(network).__qualname__}{tuple(shape)}".encode())
    for name, tensor in network.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{value.dtype}{tuple(value.shape)}".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()[:24]


def machine_key(device: torch.device | str = "cpu") -> str:
    """Hash of what decides engine speed here: CPU model and features, torch's CPU capability, threads,
    the device and the versions of torch, ONNX Runtime and OpenVINO."""
    report = cpu_report()
    facts = [
        report.model,
        ",".join(report.flags),
        report.torch_capability,
        str(torch.get_num_threads()),
        str(torch.device(device)),
        torch.__version__,
        _version("onnxruntime"),
        _version("openvino"),
    ]
    return hashlib.sha256("|".join(facts).encode()).hexdigest()[:24]


def _torch_runner(network: nn.Module, bf16: bool) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(x.device, bf16):
            return network(x).float().cpu()

    return run


def _onnx_file(network: nn.Module, folder: Path, shape: tuple[int, ...]) -> Path:
    """The float ONNX export of ``network`` in ``folder`` (written on first use)."""
    from pipeline.export import export_onnx

    path = folder / "model.onnx"
    if not path.is_file():
        channels, size = shape[0], shape[1]
        export_onnx(network, folder / "model.partial.onnx", size, channels).replace(path)
    return path


def _int8_file(onnx_path: Path, calibration: np.ndarray | None) -> Path:
    """The int8 copy of ``onnx_path`` next to it (written on first use, calibrated on ``calibration``)."""
    from pipeline.quantize import quantize_int8

    path = onnx_path.with_name("model.int8.onnx")
    if not path.is_file():
        if calibration is None:
            raise ValueError(f"{ORT_INT8} needs calibration images the first time it is built")
        quantize_int8(onnx_path, onnx_path.with_name("model.int8.partial.onnx"), calibration).replace(path)
    return path


def _onnxruntime_runner(path: Path) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":  # a shared machine: no spin-waiting
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().float().numpy()})[0])

    return run


def _openvino_runner(path: Path) -> Runner:
    import openvino

    # float32 explicitly: on a CPU with native bf16 OpenVINO's default inference precision is bf16
    compiled = openvino.Core().compile_model(
        str(path),
        "CPU",
        {
            openvino.properties.inference_num_threads: torch.get_num_threads(),
            openvino.properties.hint.inference_precision: openvino.Type.f32,
        },
    )

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(compiled(x.detach().cpu().float().numpy())[0]).copy())

    return run


def build_runner(
    name: str,
    network: nn.Module,
    shape: tuple[int, ...],
    folder: Path,
    calibration: np.ndarray | None = None,
) -> Runner:
    """Engine ``name`` for ``network`` (eval mode) on images of ``shape`` (C, H, W); exported models
    are kept in ``folder``; ``calibration`` images are needed the first time int8 is built."""
    if name not in ENGINES:
        raise ValueError(f"engine {name!r}: must be one of {[AUTO, *ENGINES]}")
    network.eval()
    if name in (TORCH_FP32, TORCH_BF16):
        return _torch_runner(network, bf16=name == TORCH_BF16)
    device = next(network.parameters()).device
    if name not in available_engines(device):
        raise ValueError(
            f"engine {name!r} is not available on {device} here (ONNX Runtime and OpenVINO run on the CPU; "
            "install them with `pip install -e '.[export]'` / `pip install -e '.[openvino]'`)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = _onnx_file(network, folder, shape)
    if name == ORT_FP32:
        return _onnxruntime_runner(onnx_path)
    if name == ORT_INT8:
        return _onnxruntime_runner(_int8_file(onnx_path, calibration))
    return _openvino_runner(onnx_path)


@dataclass(frozen=True)
class Trial:
    """One engine timed on one batch and compared with torch float32 on the same images."""

    engine: str
    images_per_s: float
    top1_agreement: float
    max_probability_change: float


def compare(reference: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement, largest absolute class-probability change) of ``logits`` against
    ``reference`` logits."""
    expected, got = torch.softmax(reference.float(), 1), torch.softmax(logits.float(), 1)
    agreement = (expected.argmax(1) == got.argmax(1)).float().mean().item()
    return agreement, (expected - got).abs().max().item()


def measure(runners: dict[str, Runner], images: torch.Tensor, seconds: float) -> list[Trial]:
    """Time every runner on ``images`` and compare it with the ``torch-fp32`` runner's output."""
    reference = runners[TORCH_FP32](images)
    trials = []
    for name, run in runners.items():
        agreement, change = compare(reference, run(images))
        per_call = seconds_per_call(lambda run=run: run(images), seconds)
        trials.append(Trial(name, len(images) / per_call, agreement, change))
    return trials


def fastest(trials: list[Trial], min_agreement: float) -> Trial:
    """The fastest trial whose top-1 agreement with float32 is at least ``min_agreement``."""
    eligible = [trial for trial in trials if trial.top1_agreement >= min_agreement]
    return max(eligible, key=lambda trial: trial.images_per_s)


@dataclass
class Selection:
    """The engine in use, how it was chosen ("requested", "cached" or "measured") and the trials."""

    engine: str
    how: str
    run: Runner = field(repr=False)
    trials: list[Trial] = field(default_factory=list)

    def summary(self) -> str:
        """One line per trial for logs."""
        lines = [f"inference engine {self.engine} ({self.how})"]
        lines += [
            f"  {t.engine}: {t.images_per_s:.1f} images/s, top-1 agreement with float32 "
            f"{t.top1_agreement:.1%}, max probability change {t.max_probability_change:.2g}"
            for t in self.trials
        ]
        return "\n".join(lines)


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return content if isinstance(content, dict) else {}


def _full_batch(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``images`` repeated (or cut) to ``batch_size`` rows."""
    repeats = -(-batch_size // len(images))
    return images.repeat(repeats, *([1] * (images.dim() - 1)))[:batch_size]


def select_engine(
    network: nn.Module,
    images: torch.Tensor,
    requested: str = AUTO,
    batch_size: int | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    seconds: float = DEFAULT_SECONDS,
    cache: Path | None = None,
) -> Selection:
    """The engine ``requested`` (a name of ENGINES, or "auto") for ``network`` on images like ``images``.

    "auto" reads the choice cached for this machine, model and input shape, or else times every
    candidate (``auto_candidates``) on ``images`` repeated to ``batch_size`` (default: as many as given),
    keeps the fastest whose top-1 agreement with torch float32 is at least ``min_agreement``, and caches
    it. ``images`` also calibrate the int8 model the first time it is built. ``cache`` is the cache
    folder (default ``cache_dir()``).
    """
    if requested != AUTO and requested not in ENGINES:
        raise ValueError(f"engine {requested!r}: must be one of {[AUTO, *ENGINES]}")
    network.eval()
    device = images.device
    shape = tuple(images.shape[1:])
    folder = cache or cache_dir()
    models = folder / "models" / model_key(network, shape)
    calibration = images.detach().cpu().float().numpy()
    if requested != AUTO:
        return Selection(requested, "requested", build_runner(requested, network, shape, models, calibration))
    batch = _full_batch(images, batch_size or len(images))
    key = f"{machine_key(device)}/{model_key(network, shape)}/batch{len(batch)}"
    cache_file = folder / CACHE_FILE
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_file) + ".lock"):
        entry = _read_cache(cache_file).get(key)
        if entry and entry.get("engine") in available_engines(device):
            trials = [Trial(**trial) for trial in entry.get("trials", [])]
            run = build_runner(entry["engine"], network, shape, models, calibration)
            return Selection(entry["engine"], "cached", run, trials)
        runners = {
            name: build_runner(name, network, shape, models, calibration) for name in auto_candidates(device)
        }
        trials = measure(runners, batch, seconds)
        best = fastest(trials, min_agreement)
        content = _read_cache(cache_file)
        content[key] = {
            "engine": best.engine,
            "cpu": cpu_report().summary(),
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "trials": [asdict(trial) for trial in trials],
        }
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".json") as handle:
            json.dump(content, handle, indent=2)
        Path(handle.name).replace(cache_file)
    return Selection(best.engine, "measured", runners[best.engine], trials)
