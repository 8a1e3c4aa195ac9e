"""The training bundles' checkpoints are written atomically: the ignite ``Checkpoint`` handlers built by
MONAI's ConfigParser from bundles/common/hdkd_common.json (``validate#best_model`` writing ``model.pt``,
``train#checkpoint`` writing ``checkpoint_epoch=N.pt``) leave the previous complete file, or none, when a
save fails, never a file cut short or a temporary file.

A save fails here as in real runs: a value in the checkpoint that cannot be serialised, or a full disk,
stood in for by RLIMIT_FSIZE (every write past the limit fails with EFBIG, as ENOSPC would; Python ignores
SIGXFSZ), lowered for the failing save only."""

from __future__ import annotations

import pickle
import resource
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from bundle_testing import ROOT
from ignite.engine import Engine
from monai.bundle import ConfigParser

from pipeline.bundle import prepare_models_dir

KEY_METRIC = "val_balanced_accuracy"


class Settings:
    """Network settings whose next ``state_dict`` can hold a value pickle refuses (a local function)."""

    def __init__(self) -> None:
        self.unserialisable = False

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"role": "teacher"}
        if self.unserialisable:
            state["hook"] = lambda: None
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unserialisable = "hook" in state


def _parser(models_dir: Path, network: torch.nn.Module, settings: Settings) -> ConfigParser:
    """The shared bundle config with the bundle-level items the checkpoint handlers refer to."""
    parser = ConfigParser()
    parser.read_config(ROOT / "bundles" / "common" / "hdkd_common.json")
    parser["models_dir"] = str(models_dir)
    parser["not_rank0"] = False
    parser["network_def"] = network
    parser["network_settings"] = settings
    return parser


@contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail (EFBIG) inside the block: a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _validated(score: float, epoch: int) -> Engine:
    """An evaluator whose last epoch (``epoch``) scored ``score`` on the key metric."""
    engine = Engine(lambda engine, batch: None)
    engine.state.epoch = epoch
    engine.state.metrics = {KEY_METRIC: score}
    return engine


def _fail_next_save(
    how: str, network: torch.nn.Module, settings: Settings
) -> tuple[AbstractContextManager[Any], tuple[type[BaseException], ...]]:
    """Make the next save fail by ``how``: the context to run it in and the errors it may raise."""
    if how == "unserialisable":
        settings.unserialisable = True
        return nullcontext(), (pickle.PicklingError, AttributeError)
    network.register_buffer("padding", torch.zeros(1 << 20))  # 4 MiB more to write
    return _file_size_limit(256 * 1024), (OSError, RuntimeError)


@pytest.mark.parametrize("how", ["unserialisable", "full_disk"])
def test_a_failed_save_of_a_better_model_keeps_the_previous_model_pt(tmp_path: Path, how: str) -> None:
    network, settings = torch.nn.Linear(8, 4), Settings()
    best_model = _parser(tmp_path, network, settings).get_parsed_content("validate#best_model")
    best_model(_validated(0.5, epoch=1))
    model_pt = tmp_path / "model.pt"
    previous = model_pt.read_bytes()
    assert torch.load(model_pt, weights_only=True)["network_settings"] == {"role": "teacher"}

    with torch.no_grad():
        network.weight.add_(1.0)
    best_model(_validated(0.4, epoch=2))  # not better: model.pt stays
    assert model_pt.read_bytes() == previous

    limit, errors = _fail_next_save(how, network, settings)
    with limit, pytest.raises(errors):
        best_model(_validated(0.7, epoch=3))
    assert model_pt.read_bytes() == previous
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pt"]  # no temporary file left

    settings.unserialisable = False
    best_model(_validated(0.8, epoch=4))  # the next better model does replace it
    saved = torch.load(model_pt, weights_only=True)
    torch.testing.assert_close(saved["network"]["weight"], network.weight, rtol=0, atol=0)


def test_a_failed_epoch_checkpoint_leaves_none_and_the_run_starts_afresh(tmp_path: Path) -> None:
    network, settings = torch.nn.Linear(8, 4), Settings()
    parser = _parser(tmp_path, network, settings)
    trainer = Engine(lambda engine, batch: None)
    trainer.state.max_epochs, trainer.state.epoch_length = 3, 1
    parser["train#trainer"] = trainer
    parser["optimizer"] = torch.optim.SGD(network.parameters(), lr=0.1)
    parser["lr_scheduler"] = torch.optim.lr_scheduler.StepLR(parser["optimizer"], step_size=1)
    parser["validate#kept"] = settings
    checkpoint = parser.get_parsed_content("train#checkpoint")

    trainer.state.epoch = trainer.state.iteration = 1
    checkpoint(trainer)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]
    saved = torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)
    assert set(saved) == {"network", "network_settings", "optimizer", "lr_scheduler", "trainer", "best_model",
                          "kept_report"}

    trainer.state.epoch = trainer.state.iteration = 2
    limit, errors = _fail_next_save("full_disk", network, settings)
    with limit, pytest.raises(errors):
        checkpoint(trainer)
    # ignite removes the previous epoch's file before writing the next one: none is left, never a cut one
    assert list(tmp_path.iterdir()) == []
    assert prepare_models_dir(tmp_path, 3) is None
