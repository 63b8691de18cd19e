"""Independent simulations on every core: spawned worker processes, results in job order,
so what a run computes never depends on how many processes computed it."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Sequence


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


def map_in_order(fn: Callable, jobs: Sequence[tuple], workers: int | None = None, progress: Callable[[], object] | None = None) -> list:
    """[fn(*job) for job in jobs] on up to `workers` processes (default: every core);
    `progress()` is called once per finished job. `fn` must be importable by name."""
    if not jobs:
        return []
    workers = min(workers or cores(), len(jobs))
    if workers <= 1:
        return _gather(map(fn, *zip(*jobs)), progress)
    # spawn, not fork: callers may hold torch's or OpenMP's threads, which fork does not copy safely
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return _gather(pool.map(fn, *zip(*jobs)), progress)


def _gather(results: Iterable, progress: Callable[[], object] | None) -> list:
    out = []
    for result in results:
        out.append(result)
        progress and progress()
    return out
