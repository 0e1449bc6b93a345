"""Which frames of a video to keep."""

from __future__ import annotations


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
