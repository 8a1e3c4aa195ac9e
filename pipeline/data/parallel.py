"""Map a function over the items of a data stage in worker processes (or in this one), in input order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from pipeline.lifetime import end_with_parent

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


def one_torch_thread() -> None:
    """Worker initialiser for work that uses torch: one thread per process, so workers do not
    oversubscribe the CPUs."""
    import torch  # already imported by the parent process that forked the worker

    torch.set_num_threads(1)


def _start_worker(initializer: Callable[[], None] | None) -> None:
    """Worker start: end with the stage process (pipeline.lifetime), then ``initializer``."""
    end_with_parent()
    if initializer is not None:
        initializer()


def map_in_order(
    function: Callable[[Item], Outcome],
    items: Iterable[Item],
    workers: int,
    chunksize: int = 1,
    initializer: Callable[[], None] | None = None,
) -> Iterator[Outcome]:
    """``function`` of every item, in the order of ``items``: in ``workers`` processes (each started
    with ``initializer``, each ending when this process ends), or in this process when ``workers`` is
    0. ``function`` and the items must pickle; an exception it raises ends the iteration, so functions
    that reject single items return the reason instead."""
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    if not workers:
        yield from map(function, items)
        return
    with ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(initializer,)) as pool:
        yield from pool.map(function, items, chunksize=chunksize)
