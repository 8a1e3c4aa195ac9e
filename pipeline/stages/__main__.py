"""`python -m pipeline.stages <command>`: exec (the stage launcher), report, efficiency, and the runs of the
experiments pipeline (efficiency-cell, efficiency-chosen, lambda-run, lambda-table)."""

from __future__ import annotations

import argparse
import gc
import sys
from contextlib import nullcontext
from pathlib import Path

from pipeline.params import PARAMS_FILE, split_names
from pipeline.roles import BASELINE, HDKD, MODELS

# True when this module is the process's entry point (`python -m pipeline.stages`): only then does
# `exec` tune the garbage collector for the process (pipeline.stages.launcher.startup_without_gc).
OWN_PROCESS = __name__ == "__main__"


def _exec(args: argparse.Namespace) -> int:
    from pipeline.lifetime import end_with_stage_runner, exit_on_sigterm
    from pipeline.stages.launcher import check_stage, launch, split_commands, startup_without_gc

    if OWN_PROCESS:  # a stage process: end with `dvc repro`, and close its runs cleanly on SIGTERM
        end_with_stage_runner()
        exit_on_sigterm()
    with startup_without_gc() if OWN_PROCESS else nullcontext():
        try:
            commands = split_commands(args.command)
            params = check_stage(args.params, args.raw_dir, args.labels, networks=not args.no_network_check)
        except ValueError as err:
            print(f"python -m pipeline.stages exec: error: {err}", file=sys.stderr)
            return 2
    # errors of the commands themselves keep their traceback
    code = launch(commands, params, args.mlflow, args.experiment, args.stage)
    if OWN_PROCESS:
        gc.freeze()  # the interpreter's collections at exit would only walk long-lived objects (~1 s)
    return code


# report option -> the params.yaml key it defaults to with --params
REPORT_SETTINGS = {
    "class_names": "data.class_names", "latency_runs": "evaluate.latency_runs",
    "n_bootstrap": "evaluate.n_bootstrap",
}  # fmt: skip


def _report(args: argparse.Namespace) -> int:
    from pipeline.evaluate.metrics import PAIRED
    from pipeline.params import load_params, validate
    from pipeline.stages.report import write_report

    settings = validate(load_params(args.params), str(args.params), networks=False) if args.params else {}
    for option, key in REPORT_SETTINGS.items():
        if getattr(args, option) is None:
            if key not in settings:
                raise ValueError(f"--{option.replace('_', '-')} or --params is required")
            setattr(args, option, settings[key])

    metrics = write_report(
        split_names(args.models),
        args.eval_dir,
        args.models_dir,
        args.metrics_dir,
        args.plots_dir,
        split_names(args.class_names),
        args.latency_runs,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        paired=tuple(split_names(args.paired)) if args.paired else None,
    )
    paired = metrics.pop("paired", None)
    for model, values in metrics.items():
        ci = values["ci95"]["balanced_accuracy"]
        print(
            f"{model:>8}: balanced accuracy {values['balanced_accuracy']:.3f} "
            f"[{ci['low']:.3f}, {ci['high']:.3f}], macro-F1 {values['macro_f1']:.3f}, "
            f"{values['parameters'] / 1e6:.3f} M params, {values['gflops']:.4f} GFLOPs, "
            f"{values['cpu_latency_ms']:.2f} ms"
        )
    if paired is not None:
        for name in PAIRED:
            entry = paired[name]
            low, high = entry["ci95"]["low"], entry["ci95"]["high"]
            interval = "undefined" if low is None else f"[{low:+.3f}, {high:+.3f}]"
            difference = "undefined" if entry["difference"] is None else f"{entry['difference']:+.3f}"
            print(f"{paired['comparison']}: {name} {difference} {interval} (paired patient bootstrap)")
    return 0


def _efficiency(args: argparse.Namespace) -> int:
    from pipeline.stages.efficiency import write_efficiency

    summary, differences = write_efficiency(
        args.cells_dir, args.output, split_names(args.class_names), args.n_bootstrap, args.chosen_dir
    )
    print(summary.to_string(index=False))
    print(differences.to_string(index=False))
    return 0


def _trial(args: argparse.Namespace) -> int:
    from pipeline.params import load_params
    from pipeline.stages import trials
    from pipeline.stages.launcher import run_commands

    params = load_params(args.params)
    if args.name == "efficiency-cell":
        commands = trials.cell_commands(params, args.fraction, args.seed, args.output)
    elif args.name == "efficiency-chosen":
        commands = trials.chosen_commands(params, args.fraction, args.seed, args.cell, args.output)
    else:
        commands = trials.lambda_commands(params, args.feature_weight, args.seed, args.output)
    return run_commands(commands)


def _lambda_table(args: argparse.Namespace) -> int:
    from pipeline.stages.trials import write_lambda_table

    table, chosen = write_lambda_table(args.runs, args.output)
    print(table.to_string(index=False))
    print(f"chosen distill.lambda: {chosen:g}")
    return 0


def _run_arguments(parser: argparse.ArgumentParser, output_help: str) -> None:
    """--seed, --output and --params of the training-run commands (efficiency-cell, -chosen, lambda-run)."""
    parser.add_argument("--seed", type=int, required=True, help="patient subset (cells) and training seed")
    parser.add_argument("--output", type=Path, required=True, help=output_help)
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="default %(default)s")
    parser.set_defaults(handler=_trial)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of the stage entry points."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.stages", description=__doc__)
    commands = parser.add_subparsers(dest="name", required=True)

    run = commands.add_parser(
        "exec",
        help="check params.yaml, then run a stage's commands (under the MLflow parent run)",
        description="Check every key of params.yaml (and the data checks asked for), then run each "
        "COMMAND in turn, stopping at the first that fails; `python -m` commands run in this process. "
        "With --mlflow, their MLflow runs are children of this pipeline execution's parent run.",
    )
    run.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="default %(default)s")
    run.add_argument("--raw-dir", action="store_true", help="check that data.raw_dir exists")
    run.add_argument("--labels", type=Path, help="CSV whose 'label' column must match data.class_names")
    run.add_argument(
        "--no-network-check",
        action="store_true",
        help="for stages that build no network: skip building the networks to check model.image_size "
        "(saves importing torch and MONAI)",
    )
    run.add_argument(
        "--mlflow", action="store_true", help="run the commands under the execution's MLflow parent"
    )
    run.add_argument("--experiment", default="hdkd", help="MLflow experiment (default %(default)s)")
    run.add_argument("--stage", help="the DVC stage name, tagged on the commands' MLflow runs (dvc.stage)")
    run.add_argument(
        "command", nargs=argparse.REMAINDER, help="-- COMMAND [-- COMMAND ...]: each `--` starts a command"
    )
    run.set_defaults(handler=_exec)

    report = commands.add_parser(
        "report",
        help="per-model DVC metrics, comparison and training-curve plots",
        description="Write METRICS_DIR/<model>.json (test metrics with CIs, parameters, GFLOPs, CPU "
        "latency), PLOTS_DIR/comparison.png and training_curves.png (+ CSV), and log them to the MLflow "
        "parent run.",
    )
    report.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated (default %(default)s)"
    )
    report.add_argument("--eval-dir", type=Path, required=True, help="holds <model>/metrics.json")
    report.add_argument(
        "--models-dir", type=Path, required=True, help="holds <model>/model.pt and training_log.csv"
    )
    report.add_argument("--metrics-dir", type=Path, required=True, help="where <model>.json goes")
    report.add_argument("--plots-dir", type=Path, required=True, help="where the plots go")
    report.add_argument(
        "--params", type=Path, help="params.yaml: the default of every option below marked (params)"
    )
    report.add_argument("--class-names", help="comma-separated class names (params: data.class_names)")
    report.add_argument("--latency-runs", type=int, help="timed CPU passes (params: evaluate.latency_runs)")
    report.add_argument(
        "--paired",
        default=f"{HDKD},{BASELINE}",
        help="MODEL,REFERENCE: write METRICS_DIR/paired.json, MODEL - REFERENCE with a paired "
        "patient-bootstrap CI ('' for none; default %(default)s)",
    )
    report.add_argument(
        "--n-bootstrap", type=int, help="paired bootstrap resamples (params: evaluate.n_bootstrap)"
    )
    report.add_argument(
        "--seed",
        type=int,
        default=0,
        help="paired bootstrap seed (default %(default)s, as the evaluate bundles)",
    )
    report.set_defaults(handler=_report)

    efficiency = commands.add_parser(
        "efficiency",
        help="data-efficiency table and plot (each arm and the paired HDKD - baseline per fraction)",
        description="Collect CELLS_DIR/f<fraction>_s<seed>/ into OUTPUT/efficiency.csv (every run), "
        "efficiency.json (per fraction: each arm's mean and 95%% CI over seeds, the paired HDKD - baseline "
        "difference with CIs over seeds and over test patients) and efficiency.png.",
    )
    efficiency.add_argument("--cells-dir", type=Path, required=True, help="efficiency-cell folders")
    efficiency.add_argument("--chosen-dir", type=Path, help="efficiency-chosen folders (same names)")
    efficiency.add_argument("--output", type=Path, required=True)
    efficiency.add_argument("--class-names", required=True, help="comma-separated class names")
    efficiency.add_argument(
        "--n-bootstrap", type=int, default=1000, help="patient resamples (default %(default)s)"
    )
    efficiency.set_defaults(handler=_efficiency)

    cell = commands.add_parser(
        "efficiency-cell",
        help="one data-efficiency cell: subset split, teacher, baseline and published HDKD, test evaluations",
        description="Train and evaluate the teacher, baseline and published-HDKD arms of one (fraction, "
        "seed) cell of the data-efficiency study with the settings of params.yaml (pipeline.stages.trials).",
    )
    _run_arguments(cell, "the cell's folder")
    cell.add_argument("--fraction", type=float, required=True, help="of the training patients, in (0, 1]")

    chosen = commands.add_parser(
        "efficiency-chosen",
        help="the HDKD arm with distill.* of params.yaml in one data-efficiency cell",
        description="Train and evaluate HDKD with the distill.* settings of params.yaml on the split and "
        "teacher of --cell (pipeline.stages.trials); nothing to train when they are the published ones.",
    )
    _run_arguments(chosen, "where models/hdkd and eval/hdkd go")
    chosen.add_argument("--fraction", type=float, required=True, help="the cell's fraction")
    chosen.add_argument("--cell", type=Path, required=True, help="the cell's folder (efficiency-cell)")

    run = commands.add_parser(
        "lambda-run",
        help="train HDKD with one feature weight on the main split (to choose distill.lambda on validation)",
        description="Train the HDKD student with --feature-weight (other settings from params.yaml) on "
        "data/split/split.csv, distilled from models/teacher; its training_log.csv holds the validation "
        "scores.",
    )
    _run_arguments(run, "models folder of the run")
    run.add_argument("--feature-weight", type=float, required=True, help="lambda")

    table = commands.add_parser(
        "lambda-table",
        help="validation table of the lambda runs and the lambda it chooses",
        description="Read RUNS/l<lambda>_s<seed>/training_log.csv into OUTPUT/validation.csv and "
        "validation.json (the chosen lambda and the criterion).",
    )
    table.add_argument("--runs", type=Path, required=True)
    table.add_argument("--output", type=Path, required=True)
    table.set_defaults(handler=_lambda_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit code 2 for bad params or input."""
    args = build_parser().parse_args(argv)
    if args.name == "exec":
        return _exec(args)
    try:
        return int(args.handler(args))
    except ValueError as err:
        print(f"python -m pipeline.stages {args.name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
