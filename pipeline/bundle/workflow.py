"""The command line of a bundle run (``python -m monai.bundle run ...``) as this process received it: its
overrides, checked against the config files (a misspelt key is an error instead of a silently unused new
entry), and the executed config (logged to MLflow).

Both are read from ``sys.argv``, the process's own command line, parsed as MONAI's command-line front end
(python-fire) parses it; no MONAI internals or stack frames are inspected. A bundle driven from MONAI's
Python API (``ConfigWorkflow(config_file=..., **overrides)``) has no such command line: its caller passes
the overrides itself, so nothing is checked and no executed config is logged.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fire.parser import DefaultParseValue
from monai.bundle import ConfigParser
from monai.bundle.scripts import run as monai_run

from pipeline.bundle.errors import BundleInputError

# arguments of `monai.bundle run` that are options of the run, not config overrides
RUN_OPTIONS = frozenset(inspect.signature(monai_run).parameters) - {"override"}
MONAI_BUNDLE_MAIN = ("monai", "bundle", "__main__.py")


def _options(arguments: Sequence[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` / ``--flag`` pairs, values parsed as fire parses them."""
    options: dict[str, Any] = {}
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        index += 1
        if not argument.startswith("--"):
            continue  # the positional run_id
        key, has_value, value = argument[2:].partition("=")
        if not has_value:
            if index < len(arguments) and not arguments[index].startswith("--"):
                value, index = arguments[index], index + 1
            else:
                value = "True"
        options[key.replace("-", "_") if "#" not in key else key] = DefaultParseValue(value)
    return options


def _bundle_options(argv: Sequence[str] | None = None) -> tuple[str, dict[str, Any]] | None:
    """(command, options) of ``python -m monai.bundle <command> ...`` when that is this process's command
    line (the options of an ``--args_file`` included, the command line winning), else None."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or Path(argv[0]).parts[-3:] != MONAI_BUNDLE_MAIN:
        return None
    options = _options(argv[2:])
    if options.get("args_file"):
        options = {**ConfigParser.load_config_file(options["args_file"]), **options}
    return argv[1], options


def _config_files(options: dict[str, Any]) -> tuple[str, ...]:
    """The ``--config_file`` value(s) of a ``monai.bundle`` command line."""
    config_file = options.get("config_file") or ()
    if isinstance(config_file, str):
        config_file = tuple(name for name in config_file.split(",") if name)
    return tuple(str(name) for name in config_file)


def command_line(argv: Sequence[str] | None = None) -> tuple[tuple[str, ...], dict[str, Any]] | None:
    """(config files, overrides) of ``python -m monai.bundle run`` when that is this process's command,
    else None."""
    found = _bundle_options(argv)
    if found is None or found[0] != "run":
        return None
    options = found[1]
    overrides = {key: value for key, value in options.items() if key not in RUN_OPTIONS}
    return _config_files(options), overrides


def bundle_root(bundle_name: str) -> str:
    """The folder of the bundle being run: the parent of the ``configs`` folder of the first
    ``--config_file`` of ``python -m monai.bundle <command>`` (``run``, ``verify_net_in_out``,
    ``ckpt_export``, ...; any working directory), else (MONAI's Python API) ``bundles/<bundle_name>`` next
    to the installed ``pipeline`` package. ``--bundle_root`` wins."""
    found = _bundle_options()
    config_files = _config_files(found[1]) if found else ()
    if config_files:
        configs = Path(config_files[0]).resolve().parent
        return str(configs.parent if configs.name == "configs" else configs)
    from pipeline.tracking import repo_root

    return str(repo_root() / "bundles" / bundle_name)


def _config_files_parser(config_files: Sequence[str], overrides: dict[str, Any]) -> ConfigParser:
    parser = ConfigParser(ConfigParser.load_config_files(list(config_files)))
    parser.update(overrides)
    parser.resolve_macro_and_relative_ids()
    return parser


SETTING = re.compile(r"\$@settings\[(?:'(?P<key>[\w.]+)'|@run_settings \+ '\.(?P<leaf>\w+)')\]")


def _with_settings(config: Any, settings: dict[str, Any], run_settings: str | None) -> Any:
    """``config`` with every item that is a plain ``@settings[...]`` read replaced by its value."""
    if isinstance(config, dict):
        return {key: _with_settings(value, settings, run_settings) for key, value in config.items()}
    if isinstance(config, list):
        return [_with_settings(value, settings, run_settings) for value in config]
    match = SETTING.fullmatch(config) if isinstance(config, str) else None
    if match is None:
        return config
    return settings[match["key"] or f"{run_settings}.{match['leaf']}"]


def executed_config(settings: dict[str, Any] | None = None) -> dict | None:
    """The config as run from the command line: all files merged, overrides applied, macros resolved,
    and the items read from ``settings`` (params.yaml) given their values (None when the bundle was not
    started by ``python -m monai.bundle run``)."""
    found = command_line()
    if found is None or not found[0]:
        return None
    config = _config_files_parser(*found).get()
    return _with_settings(config, settings, config.get("run_settings")) if settings else config


def check_overrides(extra_known: Sequence[str] = ()) -> None:
    """BundleInputError naming every command-line override whose key is not in the bundle's config files.

    MONAI's ConfigParser would otherwise add an unknown key (e.g. ``--epoch 3`` for ``--epochs``) as a
    new, unused entry and run with the default. ``extra_known`` lists keys a config may legitimately add.
    """
    found = command_line()
    if found is None or not found[0] or not found[1]:
        return
    config_files, overrides = found
    parser = _config_files_parser(config_files, {})
    unknown = [key for key in overrides if key not in extra_known and key not in parser]
    if unknown:
        top_level = sorted(key for key in parser.get() if not key.startswith("_"))
        raise BundleInputError(
            f"unknown config key(s) {['--' + key for key in unknown]}: not defined in {list(config_files)}. "
            f"Check the spelling; top-level keys you can override: {', '.join(top_level)}"
        )
