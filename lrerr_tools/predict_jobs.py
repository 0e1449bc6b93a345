"""`predict --jobs N`: inputs predicted in N CPU processes at a time, each with its own copy of
the model (loaded once per process) and its share of the cores."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lrerr_tools.parallel import run_parallel, threads_per_job


@dataclass(frozen=True)
class Job:
    """What a worker needs to predict an input exactly as the main process would."""

    detector: str
    options: tuple[tuple[str, object], ...]  # predict_media.prepare's keyword arguments
    out: str | None
    jobs: int


_SETUPS: dict = {}  # per worker process: its loaded model, by Job


def _predict_one(job: Job, item: tuple[int, Path]):
    from lrerr_tools.predict_media import predict_with_suspects, prepare
    from lrerr_tools.predict_outputs import write_figure

    setup = _SETUPS.get(job)
    if setup is None:
        torch.set_num_threads(threads_per_job(job.jobs))
        setup = _SETUPS[job] = prepare(job.detector, **dict(job.options), jobs=job.jobs, progress=False)
    index, path = item
    prediction, suspects = predict_with_suspects(path, setup)
    # Written here: the suspects' face crops stay in the worker rather than crossing back.
    figure = None if job.out is None else write_figure(Path(job.out), index, prediction, suspects, setup)
    return index, prediction, figure


def predict_in_processes(inputs: Sequence[Path], job: Job) -> Iterator[tuple[int, object, str | None]]:
    """(index in `inputs`, its Prediction, its figure's path) for every input, as each finishes."""
    return run_parallel(functools.partial(_predict_one, job), list(enumerate(inputs)), jobs=job.jobs,
                        desc="predict", unit="input")
