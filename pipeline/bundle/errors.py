"""Errors of a bundle run a person can read: a missing input names the command that makes it, and an
error that stops a run prints its cause on the first line.

MONAI wraps an exception raised while a config item is evaluated in its own ``RuntimeError`` (and ignite
wraps it again), so the cause would sit at the end of a long chained traceback. ``readable_errors()``
(the first step of every bundle's ``initialize``) installs a ``sys.excepthook`` that prints the
innermost cause first: alone for bad input (:class:`BundleInputError`, a ``params.yaml`` error), followed
by the traceback for anything else.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from types import TracebackType

import yaml

DVC_FILE = "dvc.yaml"


class BundleInputError(ValueError):
    """Input a bundle cannot run with (a missing file, a wrong setting); its message says what to do."""


class MissingInputError(BundleInputError, FileNotFoundError):
    """A file a bundle needs does not exist; the message names the command that makes it."""


def making_stage(path: str | Path, project_dir: str | Path) -> str | None:
    """The stage of ``project_dir/dvc.yaml`` whose outputs hold ``path`` (None when no stage makes it)."""
    project = Path(project_dir).resolve()
    dvc_file = project / DVC_FILE
    try:
        relative = Path(path).resolve().relative_to(project)
        stages = (yaml.safe_load(dvc_file.read_text()) or {}).get("stages", {})
    except (ValueError, OSError, yaml.YAMLError):
        return None
    for name, stage in stages.items():
        for out in stage.get("outs", []) + stage.get("metrics", []):
            out_path = Path(next(iter(out)) if isinstance(out, dict) else out)
            if relative == out_path or out_path in relative.parents:
                return name
    return None


def missing(
    what: str, path: str | Path, project_dir: str | Path, otherwise: str, option: str
) -> MissingInputError:
    """The error for a missing ``path``: `dvc repro <stage>` when a stage of the project makes it, else
    ``otherwise`` (the command that does); ``option`` points the bundle elsewhere."""
    stage = making_stage(path, project_dir)
    make = f"`dvc repro {stage}` (in {Path(project_dir).resolve()}) makes it" if stage else otherwise
    return MissingInputError(f"{what} {path} not found: {make}; or pass {option} PATH")


def _innermost(error: BaseException) -> BaseException:
    seen = {id(error)}
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def _hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    from pipeline.params import ParamsError

    cause = _innermost(error)
    bad_input = isinstance(cause, (BundleInputError, ParamsError))
    print(f"error: {cause}" if bad_input else f"error: {type(cause).__name__}: {cause}", file=sys.stderr)
    if not bad_input:
        print("(full traceback below)", file=sys.stderr)
        traceback.print_exception(kind, error, trace)


def readable_errors() -> None:
    """Make an uncaught error of this process print its cause first (alone for bad input)."""
    sys.excepthook = _hook
