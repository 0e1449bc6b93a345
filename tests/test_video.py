"""Videos that need the reader's fallbacks and its timestamps: AV1 (YouTube's codec, which
neither decord nor OpenCV's wheel decodes) and variable frame rate."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import jsonschema
import numpy as np
import pytest
from test_extract_bad_input import (
    SCHEMAS,
    assert_one_error_line,
    by_video,
    clip,
    decord_refusal,
    folder_config,
    invoke,
    read_records,
    statuses,
    truncate,
)

from lrerr_tools.errors import LrerrError
from lrerr_tools.extract import run
from lrerr_tools.stage_dir import result_path
from lrerr_tools.synth import write_video
from lrerr_tools.video import VideoReader

AV1_ENCODERS = ("libsvtav1", "libaom-av1", "librav1e", "av1")
# A burst at 25 fps, a stretch at 2 fps, another burst, then a 0.72 s gap: 13 frames in 3 s,
# so index / mean fps (4.3 fps) is off by up to 1 s.
VFR_PTS_MS = [0, 40, 80, 120, 160, 200, 700, 1200, 1700, 2200, 2240, 2280, 3000]


def av1_encoder() -> str | None:
    for name in AV1_ENCODERS:
        if name not in av.codecs_available:
            continue
        try:
            av.Codec(name, "w")  # "av1" alone is often only FFmpeg's decoder
        except Exception:
            continue
        return name
    return None


needs_av1_encoder = pytest.mark.skipif(
    av1_encoder() is None,
    reason=f"PyAV's FFmpeg has no AV1 encoder (tried {', '.join(AV1_ENCODERS)}) to make the test clip")


def mux(path: Path, frames_rgb: np.ndarray, codec: str, pts_ms: list[int],
        codec_options: dict | None = None, **container_options) -> Path:
    """Encode RGB frames with PyAV, frame i shown at pts_ms[i] milliseconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames_rgb.shape[1:3]
    with av.open(str(path), "w", options=container_options) as container:
        stream = container.add_stream(codec, rate=25, options=codec_options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for image, pts in zip(frames_rgb, pts_ms):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def av1_clip(path: Path, n_frames: int = 8, **options) -> Path:
    return mux(path, clip(n_frames, seed=7), av1_encoder(), [40 * i for i in range(n_frames)], **options)


def video_result(out: Path, video_id: str) -> dict:
    return json.loads(result_path(out, video_id).read_text())


# --- AV1 -------------------------------------------------------------------------------------


@needs_av1_encoder
def test_av1_is_read_by_pyav_after_decord_refuses_it_and_opencv_decodes_nothing(tmp_path):
    path = av1_clip(tmp_path / "av1.mp4")
    reader = VideoReader(str(path))
    assert reader.backend == "pyav"
    assert (reader.n_frames, reader.fps) == (8, 25.0)
    # decord refuses the file at open; OpenCV's wheel opens it and fails its first frame.
    assert reader.passed_over == [f"decord: {decord_refusal(path)}", "opencv: frame could not be decoded"]
    frames = list(reader.read([0, 3, 7]))
    assert [f.index for f in frames] == [0, 3, 7]
    assert all(f.image is not None and f.image.shape == (144, 192, 3) and f.error is None for f in frames)
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.12, 0.28])


@needs_av1_encoder
def test_extract_crops_every_sampled_frame_of_an_av1_video(tmp_path):
    root = tmp_path / "root"
    write_video(root / "real" / "h264ish.mp4", clip(8, seed=1))
    av1_clip(root / "fake" / "youtube.mp4")
    out = tmp_path / "extract"
    manifest = run(folder_config(root, out, frames=4))

    records = by_video(read_records(out))["fake/youtube"]
    assert statuses(records) == ["ok"] * 4  # the astronaut is in every frame
    assert all((out / r["crop"]).is_file() for r in records)
    assert [r["timestamp"] for r in records] == pytest.approx([0.04 * r["frame_index"] for r in records])
    assert video_result(out, "fake/youtube")["backend"] == "pyav"
    assert video_result(out, "real/h264ish")["backend"] == "decord"
    assert manifest.counts["decode_error"] == 0


@needs_av1_encoder
def test_frames_lost_from_a_cut_av1_video_say_what_decord_said(tmp_path):
    # faststart puts the index first, so the cut file still lists frames its data has lost;
    # key frames only, so the frames before the cut do not depend on those after it. dav1d
    # drops the frames it has in flight when it meets the cut (up to ~8, with many cores).
    path = av1_clip(tmp_path / "root" / "fake" / "cut.mp4", n_frames=24, codec_options={"g": "1"},
                    movflags="faststart")
    truncate(path, keep=0.8)
    reason = decord_refusal(path)
    out = tmp_path / "extract"
    run(folder_config(tmp_path / "root", out, frames=24))

    records = read_records(out)
    lost = [r for r in records if r["status"] == "decode_error"]
    assert lost and "ok" in statuses(records)
    for record in lost:
        decord_said, opencv_said, pyav_said = record["error"].split("; ")
        assert decord_said == f"decord: {reason}"
        assert opencv_said.startswith("opencv: ") and pyav_said.startswith("pyav: ")


def test_backend_pyav_can_be_chosen(tmp_path):
    root = tmp_path / "root"
    write_video(root / "real" / "good.mp4", clip(8, seed=1))
    out = tmp_path / "extract"
    run(folder_config(root, out, backend="pyav"))
    assert statuses(read_records(out)) == ["ok"] * 3
    assert video_result(out, "real/good")["backend"] == "pyav"


# --- variable frame rate ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def vfr_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vfr") / "root"
    mux(root / "real" / "vfr.mp4", clip(len(VFR_PTS_MS), seed=3), "mpeg4", VFR_PTS_MS)
    return root


def test_the_vfr_clip_is_one_that_index_over_mean_fps_mistimes(vfr_root):
    reader = VideoReader(str(vfr_root / "real" / "vfr.mp4"))
    assert reader.n_frames == len(VFR_PTS_MS)
    worst = max(abs(i / reader.fps - pts / 1000) for i, pts in enumerate(VFR_PTS_MS))
    assert worst > 0.9


@pytest.mark.parametrize("backend", ["decord", "opencv", "pyav"])
def test_every_backend_reports_each_frames_presentation_time(vfr_root, backend):
    reader = VideoReader(str(vfr_root / "real" / "vfr.mp4"), backend)
    assert reader.backend == backend
    frames = list(reader.read(list(range(len(VFR_PTS_MS)))))
    assert all(f.image is not None for f in frames)
    true_times = [pts / 1000 for pts in VFR_PTS_MS]
    assert [f.timestamp for f in frames] == pytest.approx(true_times, abs=1e-3)
    assert reader.frame_times() == pytest.approx(true_times, abs=1e-3)


def test_extract_records_the_real_time_of_each_frame(vfr_root, tmp_path):
    out = tmp_path / "extract"
    run(folder_config(vfr_root, out, frames=4))
    records = read_records(out)
    assert [r["frame_index"] for r in records] == [1, 4, 8, 11]
    assert [r["timestamp"] for r in records] == pytest.approx([0.04, 0.16, 1.7, 2.28], abs=1e-3)
    validator = jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / "extract-record.schema.json").read_text()))
    for record in records:
        validator.validate(record)


@pytest.mark.parametrize("backend", ["auto", "opencv", "pyav"])
def test_every_seconds_takes_the_frame_nearest_each_multiple(vfr_root, tmp_path, backend):
    out = tmp_path / "extract"
    manifest = run(folder_config(vfr_root, out, every_seconds=0.5, backend=backend))
    records = read_records(out)
    # 0, 0.5, ..., 3.0 s fall nearest to the frames at 0, 0.7, 1.2, 1.7, 2.2, 2.28 and 3.0 s;
    # every 0.5 s of index / mean fps (every 2nd frame) would take 0, 2, 4, ... instead.
    assert [r["frame_index"] for r in records] == [0, 6, 7, 8, 9, 11, 12]
    assert [r["timestamp"] for r in records] == pytest.approx([0, 0.7, 1.2, 1.7, 2.2, 2.28, 3.0], abs=1e-3)
    assert statuses(records) == ["ok"] * 7
    assert manifest.config["every_seconds"] == 0.5 and manifest.config["frames"] is None
    assert manifest.counts["frames_tried"] == 7


def test_every_seconds_is_part_of_the_config_a_rerun_must_match(vfr_root, tmp_path):
    out = tmp_path / "extract"
    run(folder_config(vfr_root, out, every_seconds=0.5))
    with pytest.raises(LrerrError, match="differs in every_seconds"):
        run(folder_config(vfr_root, out, every_seconds=1.0))


@pytest.mark.parametrize("seconds", ["0", "-1.5", "inf", "nan"])
def test_every_seconds_not_above_zero_is_one_error_line(vfr_root, tmp_path, seconds):
    out = tmp_path / "extract"
    result = invoke("extract", vfr_root, "--dataset", "folder", "--out", out, "--every-seconds", seconds)
    assert_one_error_line(result, "--every-seconds must be a number of seconds above 0")
    assert not out.exists()


def test_every_and_every_seconds_together_are_one_error_line(vfr_root, tmp_path):
    out = tmp_path / "extract"
    result = invoke("extract", vfr_root, "--dataset", "folder", "--out", out,
                    "--every", "2", "--every-seconds", "1")
    assert_one_error_line(result, "--every or --every-seconds, not both")
    assert not out.exists()
