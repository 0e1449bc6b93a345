"""Align a face to a fixed 5-point template with a similarity transform, then crop it."""

from __future__ import annotations

import cv2
import numpy as np

# InsightFace's ArcFace template for a 112×112 crop: eyes, nose tip, mouth corners.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def template(size: int = 224, margin: float = 0.2) -> np.ndarray:
    """The 5 template points in a `size`×`size` crop.

    ArcFace's template crops tightly at the chin and brows; `margin` widens the view by that
    fraction of the face on every side, so the jaw and eyebrows that the key region needs
    (dlib points 0–26) stay inside the crop.
    """
    unit = ARCFACE_112 / 112.0
    return ((unit - 0.5) / (1.0 + 2.0 * margin) + 0.5) * size


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping src to dst (Umeyama 1991).

    Returns the 2×3 matrix. Written out rather than taken from cv2.estimateAffinePartial2D,
    whose RANSAC default gives different matrices for the same points across versions.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_c.var(0).sum()
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(image: np.ndarray, kps: np.ndarray, size: int = 224,
               margin: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Return the aligned `size`×`size` crop and the 2×3 matrix from frame to crop pixels."""
    matrix = similarity_transform(kps, template(size, margin))
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return crop, matrix


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]
