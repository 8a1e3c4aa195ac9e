"""Processes that end with their parent.

DVC runs each stage as a child process; when `dvc repro` itself is killed (kill -9, a closed terminal)
the stage and its workers must not outlive it, or they keep writing into outputs that the next
`dvc repro` restores from its run cache. On Linux the kernel can signal a process when its parent
ends (``prctl(PR_SET_PDEATHSIG)``): the stage launcher asks for that for itself, for the commands it
starts and for the data stages' worker processes. Elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library, loaded once (so a forked child about to exec loads nothing)."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def end_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``signum`` to this process when its parent ends; returns whether it could
    (False off Linux). A parent that already ended before the request took effect ends this process
    now, so no window is left open."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    if _libc().prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)
    return True


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit(128 + SIGTERM)`` in the main thread, so ``finally`` blocks run
    (an MLflow run is closed as FAILED, temporary files are removed) before the process ends."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def run_ending_with_parent(command: list[str]) -> int:
    """Run ``command`` as a child that ends when this process ends; its exit code."""
    import subprocess

    preexec = None
    if sys.platform.startswith("linux"):
        _libc()  # load before forking: the child only calls into it
        preexec = end_with_parent
    return subprocess.call(command, preexec_fn=preexec)
