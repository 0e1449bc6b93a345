"""Run one job per item across processes, with a progress bar counting finished items."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from joblib import Parallel, delayed, parallel_config
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


PARENT_POLL_S = 0.5


def _exit_with_parent() -> None:
    """Worker initializer: end this worker as soon as the process that started it is gone.
    loky keeps idle workers for minutes, and a main process killed with SIGKILL cannot stop
    them; polling the parent pid is portable, unlike Linux's PR_SET_PDEATHSIG, which follows
    the starting thread rather than the process."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


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
    serial = jobs == 1 or len(items) <= 1
    pool = contextlib.nullcontext() if serial else parallel_config(backend="loky",
                                                                   initializer=_exit_with_parent)
    try:
        with pool:
            results = map(fn, items) if serial else Parallel(n_jobs=jobs, return_as="generator_unordered")(
                delayed(fn)(item) for item in items)
            for result in results:
                bar.update()
                yield result
    finally:
        bar.close()
