"""The synthetic FF++ (with DFD) and Celeb-DF samples: layout, decodable videos, local fakes,
determinism, and the `sample` command."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from lrerr_tools.cli import app
from lrerr_tools.datasets import list_videos
from lrerr_tools.errors import LrerrError
from lrerr_tools.synth import (
    FACE_BOX,
    METHODS,
    _camera_matrices,
    astronaut_rgb,
    camera_clip,
    make_celebdf_sample,
    make_ffpp_sample,
    manipulate,
    write_video,
)

SIZE = (96, 72)
N_FRAMES = 6
SAMPLE_METHODS = ("Deepfakes", "Face2Face")
DFD_REALS = "original_sequences/actors/c23/videos"
DFD_FAKES = "manipulated_sequences/DeepFakeDetection/c23/videos"


def _tiny_sample(root, **kwargs):
    return make_ffpp_sample(
        root, n_pairs=2, methods=SAMPLE_METHODS, n_frames=N_FRAMES, size=SIZE, seed=0, **kwargs
    )


def _tiny_celebdf(root):
    return make_celebdf_sample(root, n_frames=N_FRAMES, size=SIZE, seed=0)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return _tiny_sample(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def celebdf_sample(tmp_path_factory):
    return _tiny_celebdf(tmp_path_factory.mktemp("celebdf"))


@pytest.fixture(scope="module")
def astronaut():
    return astronaut_rgb()


def _read(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return np.array(frames)


def _outside_face(shape, margin):
    x0, y0, x1, y1 = FACE_BOX
    outside = np.ones(shape[:2], bool)
    outside[y0 - margin : y1 + margin, x0 - margin : x1 + margin] = False
    return outside


def test_layout_and_splits(sample):
    reals = {f"original_sequences/youtube/c23/videos/{i:03d}.mp4" for i in range(4)}
    fakes = {
        f"manipulated_sequences/{method}/c23/videos/{name}.mp4"
        for method in SAMPLE_METHODS
        for name in ("000_001", "001_000", "002_003", "003_002")
    }
    written = {p.relative_to(sample).as_posix() for p in sample.rglob("*.mp4")}
    assert {p for p in written if not p.startswith((DFD_REALS, DFD_FAKES))} == reals | fakes

    splits = {
        split: json.loads((sample / "splits" / f"{split}.json").read_text())
        for split in ("train", "val", "test")
    }
    assert splits == {"train": [["000", "001"]], "val": [["002", "003"]], "test": []}


def test_videos_decode_with_all_frames(sample):
    for path in sample.rglob("*.mp4"):
        frames = _read(path)
        assert frames.shape == (N_FRAMES, SIZE[1], SIZE[0], 3), path


def test_reals_differ_and_fakes_differ_from_their_real(sample):
    videos = sample / "original_sequences/youtube/c23/videos"
    real_a, real_b = _read(videos / "000.mp4"), _read(videos / "001.mp4")
    fake = _read(sample / "manipulated_sequences/Deepfakes/c23/videos/000_001.mp4")
    assert np.abs(real_a.astype(int) - real_b).mean() > 5
    assert np.abs(real_a.astype(int) - fake).mean() > 0.5


def test_dfd_part_has_actor_reals_and_their_fakes_all_listed_as_test(sample):
    reals = sorted(p.name for p in (sample / DFD_REALS).iterdir())
    fakes = sorted(p.name for p in (sample / DFD_FAKES).iterdir())
    assert reals == ["01__walking_down_street_outside_angry.mp4", "02__kitchen_pan.mp4"]
    assert [re.sub(r"__[0-9A-F]{8}\.mp4$", "", name) for name in fakes] == [
        "01_02__walking_down_street_outside_angry",
        "02_01__kitchen_pan",
    ]

    listing = list_videos("dfd", sample, compression="c23")
    labels = {f"actors/{name[:-4]}": 0 for name in reals}
    labels |= {f"DeepFakeDetection/{name[:-4]}": 1 for name in fakes}
    assert {v.video_id: v.label for v in listing.videos} == labels
    assert {v.split for v in listing.videos} == {"test"} and listing.missing == []

    actor = _read(sample / DFD_REALS / reals[0])
    fake = _read(sample / DFD_FAKES / fakes[0])
    assert np.abs(actor.astype(int) - fake).mean() > 0.5
    for ffpp_real in (sample / "original_sequences/youtube/c23/videos").iterdir():
        assert np.abs(actor.astype(int) - _read(ffpp_real)).mean() > 5, ffpp_real


def test_dfd_part_leaves_the_ffpp_listing_and_files_unchanged(sample, tmp_path):
    without = _tiny_sample(tmp_path, dfd_videos=0)
    assert not (without / DFD_REALS).exists() and not (without / DFD_FAKES).exists()

    def listed(root):
        listing = list_videos("ffpp", root, splits=root / "splits")
        videos = {
            (v.video_id, v.label, v.split, v.method, v.dataset, Path(v.path).relative_to(root.resolve()))
            for v in listing.videos
        }
        return videos, listing.missing

    assert listed(sample) == listed(without)
    for path in without.rglob("*.*"):
        assert (sample / path.relative_to(without)).read_bytes() == path.read_bytes(), path


def test_fake_clip_differs_from_real_clip_only_around_the_face(astronaut):
    fake = manipulate(astronaut, "FaceSwap", seed=1)
    real_clip = camera_clip(astronaut, 4, SIZE, seed=7).astype(int)
    fake_clip = camera_clip(fake, 4, SIZE, seed=7)
    diff = np.abs(real_clip - fake_clip).max(-1)

    x0, y0, x1, y1 = FACE_BOX
    margin = 16
    corners = np.array(
        [[x0 - margin, y0 - margin, 1], [x1 + margin, y0 - margin, 1],
         [x0 - margin, y1 + margin, 1], [x1 + margin, y1 + margin, 1]], float
    )
    for frame_diff, mat in zip(diff, _camera_matrices(astronaut.shape, 4, SIZE, 7)):
        pts = corners @ mat.T
        outside = np.ones(frame_diff.shape, bool)
        lo, hi = np.floor(pts.min(0)).astype(int), np.ceil(pts.max(0)).astype(int) + 1
        outside[max(lo[1], 0) : hi[1], max(lo[0], 0) : hi[0]] = False
        assert frame_diff[~outside].mean() > 5
        assert frame_diff[outside].max() <= 1


@pytest.mark.parametrize("method", METHODS)
def test_manipulate_edits_only_the_face(astronaut, method):
    fake = manipulate(astronaut, method, seed=0)
    assert fake.shape == astronaut.shape and fake.dtype == np.uint8
    diff = np.abs(fake.astype(int) - astronaut)
    x0, y0, x1, y1 = FACE_BOX
    assert diff[y0:y1, x0:x1].mean() > 1
    assert diff[_outside_face(astronaut.shape, 16)].max() <= 1
    assert diff[_outside_face(astronaut.shape, 40)].max() == 0
    assert not np.array_equal(fake, manipulate(astronaut, method, seed=1))


def test_unknown_method_raises(astronaut, tmp_path):
    with pytest.raises(LrerrError, match="FaceShifter"):
        manipulate(astronaut, "FaceShifter")
    with pytest.raises(LrerrError, match="FaceShifter"):
        make_ffpp_sample(tmp_path, methods=("FaceShifter",))
    with pytest.raises(LrerrError, match="dfd_videos"):
        make_ffpp_sample(tmp_path, dfd_videos=-1)
    assert not any(tmp_path.iterdir())


def test_camera_keeps_the_whole_face_at_a_realistic_size(astronaut):
    x0, y0, x1, y1 = FACE_BOX
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], float)
    for size in [(320, 240), (96, 72), (640, 360)]:
        for seed in range(20):
            mats = _camera_matrices(astronaut.shape, 40, size, seed)
            pts = np.einsum("nij,kj->nki", mats, corners)
            assert pts[..., 0].min() >= 0 and pts[..., 0].max() <= size[0]
            assert pts[..., 1].min() >= 0 and pts[..., 1].max() <= size[1]
            height_frac = np.ptp(pts[..., 1], axis=1) / size[1]
            assert height_frac.min() >= 0.35 and height_frac.max() <= 0.5


def test_camera_clip_is_seeded_and_smooth(astronaut):
    clip = camera_clip(astronaut, 10, SIZE, seed=3)
    assert clip.shape == (10, SIZE[1], SIZE[0], 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, camera_clip(astronaut, 10, SIZE, seed=3))
    assert np.array_equal(clip[:4], camera_clip(astronaut, 4, SIZE, seed=3))
    assert not np.array_equal(clip, camera_clip(astronaut, 10, SIZE, seed=4))
    step = np.abs(np.diff(clip.astype(int), axis=0)).mean()
    assert 0 < step < np.abs(clip.astype(int) - camera_clip(astronaut, 10, SIZE, seed=4)).mean()


def test_sample_files_are_byte_identical_across_runs(sample, tmp_path):
    again = _tiny_sample(tmp_path)
    for path in sample.rglob("*.*"):
        assert (again / path.relative_to(sample)).read_bytes() == path.read_bytes(), path


def test_celebdf_sample_layout_test_list_and_splits(celebdf_sample):
    written = {p.relative_to(celebdf_sample).as_posix() for p in celebdf_sample.rglob("*.mp4")}
    assert written == {
        "YouTube-real/00000.mp4",
        "Celeb-real/id0_0000.mp4",
        "Celeb-real/id1_0000.mp4",
        "Celeb-synthesis/id0_id1_0000.mp4",
        "Celeb-synthesis/id1_id0_0000.mp4",
        "Celeb-synthesis/id0_id1_0001.mp4",
    }
    assert (celebdf_sample / "List_of_testing_videos.txt").read_text().splitlines() == [
        "1 YouTube-real/00000.mp4",
        "1 Celeb-real/id0_0000.mp4",
        "0 Celeb-synthesis/id0_id1_0000.mp4",
        "0 Celeb-synthesis/id1_id0_0000.mp4",
    ]

    listing = list_videos("celebdf", celebdf_sample)
    assert {v.video_id: (v.label, v.split) for v in listing.videos} == {
        "YouTube-real/00000": (0, "test"),
        "Celeb-real/id0_0000": (0, "test"),
        "Celeb-real/id1_0000": (0, "train"),
        "Celeb-synthesis/id0_id1_0000": (1, "test"),
        "Celeb-synthesis/id1_id0_0000": (1, "test"),
        "Celeb-synthesis/id0_id1_0001": (1, "train"),
    }
    assert listing.missing == []


def test_celebdf_videos_decode_and_fakes_edit_their_real(celebdf_sample):
    for path in celebdf_sample.rglob("*.mp4"):
        assert _read(path).shape == (N_FRAMES, SIZE[1], SIZE[0], 3), path
    real = _read(celebdf_sample / "Celeb-real/id0_0000.mp4").astype(int)
    fake = _read(celebdf_sample / "Celeb-synthesis/id0_id1_0000.mp4")
    other_real = _read(celebdf_sample / "Celeb-real/id1_0000.mp4")
    assert 0.5 < np.abs(real - fake).mean() < np.abs(real - other_real).mean()


def test_celebdf_sample_is_byte_identical_across_runs(celebdf_sample, tmp_path):
    again = _tiny_celebdf(tmp_path)
    for path in celebdf_sample.rglob("*.*"):
        assert (again / path.relative_to(celebdf_sample)).read_bytes() == path.read_bytes(), path


def test_celebdf_sample_needs_a_test_and_a_train_video_of_each_label(tmp_path):
    with pytest.raises(LrerrError, match="at least 2"):
        make_celebdf_sample(tmp_path, n_real=1)
    assert not any(tmp_path.iterdir())


def test_sample_command_writes_each_dataset(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["sample", str(tmp_path / "cdf"), "--dataset", "celebdf", "--frames", "2"])
    assert result.exit_code == 0, result.output
    assert "Celeb-DF-v2" in result.output and "List_of_testing_videos.txt" in result.output
    assert len(list_videos("celebdf", tmp_path / "cdf").videos) == 6

    result = runner.invoke(app, ["sample", str(tmp_path / "ff"), "--pairs", "1", "--frames", "2"])
    assert result.exit_code == 0, result.output
    assert "FF++" in result.output and "DFD" in result.output
    assert len(list_videos("dfd", tmp_path / "ff").videos) == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "dfd"], "error: unknown --dataset 'dfd'; choose ffpp or celebdf"),
        (["--dataset", "celebdf", "--pairs", "2"], "error: --pairs applies to --dataset ffpp only"),
    ],
)
def test_sample_command_rejects_bad_options_in_one_line(tmp_path, args, message):
    result = CliRunner().invoke(app, ["sample", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert result.output.strip() == message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, codec", [("gray.mp4", "mp4v"), ("gray.avi", "MJPG")])
def test_grayscale_frames_round_trip(tmp_path, name, codec):
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    frames = np.stack([np.roll(ramp, 4 * i, axis=1) for i in range(5)])
    path = write_video(tmp_path / "nested" / name, frames, codec=codec)
    decoded = _read(path)
    assert decoded.shape == (5, 48, 64, 3)
    assert np.abs(decoded[..., 0].astype(int) - frames).mean() < 8


@pytest.mark.parametrize(
    "frames, codec, message",
    [
        (np.zeros((2, 48, 64, 3), np.float32), "mp4v", "uint8"),
        (np.zeros((0, 48, 64, 3), np.uint8), "mp4v", "non-empty"),
        (np.zeros((2, 47, 64, 3), np.uint8), "mp4v", "even"),
        ([np.zeros((48, 64, 3), np.uint8), np.zeros((40, 64, 3), np.uint8)], "mp4v", "same shape"),
        (np.zeros((2, 48, 64, 3), np.uint8), "ZZZZ", "cannot open"),
    ],
)
def test_write_video_rejects_bad_input(tmp_path, frames, codec, message):
    with pytest.raises(LrerrError, match=message):
        write_video(tmp_path / "bad.mp4", frames, codec=codec)


def test_missing_scikit_image_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(LrerrError, match="lrerr-tools\\[dev\\]"):
        astronaut_rgb()
