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
