"""The key facial region of LRErr (paper §III.B.1), as pure geometry: no I/O, no dlib.

Coordinates are continuous crop pixels: x to the right, y down, (0, 0) the crop's top-left
corner and (W, H) its bottom-right one, as dlib and OpenCV report points. Rectangles are
(x0, y0, x1, y1) with x0 <= x1 and y0 <= y1.

The algorithm:
1. Per face, P1..P4 are the landmarks nearest the crop's corners among the left eyebrow
   (dlib points 17-21, nearest (0, 0)), the right eyebrow (22-26, nearest (W, 0)), the left
   jaw (0-7, nearest (0, H)) and the right jaw (9-16, nearest (W, H)). "Left" is the image's
   left, as in dlib's numbering.
2. The face's rectangle is the bounding box of P1..P4 (`face_rect`).
3. The dataset's rectangle is the smallest rectangle of order statistics that holds the
   whole face rectangle of a `coverage` fraction of the faces (`dataset_rect`).
4. A rectangle is expanded outward by `expand` pixels and clamped to the crop
   (`expand_rect`), then mapped to the ViT patch grid: a patch is in T when its square shares
   a positive area with the rectangle (`rect_to_patches`). Patch ids are row-major.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

N_LANDMARKS = 68
LEFT_BROW = tuple(range(17, 22))
RIGHT_BROW = tuple(range(22, 27))
LEFT_JAW = tuple(range(0, 8))
RIGHT_JAW = tuple(range(9, 17))
INNER_FACE = tuple(range(17, 68))  # eyebrows, eyes, nose and mouth: what T must cover

Rect = tuple[float, float, float, float]


def _as_points(landmarks) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (N_LANDMARKS, 2):
        raise ValueError(f"expected {N_LANDMARKS}x2 landmarks, got shape {points.shape}")
    return points


def corner_points(landmarks, width: float, height: float) -> np.ndarray:
    """P1..P4 as a 4×2 array (ties go to the lower dlib index)."""
    points = _as_points(landmarks)
    picks = []
    for group, corner in ((LEFT_BROW, (0.0, 0.0)), (RIGHT_BROW, (width, 0.0)),
                          (LEFT_JAW, (0.0, height)), (RIGHT_JAW, (width, height))):
        candidates = points[list(group)]
        distances = np.hypot(*(candidates - np.asarray(corner)).T)
        picks.append(candidates[int(np.argmin(distances))])
    return np.stack(picks)


def face_rect(landmarks, width: float, height: float) -> Rect:
    """The bounding box of P1..P4, not expanded."""
    corners = corner_points(landmarks, width, height)
    (x0, y0), (x1, y1) = corners.min(0), corners.max(0)
    return float(x0), float(y0), float(x1), float(y1)


def expand_rect(rect: Rect, expand: float, width: float, height: float) -> Rect:
    """Grow `rect` by `expand` on every side, then clamp it to the crop [0, W] × [0, H]."""
    x0, y0, x1, y1 = rect
    return (min(max(x0 - expand, 0.0), width), min(max(y0 - expand, 0.0), height),
            max(min(x1 + expand, width), 0.0), max(min(y1 + expand, height), 0.0))


def contains(outer: Rect, inner: Rect) -> bool:
    """Whether `inner` lies inside `outer`; touching the border counts as inside."""
    return (outer[0] <= inner[0] and outer[1] <= inner[1]
            and inner[2] <= outer[2] and inner[3] <= outer[3])


def dataset_rect(face_rects: Sequence[Rect], coverage: float) -> tuple[Rect, int]:
    """The rectangle that holds the whole face rectangle (all four of P1..P4) of at least a
    `coverage` fraction of the faces; returns it (not expanded) and how many faces it holds.

    The rule, with n faces and need = ceil(coverage · n): for k = need..n, take the k-th
    smallest x1 and y1 and the k-th largest x0 and y0 (so each side alone holds k faces, the
    faces on the border included), and return the first such rectangle — the smallest k —
    that holds `need` faces whole. Each side alone would let up to 4·(n - k) faces poke out,
    which is why k may have to grow past `need`; at k = n it is the union of all faces.
    Every side is a value some face has, so the face that sets a side counts as inside.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    rects = np.asarray(face_rects, dtype=np.float64).reshape(-1, 4)
    n = len(rects)
    if n == 0:
        raise ValueError("no face rectangles")
    need = max(1, math.ceil(coverage * n - 1e-9))
    lows = np.sort(rects[:, :2], axis=0)    # x0, y0 ascending
    highs = np.sort(rects[:, 2:], axis=0)   # x1, y1 ascending

    def rect_at(k: int) -> tuple[Rect, int]:
        x0, y0 = lows[n - k]
        x1, y1 = highs[k - 1]
        inside = int(np.sum((rects[:, 0] >= x0) & (rects[:, 1] >= y0)
                            & (rects[:, 2] <= x1) & (rects[:, 3] <= y1)))
        return (float(x0), float(y0), float(x1), float(y1)), inside

    # The rectangle only grows with k, so the faces it holds do too: bisect for the first k.
    lo, hi = need, n
    while lo < hi:
        mid = (lo + hi) // 2
        if rect_at(mid)[1] >= need:
            hi = mid
        else:
            lo = mid + 1
    return rect_at(lo)


def grid_size(size: int, patch: int) -> int:
    return size // patch


def rect_to_patches(rect: Rect, size: int, patch: int) -> tuple[list[int], np.ndarray]:
    """The row-major ids of the patches whose square [c·P, (c+1)·P] × [r·P, (r+1)·P] shares a
    positive area with `rect`, sorted, and the same set as a bool mask of length grid².

    A rectangle side exactly on a patch border takes no patch beyond it — so with expand 0,
    a P-point lying exactly on a right/bottom patch border leaves the patch `patch_ids`
    puts it in out of T. Any expand > 0 (the default is 8) avoids that.
    """
    grid = grid_size(size, patch)
    x0, y0, x1, y1 = rect
    starts = np.arange(grid) * patch
    cols = (np.minimum(x1, starts + patch) - np.maximum(x0, starts)) > 0
    rows = (np.minimum(y1, starts + patch) - np.maximum(y0, starts)) > 0
    mask = (rows[:, None] & cols[None, :]).reshape(-1)
    return np.flatnonzero(mask).tolist(), mask


def patch_ids(points, size: int, patch: int) -> np.ndarray:
    """The patch each point lies in (points on a border go to the patch right/below;
    points outside the crop are clamped onto it)."""
    grid = grid_size(size, patch)
    cells = np.clip(np.floor(np.asarray(points, dtype=np.float64) / patch), 0, grid - 1).astype(int)
    return cells[:, 1] * grid + cells[:, 0]


def seed_rect(box, matrix, width: int, height: int,
              min_side: float = 8.0) -> tuple[int, int, int, int] | None:
    """The face box (frame pixels) as seen in the crop: the dlib rectangle (left, top, right,
    bottom) to seed the shape predictor with, or None when it is unusable.

    The crop is the frame under a similarity transform (rotation + scale + shift), so the box
    lands in the crop as a rotated square; its axis-aligned bounding box would be up to √2
    too big. Instead the box keeps its centre (mapped by `matrix`) and its sides scaled by the
    transform's scale, which is the box the predictor expects around an upright face.
    Clamping: the box may stick out of the crop (the predictor reads such pixels as black),
    but its centre must lie in the crop and it may reach at most one crop side beyond it.
    """
    m = np.asarray(matrix, dtype=np.float64)
    x0, y0, x1, y1 = (float(v) for v in box)
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    cx, cy = m[:, :2] @ np.array([(x0 + x1) / 2, (y0 + y1) / 2]) + m[:, 2]
    half_w, half_h = (x1 - x0) * scale / 2, (y1 - y0) * scale / 2
    if not (0 <= cx < width and 0 <= cy < height) or min(half_w, half_h) * 2 < min_side:
        return None
    left = max(round(cx - half_w), -width)
    top = max(round(cy - half_h), -height)
    right = min(round(cx + half_w), 2 * width)
    bottom = min(round(cy + half_h), 2 * height)
    return int(left), int(top), int(right), int(bottom)


def plausible(landmarks, width: float, height: float, min_inside: float = 0.5) -> bool:
    """False for landmarks a crop can't have: non-finite, or most points outside the crop."""
    points = _as_points(landmarks)
    if not np.isfinite(points).all():
        return False
    inside = ((points[:, 0] >= 0) & (points[:, 0] <= width)
              & (points[:, 1] >= 0) & (points[:, 1] <= height))
    return bool(inside.mean() >= min_inside)
