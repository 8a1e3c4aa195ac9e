"""HDKD networks: the CNN teacher, the hybrid student (DFLT) and their building blocks."""

from pipeline.networks.blocks import CBAM, MBCSA, MBConv
from pipeline.networks.factory import PROFILES, build_network, check_feature_compatibility
from pipeline.networks.output import HDKDOutput
from pipeline.networks.student import DFLT, HDKDStudent
from pipeline.networks.teacher import HDKDTeacher

__all__ = [
    "CBAM",
    "DFLT",
    "MBCSA",
    "PROFILES",
    "HDKDOutput",
    "HDKDStudent",
    "HDKDTeacher",
    "MBConv",
    "build_network",
    "check_feature_compatibility",
]
