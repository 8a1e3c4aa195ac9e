"""Access, from inside a running bundle config, to the MONAI workflow that runs it: its command-line
overrides (checked against the config files, so a misspelt key is an error instead of a silently unused
new entry) and the executed config (logged to MLflow)."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow

_CREATE_WORKFLOW = ("monai.bundle.scripts", "create_workflow")
# keys of ``create_workflow``'s arguments that are workflow options, not config overrides
_WORKFLOW_OPTIONS = frozenset(inspect.signature(ConfigWorkflow.__init__).parameters) - {"self", "override"}


def _frames() -> list[Any]:
    frame = sys._getframe(1)
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


def running_workflow() -> ConfigWorkflow:
    """The ``ConfigWorkflow`` whose config is being evaluated (RuntimeError outside a bundle run)."""
    for frame in _frames():
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigWorkflow):
            return candidate
    raise RuntimeError("not called from a MONAI bundle config (no ConfigWorkflow is running)")


def executed_config() -> dict:
    """The config as run: all files merged, command-line overrides applied, macros resolved."""
    return running_workflow().parser.get()


def command_line() -> tuple[Sequence[str] | str | None, dict[str, Any]]:
    """(config files, overrides) given to ``python -m monai.bundle run``; ((), {}) when the workflow was
    built some other way (e.g. from Python)."""
    for frame in _frames():
        if (frame.f_globals.get("__name__"), frame.f_code.co_name) == _CREATE_WORKFLOW:
            args = frame.f_locals.get("_args", {})
            overrides = {key: value for key, value in args.items() if key not in _WORKFLOW_OPTIONS}
            return frame.f_locals.get("config_file"), overrides
    return (), {}


def check_overrides(extra_known: Sequence[str] = ()) -> None:
    """ValueError naming every command-line override whose key is not in the bundle's config files.

    MONAI's ConfigParser would otherwise add an unknown key (e.g. ``--epoch 3`` for ``--epochs``) as a
    new, unused entry and run with the default. ``extra_known`` lists keys a config may legitimately add.
    """
    config_files, overrides = command_line()
    if not overrides or not config_files:
        return
    parser = ConfigParser(ConfigParser.load_config_files(config_files))
    parser.resolve_macro_and_relative_ids()
    unknown = [key for key in overrides if key not in extra_known and key not in parser]
    if unknown:
        top_level = sorted(key for key in parser.get() if not key.startswith("_"))
        raise ValueError(
            f"unknown config key(s) {['--' + key for key in unknown]}: not defined in {config_files}. "
            f"Check the spelling; top-level keys you can override: {', '.join(top_level)}"
        )
