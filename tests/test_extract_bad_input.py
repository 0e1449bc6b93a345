"""Bad input to the extract stage: every bad video becomes status records while the run goes
on with the rest, and every bad argument or dataset becomes one `error:` line (exit code 2)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
from typer.testing import CliRunner

from lrerr_tools.cli import app
from lrerr_tools.errors import LrerrError
from lrerr_tools.extract import ExtractConfig, run, survey
from lrerr_tools.synth import astronaut_rgb, camera_clip, make_ffpp_sample, write_video
from lrerr_tools.video import decord_message

SCHEMAS = Path(__file__).resolve().parents[1] / "manifests"
FRAMES = 3
SIZE = (192, 144)
FRAME_STATUSES = {"ok", "no_face", "decode_error"}


# --- helpers -------------------------------------------------------------------------------


@cache
def _astronaut() -> np.ndarray:
    return astronaut_rgb()


def clip(n_frames: int = 8, size: tuple[int, int] = SIZE, seed: int = 0) -> np.ndarray:
    return camera_clip(_astronaut(), n_frames, size=size, seed=seed)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def decord_refusal(path: Path) -> str:
    """What decord itself says when it cannot open `path`."""
    import decord

    with pytest.raises(Exception) as refused:  # noqa: B017 - decord's DECORDError is not exported
        decord.VideoReader(str(path))
    return decord_message(refused.value)


def folder_config(root: Path, out: Path, **overrides) -> ExtractConfig:
    fields = dict(root=str(root), dataset="folder", out=str(out), frames=FRAMES)
    fields.update(overrides)
    return ExtractConfig(**fields)


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def by_video(records: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for record in records:
        grouped.setdefault(record["video_id"], []).append(record)
    return grouped


def statuses(records: list[dict]) -> list[str]:
    return [r["status"] for r in records]


def invoke(*args: str):
    """Run the CLI with stderr kept apart from stdout (click < 8.2 mixes them by default)."""
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 always captures stderr separately
        runner = CliRunner()
    return runner.invoke(app, [str(a) for a in args])


def assert_one_error_line(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


# --- one run over a folder dataset mixing good and bad videos --------------------------------


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Extract a folder dataset holding every kind of bad video next to good ones, once."""
    root = tmp_path_factory.mktemp("mixed") / "root"
    real, fake = root / "real", root / "fake"
    fake.mkdir(parents=True)

    write_video(real / "good.mp4", clip(8, seed=1))
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip(8, seed=2)])
    write_video(real / "grey.mp4", grey)
    write_video(real / "small.mp4", clip(8, size=(64, 48), seed=3))
    write_video(real / "hd.mp4", clip(FRAMES, size=(1920, 1080), seed=4))

    (fake / "text.mp4").write_bytes(b"this is a text file, not a video\n" * 50)
    (fake / "empty.mp4").write_bytes(b"")
    writer = cv2.VideoWriter(str(fake / "zero.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25.0,
                             SIZE)
    writer.release()  # a valid container with no frames at all
    writer = cv2.VideoWriter(str(fake / "zero_avi.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25.0,
                             SIZE)
    writer.release()  # OpenCV opens this one, and finds no frames in it
    truncate(write_video(fake / "trunc_mp4.mp4", clip(10, seed=5)))
    truncate(write_video(fake / "trunc_avi.avi", clip(10, seed=6), codec="MJPG"))
    write_video(fake / "flat.mp4", np.full((8, SIZE[1], SIZE[0], 3), 128, np.uint8))
    noise = np.random.default_rng(0).integers(0, 256, (8, SIZE[1], SIZE[0], 3), dtype=np.uint8)
    write_video(fake / "noise.mp4", noise)

    out = tmp_path_factory.mktemp("mixed_out") / "extract"
    manifest = run(folder_config(root, out))
    records = read_records(out)
    return {"root": root, "out": out, "manifest": manifest, "records": records,
            "videos": by_video(records)}


ALL_VIDEOS = sorted(
    [f"real/{n}" for n in ("good", "grey", "small", "hd")]
    + [f"fake/{n}" for n in ("text", "empty", "zero", "zero_avi", "trunc_mp4", "trunc_avi",
                             "flat", "noise")]
)


def test_run_completes_with_every_video_accounted_for(mixed):
    manifest = mixed["manifest"]
    assert manifest is not None and manifest.complete
    assert sorted(mixed["videos"]) == ALL_VIDEOS
    counts = manifest.counts
    assert counts["videos"] == len(ALL_VIDEOS)
    assert counts["videos_missing"] == 0
    # Each video gives one record per sampled frame, or one `unreadable` record.
    for video_id, records in mixed["videos"].items():
        if statuses(records) == ["unreadable"]:
            continue
        assert len(records) == FRAMES, video_id
        assert set(statuses(records)) <= FRAME_STATUSES, video_id
        indices = [r["frame_index"] for r in records]
        assert indices == sorted(set(indices)), video_id
    all_statuses = statuses(mixed["records"])
    for status in ("no_face", "decode_error", "unreadable"):
        assert counts[status] == all_statuses.count(status)
    assert counts["crops"] == all_statuses.count("ok")
    assert counts["frames_tried"] == len(all_statuses) - all_statuses.count("unreadable")


def test_good_videos_are_still_extracted_next_to_bad_ones(mixed):
    for video_id in ("real/good", "real/grey", "real/hd"):
        assert statuses(mixed["videos"][video_id]) == ["ok"] * FRAMES, video_id
    assert mixed["manifest"].counts["videos_with_crops"] >= 3


@pytest.mark.parametrize(
    "video_id, file",
    [("fake/text", "text.mp4"), ("fake/empty", "empty.mp4"), ("fake/zero", "zero.mp4"),
     ("fake/zero_avi", "zero_avi.avi")],
)
def test_files_without_frames_are_one_unreadable_record(mixed, video_id, file):
    [record] = mixed["videos"][video_id]
    assert record["status"] == "unreadable"
    assert record["error"] and "\n" not in record["error"]
    # auto tries decord, then OpenCV, then PyAV; the user is told what each said, decord's
    # own words first.
    decord_said = f"decord: {decord_refusal(mixed['root'] / record['path'])}; "
    assert record["error"].startswith(decord_said)
    assert record["error"][len(decord_said):].startswith("opencv: ") and "; pyav: " in record["error"]
    assert record["label"] == 1 and record["path"] == f"fake/{file}"
    assert "frame_index" not in record and "crop" not in record
    assert video_id in mixed["manifest"].extra["failed_videos"]
    assert not (mixed["out"] / "crops" / video_id).exists()


@pytest.mark.parametrize("video_id", ["fake/trunc_mp4", "fake/trunc_avi"])
def test_truncated_video_gives_what_decodes_and_accounts_for_the_rest(mixed, video_id):
    records = mixed["videos"][video_id]
    if statuses(records) == ["unreadable"]:
        assert records[0]["error"]
        assert video_id in mixed["manifest"].extra["failed_videos"]
        return
    assert len(records) == FRAMES
    assert set(statuses(records)) <= FRAME_STATUSES
    for record in records:
        if record["status"] == "decode_error":
            assert record["error"]
        if record["status"] == "ok":
            assert (mixed["out"] / record["crop"]).is_file()


def test_truncated_avi_keeps_the_frames_of_its_surviving_half(mixed):
    # An AVI's frames stand alone, so the first half of the file still has faces to crop.
    assert "ok" in statuses(mixed["videos"]["fake/trunc_avi"])


@pytest.mark.parametrize("video_id", ["fake/flat", "fake/noise"])
def test_video_without_faces_gives_one_no_face_record_per_frame(mixed, video_id):
    records = mixed["videos"][video_id]
    assert statuses(records) == ["no_face"] * FRAMES
    assert all(r["n_faces"] == 0 and "crop" not in r for r in records)
    extra = mixed["manifest"].extra
    assert video_id in extra["failed_videos"] and video_id not in extra["short_videos"]


def test_grayscale_video_gives_colour_crops(mixed):
    for record in mixed["videos"]["real/grey"]:
        crop = cv2.imread(str(mixed["out"] / record["crop"]), cv2.IMREAD_UNCHANGED)
        assert crop is not None and crop.shape == (224, 224, 3)


def test_tiny_frames_do_not_crash(mixed):
    records = mixed["videos"]["real/small"]
    assert len(records) == FRAMES
    assert set(statuses(records)) <= {"ok", "no_face"}


def test_1080p_frames_give_224_crops_and_boxes_in_frame_pixels(mixed):
    for record in mixed["videos"]["real/hd"]:
        crop = cv2.imread(str(mixed["out"] / record["crop"]), cv2.IMREAD_UNCHANGED)
        assert crop is not None and crop.shape == (224, 224, 3)
        # Detection runs on a 640-px copy; the box must be mapped back to the 1920x1080 frame,
        # where the synthetic camera keeps the face near the centre, ~40% of the height tall.
        x1, y1, x2, y2 = record["box"]
        assert 1920 / 3 < (x1 + x2) / 2 < 2 * 1920 / 3
        assert 0.25 * 1080 < y2 - y1 < 0.75 * 1080


def test_every_record_and_the_manifest_match_the_published_schemas(mixed):
    record_schema = json.loads((SCHEMAS / "extract-record.schema.json").read_text())
    manifest_schema = json.loads((SCHEMAS / "manifest.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(record_schema)
    for record in mixed["records"]:
        validator.validate(record)
    jsonschema.Draft202012Validator(manifest_schema).validate(
        json.loads((mixed["out"] / "manifest.json").read_text())
    )
    # Every status this file is about was actually produced and checked.
    assert {"ok", "no_face", "unreadable"} <= set(statuses(mixed["records"]))
    for record in mixed["records"]:
        if record["status"] == "ok":
            assert (mixed["out"] / record["crop"]).is_file()


# --- decode errors inside a video ------------------------------------------------------------


def test_frames_lost_to_truncation_are_decode_error_records(tmp_path):
    """OpenCV believes the AVI header's 10 frames, so the cut-off ones fail to decode."""
    root = tmp_path / "root"
    write_video(root / "real" / "good.mp4", clip(8, seed=1))
    truncate(write_video(root / "fake" / "cut.avi", clip(10, seed=6), codec="MJPG"))
    out = tmp_path / "extract"
    manifest = run(folder_config(root, out, backend="opencv"))

    videos = by_video(read_records(out))
    assert statuses(videos["real/good"]) == ["ok"] * FRAMES
    cut = videos["fake/cut"]
    assert len(cut) == FRAMES
    decoded = [r["frame_index"] for r in cut if r["status"] != "decode_error"]
    lost = [r["frame_index"] for r in cut if r["status"] == "decode_error"]
    assert decoded and lost and max(decoded) < min(lost)
    assert all(r["error"] for r in cut if r["status"] == "decode_error")
    assert manifest.counts["decode_error"] == len(lost)
    assert "fake/cut" in manifest.extra["short_videos"]
    validator = jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / "extract-record.schema.json").read_text()))
    for record in cut:
        validator.validate(record)


def test_narrow_video_does_not_abort_the_run(tmp_path):
    root = tmp_path / "root"
    write_video(root / "real" / "good.mp4", clip(8, seed=1))
    write_video(root / "real" / "narrow.mp4", clip(6, size=(48, 64), seed=2))
    out = tmp_path / "extract"
    run(folder_config(root, out))
    videos = by_video(read_records(out))
    assert statuses(videos["real/good"]) == ["ok"] * FRAMES
    # decord returns (H, W, 4) frames for widths such as 48 (dmlc/decord #336): the reader
    # must notice and decode the video with OpenCV instead of crashing the run.
    narrow = videos["real/narrow"]
    assert len(narrow) == FRAMES and set(statuses(narrow)) <= FRAME_STATUSES


# --- FF++ split lists naming videos that are not on disk -------------------------------------


def test_ffpp_videos_missing_on_disk_are_reported_and_the_run_completes(tmp_path, caplog):
    root = make_ffpp_sample(tmp_path / "ffpp", n_pairs=1, methods=("Deepfakes",), n_frames=6,
                            size=SIZE, seed=0)
    splits = root / "splits"
    (splits / "train.json").write_text(json.dumps([["000", "001"]]))
    (splits / "val.json").write_text("[]")
    (splits / "test.json").write_text(json.dumps([["100", "101"]]))
    (root / "manipulated_sequences/Deepfakes/c23/videos/001_000.mp4").unlink()
    out = tmp_path / "extract"

    with caplog.at_level("WARNING"):
        manifest = run(ExtractConfig(root=str(root), dataset="ffpp", out=str(out),
                                     splits=str(splits), frames=2))

    missing = ["Deepfakes/001_000", "Deepfakes/100_101", "Deepfakes/101_100",
               "youtube/100", "youtube/101"]
    assert manifest is not None and manifest.complete
    assert manifest.extra["missing_videos"] == missing
    assert manifest.counts["videos_missing"] == len(missing)
    assert manifest.counts["videos"] == 3
    videos = by_video(read_records(out))
    assert sorted(videos) == ["Deepfakes/000_001", "youtube/000", "youtube/001"]
    assert all(statuses(records) == ["ok", "ok"] for records in videos.values())
    assert all(name in caplog.text for name in missing)


# --- a root that differs from the official release ------------------------------------------


def test_counts_short_of_the_official_release_are_warned_before_keep_splits_and_extract_runs(
        tmp_path, caplog):
    root = make_ffpp_sample(tmp_path / "ffpp", n_pairs=3, methods=("FaceSwap",), dfd_videos=0,
                            n_frames=6, size=SIZE, seed=0)
    cfg = ExtractConfig(root=str(root), dataset="ffpp", out=str(tmp_path / "extract"),
                        splits=str(root / "splits"), methods=["FaceSwap"], keep_splits=["test"],
                        frames=2)
    # The whole root is compared, not the test videos --keep-splits narrows it to; the methods
    # --methods leaves out are not reported absent.
    expected = ["ffpp youtube c23: 6 of the official 1,000 videos",
                "ffpp FaceSwap c23: 6 of the official 1,000 videos"]

    with caplog.at_level("WARNING"):
        survey(cfg)
    assert caplog.messages == expected
    caplog.clear()
    with caplog.at_level("WARNING"):
        manifest = run(cfg)

    assert caplog.messages == expected
    assert manifest is not None and manifest.complete
    assert sorted(by_video(read_records(tmp_path / "extract"))) == [
        "FaceSwap/004_005", "FaceSwap/005_004", "youtube/004", "youtube/005"]


# --- the dataset root and arguments ----------------------------------------------------------


def test_missing_dataset_root_is_one_error_line(tmp_path):
    out = tmp_path / "extract"
    result = invoke("extract", tmp_path / "nowhere", "--dataset", "folder", "--out", out)
    assert_one_error_line(result, "dataset root not found", str(tmp_path / "nowhere"))
    assert not out.exists()


def test_empty_dataset_is_one_error_line(tmp_path):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "fake").mkdir()
    (root / "real" / "notes.txt").write_text("not a video")
    (root / "fake" / "._clip.mp4").write_bytes(b"macOS resource fork")
    out = tmp_path / "extract"
    result = invoke("extract", root, "--dataset", "folder", "--out", out)
    assert_one_error_line(result, "no folder videos found", str(root))
    assert not out.exists()


@pytest.fixture
def one_video_root(tmp_path):
    root = tmp_path / "root"
    write_video(root / "real" / "good.mp4", clip(6, seed=1))
    return root


@pytest.mark.parametrize("frames", [0, -3])
def test_frames_below_one_is_a_clear_error(one_video_root, tmp_path, frames):
    out = tmp_path / "extract"
    result = invoke("extract", one_video_root, "--dataset", "folder", "--out", out,
                    "--frames", str(frames))
    assert_one_error_line(result, "--frames must be at least 1", f"got {frames}")
    assert not out.exists()
    with pytest.raises(LrerrError, match="--frames must be at least 1"):
        run(folder_config(one_video_root, out, frames=frames))
    assert not out.exists()


@pytest.mark.parametrize("part", ["0/4", "5/4", "-1/4", "1/0", "x", "1/2/3", "a/b", "", "1-4"])
def test_bad_part_is_a_clear_error(one_video_root, tmp_path, part):
    out = tmp_path / "extract"
    with pytest.raises(LrerrError, match="--part"):
        run(folder_config(one_video_root, out, part=part))
    assert not out.exists()


def test_bad_part_on_the_command_line_is_one_error_line(one_video_root, tmp_path):
    out = tmp_path / "extract"
    result = invoke("extract", one_video_root, "--dataset", "folder", "--out", out,
                    "--part", "3/2")
    assert_one_error_line(result, "--part 3/2")
    assert not out.exists()


@pytest.fixture
def cpu_only_onnxruntime(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])


@pytest.mark.parametrize(("options", "message"), [
    (["--device", "cuda"], "needs onnxruntime's CUDA provider"),
    (["--device", "gpu"], "--device must be cpu, cuda or cuda:N"),
    (["--detector", "retinaface-resnet50"], "pass --detector-weights PATH"),
])
def test_a_detector_that_cannot_run_is_refused_before_any_output(one_video_root, tmp_path,
                                                                 cpu_only_onnxruntime, options, message):
    # Asking for the GPU and silently getting the CPU would be a surprise measured in days.
    out = tmp_path / "extract"
    result = invoke("extract", one_video_root, "--dataset", "folder", "--out", out, *options)
    assert_one_error_line(result, message)
    assert not out.exists()


# --- the output directory --------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_non_empty_foreign_out_dir_is_refused_and_left_alone(one_video_root, tmp_path,
                                                            overwrite):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(LrerrError, match="not empty and not an extract output"):
        run(folder_config(one_video_root, out, overwrite=overwrite))
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "precious"


def test_out_that_is_a_file_is_refused(one_video_root, tmp_path):
    out = tmp_path / "extract"
    out.write_text("a file")
    with pytest.raises(LrerrError, match="not a directory"):
        run(folder_config(one_video_root, out))
    assert out.read_text() == "a file"


def test_rerun_with_another_config_names_the_field_and_overwrite_starts_again(tmp_path):
    root = tmp_path / "root"
    write_video(root / "real" / "good.mp4", clip(6, seed=1))
    write_video(root / "fake" / "gone.mp4", clip(6, seed=2))
    out = tmp_path / "extract"
    first = run(folder_config(root, out, frames=2))
    records_before = (out / "records.jsonl").read_bytes()
    manifest_before = (out / "manifest.json").read_bytes()
    crops_before = sorted(p.name for p in (out / "crops" / "real" / "good").iterdir())
    assert len(crops_before) == 2

    with pytest.raises(LrerrError, match=r"differs in frames\b.*--overwrite"):
        run(folder_config(root, out, frames=3))
    with pytest.raises(LrerrError, match=r"differs in crop_size, frames\b"):
        run(folder_config(root, out, frames=3, crop_size=112))
    # The refused runs changed nothing.
    assert (out / "records.jsonl").read_bytes() == records_before
    assert (out / "manifest.json").read_bytes() == manifest_before

    # How a run is carried out is not part of its identity: these resume, not refuse.
    again = run(folder_config(root, out, frames=2, batch_size=1, part="1/1"))
    assert again.records_sha256 == first.records_sha256

    result = invoke("extract", root, "--dataset", "folder", "--out", out, "--frames", "3")
    assert_one_error_line(result, "differs in frames")

    (root / "fake" / "gone.mp4").unlink()
    redone = run(folder_config(root, out, frames=3, overwrite=True))
    assert redone.config["frames"] == 3
    records = read_records(out)
    assert [(r["video_id"], r["status"]) for r in records] == [("real/good", "ok")] * 3
    # Exactly the new run's crops: none left from the discarded one (frame 4 of 2, and the
    # video that is gone).
    crops_after = sorted(p.name for p in (out / "crops" / "real" / "good").iterdir())
    assert crops_after == sorted(Path(r["crop"]).name for r in records)
    assert "000004.png" in crops_before and "000004.png" not in crops_after
    assert not (out / "crops" / "fake").exists()
    assert sorted(p.name for p in (out / "work" / "videos").rglob("*.json")) == ["good.json"]
