"""Device and mixed-precision selection shared by every training and evaluation entry point."""

from __future__ import annotations

import torch


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
    """Automatic mixed precision is used on CUDA only; CPU runs stay in float32."""
    return device.type == "cuda"
