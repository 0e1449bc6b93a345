"""`predict` on a user's own media with the shared tiny detectors: the same p(fake) as the
shard path gives for the same faces, every face tracked, every bad input a status."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from jsonschema import validate
from PIL import Image
from test_extract_bad_input import clip, invoke, truncate
from test_shard import shared_extract_dir, shared_png_shards
from test_train_det import shared_detector

from lrerr_tools.atomic_io import atomic_write_json
from lrerr_tools.calibration import unfitted
from lrerr_tools.detector.checkpoint import load_detector
from lrerr_tools.detector.predict import predict as predict_faces
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import iter_records, schema
from lrerr_tools.predict_media import THRESHOLD_SOURCES, predict, prepare
from lrerr_tools.shard_dataset import ShardDataset
from lrerr_tools.synth import write_video
from lrerr_tools.training import resolve_device

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = dict(device="cpu", progress=False)


def val_threshold(run):
    """The balanced-accuracy threshold train-det fitted on the run's val split."""
    calibration = json.loads((run / "manifest.json").read_text())["extra"]["calibration"]
    return calibration["threshold"]["balanced_acc"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("method", ["lrerr", "xception"])
def test_each_face_scores_as_the_shard_path_scores_it(method, ffpp_root, tmp_path_factory):
    """A test video through predict (its own RetinaFace, alignment, sampling from the detector's
    extract config) gives each frame's face the p(fake) `score`'s loop gives its shard face."""
    detector = shared_detector(method, ffpp_root, tmp_path_factory)
    extract = shared_extract_dir(ffpp_root, tmp_path_factory)
    paths = {r["video_id"]: ffpp_root / r["path"] for r in iter_records(extract) if r["split"] == "test"}
    videos = ["youtube/" + next(v for v in paths if v.startswith("youtube/")).split("/")[1],
              next(v for v in paths if v.startswith("FaceSwap/"))]
    loaded = load_detector(detector, resolve_device("cpu"))
    shards = ShardDataset(shared_png_shards(ffpp_root, tmp_path_factory), split="test",
                          fields=loaded.method.fields)
    rows, _ = predict_faces(loaded.method, loaded.net, loaded.context, shards, batch_size=8, workers=0,
                            device=resolve_device("cpu"), progress=False)
    expected = {(r["video_id"], r["frame_index"]): r["prob"] for r in rows if r["video_id"] in videos}

    predictions = predict([paths[v] for v in videos], detector, batch_size=3, **CPU)
    got = {(video, f.frame_index): f.prob for video, p in zip(videos, predictions) for f in p.faces}
    assert [len(p.frames) for p in predictions] == [4, 4]  # the extract config's --frames 4
    assert all(len(p.tracks) == 1 for p in predictions)
    assert set(expected) <= set(got) and len(expected) >= 7  # FaceSwap lost a face to "landmarks"
    for key, prob in expected.items():
        assert got[key] == pytest.approx(prob, abs=1e-5), key


def side_by_side(n_frames: int) -> np.ndarray:
    """Two different filmed faces in one frame, left and right."""
    return np.concatenate([clip(n_frames, seed=0), clip(n_frames, seed=3)], axis=2)


def test_two_faces_in_a_frame_are_two_tracks(ffpp_root, tmp_path_factory, tmp_path):
    video = write_video(tmp_path / "two.mp4", side_by_side(6))
    detector = shared_detector("xception", ffpp_root, tmp_path_factory)
    [p] = predict([video], detector, frames=3, aggregate="max", **CPU)
    assert (p.status, p.kind, p.n_frames, len(p.frames)) == ("ok", "video", 6, 3)
    assert [t.faces for t in p.tracks] == [3, 3]
    halves = {t.track: {f.box[0] < 192 for f in p.faces if f.track == t.track} for t in p.tracks}
    assert sorted(map(tuple, halves.values())) == [(False,), (True,)]  # each track stays on its side
    for t in p.tracks:
        assert t.score == max(f.prob for f in p.faces if f.track == t.track)  # --aggregate max
    worst = max(p.tracks, key=lambda t: t.score)
    assert (p.score, p.track) == (worst.score, worst.track)
    assert p.verdict == ("fake" if p.score >= val_threshold(detector) else "real")


def write_mix(folder):
    """A folder of every kind of input: a video, a 1-frame video, a colour, a grayscale and a CMYK
    image, a video with no face, a truncated video and a text file."""
    folder.mkdir()
    frames = clip(4)
    write_video(folder / "good.mp4", frames)
    write_video(folder / "one_frame.mp4", frames[:1])
    cv2.imwrite(str(folder / "face.png"), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    (folder / "sub").mkdir()
    cv2.imwrite(str(folder / "sub" / "gray.jpg"), cv2.cvtColor(frames[1], cv2.COLOR_RGB2GRAY))
    Image.fromarray(frames[2]).convert("CMYK").save(folder / "sub" / "cmyk.jpg")
    write_video(folder / "sub" / "empty.mp4", np.full((4, 144, 192, 3), 90, np.uint8))
    write_video(folder / "cut.mp4", clip(8))
    truncate(folder / "cut.mp4", 0.3)
    (folder / "notes.txt").write_text("not a video\n")


def test_a_folder_of_mixed_input_gives_every_file_a_status(ffpp_root, tmp_path_factory, tmp_path):
    folder = tmp_path / "mix"
    write_mix(folder)
    detector = shared_detector("xception", ffpp_root, tmp_path_factory)
    out = tmp_path / "out"
    result = invoke("predict", str(folder), str(tmp_path / "gone.mp4"), "--detector", str(detector),
                    "--out", str(out), "--device", "cpu", "--annotate")
    assert result.exit_code == 0, result.output
    document = json.loads((out / "predictions.json").read_text())
    validate(document, schema("predictions"))
    status = {p["path"].removeprefix(str(folder) + "/"): p["status"] for p in document["inputs"]}
    assert status == {"cut.mp4": "unreadable", "face.png": "ok", "good.mp4": "ok", "notes.txt": "not_media",
                      "one_frame.mp4": "ok", "sub/cmyk.jpg": "ok", "sub/empty.mp4": "no_face",
                      "sub/gray.jpg": "ok", str(tmp_path / "gone.mp4"): "missing"}
    by_name = {p["path"].rsplit("/", 1)[1]: p for p in document["inputs"]}
    assert by_name["empty.mp4"]["verdict"] == "no face" and by_name["empty.mp4"]["score"] is None
    assert by_name["empty.mp4"]["error"] == "no face in 4 sampled frames"
    assert by_name["notes.txt"]["verdict"] is None and by_name["gray.jpg"]["kind"] == "image"
    lines = result.output.splitlines()
    assert len(lines) == len(status) + 1 and lines[-1].startswith("predict complete: 9 inputs")
    assert any(line.startswith("missing") and "gone.mp4: no such file" in line for line in lines)
    assert document["threshold"] == val_threshold(detector)
    assert document["threshold_source"] == THRESHOLD_SOURCES["calibration"]
    assert document["detector"]["path"] == str(detector.resolve()) and document["detector"]["epoch"] == 1
    assert document["preprocessing"]["frames"] == 4 and document["preprocessing"]["crop_size"] == 224

    inputs = read_csv(out / "inputs.csv")
    assert [r["status"] for r in inputs] == [p["status"] for p in document["inputs"]]
    assert {r["detector_sha256"] for r in inputs} == {document["detector"]["sha256"]}
    faces = sum(len(p["faces"]) for p in document["inputs"])
    frames = read_csv(out / "frames.csv")
    assert len([r for r in frames if r["track"]]) == faces and len(read_csv(out / "tracks.csv")) >= 4
    good = by_name["good.mp4"]
    assert cv2.imread(str(out / good["plot"])).shape[:2] == (385, 770)
    copy = cv2.VideoCapture(str(out / good["annotated"]))
    assert int(copy.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    assert cv2.imread(str(out / by_name["face.png"]["annotated"])).shape == (144, 192, 3)
    assert by_name["face.png"]["plot"] is None and by_name["cut.mp4"]["annotated"] is None
    assert all(p["figure"] is None for p in document["inputs"])  # Xception has no figure


def test_jobs_predict_each_input_as_one_process_does(ffpp_root, tmp_path_factory, tmp_path):
    image = tmp_path / "face.png"
    Image.fromarray(clip(1)[0]).save(image)
    inputs = [write_video(tmp_path / "good.mp4", clip(4)), image, tmp_path / "gone.mp4"]
    detector = shared_detector("lrerr", ffpp_root, tmp_path_factory)
    outcomes = []
    for jobs, out in ((1, None), (2, tmp_path / "out")):
        outcomes.append([(p.path, p.status, p.score, [f.prob for f in p.faces])
                         for p in predict(inputs, detector, jobs=jobs, out=out, **CPU)])
    assert outcomes[0] == outcomes[1] and [o[1] for o in outcomes[0]] == ["ok", "ok", "missing"]
    document = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [p["path"] for p in document["inputs"]] == [str(p) for p in inputs]  # in input order
    assert all((tmp_path / "out" / p["figure"]).is_file() for p in document["inputs"][:2])
    with pytest.raises(LrerrError, match=r"--jobs must be at least 1 \(got 0\)"):
        predict(inputs, detector, jobs=0, **CPU)


def test_the_method_figure_shows_the_most_suspicious_faces(ffpp_root, tmp_path_factory, tmp_path):
    video = write_video(tmp_path / "two.mp4", side_by_side(3))
    out = tmp_path / "out"
    [p] = predict([video], shared_detector("lrerr", ffpp_root, tmp_path_factory), out=out, **CPU)
    document = json.loads((out / "predictions.json").read_text())
    assert document["inputs"][0]["figure"] == "figures/0001-two.png"
    figure = cv2.imread(str(out / "figures/0001-two.png"))
    # 4 of the 6 faces, a row each: face, reconstruction and 2 layers' maps, 224 px each, 4 px apart
    assert figure.shape == (22 + 4 * 228 - 4, 4 * 228 - 4, 3) and len(p.faces) == 6


def test_the_threshold_comes_from_the_option_the_calibration_or_0_5(ffpp_root, tmp_path_factory, tmp_path):
    detector = shared_detector("xception", ffpp_root, tmp_path_factory)
    options = dict(device="cpu")
    setup = prepare(detector, threshold=None, **options)
    assert setup.threshold == val_threshold(detector)
    assert setup.threshold_source == THRESHOLD_SOURCES["calibration"]
    setup = prepare(detector, threshold=0.3, **options)
    assert (setup.threshold, setup.threshold_source) == (0.3, THRESHOLD_SOURCES["option"])
    for calibration in (None, unfitted("only fake val faces: no threshold or temperature can be fitted")):
        older = tmp_path / "run"  # as deep as the run, so its link to the shards still holds
        shutil.rmtree(older, ignore_errors=True)
        shutil.copytree(detector, older)
        manifest = json.loads((older / "manifest.json").read_text())
        manifest["extra"]["calibration"] = calibration
        if calibration is None:  # a run from before train-det fitted one
            del manifest["extra"]["calibration"]
        atomic_write_json(older / "manifest.json", manifest)
        setup = prepare(older, threshold=None, **options)
        assert (setup.threshold, setup.threshold_source) == (0.5, THRESHOLD_SOURCES["default"])


def test_a_bad_detector_or_option_is_refused_in_one_line(ffpp_root, tmp_path_factory, tmp_path):
    detector = shared_detector("xception", ffpp_root, tmp_path_factory)
    video = write_video(tmp_path / "v.mp4", clip(2))
    moved = tmp_path / "deeper" / "run"
    shutil.copytree(detector, moved)
    shards = shared_png_shards(ffpp_root, tmp_path_factory)
    for given, message in ((tmp_path / "nothing", "not found — run `lrerr-tools train-det` first"),
                           (shards, "is a 'shard' directory, expected the output of 'train-det'"),
                           (moved, "was made from the shard directory .* which is gone")):
        with pytest.raises(LrerrError, match=message):
            predict([video], given, **CPU)
    with pytest.raises(LrerrError, match="give --frames or --every, not both"):
        predict([video], detector, frames=2, every=2, **CPU)
    result = invoke("predict", str(video), "--detector", str(detector), "--out", str(tmp_path / "o"),
                    "--aggregate", "topk")
    assert result.exit_code == 2 and ("error: --aggregate must be one of mean, median, max, top_k_mean, "
                                      "confident") in result.stderr
    assert not (tmp_path / "o").exists()  # refused before any work


def test_an_image_over_opencvs_pixel_limit_is_unreadable_not_a_crash(tmp_path):
    # The limit is read when cv2 loads, so a child process with a small one stands in for a
    # photo of over 2^30 pixels.
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((400, 400, 3), np.uint8))
    code = ("import sys; from pathlib import Path; from lrerr_tools.predict_media import read_image; "
            "print(read_image(Path(sys.argv[1])) is None)")
    env = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "10000"}
    result = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr[-2000:]
