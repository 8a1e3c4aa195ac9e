"""HDKDLoss with its defaults against the published loss, re-derived from its definitions in
tests/naive_distill.py (plain torch ops in float64, nothing imported from pipeline.distill)."""

from __future__ import annotations

import pytest
import torch
from naive_distill import published_terms

from pipeline.distill import HDKDLoss
from pipeline.networks import HDKDOutput

BATCH = 5
MAP_SHAPES = ((4, 8, 8), (6, 4, 4), (8, 2, 2))  # stage maps of a tiny network
PUBLISHED = {"alpha": 0.5, "tau": 1.0, "feature_weight": 10.0, "stage_exponent": 1.0}


def random_outputs(classes: int, seed: int) -> tuple[HDKDOutput, HDKDOutput, torch.Tensor]:
    """A student output (two heads), a teacher output and labels, all random."""
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape: int, scale: float = 3.0) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=generator)

    cls, distill, teacher = draw(BATCH, classes), draw(BATCH, classes), draw(BATCH, classes)
    student_maps = tuple(draw(BATCH, *shape, scale=1.0) for shape in MAP_SHAPES)
    teacher_maps = tuple(draw(BATCH, *shape, scale=1.0) for shape in MAP_SHAPES)
    labels = torch.randint(0, classes, (BATCH,), generator=generator)
    student = HDKDOutput((cls + distill) / 2, cls, distill, student_maps)
    return student, HDKDOutput(teacher, teacher, None, teacher_maps), labels


def reference(student: HDKDOutput, teacher: HDKDOutput, labels: torch.Tensor, kd_type: str, **settings):
    """The published terms, computed in float64."""
    stages = settings.pop("stages", (1, 2, 3))
    return published_terms(
        student.cls_logits.double(),
        student.distill_logits.double(),
        teacher.logits.double(),
        labels,
        {stage: student.features[stage - 1].double() for stage in stages},
        {stage: teacher.features[stage - 1].double() for stage in stages},
        kd_type=kd_type,
        **{**PUBLISHED, **settings},
    )


@pytest.mark.parametrize("classes", [4, 7])
@pytest.mark.parametrize("kd_type", ["soft", "hard", "none"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_defaults_equal_the_published_loss_term_by_term(kd_type: str, classes: int, seed: int) -> None:
    student, teacher, labels = random_outputs(classes, seed)
    ours = HDKDLoss(kd_type=kd_type)(student, teacher, labels)
    published = reference(student, teacher, labels, kd_type)
    for term in ("loss", "ce", "logit_kd", "feature_kd"):
        assert ours[term].item() == pytest.approx(published[term].item(), rel=1e-5, abs=1e-6), term


@pytest.mark.parametrize(
    "settings",
    [
        {"alpha": 0.2, "tau": 3.0},
        {"feature_weight": 0.5, "stage_exponent": 2.0, "stages": (2, 3)},
        {"stages": (3, 1), "stage_exponent": 1.5},
    ],
    ids=["alpha-tau", "stages23-a2", "stages31"],
)
@pytest.mark.parametrize("kd_type", ["soft", "hard", "none"])
def test_other_settings_equal_the_published_loss(kd_type: str, settings: dict) -> None:
    student, teacher, labels = random_outputs(7, 3)
    ours = HDKDLoss(kd_type=kd_type, **settings)(student, teacher, labels)
    published = reference(student, teacher, labels, kd_type, **settings)
    for term in ("loss", "logit_kd", "feature_kd"):
        assert ours[term].item() == pytest.approx(published[term].item(), rel=1e-5, abs=1e-6), term


def test_none_trains_on_unweighted_cross_entropy_plus_features() -> None:
    student, teacher, labels = random_outputs(4, 4)
    terms = HDKDLoss(kd_type="none", alpha=0.9)(student, teacher, labels)
    assert terms["logit_kd"].item() == 0.0
    assert terms["loss"].item() == pytest.approx((terms["ce"] + 10.0 * terms["feature_kd"]).item(), rel=1e-6)


@pytest.mark.parametrize("classes", [4, 7])
def test_batchmean_soft_kd_is_classes_times_the_published_term(classes: int) -> None:
    student, teacher, labels = random_outputs(classes, 5)
    published = HDKDLoss()(student, teacher, labels)
    batchmean = HDKDLoss(kd_reduction="batchmean")(student, teacher, labels)
    assert batchmean["logit_kd"].item() == pytest.approx(classes * published["logit_kd"].item(), rel=1e-6)
    extra = 0.5 * (classes - 1) * published["logit_kd"].item()
    assert batchmean["loss"].item() == pytest.approx(published["loss"].item() + extra, rel=1e-6)


@pytest.mark.parametrize("kd_type", ["hard", "none"])
def test_kd_reduction_only_changes_soft_kd(kd_type: str) -> None:
    student, teacher, labels = random_outputs(7, 6)
    published = HDKDLoss(kd_type=kd_type)(student, teacher, labels)
    batchmean = HDKDLoss(kd_type=kd_type, kd_reduction="batchmean")(student, teacher, labels)
    assert all(torch.equal(published[term], batchmean[term]) for term in published)


def test_unknown_kd_reduction_is_named() -> None:
    with pytest.raises(ValueError, match="kd_reduction"):
        HDKDLoss(kd_reduction="mean")
