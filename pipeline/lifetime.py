"""Processes that end with their parent.

DVC runs each stage as a child process; when `dvc repro` itself is killed (kill -9, a closed terminal)
the stage and its workers must not outlive it, or they keep writing into outputs that the next
`dvc repro` restores from its run cache. On Linux the kernel can signal a process when its parent
ends (``prctl(PR_SET_PDEATHSIG)``): the stage launcher asks for that for itself, for the commands it
starts and for the data stages' worker processes. DVC starts a stage through ``$SHELL -c`` (``/bin/sh``
when unset); bash replaces itself with the stage command, but dash stays as the launcher's parent and
outlives DVC, so the launcher also watches the shell's parent (:func:`end_with_stage_runner`).
Elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import select
import signal
import sys
import threading
from pathlib import Path

# Names (/proc/<pid>/comm) of the shells DVC may run a stage command through.
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish"})

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


def end_with_stage_runner(signum: int = signal.SIGTERM) -> bool:
    """:func:`end_with_parent`, and when the parent is a shell that stayed between DVC and this
    process, also end when the shell's parent (DVC) ends. Returns whether the parent is watched."""
    if not end_with_parent(signum):
        return False
    parent = os.getppid()
    if _process_name(parent) in SHELLS:
        _watch(_parent_of(parent), signum)
    return True


def _process_name(pid: int) -> str:
    """The kernel's name of process ``pid`` ("" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _parent_of(pid: int) -> int:
    """The parent process id of ``pid`` (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state, past the command name


def _watch(pid: int, signum: int) -> None:
    """Send ``signum`` to this process when process ``pid`` ends (a daemon thread waits on its pidfd)."""
    if pid <= 1:
        return
    try:
        handle = os.pidfd_open(pid)
    except OSError:  # already gone: its child (the shell) was orphaned before we looked
        os.kill(os.getpid(), signum)
        return

    def wait() -> None:
        select.select([handle], [], [])
        os.kill(os.getpid(), signum)

    threading.Thread(target=wait, name=f"end-with-{pid}", daemon=True).start()


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
