"""Strict loading of network weights (the distillation teacher above all) from a checkpoint file, and
the network settings a training checkpoint records, so that a trained network is rebuilt from its file
alone."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from pipeline.networks.factory import NetworkSettings

NETWORK_KEYS = ("network", "model")
# the entry of a training checkpoint that holds NetworkSettings.state_dict(): the save_dict key of the
# bundles' ignite Checkpoints (bundles/common/hdkd_common.json)
SETTINGS_KEY = "network_settings"
LISTED = 8

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _listing(keys: list[str]) -> str:
    """At most ``LISTED`` keys, then how many more."""
    shown = ", ".join(keys[:LISTED])
    return shown + (f" ... (+{len(keys) - LISTED} more)" if len(keys) > LISTED else "")


def _is_state_dict(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(key, str) and isinstance(item, torch.Tensor) for key, item in value.items())
    )


def read_checkpoint(path: str | Path) -> Any:
    """The content of the PyTorch file ``path``, loaded with ``weights_only=True`` onto the CPU; a missing
    or unreadable file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # garbage bytes fail anywhere in the unpickler (even IndexError)
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint: {type(error).__name__}: {error}"
        ) from error


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The network state_dict in ``path``: a raw state_dict, or a MONAI CheckpointSaver / ignite
    ModelCheckpoint dict holding it under "network" or "model" (other entries such as "optimizer" or
    "network_settings" are ignored). Loaded with ``weights_only=True`` onto the CPU; clear errors for
    anything else."""
    content = read_checkpoint(path)
    if _is_state_dict(content):
        return dict(content)
    if isinstance(content, Mapping):
        found = [key for key in NETWORK_KEYS if key in content]
        if len(found) > 1:
            raise ValueError(f"checkpoint {path} holds both {found}: ambiguous which network to load")
        if found and _is_state_dict(content[found[0]]):
            return dict(content[found[0]])
        keys = [str(key) for key in content]
        raise ValueError(
            f"checkpoint {path} is neither a state_dict nor a dict with a state_dict under "
            f"{list(NETWORK_KEYS)}; "
            f"top-level keys: {_listing(keys)}"
        )
    raise ValueError(f"checkpoint {path} holds a {type(content).__name__}, not a state_dict")


def load_weights(network: ModuleT, path: str | Path) -> ModuleT:
    """Load ``path`` into ``network`` strictly and return ``network`` (so configs can chain it).

    Raises ValueError naming the file and the missing keys, unexpected keys and differing shapes
    (a wrong class count shows as the head's shape).
    """
    state = read_state_dict(path)
    expected = network.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [
        f"{key}: {tuple(state[key].shape)} in file vs {tuple(value.shape)} in network"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch ({len(shapes)}): {_listing(shapes)}")
    if problems:
        raise ValueError(f"checkpoint {path} does not match {type(network).__name__}: " + "; ".join(problems))
    network.load_state_dict(state, strict=True)
    return network


def read_settings(path: str | Path) -> NetworkSettings:
    """The network settings recorded in the training checkpoint ``path``; a checkpoint without them
    (written before checkpoints carried them, or a bare state_dict) is an error saying to retrain."""
    content = read_checkpoint(path)
    if not isinstance(content, Mapping) or not isinstance(content.get(SETTINGS_KEY), Mapping):
        raise ValueError(
            f"checkpoint {path} records no network settings (role, profile, image size, channels, classes): "
            "it predates checkpoints that carry them; retrain it with the current bundles (e.g. `dvc repro`)"
        )
    return NetworkSettings.from_dict(content[SETTINGS_KEY], f"checkpoint {path}")


def load_trained(path: str | Path, **explicit: Any) -> tuple[NetworkSettings, nn.Module]:
    """(settings, network) of the training checkpoint ``path``: the network its recorded settings
    describe, with its weights loaded strictly. ``explicit`` settings (role, profile, image_size,
    in_channels, class_names; None = not given) must agree with the record: else a ValueError naming
    both values."""
    settings = read_settings(path).check(f"checkpoint {path}", **explicit)
    return settings, load_weights(settings.build(), path)
