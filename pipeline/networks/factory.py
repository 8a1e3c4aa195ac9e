"""Named configurations of the HDKD networks and the teacher/student compatibility check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from pipeline.choices import DEMO, PUBLISHED
from pipeline.networks.stages import StagedNetwork
from pipeline.networks.student import HDKDStudent
from pipeline.networks.teacher import HDKDTeacher
from pipeline.roles import HDKD, MODELS, TEACHER, check_model

# Constructor arguments per profile and architecture ("teacher"; "student": the hybrid network of the
# baseline and hdkd roles). "published": the networks of the paper's code (224 px RGB;
# teacher [6, 6, 9] blocks, student [2, 2, 3] + 3 transformer layers of width 256); 4 classes (brain
# tumour MRI) unless overridden. "demo": 64 px single-channel slices, small enough to train a few epochs
# on a few hundred slices on 2 CPU cores; the teacher is deeper than the student, stage shapes are equal.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    PUBLISHED: {
        "common": {"image_size": 224, "in_channels": 3, "num_classes": 4, "channels": (64, 96, 192)},
        "teacher": {"blocks": (6, 6, 9)},
        "student": {"blocks": (2, 2, 3), "dim": 256, "depth": 3, "heads": 8, "head_dim": 32, "mlp_ratio": 4},
    },
    DEMO: {
        "common": {"image_size": 64, "in_channels": 1, "num_classes": 4, "channels": (16, 24, 32)},
        "teacher": {"blocks": (2, 2, 3), "head_hidden": 32},
        "student": {"blocks": (1, 1, 1), "dim": 64, "depth": 2, "heads": 2, "head_dim": 32, "mlp_ratio": 2},
    },
}


def build_network(role: str, profile: str = "published", **overrides: Any) -> HDKDTeacher | HDKDStudent:
    """A network by ``role`` (pipeline.roles: "teacher"; "baseline" = the hybrid student without
    distillation token; "hdkd" = with it) and ``profile`` ("published" or "demo"); ``overrides`` replace
    any constructor argument."""
    check_model(role)
    check_profile(profile)
    config = PROFILES[profile]
    if role == TEACHER:
        return HDKDTeacher(**{**config["common"], **config["teacher"], **overrides})
    kwargs = {**config["common"], **config["student"], "distillation": role == HDKD, **overrides}
    return HDKDStudent(**kwargs)


def check_profile(profile: str) -> str:
    """``profile`` if it is a name of :data:`PROFILES`, else a ValueError listing them."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    return profile


@dataclass(frozen=True)
class NetworkSettings:
    """What rebuilds a trained network: its role (pipeline.roles), profile, input size and channels, and
    the class names its outputs stand for (their count sizes the heads).

    Every checkpoint the training bundles write holds :meth:`state_dict` (plain types, readable with
    ``torch.load(..., weights_only=True)``) next to the weights, so evaluation, inference, export and the
    MLflow model rebuild the network from the file alone (pipeline.networks.checkpoint).
    """

    role: str
    profile: str
    image_size: int
    in_channels: int
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        check_model(self.role, MODELS)
        check_profile(self.profile)
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "in_channels", int(self.in_channels))
        object.__setattr__(self, "class_names", tuple(str(name) for name in self.class_names))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build(self) -> HDKDTeacher | HDKDStudent:
        """The (untrained) network these settings describe."""
        return build_network(
            self.role,
            self.profile,
            image_size=self.image_size,
            in_channels=self.in_channels,
            num_classes=self.num_classes,
        )

    def state_dict(self) -> dict[str, Any]:
        """The settings as plain types (for a checkpoint or an MLflow model config)."""
        return {**asdict(self), "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], source: str = "network settings") -> NetworkSettings:
        """Settings from :meth:`state_dict`'s output; a ValueError naming ``source`` for a missing key."""
        names = [field.name for field in fields(cls)]
        missing = [name for name in names if name not in record]
        if missing:
            raise ValueError(f"{source}: network settings lack {missing}")
        return cls(**{name: record[name] for name in names})

    def check(self, source: str, **explicit: Any) -> NetworkSettings:
        """These settings, unless an ``explicit`` value (None = not given) differs from them: then a
        ValueError naming ``source``, the setting and both values."""
        recorded = self.state_dict()
        for name, value in explicit.items():
            if value is None:
                continue
            given = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
            if given != recorded[name]:
                raise ValueError(
                    f"{source} holds a network with {name} {recorded[name]!r}, but {name} {given!r} was "
                    "given: drop that override (the checkpoint's settings are used) or use a checkpoint "
                    "trained with it"
                )
        return self


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
