"""Named configurations of the HDKD networks and the teacher/student compatibility check."""

from __future__ import annotations

from typing import Any

from pipeline.networks.stages import StagedNetwork
from pipeline.networks.student import HDKDStudent
from pipeline.networks.teacher import HDKDTeacher

ROLES = ("teacher", "student", "hdkd")

# Constructor arguments per profile and role. "published": the networks of the paper's code (224 px RGB;
# teacher [6, 6, 9] blocks, student [2, 2, 3] + 3 transformer layers of width 256); 4 classes (brain
# tumour MRI) unless overridden. "demo": 64 px single-channel slices, small enough to train a few epochs
# on a few hundred slices on 2 CPU cores; the teacher is deeper than the student, stage shapes are equal.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "published": {
        "common": {"image_size": 224, "in_channels": 3, "num_classes": 4, "channels": (64, 96, 192)},
        "teacher": {"blocks": (6, 6, 9)},
        "student": {"blocks": (2, 2, 3), "dim": 256, "depth": 3, "heads": 8, "head_dim": 32, "mlp_ratio": 4},
    },
    "demo": {
        "common": {"image_size": 64, "in_channels": 1, "num_classes": 4, "channels": (16, 24, 32)},
        "teacher": {"blocks": (2, 2, 3), "head_hidden": 32},
        "student": {"blocks": (1, 1, 1), "dim": 64, "depth": 2, "heads": 2, "head_dim": 32, "mlp_ratio": 2},
    },
}


def build_network(role: str, profile: str = "published", **overrides: Any) -> HDKDTeacher | HDKDStudent:
    """A network by ``role`` ("teacher", "student" = baseline without distillation token, "hdkd") and
    ``profile`` ("published" or "demo"); ``overrides`` replace any constructor argument."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    config = PROFILES[profile]
    if role == "teacher":
        return HDKDTeacher(**{**config["common"], **config["teacher"], **overrides})
    kwargs = {**config["common"], **config["student"], "distillation": role == "hdkd", **overrides}
    return HDKDStudent(**kwargs)


def check_feature_compatibility(teacher: StagedNetwork, student: StagedNetwork) -> None:
    """Raise ValueError, listing every difference, unless teacher and student take the same input and
    produce the same number of classes and identically shaped stage maps (so feature KD needs no
    projector)."""
    problems = [
        f"{name}: teacher {getattr(teacher, name)} vs student {getattr(student, name)}"
        for name in ("image_size", "in_channels", "num_classes")
        if getattr(teacher, name) != getattr(student, name)
    ]
    problems += [
        f"stage {index} (C, H, W): teacher {t} vs student {s}"
        for index, (t, s) in enumerate(zip(teacher.stage_shapes(), student.stage_shapes(), strict=True), 1)
        if t != s
    ]
    if problems:
        raise ValueError("teacher and student are incompatible for distillation: " + "; ".join(problems))
