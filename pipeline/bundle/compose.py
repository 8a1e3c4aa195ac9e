"""The bundles' config files, written from their templates so that each bundle folder stands alone.

MONAI resolves a config macro (``"%file#id"``) against the working directory, and a bundle config has no
other way to include a second file. So the items the two bundles share live once, in
``bundles/common/hdkd_common.json``, and each bundle's configs are generated: a template in
``bundles/common/templates/<bundle>/`` has every macro replaced by the item it names (what MONAI would do
at run time from the repository root) and is written to ``bundles/<bundle>/configs/``. The written files
hold no macro, so a bundle runs from any folder, also zipped and unpacked elsewhere.

A template may name a base with ``"_base_": "<path of a JSON file>"`` (relative to the repository root):
the items the two bundles' evaluation or inference configs share (``bundles/common/templates/*.json``).
The generated config holds the template's own items first, then every base item the template does not
set itself; macros in the base are replaced the same way.

Edit the templates or the shared files, then run ``python -m pipeline.bundle.compose`` from the repository
root; ``--check`` only lists the config files that are out of date (a test runs it).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.utils import MACRO_KEY

from pipeline.atomic import write_text

TEMPLATES = Path("bundles", "common", "templates")
GENERATED_KEY = "_generated_"
BASE_KEY = "_base_"


def _inline(value: Any, project: Path, sources: dict[str, ConfigParser]) -> Any:
    """``value`` with every macro replaced, recursively, by a copy of the item it names."""
    if isinstance(value, dict):
        return {key: _inline(item, project, sources) for key, item in value.items()}
    if isinstance(value, list):
        return [_inline(item, project, sources) for item in value]
    if isinstance(value, str) and value.startswith(MACRO_KEY):
        path, item_id = ConfigParser.split_path_id(value[len(MACRO_KEY) :])
        if not path:
            raise ValueError(f"template macro {value!r}: name the file it takes the item from")
        if path not in sources:
            sources[path] = ConfigParser(ConfigParser.load_config_file(project / path))
        return _inline(copy.deepcopy(sources[path][item_id]), project, sources)
    return value


def compose_template(
    template: dict[str, Any], project: Path, sources: dict[str, ConfigParser]
) -> dict[str, Any]:
    """A template's config: its own items, then the items of its ``_base_`` file it does not set, every
    macro replaced."""
    own = {key: value for key, value in template.items() if key != BASE_KEY}
    config = _inline(own, project, sources)
    if BASE_KEY in template:
        base_text = (project / template[BASE_KEY]).read_text(encoding="utf-8")
        base = _inline(json.loads(base_text), project, sources)
        config.update((key, value) for key, value in base.items() if key not in config)
    return config


def config_path(template: Path) -> Path:
    """Where the config generated from ``template`` (``<TEMPLATES>/<bundle>/<name>``) goes, relative to the
    project: ``bundles/<bundle>/configs/<name>``."""
    return Path("bundles", template.parent.name, "configs", template.name)


def render(project: Path) -> dict[Path, str]:
    """The text of every generated config file, by its path relative to ``project``."""
    templates = sorted((project / TEMPLATES).glob("*/*.json"))
    if not templates:
        raise FileNotFoundError(f"no bundle templates in {project / TEMPLATES}: run from the repository root")
    sources: dict[str, ConfigParser] = {}
    rendered = {}
    for template in templates:
        relative = template.relative_to(project)
        note = (f"Generated from {relative.as_posix()} by `python -m pipeline.bundle.compose`: edit the "
                "template (or bundles/common/hdkd_common.json) and run that again, not this file.")
        config = compose_template(json.loads(template.read_text(encoding="utf-8")), project, sources)
        text = json.dumps({GENERATED_KEY: note, **config}, indent=4, ensure_ascii=False) + "\n"
        rendered[config_path(relative)] = text
    return rendered


def stale(project: Path) -> list[Path]:
    """Generated config files that are missing or differ from what their templates give now."""
    return [
        path
        for path, text in render(project).items()
        if not (project / path).is_file() or (project / path).read_text(encoding="utf-8") != text
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with ``--check`` only list) the bundles' generated config files."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.bundle.compose",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="the repository root (default: .)")
    parser.add_argument("--check", action="store_true", help="only list out-of-date files; exit 1 if any")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale(args.project)
        for path in out_of_date:
            print(f"out of date: {path.as_posix()} (run python -m pipeline.bundle.compose)")
        return 1 if out_of_date else 0
    for path, text in render(args.project).items():
        write_text(args.project / path, text)
        print(f"wrote {path.as_posix()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
