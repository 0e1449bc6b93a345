"""`train-det --label-fraction F`: which train videos keep their labels in the few-label
protocol (SCL-KD's, docs/protocols.md).

    chosen = labelled_videos(train_dataset, fraction=0.05, seed=0)

The train videos are grouped into strata by (label, fake method); each stratum keeps
round(F × its size) of its videos, at least one, ranked by a seeded hash of the video id. The
choice depends on the video ids, F and the seed alone: not on the order the shards list them
in, nor on which videos of other strata are present, so a student, its teacher and a plain Xception
trained with the same F and seed label the same videos. As every stratum keeps a video, a
train split with real and fake faces (which train-det demands) always keeps labelled reals
and fakes, whatever F.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict

from lrerr_tools.errors import LrerrError


def check_fraction(fraction: float | None) -> None:
    if fraction is not None and not 0 < fraction <= 1:
        raise LrerrError(f"--label-fraction must be in (0, 1] (got {fraction})")


def video_strata(dataset) -> dict[tuple[int, str], list[str]]:
    """{(label, method): sorted video ids} of a ShardDataset's faces."""
    strata: dict[tuple[int, str], set[str]] = defaultdict(set)
    for video, method, label in zip(dataset.face_videos, dataset._method, dataset.labels):
        strata[(int(label), dataset.method_names[method])].add(video)
    return {key: sorted(videos) for key, videos in sorted(strata.items())}


def _rank(video_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{video_id}".encode()).hexdigest()


def labelled_videos(dataset, fraction: float, seed: int) -> list[str]:
    """The video ids that keep their labels, sorted: round(`fraction` × n) of each stratum's n
    videos (at least one), those with the smallest seeded hash."""
    check_fraction(fraction)
    chosen = []
    for videos in video_strata(dataset).values():
        keep = max(1, math.floor(fraction * len(videos) + 0.5))
        chosen += sorted(videos, key=lambda v: _rank(v, seed))[:keep]
    return sorted(chosen)
