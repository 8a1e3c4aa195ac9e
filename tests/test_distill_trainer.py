"""DistillationTrainer on tiny demo-profile networks: single pass == published prefix re-runs, frozen
teacher, MONAI events and outputs, loss-term logging, checkpoints, learning."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver, StatsHandler
from monai.inferers import SimpleInferer
from naive_distill import naive_loss
from torch.utils.data import DataLoader

from pipeline.distill import DistillationTrainer, HDKDLoss, loss_terms_transform
from pipeline.networks import build_network, load_weights

SIZE = 32  # demo networks at 32 px: stage maps 16, 8 and 4 px, a 2x2 token grid


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are too small for intra-op threads to pay off (pytest -n 2 runs two workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def net(role: str, seed: int, **overrides):
    torch.manual_seed(seed)
    return build_network(role, "demo", image_size=SIZE, **overrides)


def random_loader(batches: int = 2, batch: int = 4, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    items = [
        {"image": torch.rand(1, SIZE, SIZE, generator=generator), "label": int(i % 4)}
        for i in range(batches * batch)
    ]
    return DataLoader(items, batch_size=batch, shuffle=False)


def trainer(network, teacher, loss=None, optimizer=None, loader=None, **kwargs) -> DistillationTrainer:
    return DistillationTrainer(
        device="cpu",
        max_epochs=kwargs.pop("max_epochs", 1),
        train_data_loader=loader or random_loader(),
        network=network,
        optimizer=optimizer or torch.optim.SGD(network.parameters(), lr=0.01),
        loss_function=loss or HDKDLoss(),
        teacher=teacher,
        **kwargs,
    )


@pytest.mark.parametrize(
    "loss",
    [
        HDKDLoss(),
        HDKDLoss(alpha=0.3, tau=2.0, kd_type="hard", feature_weight=5.0, stage_exponent=2.0, stages=(2, 3)),
    ],
    ids=["defaults", "hard-stages23-a2"],
)
def test_single_pass_equals_naive_prefix_reruns(loss: HDKDLoss) -> None:
    """The trainer's one-teacher-pass + one-student-pass step gives the published code's loss and the same
    gradient on every student parameter. Both students are in train mode (batch-statistics BatchNorm,
    no dropout / drop-path), so each prefix re-run reproduces the stage maps exactly; the naive version
    updates the BatchNorm running statistics once per re-run, which only touches buffers."""
    student, teacher = net("hdkd", 0), net("teacher", 1)
    naive_student = copy.deepcopy(student).train()
    batch = next(iter(random_loader(batch=6)))
    engine = trainer(student, teacher, loss, torch.optim.SGD(student.parameters(), lr=0.0))
    calls = {"student": 0, "teacher": 0}
    for name, network in (("student", student), ("teacher", teacher)):
        network.stages[0].register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    output = engine._iteration(engine, batch)
    assert calls == {"student": 1, "teacher": 1}  # one pass each, no prefix re-runs
    reference = naive_loss(naive_student, teacher, loss, batch["image"], batch["label"])
    reference["loss"].backward()
    assert calls["teacher"] == 2 + len(loss.stages)  # the published way: a full pass + one per stage
    logged = loss_terms_transform(output)
    for term in ("loss", "ce", "logit_kd", "feature_kd"):
        assert logged[term] == pytest.approx(reference[term].item(), rel=1e-5, abs=1e-7), term
    assert logged["feature_kd"] > 0 and logged["logit_kd"] > 0
    named = dict(naive_student.named_parameters())
    assert all(p.grad is not None for p in [*student.parameters(), *naive_student.parameters()])
    # float32 sums in a different order: absolute tolerance relative to the largest gradient (some
    # gradients are analytically zero, e.g. a bias right before a BatchNorm, and only rounding noise)
    atol = 1e-5 * max(p.grad.abs().max().item() for p in naive_student.parameters())
    for name, param in student.named_parameters():
        assert torch.allclose(param.grad, named[name].grad, rtol=1e-4, atol=atol), name


def test_two_iterations_keep_the_teacher_frozen_and_fire_monai_events() -> None:
    student, teacher = net("hdkd", 0), net("teacher", 1)
    teacher.train()  # the trainer must switch it to eval
    teacher_before = copy.deepcopy(teacher.state_dict())
    engine = trainer(student, teacher)
    events = [
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ]
    fired: list = []
    modes: list[bool] = []
    for event in events:
        engine.add_event_handler(event, lambda _, e=event: fired.append(e))

    @engine.on(IterationEvents.FORWARD_COMPLETED)
    def check_pred(e: DistillationTrainer) -> None:
        modes.append(e.teacher.training)
        with torch.no_grad():  # same batch, train mode, no dropout: the forward the trainer just ran
            out = e.network(torch.as_tensor(e.state.output["image"]), return_features=True)
        assert torch.allclose(e.state.output["pred"], out.logits)
        assert torch.allclose(e.state.output["pred"], (out.cls_logits + out.distill_logits) / 2)
        if e.state.iteration == 1:
            e.teacher.train()  # a careless handler; the next iteration must still run the teacher in eval

    engine.run()
    assert engine.state.iteration == 2
    assert fired == events * 2
    assert modes == [False, False] and not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in teacher_ids for g in engine.optimizer.param_groups for p in g["params"])
    assert set(engine.network.state_dict()) == set(student.state_dict())
    output = engine.state.output  # decollated: one dict per image, MONAI keys + loss_terms
    assert isinstance(output, list) and len(output) == 4
    assert {"image", "label", "pred", "loss", "loss_terms"} <= set(output[0])
    assert set(output[3]["loss_terms"]) == {"ce", "logit_kd", "feature_kd"}
    terms = loss_terms_transform(output)
    assert terms["loss"] == pytest.approx(
        0.5 * terms["ce"] + 0.5 * terms["logit_kd"] + 10 * terms["feature_kd"]
    )


class Collect(logging.Handler):
    """Keeps every formatted record."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_loss_terms_reach_a_stats_handler() -> None:
    engine = trainer(net("hdkd", 0), net("teacher", 1), decollate=False)
    collect = Collect()
    StatsHandler(name="distill_test", output_transform=loss_terms_transform).attach(engine)
    logger = logging.getLogger("distill_test")
    logger.addHandler(collect)
    try:
        engine.run()
    finally:
        logger.removeHandler(collect)
    lines = [line for line in collect.lines if "Iter:" in line]
    assert len(lines) == 2
    for key in ("loss:", "ce:", "logit_kd:", "feature_kd:"):
        assert all(key in line for line in lines), (key, lines)


def test_without_teacher_it_is_cross_entropy_training() -> None:
    teacher = net("teacher", 1)
    engine = trainer(teacher, None, HDKDLoss(alpha=0.7), decollate=False)  # training the teacher itself
    engine.run()
    terms = loss_terms_transform(engine.state.output)
    assert terms["logit_kd"] == 0.0 and terms["feature_kd"] == 0.0
    assert terms["loss"] == pytest.approx(terms["ce"])
    assert engine.state.output["pred"].shape == (4, 4)


def test_teacher_checkpoint_from_checkpoint_saver_feeds_distillation(tmp_path: Path) -> None:
    teacher = net("teacher", 1)
    first = trainer(teacher, None, decollate=False)
    CheckpointSaver(
        str(tmp_path), {"network": teacher, "optimizer": first.optimizer}, save_final=True
    ).attach(first)
    first.run()
    (saved,) = tmp_path.glob("*.pt")
    fresh = load_weights(net("teacher", 7), saved)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in fresh.state_dict().items())
    engine = trainer(net("hdkd", 0), fresh, decollate=False)
    engine.run()
    assert loss_terms_transform(engine.state.output)["feature_kd"] > 0


def test_loss_decreases_on_a_learnable_toy_set() -> None:
    generator = torch.Generator().manual_seed(3)
    items = []
    for i in range(16):  # class c: a bright square in quadrant c
        image = 0.1 * torch.rand(1, SIZE, SIZE, generator=generator)
        row, col = divmod(i % 4, 2)
        image[:, row * 16 : row * 16 + 16, col * 16 : col * 16 + 16] += 0.8
        items.append({"image": image, "label": i % 4})
    loader = DataLoader(items, batch_size=8, shuffle=False)
    student = net("hdkd", 0)
    losses: list[float] = []
    engine = trainer(
        student,
        net("teacher", 1),
        optimizer=torch.optim.Adam(student.parameters(), lr=3e-3),
        loader=loader,
        max_epochs=6,
    )
    engine.add_event_handler(
        IterationEvents.MODEL_COMPLETED, lambda e: losses.append(loss_terms_transform(e.state.output)["loss"])
    )
    engine.run()
    assert len(losses) == 12
    assert sum(losses[-2:]) < 0.6 * sum(losses[:2]), losses


def test_gradient_accumulation_steps_the_optimizer_every_second_iteration() -> None:
    student = net("hdkd", 0)
    snapshots: list[torch.Tensor] = []
    engine = trainer(student, net("teacher", 1), accumulation_steps=2, loader=random_loader(batches=4))
    engine.add_event_handler(
        IterationEvents.MODEL_COMPLETED, lambda _: snapshots.append(student.head_cls.weight.detach().clone())
    )
    before = student.head_cls.weight.detach().clone()
    engine.run()
    changed = [not torch.equal(a, b) for a, b in zip([before, *snapshots[:-1]], snapshots, strict=True)]
    assert changed == [False, True, False, True]


class RecordingInferer(SimpleInferer):
    """MONAI's SimpleInferer that keeps the keyword arguments of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs):
        self.calls.append(kwargs)
        return super().__call__(inputs, network, *args, **kwargs)


def test_the_student_runs_through_the_given_inferer() -> None:
    inferer = RecordingInferer()
    engine = trainer(net("hdkd", 0), net("teacher", 1), inferer=inferer, decollate=False)
    engine.run()
    assert inferer.calls == [{"return_features": True}] * 2  # the student only: the teacher is not inferred
    assert engine.state.output["pred"].shape == (4, 4)


def test_channels_last_and_bf16_options() -> None:
    """bf16 autocast of the teacher, or of the student too, moves every loss term by a few percent at
    most; the student's weights and gradients stay float32."""
    batch = next(iter(random_loader()))
    results, gradients = {}, {}
    for name, options in {
        "plain": {},
        "channels_last": {"channels_last": True},
        "bf16": {"teacher_bf16": True},
        "bf16_both": {"teacher_bf16": True, "bf16": True},
    }.items():
        engine = trainer(net("hdkd", 0), net("teacher", 1), **options)
        results[name] = loss_terms_transform(engine._iteration(engine, batch))
        grads = [p.grad.flatten() for p in engine.network.parameters() if p.grad is not None]
        gradients[name] = torch.cat(grads)
    for term in ("loss", "ce", "logit_kd", "feature_kd"):
        assert results["channels_last"][term] == pytest.approx(results["plain"][term], rel=1e-4, abs=1e-6)
        assert results["bf16"][term] == pytest.approx(results["plain"][term], rel=0.05, abs=1e-3)
        assert results["bf16_both"][term] == pytest.approx(results["plain"][term], rel=0.05, abs=1e-3)
    assert gradients["bf16_both"].dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(gradients["bf16_both"], gradients["plain"], dim=0)
    assert cosine > 0.95


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (
            lambda s, t: {"optimizer": torch.optim.SGD([*s.parameters(), *t.parameters()], lr=0.1)},
            ValueError,
            "optimizer holds teacher",
        ),
        (lambda s, t: {"loss": torch.nn.CrossEntropyLoss()}, TypeError, "HDKDLoss"),
        (lambda s, t: {"teacher": net("teacher", 1, channels=(16, 24, 48))}, ValueError, r"stage 3"),
        (
            lambda s, t: {"teacher": net("teacher", 1, num_classes=3), "loss": HDKDLoss(feature_weight=0)},
            ValueError,
            "classes",
        ),
        (lambda s, t: {"teacher": s}, ValueError, "same module"),
    ],
    ids=["teacher-in-optimizer", "not-hdkd-loss", "stage-shapes", "class-count", "teacher-is-student"],
)
def test_bad_setups_are_rejected(build, error: type[Exception], match: str) -> None:
    student, teacher = net("hdkd", 0), net("teacher", 1)
    options = {"teacher": teacher, **build(student, teacher)}
    with pytest.raises(error, match=match):
        trainer(student, options.pop("teacher"), **options)


def test_loss_terms_reach_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient
    from monai.handlers import MLFlowHandler

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # MONAI's handler lets MLFLOW_TRACKING_URI win over its tracking_uri (leaving the client to MLflow's
    # process-wide URI), and mlflow.set_tracking_uri in an earlier test of this process sets that variable
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    engine = trainer(net("hdkd", 0), net("teacher", 1))
    handler = MLFlowHandler(
        tracking_uri=uri,
        output_transform=loss_terms_transform,
        experiment_name="distill_test",
        run_name="two_iterations",
        close_on_complete=True,
    )
    handler.attach(engine)
    engine.run()
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("distill_test").experiment_id])
    for key in ("loss", "ce", "logit_kd", "feature_kd"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2], key
    assert client.get_metric_history(run.info.run_id, "feature_kd")[-1].value > 0
