"""Pick the one face of a frame that a video's crops follow."""

from __future__ import annotations

import numpy as np

from lrerr_tools.detection import Face

POLICIES = ("largest", "central", "track")


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _center(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def jumps(face: Face, previous: Face | None) -> bool:
    """Whether the face chosen now does not overlap the one chosen before: under `track` the
    track was lost; under `largest` or `central` the crops may have changed person."""
    return previous is not None and box_iou(face.box, previous.box) == 0


def choose_face(faces: list[Face], frame_shape: tuple[int, ...], policy: str,
                previous: Face | None = None) -> Face | None:
    """`largest` box; `central`: nearest the frame centre; `track`: the face that overlaps the
    previous frame's choice most (nearest centre if none overlaps), starting from the largest.

    Tracking matters in FF++ interviews with two people: `largest` can flip between them
    from frame to frame, and a video's crops should show one identity.
    """
    if policy not in POLICIES:
        raise ValueError(f"face policy must be one of {POLICIES}")
    if not faces:
        return None
    if policy == "central":
        middle = np.array([frame_shape[1] / 2, frame_shape[0] / 2])
        return min(faces, key=lambda f: float(np.linalg.norm(_center(f.box) - middle)))
    if policy == "track" and previous is not None:
        best = max(faces, key=lambda f: box_iou(f.box, previous.box))
        if box_iou(best.box, previous.box) > 0:
            return best
        anchor = _center(previous.box)
        return min(faces, key=lambda f: float(np.linalg.norm(_center(f.box) - anchor)))
    return max(faces, key=lambda f: f.area)
