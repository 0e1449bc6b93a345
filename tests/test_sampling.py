import pytest

from lrerr_tools.sampling import sample_indices


@pytest.mark.parametrize("n_frames,frames", [(300, 32), (33, 32), (32, 32), (1000, 7), (5, 1)])
def test_evenly_spaced_frames_are_increasing_unique_and_in_range(n_frames, frames):
    idx = sample_indices(n_frames, frames=frames)
    assert len(idx) == frames
    assert idx == sorted(set(idx))
    assert idx[0] >= 0 and idx[-1] < n_frames
    gaps = {b - a for a, b in zip(idx, idx[1:])}
    assert max(gaps, default=0) - min(gaps, default=0) <= 1  # a fixed interval, up to rounding


def test_evenly_spaced_frames_cover_the_whole_video():
    idx = sample_indices(320, frames=32)
    assert idx[0] == 5 and idx[-1] == 315


def test_short_video_gives_every_frame_once():
    assert sample_indices(10, frames=32) == list(range(10))


def test_every_kth_frame():
    assert sample_indices(10, every=3) == [0, 3, 6, 9]


def test_empty_video_gives_nothing():
    assert sample_indices(0, frames=32) == []


@pytest.mark.parametrize("kwargs", [{}, {"frames": 4, "every": 2}, {"frames": 0}, {"every": 0}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        sample_indices(100, **kwargs)
