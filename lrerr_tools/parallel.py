"""Run one job per item across processes, with a progress bar counting finished items."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from joblib import Parallel, delayed
from tqdm import tqdm

from lrerr_tools.errors import LrerrError

T = TypeVar("T")
R = TypeVar("R")


def resolve_jobs(jobs: int) -> int:
    """`jobs` 0 means one per CPU core; below 0 is refused (joblib would read -1 as all
    cores and -2 as all but one, which no one means by typing a negative count here)."""
    if jobs < 0:
        raise LrerrError(f"--jobs must be 0 (one per core) or more (got {jobs})")
    return jobs if jobs > 0 else (os.cpu_count() or 1)


def threads_per_job(jobs: int) -> int:
    """Split the cores between jobs so N processes don't each start N math threads."""
    return max(1, (os.cpu_count() or 1) // resolve_jobs(jobs))


def run_parallel(fn: Callable[[T], R], items: Sequence[T], *, jobs: int, desc: str,
                 unit: str) -> Iterator[R]:
    """Yield fn(item) for every item as each finishes (in no fixed order).

    With one job everything runs in this process, which keeps tracebacks and debuggers
    simple; otherwise joblib's process pool runs them.
    """
    jobs = resolve_jobs(jobs)
    bar = tqdm(total=len(items), desc=desc, unit=unit, dynamic_ncols=True)
    try:
        if jobs == 1 or len(items) <= 1:
            results = map(fn, items)
        else:
            results = Parallel(n_jobs=jobs, return_as="generator_unordered")(
                delayed(fn)(item) for item in items
            )
        for result in results:
            bar.update()
            yield result
    finally:
        bar.close()
