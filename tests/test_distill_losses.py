"""HDKD loss terms on small tensors whose values can be worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.distill import HDKDLoss, feature_kd_loss, logit_kd_loss
from pipeline.networks import HDKDOutput


def kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) for two discrete distributions."""
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def softmax(logits: list[float]) -> list[float]:
    exps = [math.exp(v) for v in logits]
    return [e / sum(exps) for e in exps]


def maps(*values: float) -> tuple[torch.Tensor, ...]:
    """Three constant stage maps (2 images, shapes like a tiny network's stages)."""
    shapes = ((2, 4, 8, 8), (2, 6, 4, 4), (2, 8, 2, 2))
    return tuple(torch.full(shape, value) for shape, value in zip(shapes, values, strict=True))


def output(
    logits: list[list[float]], features: tuple[torch.Tensor, ...], distill: list[list[float]] | None = None
):
    cls = torch.tensor(logits)
    dist = None if distill is None else torch.tensor(distill)
    return HDKDOutput(cls if dist is None else (cls + dist) / 2, cls, dist, features)


def test_soft_kd_is_summed_kl_teacher_to_student_over_batch_times_classes() -> None:
    student, teacher = [[0.0, 0.0], [1.0, -1.0]], [[math.log(3.0), 0.0], [0.0, 0.0]]
    expected = (
        kl(softmax(teacher[0]), softmax(student[0])) + kl(softmax(teacher[1]), softmax(student[1]))
    ) / 2
    value = logit_kd_loss(torch.tensor(student), torch.tensor(teacher), "soft", 1.0)
    assert value.item() == pytest.approx(expected / 2, rel=1e-6)  # 2 images x 2 classes
    batchmean = logit_kd_loss(torch.tensor(student), torch.tensor(teacher), "soft", 1.0, "batchmean")
    assert batchmean.item() == pytest.approx(expected, rel=1e-6)
    assert 2 * expected == pytest.approx(
        0.75 * math.log(1.5) + 0.25 * math.log(0.5) + kl([0.5, 0.5], softmax([1, -1]))
    )


@pytest.mark.parametrize("tau", [0.5, 2.0, 4.0])
def test_soft_kd_softens_by_tau_and_scales_by_tau_squared(tau: float) -> None:
    student, teacher = [1.0, 0.0, -2.0], [3.0, 0.5, 0.0]
    soft = kl(softmax([v / tau for v in teacher]), softmax([v / tau for v in student]))
    value = logit_kd_loss(torch.tensor([student]), torch.tensor([teacher]), "soft", tau)
    assert value.item() == pytest.approx(tau**2 * soft / 3, rel=1e-5)  # 1 image x 3 classes


def test_hard_kd_is_cross_entropy_on_teacher_argmax() -> None:
    student, teacher = torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([[-1.0, 5.0]])
    assert logit_kd_loss(student, teacher, "hard", 3.0).item() == pytest.approx(math.log(4.0), rel=1e-6)


def test_no_kd_is_zero() -> None:
    assert logit_kd_loss(torch.randn(3, 4), torch.randn(3, 4), "none", 1.0).item() == 0.0


@pytest.mark.parametrize(
    ("stages", "exponent", "expected"),
    [
        ((1, 2, 3), 1.0, 1 * 1 + 2 * 4 + 3 * 9),
        ((1, 2, 3), 2.0, 1 * 1 + 4 * 4 + 9 * 9),
        ((2,), 0.0, 4),
        ((2, 3), 2.0, 1 * 4 + 4 * 9),
        ((3, 1), 1.0, 1 * 9 + 2 * 1),  # the weight follows the position in the list, as published
    ],
)
def test_feature_kd_weights_the_kth_distilled_stage_by_k_to_the_a(
    stages: tuple[int, ...], exponent: float, expected: float
) -> None:
    # stage k differs by k everywhere: MSE_k = k**2
    value = feature_kd_loss(maps(1.0, 2.0, 3.0), maps(0.0, 0.0, 0.0), stages, exponent)
    assert value.item() == pytest.approx(expected)


def test_feature_kd_names_the_stage_whose_shapes_differ() -> None:
    student = maps(0.0, 0.0, 0.0)
    teacher = (student[0], torch.zeros(2, 6, 8, 8), student[2])
    with pytest.raises(ValueError, match=r"stage 2 .*\(2, 6, 4, 4\).*\(2, 6, 8, 8\)"):
        feature_kd_loss(student, teacher, (1, 2, 3), 1.0)


def test_total_combines_the_terms_with_alpha_and_lambda() -> None:
    target = torch.tensor([0])
    student = output([[0.0, 0.0]], maps(1.0, 1.0, 1.0), distill=[[math.log(3.0), 0.0]])
    teacher = output([[math.log(3.0), 0.0]], maps(0.0, 0.0, 0.0))
    terms = HDKDLoss(alpha=0.25, tau=1.0, feature_weight=2.0, stage_exponent=1.0, stages=(1, 3))(
        student, teacher, target
    )
    assert terms["ce"].item() == pytest.approx(math.log(2.0))  # on the cls head, not the mean
    assert terms["logit_kd"].item() == pytest.approx(0.0, abs=1e-7)  # distill head equals the teacher
    assert terms["feature_kd"].item() == pytest.approx(1.0 + 2.0)  # stage 1 weighs 1, stage 3 (2nd) 2
    assert terms["loss"].item() == pytest.approx(0.75 * math.log(2.0) + 2.0 * 3.0)


def test_student_without_distillation_token_distils_its_cls_head() -> None:
    student = output([[0.0, 0.0]], maps(0.0, 0.0, 0.0))
    teacher = output([[math.log(3.0), 0.0]], maps(0.0, 0.0, 0.0))
    terms = HDKDLoss()(student, teacher, torch.tensor([[1]]))
    kd = kl([0.75, 0.25], [0.5, 0.5]) / 2  # 1 image x 2 classes
    assert terms["logit_kd"].item() == pytest.approx(kd, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(0.5 * math.log(2.0) + 0.5 * kd)


def test_without_teacher_the_loss_is_plain_cross_entropy() -> None:
    student = output([[math.log(3.0), 0.0]], maps(5.0, 5.0, 5.0), distill=[[9.0, -9.0]])
    terms = HDKDLoss(alpha=0.9)(student, None, torch.tensor([1]))
    assert terms["loss"].item() == pytest.approx(math.log(4.0))
    assert terms["logit_kd"].item() == 0.0 and terms["feature_kd"].item() == 0.0


def test_hard_and_none_kd_through_the_loss_class() -> None:
    student = output([[0.0, 0.0]], maps(0.0, 0.0, 0.0), distill=[[math.log(3.0), 0.0]])
    teacher = output([[-2.0, 2.0]], maps(0.0, 0.0, 0.0))
    hard = HDKDLoss(kd_type="hard")(student, teacher, torch.tensor([0]))
    assert hard["logit_kd"].item() == pytest.approx(math.log(4.0))
    none = HDKDLoss(kd_type="none")(student, teacher, torch.tensor([0]))
    assert none["logit_kd"].item() == 0.0
    assert none["loss"].item() == pytest.approx(math.log(2.0))  # unweighted CE, as published


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"tau": 0.0}, "tau"),
        ({"feature_weight": -1.0}, "feature_weight"),
        ({"kd_type": "cosine"}, "kd_type"),
        ({"kd_reduction": "sum"}, "kd_reduction"),
        ({"stages": (0, 1)}, "stages"),
        ({"stages": (1, 4)}, "stages"),
        ({"stages": (2, 2)}, "stages"),
        ({"stage_exponent": float("nan")}, "stage_exponent"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        HDKDLoss(**kwargs)


def test_bad_target_shape_is_an_error() -> None:
    student = output([[0.0, 0.0], [0.0, 0.0]], maps(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="target"):
        HDKDLoss()(student, None, torch.tensor([[0, 1], [1, 0]]))
