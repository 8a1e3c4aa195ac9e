"""HDKD networks: the CNN teacher, the hybrid student (DFLT), their building blocks, and building a
network from settings or from a training checkpoint."""

from pipeline.networks.blocks import CBAM, MBCSA, MBConv
from pipeline.networks.checkpoint import (
    SETTINGS_KEY,
    load_trained,
    load_weights,
    read_settings,
    read_state_dict,
)
from pipeline.networks.factory import (
    PROFILES,
    NetworkSettings,
    build_network,
    check_feature_compatibility,
    check_profile,
)
from pipeline.networks.output import HDKDOutput
from pipeline.networks.student import DFLT, HDKDStudent
from pipeline.networks.teacher import HDKDTeacher

__all__ = [
    "CBAM",
    "DFLT",
    "MBCSA",
    "PROFILES",
    "SETTINGS_KEY",
    "HDKDOutput",
    "HDKDStudent",
    "HDKDTeacher",
    "MBConv",
    "NetworkSettings",
    "build_network",
    "check_feature_compatibility",
    "check_profile",
    "load_trained",
    "load_weights",
    "read_settings",
    "read_state_dict",
]
