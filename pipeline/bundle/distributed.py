"""torch.distributed helpers for the bundles (single process unless launched by ``torchrun``)."""

from __future__ import annotations

import os

import ignite.distributed as idist
import torch
import torch.distributed as dist

from pipeline.device import select_device


def is_distributed() -> bool:
    """Whether a process group is up."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def init_distributed() -> None:
    """Join the ``torchrun`` process group once (NCCL on CUDA, gloo on the CPU) and set up ignite's view of
    it on every rank together: ignite does that lazily with a collective call, which would deadlock if only
    rank 0 made it (e.g. in a rank-0-only CheckpointSaver)."""
    if "LOCAL_RANK" not in os.environ:
        raise RuntimeError(
            "multi_gpu_train.json must be launched by torchrun, e.g. torchrun --nproc_per_node 2 -m "
            "monai.bundle run --config_file \"['<bundle>/configs/train.json','<bundle>/configs/"
            "multi_gpu_train.json']\""
        )
    if not is_distributed():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    idist.sync()


def process_device(requested: str = "auto", distributed: bool = False) -> torch.device:
    """The device of this process: ``select_device(requested)``, or under DDP the rank's own GPU
    (``cuda:$LOCAL_RANK``) when CUDA is present."""
    device = select_device(requested)
    if distributed and device.type == "cuda":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
    return device


def shutdown_distributed() -> None:
    """Leave the process group, if any."""
    if is_distributed():
        dist.destroy_process_group()
