"""Which frames of a video to keep."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_indices(n_frames: int, *, frames: int | None = None, every: int | None = None) -> list[int]:
    """Frame indices to decode: `frames` evenly spaced ones, or every `every`-th one.

    The result is strictly increasing, so no frame repeats, and the gaps differ by at most
    one frame. A video shorter than `frames` yields all of its frames.
    """
    if (frames is None) == (every is None):
        raise ValueError("give exactly one of frames or every")
    if n_frames <= 0:
        return []
    if every is not None:
        if every < 1:
            raise ValueError("every must be >= 1")
        return list(range(0, n_frames, every))
    if frames < 1:
        raise ValueError("frames must be >= 1")
    if frames >= n_frames:
        return list(range(n_frames))
    # Centre each pick in its 1/frames-long stretch of the video, so the first and last
    # frames (often fades or black) are not favoured.
    return [(2 * i + 1) * n_frames // (2 * frames) for i in range(frames)]


def sample_times(times: Sequence[float], every_seconds: float) -> list[int]:
    """Frame indices nearest to 0, S, 2S, ... seconds (S = `every_seconds`), up to the last
    frame's time: one frame per S seconds of presentation time, whatever the frame rate.

    `times` are the frames' presentation times, increasing. A frame nearest to two multiples
    (frames further apart than S) is kept once; a tie goes to the earlier frame.
    """
    if not every_seconds > 0:
        raise ValueError("every_seconds must be > 0")
    if len(times) == 0:
        return []
    times = np.asarray(times, dtype=np.float64)
    # Division, not //, so that 3.0 s at S = 0.1 makes 31 multiples and not 30.
    targets = np.arange(int(times[-1] / every_seconds + 1e-9) + 1) * every_seconds
    after = np.searchsorted(times, targets)  # the first frame at or after each multiple
    before, after = np.clip(after - 1, 0, len(times) - 1), np.clip(after, 0, len(times) - 1)
    nearest = np.where(targets - times[before] <= times[after] - targets, before, after)
    return sorted(set(nearest.tolist()))
