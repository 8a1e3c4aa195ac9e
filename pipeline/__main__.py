"""`python -m pipeline <command> [options]`: the pipeline steps that are not MONAI bundles."""

from __future__ import annotations

import importlib
import sys

# command -> (module with a ``main(argv) -> int``, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo-data": ("pipeline.demo.cohort", "write the built-in synthetic head-MRI demo cohort"),
    "ingest": ("pipeline.data.ingest", "find DICOM/NIfTI/2D images, write manifest.csv and rejected.csv"),
    "slices": ("pipeline.data.slices", "extract normalised 2D slices from the ingested volumes"),
    "split": ("pipeline.data.split", "patient-level stratified train/val/test split"),
    "export": ("pipeline.export", "export a trained network to ONNX and TorchScript, verified against torch"),
}


def usage() -> str:
    """The top-level help text listing every command."""
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: python -m pipeline <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "`python -m pipeline <command> --help` explains each command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the command's module."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
