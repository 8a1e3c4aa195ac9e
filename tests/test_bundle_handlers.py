"""PeriodicReport: the full validation report runs only on due epochs, and its values never go stale."""

from __future__ import annotations

from ignite.engine import Engine, Events

from pipeline.bundle.handlers import PeriodicReport


class _CountingReport:
    """Stands in for ClassificationReportHandler: counts the batches it saw and writes one metric."""

    def __init__(self) -> None:
        self.batches = 0

    def reset(self, engine: Engine) -> None:
        self.batches = 0

    def iteration_completed(self, engine: Engine) -> None:
        self.batches += 1

    def epoch_completed(self, engine: Engine) -> None:
        engine.state.metrics["val_macro_f1"] = float(engine.state.epoch)


def test_report_runs_on_due_epochs_and_its_metric_is_absent_otherwise():
    report = _CountingReport()
    validator = Engine(lambda engine, batch: batch)
    PeriodicReport(report, interval=2, max_epochs=5).attach(validator)
    seen: dict[int, tuple[float | None, int]] = {}

    @validator.on(Events.EPOCH_COMPLETED)
    def record(engine: Engine) -> None:
        seen[engine.state.epoch] = (engine.state.metrics.get("val_macro_f1"), report.batches)

    validator.run([0, 1, 2], max_epochs=5)
    assert seen == {1: (None, 0), 2: (2.0, 3), 3: (None, 0), 4: (4.0, 3), 5: (5.0, 3)}


def _epoch_orders(steps_per_epoch: int, reshuffle: bool) -> list[list[int]]:
    """The sample order of each pass over an 8-sample loader, epochs of ``steps_per_epoch`` batches of
    2, the sampler's epoch set at each epoch start (as MONAI's trainer does)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from pipeline.bundle.handlers import ReshuffleOnRestart

    data = list(range(8))
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
    loader = DataLoader(data, batch_size=2, sampler=sampler)
    seen: list[int] = []
    engine = Engine(lambda engine, batch: seen.extend(batch.tolist()))
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: sampler.set_epoch(e.state.epoch))
    if reshuffle:
        ReshuffleOnRestart(sampler).attach(engine)
    engine.run(loader, max_epochs=2, epoch_length=steps_per_epoch)
    return [seen[i : i + 8] for i in range(0, len(seen), 8)]


def test_a_loader_restarted_inside_an_epoch_is_reshuffled():
    repeated = _epoch_orders(8, reshuffle=False)  # 8 steps = two passes per epoch
    assert repeated[0] == repeated[1]  # without the handler the epoch repeats one order
    passes = _epoch_orders(8, reshuffle=True)
    assert len(passes) == 4 and all(sorted(p) == list(range(8)) for p in passes)
    assert passes[0] == repeated[0] and passes[1] != passes[0] and passes[3] != passes[2]
    assert passes == _epoch_orders(8, reshuffle=True)  # deterministic


def test_restarts_at_epoch_boundaries_keep_the_epoch_order():
    assert _epoch_orders(4, reshuffle=True) == _epoch_orders(4, reshuffle=False)
