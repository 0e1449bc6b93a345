import csv
import json

import cv2
import numpy as np
import pytest
import torch
from html_page import CHROMIUM, check_self_contained, markdown_tables, read_page, screenshot
from jsonschema import validate
from test_extract_bad_input import assert_one_error_line, invoke
from test_train_det import shared_detector
from test_train_mae import shards_without
from typer.testing import CliRunner

from lrerr_tools.cli import app
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import read_manifest, schema
from lrerr_tools.report_html import extract_dir
from lrerr_tools.score import ScoreConfig, run
from lrerr_tools.verify import verify

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The shared shards' test split: 2 real videos (youtube/...), 2 Deepfakes and 2 FaceSwap
# fakes made from the same pairs, so "Deepfakes/X" and "FaceSwap/X" share a bare id X.
# 4 frames each, but 2 FaceSwap faces have no landmarks: 22 frames.


@pytest.fixture(scope="module")
def scored(ffpp_root, tmp_path_factory):
    """Both detectors scored on the test split, through the CLI."""
    from test_shard import shared_png_shards

    shards = shared_png_shards(ffpp_root, tmp_path_factory)
    root = tmp_path_factory.mktemp("scores")
    outputs = {}
    for method in ("lrerr", "xception"):
        detector = shared_detector(method, ffpp_root, tmp_path_factory)
        out = root / method
        result = CliRunner().invoke(app, ["score", str(shards), "--detector", str(detector),
                                          "--out", str(out), "--batch-size", "8", "--device", "cpu",
                                          "--workers", "0", "--overlays", "2", "--cam", "2"])
        assert result.exit_code == 0, result.output
        outputs[method] = (out, result.output)
    return outputs


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("method", ["lrerr", "xception"])
def test_score_writes_metrics_csvs_and_plots(scored, method, ffpp_root, tmp_path_factory):
    out, output = scored[method]
    metrics = json.loads((out / "metrics.json").read_text())
    validate(metrics, schema("metrics"))
    data = {"dataset": "ffpp", "compression": "c23", "methods": ["Deepfakes", "FaceSwap"]}
    caveats = ["from random weights"] + (["random extractor"] if method == "lrerr" else [])
    assert metrics["run"] == {"train": {**data, "method": method, "caveats": caveats, "seed": 0},
                              "test": {**data, "split": "test"}}
    assert (metrics["frame"]["n"], metrics["frame"]["n_real"], metrics["frame"]["n_fake"]) == (22, 8, 14)
    assert (metrics["video"]["n"], metrics["video"]["n_real"], metrics["video"]["n_fake"]) == (6, 2, 4)
    assert metrics["video_aggregates"]["mean"]["video"] == metrics["video"]
    assert metrics["aggregation"]["top_fraction"] == 0.25 and metrics["aggregation"]["min_fakes"] == 11
    # intervals by default, from the recorded seed
    assert metrics["bootstrap"]["resamples"] == 1000 and metrics["bootstrap"]["seed"] == 0
    for block in (metrics["frame"], metrics["per_method"]["FaceSwap"]["video"],
                  metrics["video_aggregates"]["confident"]["video"]):
        assert block["ci"]["auc"][0] <= block["auc"] <= block["ci"]["auc"][1]
    assert "95 % intervals (1000 resamples by video, seed 0): AUC frame [" in output
    assert set(metrics["per_method"]) == {"Deepfakes", "FaceSwap"}

    frames = read_csv(out / "frames.csv")
    assert list(frames[0]) == ["video_id", "method", "label", "frame_index", "prob"] and len(frames) == 22
    videos = read_csv(out / "videos.csv")
    assert len(videos) == 6
    by_video = {v["video_id"]: v for v in videos}
    fakes = [v for v in by_video if by_video[v]["label"] == "1"]
    bare = {v.split("/", 1)[1] for v in fakes}
    assert len(bare) == 2 < len(fakes)  # the same bare ids under two methods stay two videos each
    for video_id, video in by_video.items():
        own = [float(f["prob"]) for f in frames if f["video_id"] == video_id]
        assert int(video["frames"]) == len(own) and float(video["prob"]) == pytest.approx(sum(own) / len(own))
        assert float(video["prob_max"]) == max(own) and float(video["prob_median"]) == np.median(own)
    assert {by_video[v]["frames"] for v in by_video if v.startswith("FaceSwap/")} <= {"3", "4"}

    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["prob"] for r in records] == [float(f["prob"]) for f in frames]
    manifest = read_manifest(out)
    assert manifest.stage == "score" and manifest.counts["frames"] == 22 and manifest.counts["videos"] == 6
    # scored at the precision its validation picked best.pt at
    detector = read_manifest(shared_detector(method, ffpp_root, tmp_path_factory))
    assert manifest.extra["precision"] == detector.extra["eval_precision"] == "float32"
    assert verify(out) == []
    assert cv2.imread(str(out / "roc.png")) is not None
    # the detector's val thresholds and temperature, applied: none is fitted on test
    fitted = detector.extra["calibration"]
    calibration = metrics["calibration"]
    assert {k: calibration[k] for k in fitted} == fitted and calibration["temperature"] > 0
    frame_probs = np.array([float(f["prob"]) for f in frames])
    frame_labels = np.array([int(f["label"]) for f in frames])
    at_val = ((frame_probs >= fitted["threshold"]["balanced_acc"]) == frame_labels).mean()
    assert calibration["frame"]["acc"]["balanced_acc"] == pytest.approx(at_val)
    assert calibration["frame"]["acc"]["0.5"] == metrics["frame"]["acc"]
    assert calibration["frame"]["acc_ci"]["0.5"] == pytest.approx(metrics["frame"]["ci"]["acc"])
    assert 0 <= calibration["video"]["ece"] <= 1 and 0 <= calibration["video"]["ece_scaled"] <= 1
    assert cv2.imread(str(out / "reliability.png")).shape[1] > cv2.imread(str(out / "roc.png")).shape[1]
    assert "at the val EER threshold" in output and f"reliability: {out / 'reliability.png'}" in output
    assert "score complete" in output and "frame" in output and f"roc:       {out / 'roc.png'}" in output
    # Grad-CAM of 2 confident fakes, 2 confident reals and the 2 worst mistakes, with the run and split
    assert manifest.config["cam"] == 2 and manifest.extra["cam"] == "cam.png"
    assert cv2.imread(str(out / "cam.png")).shape[0] > 3 * 224 and f"cam:       {out / 'cam.png'}" in output
    if method == "lrerr":
        image = cv2.imread(str(out / "attention.png"))
        # 2 reals + 2 fakes; face, reconstruction and 2 layers' maps, 224 px each, 4 px apart
        assert image.shape == (22 + 4 * 228 - 4, 4 * 228 - 4, 3)
        assert f"attention: {out / 'attention.png'}" in output
    else:
        assert not (out / "attention.png").exists()
        assert "attention: none: Xception has no figure" in output


def test_report_builds_on_the_scores(scored, tmp_path):
    out = tmp_path / "report.md"
    result = CliRunner().invoke(app, ["report", *(str(scored[m][0]) for m in ("lrerr", "xception")),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    # Trained on two FF++ methods of four: no paper table fits, and the report says so per run.
    assert ("LRErr (from random weights, random extractor), trained on ffpp c23 [DF, FS], seed 0, tested on "
            "ffpp c23 [DF, FS] (test split)") in text
    assert "Xception (from random weights), trained on ffpp c23 [DF, FS]" in text


def html_report(scored, tmp_path):
    out = tmp_path / "report.md"
    result = CliRunner().invoke(app, ["report", *(str(scored[m][0]) for m in ("lrerr", "xception")),
                                      "--out", str(out), "--html"])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'report.html'}" in result.output
    return out, tmp_path / "report.html"


def test_the_html_report_is_self_contained_and_holds_every_table_and_figure(scored, tmp_path):
    markdown, page_path = html_report(scored, tmp_path)
    page = read_page(page_path)
    images = check_self_contained(page)
    # ROC and PR of the one test set; roc.png, reliability.png and cam.png of each score; LRErr's
    # attention.png
    assert len(images) == 1 + 3 + 3 + 1
    assert images[0].shape[:2] == (900, 990)  # the curves: 11 × 10 in at 90 dpi
    captions = [image["alt"] for image in page.images]
    assert captions[0].startswith("ROC and PR curves, tested on ffpp c23 [DF, FS] (test split); LRErr: ")
    lrerr, xception = (scored[m][0] for m in ("lrerr", "xception"))
    assert f"Xception: {xception}" in captions[0]
    assert [c.split(" of ")[0] for c in captions[1:]] == ["roc.png", "reliability.png", "attention.png",
                                                         "cam.png", "roc.png", "reliability.png", "cam.png"]
    assert all("(test split)" in c for c in captions) and f"attention.png of {lrerr}: LRErr" in captions[3]
    for table in markdown_tables(markdown):
        assert table in page.tables
    accounting = page.tables[-1]
    assert accounting[0] == ["Dataset", "Split", "Videos", "Frames tried", "Crops", "No face",
                             "Decode errors", "Unreadable videos"]
    assert [row[:2] for row in accounting[1:]] == [["ffpp", "test"], ["ffpp", "train"], ["ffpp", "val"]]
    extract = read_manifest(extract_dir(lrerr))
    for column, key in ((2, "videos"), (3, "frames_tried"), (4, "crops"), (5, "no_face")):
        assert sum(int(row[column]) for row in accounting[1:]) == extract.counts[key]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium (Debian package chromium)")
def test_the_html_report_renders_in_headless_chromium(scored, tmp_path):
    _, page_path = html_report(scored, tmp_path)
    shot = screenshot(page_path, tmp_path / "shot.png", tmp_path / "profile")
    assert shot.shape[:2] == (2400, 1280)
    dark = (shot.min(axis=2) < 128).mean(axis=1)  # the share of each pixel row drawn in ink
    assert (dark > 0.01).sum() > 500  # text, tables and figures, not a blank or an error page


def test_a_rerun_finds_the_score_and_another_detector_is_refused(scored, ffpp_root, tmp_path_factory):
    from test_shard import shared_png_shards

    shards = shared_png_shards(ffpp_root, tmp_path_factory)
    out, _ = scored["lrerr"]
    before = (out / "manifest.json").read_bytes()
    config = dict(shard_dir=str(shards), out=str(out), device="cpu", workers=0, batch_size=3, overlays=2,
                  cam=2)
    run(ScoreConfig(detector=str(shared_detector("lrerr", ffpp_root, tmp_path_factory)), **config))
    assert (out / "manifest.json").read_bytes() == before
    with pytest.raises(LrerrError, match=r"another config \(differs in detector_sha256\)"):
        run(ScoreConfig(detector=str(shared_detector("xception", ffpp_root, tmp_path_factory)), **config))


def test_bad_input_is_a_clear_error(ffpp_root, tmp_path_factory, tmp_path):
    from test_shard import shared_png_shards

    shards = shared_png_shards(ffpp_root, tmp_path_factory)
    detector = shared_detector("xception", ffpp_root, tmp_path_factory)
    config = dict(shard_dir=str(shards), detector=str(detector), out=str(tmp_path / "out"), workers=0)
    with pytest.raises(LrerrError, match="no faces in the unassigned split — nothing to score"):
        run(ScoreConfig(split="unassigned", device="cpu", **config))
    with pytest.raises(LrerrError, match="--split must be one of"):
        run(ScoreConfig(split="dev", device="cpu", **config))
    result = invoke("score", shards, "--detector", detector, "--out", tmp_path / "cli", "--cam", "-1")
    assert assert_one_error_line(result) == "error: --cam must be 0 to 100 faces per row (got -1)"
    assert not (tmp_path / "cli").exists()
    with pytest.raises(LrerrError, match=r"--top-fraction must be in \(0, 1\], got 2"):
        run(ScoreConfig(aggregation={"top_fraction": 2}, device="cpu", **config))
    if not torch.cuda.is_available():
        with pytest.raises(LrerrError, match="--device cuda: no CUDA device is available"):
            run(ScoreConfig(device="cuda", **config))
    with pytest.raises(LrerrError, match="is a 'shard' directory, expected the output of 'train-det'"):
        run(ScoreConfig(**{**config, "detector": str(shards)}, device="cpu"))


def test_a_split_with_one_class_scores_with_undefined_auc(ffpp_root, tmp_path_factory, tmp_path):
    reals_only = shards_without(ffpp_root, tmp_path_factory, tmp_path,
                                lambda r: r["split"] == "test" and r["label"] == 1)
    detector = shared_detector("lrerr", ffpp_root, tmp_path_factory)
    manifest = run(ScoreConfig(shard_dir=str(reals_only), detector=str(detector), out=str(tmp_path / "out"),
                               device="cpu", workers=0, overlays=1, cam=50))  # more faces than the split
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["frame"]["auc"] is None and metrics["per_method"] == {}
    assert metrics["run"]["test"]["methods"] == []
    assert "frame: only real samples — AUC, AP and EER undefined" in metrics["notes"]
    assert manifest.counts["frames_fake"] == 0
    assert (tmp_path / "out" / "roc.png").is_file() and (tmp_path / "out" / "attention.png").is_file()
    assert manifest.extra["cam"] == "cam.png" and cv2.imread(str(tmp_path / "out" / "cam.png")) is not None


def test_a_detector_run_without_calibration_scores_with_null_thresholds(ffpp_root, tmp_path_factory,
                                                                       tmp_path):
    """Runs trained before train-det recorded calibration still score: those fields are null."""
    import shutil
    from dataclasses import asdict

    from test_shard import shared_png_shards

    from lrerr_tools.atomic_io import atomic_write_json

    old = tmp_path / "old-run"
    shutil.copytree(shared_detector("xception", ffpp_root, tmp_path_factory), old)
    manifest = read_manifest(old)
    del manifest.extra["calibration"]
    atomic_write_json(old / "manifest.json", asdict(manifest))
    run(ScoreConfig(shard_dir=str(shared_png_shards(ffpp_root, tmp_path_factory)), detector=str(old),
                    out=str(tmp_path / "out"), device="cpu", workers=0, overlays=0))
    calibration = json.loads((tmp_path / "out" / "metrics.json").read_text())["calibration"]
    assert calibration["threshold"] == {"balanced_acc": None, "eer": None}
    assert calibration["temperature"] is None
    assert calibration["notes"] == [
        "the detector run records no val calibration (trained by an older version)"]
    assert calibration["frame"]["acc"]["eer"] is None and calibration["frame"]["ece"] >= 0
    assert (tmp_path / "out" / "reliability.png").is_file()
