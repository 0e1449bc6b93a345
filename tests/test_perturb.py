import csv
import json

import cv2
import numpy as np
import pytest
import torch
import typer
from html_page import check_self_contained, markdown_tables, read_page
from jsonschema import validate
from skimage import data
from test_train_det import shared_detector
from typer.testing import CliRunner

from lrerr_tools.cli import app
from lrerr_tools.detector.checkpoint import load_detector
from lrerr_tools.detector.frozen_cache import FrozenCache
from lrerr_tools.detector.predict import predict
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import read_manifest, schema
from lrerr_tools.methods import get_method
from lrerr_tools.metrics import Aggregation
from lrerr_tools.perturb import (
    LEVELS,
    PERTURBATIONS,
    PerturbedFaces,
    h264_clip,
    parse_perturbations,
    perturb_face,
)
from lrerr_tools.report import metrics_schema, write_report
from lrerr_tools.robustness import score_perturbed
from lrerr_tools.score import ScoreConfig, perturbed_predictor
from lrerr_tools.shard_dataset import ShardDataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def face():
    """A 64 px face crop of the astronaut."""
    return cv2.resize(data.astronaut()[20:320, 100:400], (64, 64), interpolation=cv2.INTER_AREA)


class Faces(torch.utils.data.Dataset):
    """Shard-like items of given images, with the video and frame of each (as ShardDataset's)."""

    def __init__(self, images, videos, frames):
        self.images, self.face_videos, self.frame_index = images, np.array(videos, object), np.array(frames)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": torch.from_numpy(self.images[i].transpose(2, 0, 1).copy()), "label": 0,
                "video_id": self.face_videos[i], "frame_index": int(self.frame_index[i])}


def test_every_perturbation_is_seeded_and_worse_at_each_level(face):
    for name, perturbation in PERTURBATIONS.items():
        psnr = []
        for level in LEVELS:
            if perturbation.clip:
                frames = [np.roll(face, 3 * i, axis=1) for i in range(4)]
                out = h264_clip(frames, perturbation.value(level))
                assert all((a == b).all() for a, b in zip(out, h264_clip(frames, perturbation.value(level))))
                psnr.append(np.mean([cv2.PSNR(a, b) for a, b in zip(frames, out)]))
                continue
            out = perturb_face(face, name, level, 0, "youtube/000", 3)
            assert out.shape == face.shape and out.dtype == np.uint8 and not (out == face).all()
            assert (out == perturb_face(face, name, level, 0, "youtube/000", 3)).all(), name
            psnr.append(cv2.PSNR(face, out))
        assert all(a > b for a, b in zip(psnr, psnr[1:])), (name, psnr)
    # the random ones draw from the seed and the face's record, nothing global
    for name in ("noise", "blocks"):
        out = perturb_face(face, name, 3, 0, "youtube/000", 3)
        for other in [(1, "youtube/000", 3), (0, "youtube/001", 3), (0, "youtube/000", 4)]:
            assert not (out == perturb_face(face, name, 3, other[0], *other[1:])).all(), (name, other)


def test_the_definitions_match_their_sources(face):
    # level 3 of each, as docs/protocols.md states it
    blurred = perturb_face(face, "blur", 3, 0, "v", 0)
    assert (blurred == cv2.GaussianBlur(face, (13, 13), 13 / 6)).all()
    small = cv2.resize(face, (16, 16))
    assert (perturb_face(face, "pixelation", 3, 0, "v", 0) == cv2.resize(small, (64, 64))).all()
    assert (perturb_face(face, "contrast", 3, 0, "v", 0) == (face * np.float32(0.6)).astype(np.uint8)).all()
    grey = perturb_face(face, "saturation", 5, 0, "v", 0).astype(int)  # factor 0: the luma alone
    assert np.abs(grey - grey.mean(axis=2, keepdims=True)).max() <= 1
    luma = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY).astype(int)
    assert np.abs(grey[..., 0] - luma).max() <= 1
    blocks = perturb_face(face, "blocks", 1, 0, "v", 0)
    assert 0 < ((blocks != face).any(axis=2) & (blocks == 128).all(axis=2)).sum() <= 16 * 64


def test_h264_gives_the_same_pixels_every_time(ffpp_root, tmp_path_factory):
    from test_shard import shared_png_shards

    # x264's assembly did not, now and then, on these faces; this caught it on every run
    test = ShardDataset(shared_png_shards(ffpp_root, tmp_path_factory), split="test")
    faces = [test[i]["image"].numpy().transpose(1, 2, 0).copy() for i in range(4)]
    outputs = {np.stack(h264_clip(faces, crf)).tobytes() for crf in (23, 43) for _ in range(8)}
    assert len(outputs) == 2


def test_h264_encodes_each_videos_faces_as_one_clip_in_frame_order(face):
    # two videos' faces, interleaved and out of frame order, as a dataset could hold them
    frames = {("a", f): np.roll(face, 5 * f, axis=1) for f in range(5)}
    frames |= {("b", f): np.roll(face, -7 * f, axis=0) for f in range(3)}
    keys = [("a", 3), ("b", 2), ("a", 0), ("a", 4), ("b", 0), ("a", 1), ("b", 1), ("a", 2)]
    faces = Faces([frames[k] for k in keys], *zip(*keys))
    perturbed = PerturbedFaces(faces, "h264", 2, seed=0)
    assert len(perturbed) == len(keys)
    out = {k: perturbed[i]["image"].numpy().transpose(1, 2, 0) for i, k in enumerate(keys)}
    for video, count in (("a", 5), ("b", 3)):
        clip = h264_clip([frames[(video, f)] for f in range(count)], crf=28)
        for f in range(count):
            assert (out[(video, f)] == clip[f]).all()
            # each face comes back as itself, not a neighbour
            closest = max(range(count), key=lambda g: cv2.PSNR(frames[(video, g)], out[(video, f)]))
            assert closest == f
    assert perturbed[0]["video_id"] == "a" and perturbed[0]["frame_index"] == 3


def test_bad_perturbation_names_are_one_line_errors():
    assert parse_perturbations("h264, blur,blur") == ["blur", "h264"]
    assert parse_perturbations("all") == list(PERTURBATIONS) and parse_perturbations("") == []
    valid = "jpeg, blur, noise, saturation, contrast, blocks, pixelation, h264, or all"
    message = f"--perturb: unknown perturbation 'fog'; the valid ones are {valid}"
    with pytest.raises(LrerrError, match=f"^{message}$"):
        parse_perturbations("blur,fog")
    result = CliRunner().invoke(app, ["score", "shards", "--detector", "run", "--out", "out",
                                      "--perturb", "fog"])
    assert result.exit_code == 2
    assert result.output == f"error: {message}\n"
    # the help and the metrics schema name every perturbation the registry has
    names = schema("metrics")["properties"]["robustness"]["propertyNames"]["enum"]
    assert names == list(PERTURBATIONS)
    option = next(p for p in typer.main.get_command(app).commands["score"].params if p.name == "perturb")
    assert f"{', '.join(PERTURBATIONS)}, or all" in option.help


def score(shards, detector, out, *extra):
    result = CliRunner().invoke(app, ["score", str(shards), "--detector", str(detector), "--out", str(out),
                                      "--batch-size", "8", "--device", "cpu", "--workers", "0",
                                      "--overlays", "0", *extra])
    assert result.exit_code == 0, result.output
    return result.output


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def perturbed_xception(ffpp_root, tmp_path_factory):
    """The Xception run scored clean, and under JPEG and H.264."""
    from test_shard import shared_png_shards

    shards = shared_png_shards(ffpp_root, tmp_path_factory)
    detector = shared_detector("xception", ffpp_root, tmp_path_factory)
    root = tmp_path_factory.mktemp("perturbed")
    score(shards, detector, root / "clean", "--resamples", "20")
    output = score(shards, detector, root / "perturbed", "--resamples", "20", "--perturb", "h264,jpeg",
                   "--perturb-seed", "5")
    return root, output


def test_score_perturb_writes_every_level_beside_the_clean_metrics(perturbed_xception):
    root, output = perturbed_xception
    clean = json.loads((root / "clean" / "metrics.json").read_text())
    metrics = json.loads((root / "perturbed" / "metrics.json").read_text())
    validate(metrics, schema("metrics"))
    validate(metrics, metrics_schema())
    # the clean metrics stay the headline, unchanged
    assert {k: v for k, v in metrics.items() if not k.startswith("robustness")} == clean
    assert set(metrics["robustness"]) == {"jpeg", "h264"}
    assert metrics["robustness_protocol"]["seed"] == 5
    assert metrics["robustness_protocol"]["perturbations"]["jpeg"]["values"] == [25, 18, 15, 10, 7]
    rows = read_csv(root / "perturbed" / "robustness.csv")
    assert list(rows[0]) == ["perturbation", "level", "video_id", "method", "frame_index", "label", "prob"]
    assert len(rows) == 2 * len(LEVELS) * 22
    frames = read_csv(root / "perturbed" / "frames.csv")
    for name, levels in metrics["robustness"].items():
        assert set(levels) == {"1", "2", "3", "4", "5"}
        for level, block in levels.items():
            assert (block["frame"]["n"], block["video"]["n"]) == (22, 6)
            assert block["frame"]["ci"]["auc"][0] <= block["frame"]["auc"] <= block["frame"]["ci"]["auc"][1]
            assert set(block["per_method"]) == {"Deepfakes", "FaceSwap"}
            assert block["video_aggregates"]["mean"]["video"] == block["video"]
            scored = [r for r in rows if (r["perturbation"], r["level"]) == (name, level)]
            # the same faces in the same order as the clean ones, scored on other pixels
            assert [(r["video_id"], r["frame_index"]) for r in scored] == [
                (f["video_id"], f["frame_index"]) for f in frames]
            assert [r["prob"] for r in scored] != [f["prob"] for f in frames]
    config = read_manifest(root / "perturbed").config
    assert config["perturb"] == ["jpeg", "h264"] and config["perturb_seed"] == 5
    assert "robustness (AUC at levels 1..5, perturbation seed 5):" in output
    assert output.index("  jpeg ") < output.index("  h264 ")  # in the registry's order
    # a row per perturbation of a real's and a fake's clean face and 5 levels, 224 px each
    figure = cv2.imread(str(root / "perturbed" / "perturbations.png"))
    assert figure.shape == (2 * 20 + 2 * (224 + 18 + 4), 2 * (6 * 228 + 16) - 16 - 4, 3)


def test_perturbed_faces_never_get_the_clean_faces_cached_inputs(ffpp_root, tmp_path_factory, tmp_path):
    """Val faces, which the LRErr run cached, under a perturbation: each perturbed face's prob
    is computed from its own pixels, as an uncached run does."""
    from test_shard import shared_png_shards

    shards = shared_png_shards(ffpp_root, tmp_path_factory)
    detector = shared_detector("lrerr", ffpp_root, tmp_path_factory)
    loaded = load_detector(detector, torch.device("cpu"))
    val = ShardDataset(shards, split="val", fields=get_method("lrerr").fields)
    faces = val.only_videos([val.face_videos[0], val.face_videos[-1]])  # a real and a fake video
    assert set(faces.labels) == {0, 1}
    cache = FrozenCache(detector, loaded.method.frozen_identity(loaded.net, loaded.context), faces.shard_rows,
                        writable=False)
    batch = torch.utils.data.default_collate([faces[i] for i in range(len(faces))])
    cache.fetch(batch, lambda _: pytest.fail("the run's cache should hold every val face"))
    run = dict(method=loaded.method, net=loaded.net, context=loaded.context, workers=0,
               device=torch.device("cpu"), progress=False)
    clean, _ = predict(dataset=faces, batch_size=8, cache=cache, **run)

    config = ScoreConfig(shard_dir=str(shards), detector=str(detector), out=str(tmp_path), batch_size=3,
                         workers=0)
    _, rows = score_perturbed(faces, ["noise"], 0, perturbed_predictor(config, loaded, torch.device("cpu")),
                              Aggregation(), None)
    for level in (1, 5):
        uncached, _ = predict(dataset=PerturbedFaces(faces, "noise", level, seed=0), batch_size=8, **run)
        scored = [r["prob"] for r in rows if r["level"] == level]
        assert scored == pytest.approx([r["prob"] for r in uncached], abs=1e-6)
        # a run from random weights scores every face near 0.48, so the change is small, but far
        # above the rounding the line above allows
        assert np.abs(np.subtract(scored, [r["prob"] for r in clean])).max() > 2e-5


def test_report_tables_and_plots_auc_against_level(perturbed_xception, tmp_path):
    root, _ = perturbed_xception
    out = tmp_path / "report.md"
    written = write_report([root / "clean", root / "perturbed"], out)
    text = out.read_text()
    metrics = json.loads((root / "perturbed" / "metrics.json").read_text())
    assert "## Robustness — AUC under perturbations" in text
    assert "| Detector | Trained on | Tested on | Perturbation | Clean | 1 | 2 | 3 | 4 | 5 | Mean |" in text
    jpeg = [metrics["robustness"]["jpeg"][str(level)]["frame"]["auc"] for level in LEVELS]
    row = next(line for line in text.splitlines() if "| jpeg |" in line)
    assert row.startswith("| Xception | ffpp c23 [DF, FS] | ffpp c23 [DF, FS] | jpeg |")
    assert row.endswith(f"| {100 * np.mean(jpeg):.2f} |") and f"{100 * jpeg[2]:.2f} [" in row
    table = read_csv(tmp_path / "report.robustness.csv")
    assert [row["Perturbation"] for row in table] == ["jpeg", "h264"]
    assert float(table[0]["Clean"]) == pytest.approx(100 * metrics["frame"]["auc"], abs=0.005)
    plot = tmp_path / "report.robustness.png"
    assert plot in written and cv2.imread(str(plot)).shape[:2] == (396, 704)  # one row of 2 panels
    # a report of scores without --perturb has neither, and drops an earlier one's
    write_report([root / "clean"], out)
    assert "Robustness" not in out.read_text() and not plot.exists()
    assert not (tmp_path / "report.robustness.csv").exists()


def test_the_html_report_holds_the_robustness_table_plot_and_perturbed_faces(perturbed_xception, tmp_path):
    root, _ = perturbed_xception
    out = tmp_path / "report.md"
    write_report([root / "clean", root / "perturbed"], out, html=True)
    page = read_page(out.with_suffix(".html"))
    check_self_contained(page)
    robustness = next(t for t in markdown_tables(out) if t[0][3:5] == ["Perturbation", "Clean"])
    assert robustness in page.tables
    names = [image["alt"].split(",")[0].split(" of ")[0] for image in page.images]
    assert "report.robustness.png" in names and "perturbations.png" in names
    perturbed = next(image["alt"] for image in page.images if image["alt"].startswith("perturbations.png"))
    assert perturbed.startswith(f"perturbations.png of {root / 'perturbed'}: Xception")
