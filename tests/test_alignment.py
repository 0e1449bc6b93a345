import numpy as np
import pytest

from lrerr_tools.alignment import align_face, similarity_transform, template, transform_points
from lrerr_tools.detection import make_detector
from lrerr_tools.synth import astronaut_rgb


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 500, size=(5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -40.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-7)


def test_similarity_transform_never_mirrors_the_face():
    src = template()
    dst = src.copy()
    dst[:, 0] = -dst[:, 0]  # a mirror image: the best similarity must stay a rotation
    matrix = similarity_transform(src, dst)
    assert np.linalg.det(matrix[:, :2]) > 0


@pytest.mark.parametrize("margin", [0.0, 0.2, 0.5])
def test_template_stays_centred_and_inside_the_crop(margin):
    points = template(224, margin)
    assert (points > 0).all() and (points < 224).all()
    assert abs(points[:, 0].mean() - 112) < 1.0
    wider = template(224, margin + 0.1)
    assert np.ptp(wider[:, 0]) < np.ptp(points[:, 0])  # more margin, smaller face


def test_detected_keypoints_land_on_the_template():
    image = astronaut_rgb()
    face = make_detector("retinaface-mnet").detect([image])[0][0]
    crop, matrix = align_face(image, face.kps, 224, 0.2)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    landed = transform_points(matrix, face.kps)
    target = template(224, 0.2)
    # A smiling face is not exactly similar to the template, so allow a few pixels overall,
    # but the eyes, which fix rotation and scale, must sit where the template puts them.
    assert np.sqrt(((landed - target) ** 2).sum(1).mean()) < 10.0
    assert np.linalg.norm(landed[:2].mean(0) - target[:2].mean(0)) < 4.0
    assert abs(np.linalg.norm(landed[1] - landed[0]) - np.linalg.norm(target[1] - target[0])) < 4
