"""Helpers the MONAI bundle configs in ``bundles/`` call: paths, pre-flight checks, resuming,
distributed setup and trainer handlers."""

from pipeline.bundle.distributed import (
    init_distributed,
    process_device,
    rank,
    shutdown_distributed,
    world_size,
)
from pipeline.bundle.errors import BundleInputError, MissingInputError, readable_errors
from pipeline.bundle.handlers import (
    EpochCSVLogger,
    EpochLossTerms,
    EpochSeeding,
    FixedNameDiskSaver,
    KeptCheckpointReport,
    PeriodicReport,
    ReshuffleOnRestart,
    link_early_stopping,
    logits_and_labels,
)
from pipeline.bundle.precision import precision_inferer
from pipeline.bundle.preflight import (
    check_choice,
    check_split,
    class_list,
    flag,
    load_teacher,
    trained_settings,
)
from pipeline.bundle.resume import prepare_models_dir
from pipeline.bundle.schedules import lr_schedule, training_epochs, weight_decay_groups
from pipeline.bundle.workflow import bundle_root, check_overrides, executed_config

__all__ = [
    "BundleInputError",
    "EpochCSVLogger",
    "EpochLossTerms",
    "EpochSeeding",
    "FixedNameDiskSaver",
    "KeptCheckpointReport",
    "MissingInputError",
    "PeriodicReport",
    "ReshuffleOnRestart",
    "bundle_root",
    "check_choice",
    "check_overrides",
    "check_split",
    "class_list",
    "executed_config",
    "flag",
    "init_distributed",
    "link_early_stopping",
    "load_teacher",
    "logits_and_labels",
    "lr_schedule",
    "precision_inferer",
    "prepare_models_dir",
    "process_device",
    "rank",
    "readable_errors",
    "shutdown_distributed",
    "trained_settings",
    "training_epochs",
    "weight_decay_groups",
    "world_size",
]
