"""The key-region geometry on hand-made landmark sets, where the right answer is known."""

import math

import numpy as np
import pytest

from lrerr_tools import key_region as kr

SIZE = 224


def synthetic_face() -> np.ndarray:
    """A 68-point set whose P1..P4 are known, with decoys a wrong rule would pick.

    Left brow: (60, 70) is nearest (0, 0) at 92.2; (50, 100) has the smallest x and (80, 62)
    the smallest y. Right brow: (180, 66) is nearest (224, 0) at 79.3; (190, 90) has the
    largest x and (130, 64) the smallest y. The chin (8) and the mouth sit nearer the bottom
    corners than any jaw point, but belong to neither jaw group.
    """
    points = np.full((68, 2), 112.0)
    points[17:22] = [(50, 100), (60, 70), (80, 62), (95, 64), (105, 70)]
    points[22:27] = [(120, 70), (130, 64), (170, 68), (180, 66), (190, 90)]
    points[0:8] = [(40, 110), (42, 130), (45, 150), (50, 170), (58, 186), (70, 198), (84, 207), (98, 212)]
    points[8] = (20, 215)  # decoy: nearest to (0, H) of all points, but not a jaw-left point
    points[9:17] = [(126, 212), (140, 207), (154, 198), (166, 186), (174, 170), (179, 150), (182, 130),
                    (184, 110)]
    points[48:68] = (210, 220)  # decoy near (W, H)
    return points


def test_corner_points_pick_the_nearest_point_of_each_group():
    corners = kr.corner_points(synthetic_face(), SIZE, SIZE)
    # P3: distances to (0, 224) of (58, 186) = 69.3, (50, 170) = 73.6, (70, 198) = 74.7
    # P4: to (224, 224) (166, 186) = 69.3, (174, 170) = 73.6, (154, 198) = 74.7
    assert corners.tolist() == [[60, 70], [180, 66], [58, 186], [166, 186]]


@pytest.mark.parametrize("chin", [(2, 222), (222, 222), (112, 224)])
def test_the_chin_is_in_neither_jaw_group(chin):
    points = synthetic_face()
    points[8] = chin
    assert kr.corner_points(points, SIZE, SIZE)[2:].tolist() == [[58, 186], [166, 186]]


def test_face_rect_is_the_box_of_p1_to_p4_only():
    rect = kr.face_rect(synthetic_face(), SIZE, SIZE)
    assert rect == (58.0, 66.0, 180.0, 186.0)
    # The brow point nearest the left edge, (50, 100), is not a corner and stays outside.
    assert not kr.contains(rect, (50, 100, 50, 100))


def test_corners_follow_the_crop_size():
    points = synthetic_face()
    points[22:27] = [(120, 10), (130, 40), (150, 60), (300, 40), (310, 200)]
    # Nearest (224, 0): (300, 40) at 85.9 beats (150, 60) at 95.3; nearest (160, 0): (120, 10).
    assert kr.corner_points(points, 224, 224)[1].tolist() == [300, 40]
    assert kr.corner_points(points, 160, 224)[1].tolist() == [120, 10]


def test_corner_points_reject_a_wrong_shape():
    with pytest.raises(ValueError, match="68x2"):
        kr.corner_points(np.zeros((5, 2)), SIZE, SIZE)


def test_expand_rect_grows_and_clamps_to_the_crop():
    assert kr.expand_rect((50, 60, 150, 160), 8, SIZE, SIZE) == (42, 52, 158, 168)
    assert kr.expand_rect((3, 5, 220, 221), 8, SIZE, SIZE) == (0, 0, 224, 224)
    assert kr.expand_rect((50, 60, 150, 160), 0, SIZE, SIZE) == (50, 60, 150, 160)
    assert kr.expand_rect((-30, -30, 300, 400), 0, SIZE, SIZE) == (0, 0, 224, 224)


def test_rect_exactly_on_patch_borders_takes_only_the_patches_inside():
    ids, mask = kr.rect_to_patches((16, 32, 48, 64), SIZE, 16)
    assert ids == [29, 30, 43, 44]  # rows 2-3, columns 1-2 of the 14×14 grid
    assert mask.dtype == bool and mask.shape == (196,) and np.flatnonzero(mask).tolist() == ids


def test_any_positive_overlap_takes_the_patch():
    ids, _ = kr.rect_to_patches((15.9, 32, 48.1, 64), SIZE, 16)
    assert ids == [28, 29, 30, 31, 42, 43, 44, 45]
    assert kr.rect_to_patches((100, 100, 100.5, 100.5), SIZE, 16)[0] == [6 * 14 + 6]


def test_degenerate_and_clamped_rects():
    assert kr.rect_to_patches((16, 16, 16, 64), SIZE, 16)[0] == []  # zero width
    assert kr.rect_to_patches((0, 0, 224, 224), SIZE, 16)[0] == list(range(196))
    assert kr.rect_to_patches((-10, -10, 5, 5), SIZE, 16)[0] == [0]
    assert kr.rect_to_patches((220, 220, 300, 300), SIZE, 16)[0] == [195]
    assert kr.rect_to_patches((0, 0, 224, 224), SIZE, 32)[1].shape == (49,)


def test_patch_ids_of_points():
    assert kr.patch_ids([(0, 0), (15.99, 16), (223.5, 223.5), (-3, 500)], SIZE, 16).tolist() == [
        0, 14, 195, 13 * 14]


def test_dataset_rect_with_full_coverage_is_the_union():
    rects = [(10, 20, 30, 40), (5, 25, 35, 38), (12, 15, 28, 45)]
    assert kr.dataset_rect(rects, 1.0) == ((5, 15, 35, 45), 3)


def test_dataset_rect_drops_the_outlier():
    rects = [(50, 60, 170, 190)] * 20 + [(0, 0, 224, 224)]
    rect, inside = kr.dataset_rect(rects, 0.95)  # need ceil(19.95) = 20 of 21
    assert rect == (50, 60, 170, 190) and inside == 20


def test_a_face_on_the_border_counts_as_inside():
    rects = [(10, 10, 20, 20)] * 19 + [(5, 10, 20, 20)]
    rect, inside = kr.dataset_rect(rects, 0.95)
    assert rect == (10, 10, 20, 20)
    assert inside == 19  # every face whose side *is* the rectangle's side counts


def test_coverage_holds_for_all_four_points_together():
    # Four faces each poke out of a different side: a per-side 90% quantile would give
    # (10, 10, 20, 20), which holds only 16 of 20 faces whole.
    rects = [(10, 10, 20, 20)] * 16 + [(0, 10, 20, 20), (10, 0, 20, 20), (10, 10, 30, 20),
                                       (10, 10, 20, 30)]
    rect, inside = kr.dataset_rect(rects, 0.9)
    assert inside >= 18
    assert rect == (0, 0, 30, 30)
    assert kr.dataset_rect(rects, 0.8) == ((10, 10, 20, 20), 16)


def _first_order_statistic_that_covers(rects: np.ndarray, coverage: float):
    """The documented rule, by a plain scan over k (dataset_rect bisects)."""
    n = len(rects)
    need = math.ceil(coverage * n - 1e-9)
    for k in range(need, n + 1):
        rect = (sorted(rects[:, 0])[n - k], sorted(rects[:, 1])[n - k],
                sorted(rects[:, 2])[k - 1], sorted(rects[:, 3])[k - 1])
        inside = sum(kr.contains(rect, tuple(r)) for r in rects)
        if inside >= need:
            return rect, inside


@pytest.mark.parametrize("coverage", [0.5, 0.8, 0.9, 0.95, 0.99, 1.0])
def test_dataset_rect_meets_the_coverage_with_the_smallest_order_statistic(coverage):
    rng = np.random.default_rng(0)
    centre = rng.normal(112, 6, size=(300, 2))
    half = rng.normal(55, 5, size=(300, 2))
    rects = np.hstack([centre - half, centre + half])
    rect, inside = kr.dataset_rect(rects.tolist(), coverage)
    assert inside == sum(kr.contains(rect, tuple(r)) for r in rects) >= math.ceil(coverage * 300)
    assert (rect, inside) == _first_order_statistic_that_covers(rects, coverage)


@pytest.mark.parametrize("coverage", [0.0, -0.1, 1.01])
def test_dataset_rect_rejects_a_bad_coverage(coverage):
    with pytest.raises(ValueError, match="coverage"):
        kr.dataset_rect([(0, 0, 1, 1)], coverage)


def test_seed_rect_keeps_centre_and_scales_the_box():
    identity = [[1, 0, 0], [0, 1, 0]]
    assert kr.seed_rect((50, 60, 150, 180), identity, SIZE, SIZE) == (50, 60, 150, 180)
    # Rotate 30° and scale by 2 about the origin, then shift: the box keeps its size × 2 and
    # is not inflated to the bounding box of its rotated corners.
    a = math.radians(30)
    m = [[2 * math.cos(a), -2 * math.sin(a), 100], [2 * math.sin(a), 2 * math.cos(a), -50]]
    cx, cy = np.array(m)[:, :2] @ (30, 40) + np.array(m)[:, 2]  # the box's centre
    left, top, right, bottom = kr.seed_rect((20, 30, 40, 50), m, SIZE, SIZE)
    assert (right - left, bottom - top) == (40, 40)
    assert abs((left + right) / 2 - cx) <= 1 and abs((top + bottom) / 2 - cy) <= 1


def test_seed_rect_refuses_boxes_off_the_crop_or_tiny():
    identity = [[1, 0, 0], [0, 1, 0]]
    assert kr.seed_rect((300, 300, 400, 400), identity, SIZE, SIZE) is None
    assert kr.seed_rect((100, 100, 103, 103), identity, SIZE, SIZE) is None
    # Sticking out is fine, but it is clamped to one crop side beyond the crop.
    assert kr.seed_rect((-1000, 0, 1000, 200), identity, SIZE, SIZE) == (-224, 0, 448, 200)


def test_plausible_landmarks():
    face = synthetic_face()
    assert kr.plausible(face, SIZE, SIZE)
    assert not kr.plausible(face + 150, SIZE, SIZE)
    face[3, 0] = np.nan
    assert not kr.plausible(face, SIZE, SIZE)
