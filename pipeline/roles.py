"""The names of the pipeline's three models, used as network roles, bundle variants, MLflow run names,
model and evaluation folders and metric files alike: the CNN ``teacher``, the hybrid student trained
without distillation (``baseline``) and the hybrid student distilled from the teacher (``hdkd``)."""

from __future__ import annotations

TEACHER = "teacher"
BASELINE = "baseline"
HDKD = "hdkd"

MODELS = (TEACHER, BASELINE, HDKD)
# the two variants of the hdkd_student bundle (its --variant)
STUDENT_MODELS = (BASELINE, HDKD)


def check_model(name: str, allowed: tuple[str, ...] = MODELS, key: str = "role") -> str:
    """``name`` if it is one of ``allowed``, else a ValueError naming ``key`` and the choices."""
    if name not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}, got {name!r}")
    return name
