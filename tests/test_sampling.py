import pytest

from lrerr_tools.sampling import sample_indices, sample_times


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


def test_one_frame_per_second_of_a_constant_rate_video():
    times = [i / 25 for i in range(100)]  # 4 s at 25 fps
    assert sample_times(times, 1.0) == [0, 25, 50, 75]
    assert sample_times(times, 0.2) == list(range(0, 100, 5))


def test_frames_nearest_each_multiple_on_variable_frame_rate():
    times = [0.0, 0.1, 0.2, 1.3, 1.9, 2.05, 4.0]
    # 0 s -> 0.0; 1 s -> 1.3 (0.2 is 0.8 away); 2 s -> 2.05; 3 s -> 2.05 again (4.0 is 1.0
    # away), kept once; 4 s -> 4.0.
    assert sample_times(times, 1.0) == [0, 3, 5, 6]


def test_multiples_up_to_the_last_frame_are_all_taken():
    # 3.0 / 0.1 is 29.999... in floating point: the frame at 3.0 s must still be a pick.
    times = [i / 10 for i in range(31)]
    assert sample_times(times, 0.1) == list(range(31))


def test_seconds_finer_than_the_frames_give_each_frame_once():
    times = [0.0, 0.5, 1.0]
    assert sample_times(times, 0.01) == [0, 1, 2]


def test_a_tie_goes_to_the_earlier_frame():
    assert sample_times([0.0, 0.25, 0.75], 0.5) == [0, 1]


def test_no_frames_give_nothing():
    assert sample_times([], 1.0) == []


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan")])
def test_seconds_not_above_zero_are_refused(seconds):
    with pytest.raises(ValueError):
        sample_times([0.0, 1.0], seconds)
