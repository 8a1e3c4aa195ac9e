"""Device, CPU features and mixed-precision selection shared by every training and evaluation entry point.

The CPU report is read at run time (``/proc/cpuinfo`` flags and torch's dispatch level), never assumed:
these machines are sometimes AMD without AVX-512, sometimes Intel Xeons with AMX-bf16.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
CPUINFO = Path("/proc/cpuinfo")
# cpuinfo flag -> what it gives; the ones that decide speed for this pipeline
FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI (int8)",
    "avx_vnni": "AVX-VNNI (int8)",
    "avx512_bf16": "AVX-512 bf16",
    "amx_tile": "AMX",
    "amx_bf16": "AMX bf16",
    "amx_int8": "AMX int8",
    "bf16": "Arm bf16",
}
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # bf16 dot products in hardware (x86, Arm)
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def select_device(requested: str = "auto") -> torch.device:
    """Return the torch device for ``requested`` ("auto", "cpu", "cuda" or "cuda:N").

    "auto" picks CUDA when present and the CPU otherwise; an explicit CUDA request on a
    machine without a GPU is an error rather than a silent fallback.
    """
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device '{requested}' was requested but no CUDA GPU is available on this machine; "
            "use device 'auto' or 'cpu'"
        )
    return device


def amp_enabled(device: torch.device) -> bool:
    """float16 automatic mixed precision (with a gradient scaler) is used on CUDA only."""
    return device.type == "cuda"


@dataclass(frozen=True)
class CpuReport:
    """What this CPU offers: its model name, the speed-relevant cpuinfo flags it has, torch's CPU
    dispatch level (``torch.backends.cpu.get_cpu_capability()``) and the logical CPUs."""

    model: str
    flags: tuple[str, ...]
    torch_capability: str
    logical_cpus: int

    @property
    def native_bf16(self) -> bool:
        """bf16 dot products in hardware (AVX-512-bf16, AMX-bf16 or Arm bf16)."""
        return any(flag in self.flags for flag in BF16_FLAGS)

    @property
    def native_int8(self) -> bool:
        """int8 dot-product instructions (VNNI or AMX-int8)."""
        return any(flag in self.flags for flag in INT8_FLAGS)

    def summary(self) -> str:
        """One line for benchmark headers and logs."""
        found = ", ".join(FEATURES[flag] for flag in self.flags) or "none of " + ", ".join(FEATURES.values())
        return (
            f"CPU {self.model} ({self.logical_cpus} logical CPUs); features: {found}; "
            f"torch capability {self.torch_capability}; native bf16 {'yes' if self.native_bf16 else 'no'}; "
            f"int8 dot products {'yes' if self.native_int8 else 'no'}"
        )

    def tags(self) -> dict[str, str]:
        """The report as MLflow tags (``cpu.*``)."""
        return {
            "cpu.model": self.model,
            "cpu.features": ",".join(self.flags) or "none",
            "cpu.torch_capability": self.torch_capability,
            "cpu.native_bf16": str(self.native_bf16).lower(),
            "cpu.logical_cpus": str(self.logical_cpus),
        }


def parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...]]:
    """(model name, speed-relevant flags in FEATURES order) from the text of ``/proc/cpuinfo``
    (x86 "model name"/"flags", Arm "Features"); ("", ()) for lines it does not know."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, tuple(flag for flag in FEATURES if flag in flags)


def read_cpu_report(cpuinfo: str | None = None) -> CpuReport:
    """The report for ``cpuinfo`` (text of /proc/cpuinfo; read from the machine when None). Without a
    /proc/cpuinfo (not Linux) the flags are unknown and reported as none."""
    if cpuinfo is None:
        cpuinfo = CPUINFO.read_text(errors="replace") if CPUINFO.is_file() else ""
    model, flags = parse_cpuinfo(cpuinfo)
    return CpuReport(
        model=model or platform.processor() or platform.machine() or "unknown",
        flags=flags,
        torch_capability=torch.backends.cpu.get_cpu_capability(),
        logical_cpus=os.cpu_count() or 1,
    )


@lru_cache(maxsize=1)
def cpu_report() -> CpuReport:
    """This machine's CPU report (read once per process)."""
    return read_cpu_report()


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX-512-bf16 / AMX-bf16 / Arm bf16 (elsewhere bf16 is emulated and slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_report().native_bf16


def check_precision(name: str, value: str) -> str:
    """``value`` if it is one of PRECISIONS, else a ValueError naming the setting ``name``."""
    if value not in PRECISIONS:
        raise ValueError(f"{name} = {value!r}: must be one of {list(PRECISIONS)}")
    return value


def use_bf16(precision: str, device: torch.device | str, name: str = "precision") -> bool:
    """Whether to run under bfloat16 autocast for setting ``name`` = ``precision``: "bf16" always,
    "fp32" never, "auto" when ``device`` computes bf16 natively."""
    check_precision(name, precision)
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


@contextlib.contextmanager
def autocast(device: torch.device | str, bf16: bool) -> Iterator[None]:
    """bfloat16 autocast on ``device`` when ``bf16``, else nothing."""
    if not bf16:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        yield
