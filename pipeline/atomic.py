"""Atomic output files: written to a temporary file in the target's folder, flushed to disk, then renamed.

A reader sees the previous complete file or the new complete file, never a file cut short: a failure
(full disk, a value that cannot be serialised, a killed process) removes the temporary file and leaves
the previous file as it was (or no file). Failures to write are :class:`OutputError`, one line naming the
file and the fix; :func:`check_writable` finds a folder that takes no files before any work is done.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


class OutputError(ValueError):
    """An output file or folder cannot be written (full disk, read-only folder, no permission)."""


def _output_error(path: Path, error: OSError, what: str = "cannot write") -> OutputError:
    """One line naming ``path``, the system's reason and the fix."""
    reason = error.strerror or str(error)
    return OutputError(f"{what} {path}: {reason}; free disk space there or make the folder writable, or "
                       "choose another output folder")


def temporary_name(path: Path) -> Path:
    """A hidden, unique temporary name beside ``path`` (same folder, so the rename is atomic) that keeps
    ``path``'s suffix, so that libraries choosing the format by suffix still do."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write (also for a library that takes a file name: ``np.save``,
    ``torch.jit.save``, ``figure.savefig``, ONNX); on a clean exit the file is fsynced and renamed to
    ``path``, on any error removed. OSError becomes :class:`OutputError`; other errors (e.g. a value that
    cannot be serialised) pass unchanged."""
    path = Path(path)
    temporary = temporary_name(path)
    try:
        yield temporary
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException as error:
        with suppress(OSError):
            temporary.unlink()
        if isinstance(error, OSError) and not isinstance(error, OutputError):
            raise _output_error(path, error) from error
        raise


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """:func:`atomic_path` opened for writing (``mode`` "w" or "wb", ``kwargs`` as for :func:`open`)."""
    with atomic_path(path) as temporary, open(temporary, mode.replace("w", "x"), **kwargs) as handle:
        yield handle


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, content: Any, **dump_options: Any) -> None:
    """Write ``content`` as JSON (``json.dumps`` options, e.g. ``indent``) plus a newline, atomically; the
    text is made in full first, so a value that cannot be serialised leaves the previous file untouched."""
    write_text(path, json.dumps(content, **dump_options) + "\n")


def write_csv(path: str | os.PathLike, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    """Write a CSV (``header`` then ``rows``, UTF-8, ``\\n`` line ends) to ``path`` atomically."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(list(header))
        writer.writerows(rows)


def check_writable(folder: str | os.PathLike, option: str = "--output") -> Path:
    """Create ``folder`` (and its parents) and check that it takes a new file; :class:`OutputError`
    naming the folder and the fix otherwise. Call it before reading any input."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temporary_name(folder / "write-check")
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        raise OutputError(f"{option} {folder} cannot be written: {reason}; make it writable or choose "
                          f"another {option}") from error
    return folder
