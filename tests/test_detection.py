import cv2
import numpy as np

from lrerr_tools.detection import make_detector
from lrerr_tools.synth import FACE_BOX, astronaut_rgb


def _detector():
    return make_detector("retinaface-mnet", threads=1)


def test_finds_the_astronauts_face_with_ordered_keypoints():
    faces = _detector().detect([astronaut_rgb()])[0]
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.95
    x1, y1, x2, y2 = face.box
    cx, cy = (FACE_BOX[0] + FACE_BOX[2]) / 2, (FACE_BOX[1] + FACE_BOX[3]) / 2
    assert x1 < cx < x2 and y1 < cy < y2
    left_eye, right_eye, nose, mouth_left, mouth_right = face.kps
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    assert ((face.kps >= face.box[:2]) & (face.kps <= face.box[2:])).all()


def test_batch_gives_the_same_faces_as_single_frames():
    image = astronaut_rgb()
    flipped = np.ascontiguousarray(image[:, ::-1])
    detector = _detector()
    batch = detector.detect([image, flipped])
    for frame, faces in zip([image, flipped], batch):
        single = detector.detect([frame])[0]
        np.testing.assert_allclose(faces[0].box, single[0].box, atol=1e-3)


def test_large_frames_are_detected_at_reduced_size_but_reported_in_frame_pixels():
    image = astronaut_rgb()
    big = cv2.resize(image, (2048, 2048))
    small_face = _detector().detect([image])[0][0]
    big_face = _detector().detect([big])[0][0]
    np.testing.assert_allclose(big_face.box, small_face.box * 4, rtol=0.05, atol=8)


def test_no_face_in_noise():
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert _detector().detect([noise]) == [[]]
