"""`landmarks` on the astronaut crops of a real `extract` run."""

import json
import shutil

import cv2
import numpy as np
import pytest
from jsonschema import validate
from typer.testing import CliRunner

import lrerr_tools.landmarks as landmarks_module
from lrerr_tools import key_region
from lrerr_tools.cli import app
from lrerr_tools.errors import LrerrError
from lrerr_tools.extract import ExtractConfig
from lrerr_tools.extract import run as run_extract
from lrerr_tools.landmarks import LandmarksConfig, region_faces, run
from lrerr_tools.manifest import iter_records, open_parent, schema


@pytest.fixture(scope="module")
def extract_dir(ffpp_root, tmp_path_factory):
    """The `extract_config` fixture's extract (4 frames of 18 videos), made once for the module."""
    out = tmp_path_factory.mktemp("lm-extract") / "extract"
    run_extract(ExtractConfig(root=str(ffpp_root), dataset="ffpp", out=str(out),
                              splits=str(ffpp_root / "splits"), frames=4))
    return out


@pytest.fixture(scope="module")
def reference(extract_dir, tmp_path_factory):
    """One uninterrupted run: the reference that resumed and parallel runs must reproduce."""
    out = tmp_path_factory.mktemp("lm-reference") / "landmarks"
    manifest = run(LandmarksConfig(extract_dir=str(extract_dir), out=str(out)))
    return out, manifest, list(iter_records(out))


@pytest.fixture
def extract_copy(extract_dir, tmp_path):
    """A copy of the extract directory a test may damage."""
    return shutil.copytree(extract_dir, tmp_path / "extract")


def _records_text(out):
    return (out / "records.jsonl").read_text()


def test_key_region_covers_eyes_nose_and_mouth_of_95_percent_of_faces(reference):
    _, manifest, records = reference
    region = manifest.extra["key_region"]
    t = set(region["patches"])
    faces = [r for r in records if r["status"] == "ok"]
    covered = [set(key_region.patch_ids(np.array(r["landmarks"])[list(key_region.INNER_FACE)], 224, 16)) <= t
               for r in faces]
    assert len(faces) == 72 and np.mean(covered) >= 0.95
    # ... and T is a region, not the whole face crop.
    assert 30 <= len(t) <= 110
    assert region["mask_len"] == 196 and region["grid"] == 14 and region["patch"] == 16
    assert region["patches"] == sorted(t)
    assert region["source"] == "train-real"
    # The tiny sample's train split has 2 real videos × 4 frames.
    assert region["faces_used"] == region["faces_inside"] == 8
    x0, y0, x1, y1 = region["rect"]
    assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
    assert key_region.rect_to_patches((x0, y0, x1, y1), 224, 16)[0] == region["patches"]


def test_landmarks_sit_on_the_face(reference, extract_dir):
    """dlib's points land where RetinaFace put the eyes, nose and mouth."""
    _, _, records = reference
    for r in records:
        points = np.array(r["landmarks"])
        kps = _kps_in_crop(r)
        assert np.linalg.norm(points[36:42].mean(0) - kps[0]) < 12  # image-left eye
        assert np.linalg.norm(points[42:48].mean(0) - kps[1]) < 12
        assert np.linalg.norm(points[30] - kps[2]) < 15  # nose tip
        assert points[:, 1].min() > 20 and points[8, 1] > points[57, 1]  # chin below the mouth


def _kps_in_crop(record):
    m = np.array(record["matrix"])
    return np.array(record["kps"]) @ m[:, :2].T + m[:, 2]


def test_records_carry_the_parent_fields_and_counts_add_up(reference, extract_dir):
    out, manifest, records = reference
    parent = list(iter_records(extract_dir))
    parent_ok = [r for r in parent if r["status"] == "ok"]
    assert len(records) == len(parent_ok)
    for mine, theirs in zip(records, parent_ok):
        validate(mine, schema("landmarks-record"))
        assert {k: mine[k] for k in theirs} == theirs
        assert set(mine) - set(theirs) == {"landmarks", "key_patches"}
        assert len(mine["landmarks"]) == 68
        assert mine["key_patches"] == sorted(set(mine["key_patches"]))
        assert all(0 <= p < 196 for p in mine["key_patches"])
    c = manifest.counts
    assert c == {"crops_in": 72, "ok": 72, "no_landmarks": 0, "missing_crop": 0,
                 "parent_non_ok": len(parent) - len(parent_ok)}
    assert c["crops_in"] == c["ok"] + c["no_landmarks"] + c["missing_crop"]
    assert manifest.parent == open_parent(extract_dir, "extract").as_parent(out)
    assert open_parent(out, "landmarks").manifest.records_sha256 == manifest.records_sha256


def test_key_region_png_is_a_crop_sized_image(reference):
    out, _, _ = reference
    image = cv2.imread(str(out / "key_region.png"))
    assert image is not None and image.shape == (224, 224, 3)
    assert image.std() > 20  # a face, not a blank


def test_a_missing_crop_is_recorded_not_dropped(extract_copy, tmp_path, reference):
    _, ref_manifest, ref_records = reference
    victim = ref_records[5]["crop"]
    (extract_copy / victim).unlink()
    manifest = run(LandmarksConfig(extract_dir=str(extract_copy), out=str(tmp_path / "lm")))
    records = list(iter_records(tmp_path / "lm"))
    assert len(records) == 72
    (missing,) = [r for r in records if r["status"] == "missing_crop"]
    assert missing["crop"] == victim and "no such file" in missing["error"]
    assert "landmarks" not in missing and "key_patches" not in missing
    validate(missing, schema("landmarks-record"))
    assert manifest.counts["missing_crop"] == 1 and manifest.counts["ok"] == 71
    assert manifest.counts["crops_in"] == 72


def test_an_unreadable_crop_is_a_missing_crop(extract_copy, tmp_path, reference):
    _, _, ref_records = reference
    (extract_copy / ref_records[0]["crop"]).write_bytes(b"not a png")
    manifest = run(LandmarksConfig(extract_dir=str(extract_copy), out=str(tmp_path / "lm")))
    assert manifest.counts["missing_crop"] == 1
    assert next(iter_records(tmp_path / "lm"))["error"].endswith("not a readable image")


def test_implausible_landmarks_and_boxes_give_no_landmarks(reference, extract_dir, monkeypatch):
    _, _, records = reference
    parent = {k: v for k, v in records[0].items() if k not in ("landmarks", "key_patches")}
    far = {**parent, "box": [5000, 5000, 5100, 5100]}
    result = landmarks_module.landmark_face(far, extract_dir, 224)
    assert result["status"] == "no_landmarks" and "outside the crop" in result["error"]
    monkeypatch.setattr(landmarks_module, "predict", lambda rgb, seed: np.full((68, 2), 400.0))
    result = landmarks_module.landmark_face(parent, extract_dir, 224)
    assert result["status"] == "no_landmarks" and result["error"] == "most landmarks fall outside the crop"
    validate(result, schema("landmarks-record"))


def test_resume_after_an_interruption_equals_an_uninterrupted_run(reference, extract_dir, tmp_path,
                                                                   monkeypatch):
    ref_out, ref_manifest, _ = reference
    out = tmp_path / "lm"
    real_predict = landmarks_module.predict
    calls = {"n": 0, "stop_at": 11}  # the 3rd crop of the 3rd video

    def interruptible(*args):
        calls["n"] += 1
        if calls["n"] == calls["stop_at"]:
            raise KeyboardInterrupt
        return real_predict(*args)

    monkeypatch.setattr(landmarks_module, "predict", interruptible)
    with pytest.raises(KeyboardInterrupt):
        run(LandmarksConfig(extract_dir=str(extract_dir), out=str(out)))
    assert not (out / "manifest.json").exists()
    assert len(list(out.glob("work/videos/**/*.json"))) == 2
    calls.update(n=0, stop_at=None)
    manifest = run(LandmarksConfig(extract_dir=str(extract_dir), out=str(out)))
    assert calls["n"] == 72 - 2 * 4  # the two finished videos were not redone
    assert _records_text(out) == _records_text(ref_out)
    assert manifest.extra == ref_manifest.extra and manifest.counts == ref_manifest.counts
    assert (out / "key_region.png").read_bytes() == (ref_out / "key_region.png").read_bytes()


def test_parallel_run_equals_a_single_process_run(reference, extract_dir, tmp_path):
    ref_out, ref_manifest, _ = reference
    manifest = run(LandmarksConfig(extract_dir=str(extract_dir), out=str(tmp_path / "lm"), jobs=2))
    assert _records_text(tmp_path / "lm") == _records_text(ref_out)
    assert manifest.extra == ref_manifest.extra


def test_rerun_skips_everything_keeps_the_manifest_and_redraws_the_picture(reference, extract_dir, caplog):
    out, manifest, _ = reference
    before = (out / "manifest.json").read_bytes()
    picture = (out / "key_region.png").read_bytes()
    (out / "key_region.png").unlink()
    with caplog.at_level("INFO"):
        again = run(LandmarksConfig(extract_dir=str(extract_dir), out=str(out)))
    assert "18 of 18 videos already done" in caplog.text
    assert (out / "manifest.json").read_bytes() == before  # later stages stay valid
    assert (out / "key_region.png").read_bytes() == picture  # a lost picture is redrawn
    assert again.records_sha256 == manifest.records_sha256


def test_another_config_is_refused_unless_overwrite(extract_dir, tmp_path):
    out = tmp_path / "lm"
    run(LandmarksConfig(extract_dir=str(extract_dir), out=str(out), expand=0))
    with pytest.raises(LrerrError, match=r"differs in coverage\b.*--overwrite"):
        run(LandmarksConfig(extract_dir=str(extract_dir), out=str(out), expand=0, coverage=0.5))
    manifest = run(LandmarksConfig(extract_dir=str(extract_dir), out=str(out), expand=0, coverage=0.5,
                                   overwrite=True))
    assert manifest.config["coverage"] == 0.5
    assert manifest.extra["key_region"]["coverage"] == 0.5 and manifest.extra["key_region"]["expand"] == 0


def _one_error_line(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0]


def test_an_extract_changed_after_the_landmarks_is_refused(extract_copy, tmp_path):
    out = tmp_path / "lm"
    run(LandmarksConfig(extract_dir=str(extract_copy), out=str(out)))
    manifest = json.loads((extract_copy / "manifest.json").read_text())
    manifest["config"]["margin"] = 0.3  # as if extracted again with another margin
    (extract_copy / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["landmarks", str(extract_copy), "--out", str(out)])
    _one_error_line(result, "changed since", "--overwrite")
    result = CliRunner().invoke(app, ["landmarks", str(extract_copy), "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output


def test_an_extract_whose_counts_were_edited_by_hand_is_refused(extract_copy, tmp_path):
    manifest = json.loads((extract_copy / "manifest.json").read_text())
    manifest["counts"]["crops"] = 999
    (extract_copy / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["landmarks", str(extract_copy), "--out", str(tmp_path / "lm")])
    _one_error_line(result, "counts.crops is 999, but the records hold 72", "edited by hand")
    assert not (tmp_path / "lm").exists()


def test_an_extract_whose_records_changed_is_refused(extract_copy, tmp_path):
    records = extract_copy / "records.jsonl"
    records.write_text(records.read_text().replace('"split": "test"', '"split": "train"'))
    result = CliRunner().invoke(app, ["landmarks", str(extract_copy), "--out", str(tmp_path / "lm")])
    _one_error_line(result, "changed or missing")


def test_an_unfinished_extract_is_refused(extract_copy, tmp_path):
    manifest = json.loads((extract_copy / "manifest.json").read_text())
    (extract_copy / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(LrerrError, match="has not completed"):
        run(LandmarksConfig(extract_dir=str(extract_copy), out=str(tmp_path / "lm")))


def test_a_landmarks_dir_is_not_an_extract_dir(reference, tmp_path):
    out, _, _ = reference
    with pytest.raises(LrerrError, match="is a 'landmarks' directory, expected the output of 'extract'"):
        run(LandmarksConfig(extract_dir=str(out), out=str(tmp_path / "lm")))


@pytest.mark.parametrize("overrides, message", [
    ({"coverage": 0.0}, "--coverage"), ({"coverage": 1.5}, "--coverage"), ({"expand": -1}, "--expand"),
    ({"patch": 0}, "--patch"), ({"patch": 15}, "does not divide the 224-pixel crops"),
    ({"patch": 448}, "--patch 448"),
])
def test_bad_options_are_refused(extract_dir, tmp_path, overrides, message):
    with pytest.raises(LrerrError, match=message):
        run(LandmarksConfig(extract_dir=str(extract_dir), out=str(tmp_path / "lm"), **overrides))
    assert not (tmp_path / "lm").exists()


def test_out_must_not_be_the_extract_dir(extract_dir):
    with pytest.raises(LrerrError, match="extract directory itself"):
        run(LandmarksConfig(extract_dir=str(extract_dir), out=str(extract_dir)))


def _face(label, split):
    return {"status": "ok", "label": label, "split": split}


def test_region_faces_fall_back_when_the_train_split_has_no_reals(caplog):
    train_real = [_face(0, "train")]
    assert region_faces(train_real + [_face(0, "test"), _face(1, "train")]) == ("train-real", train_real)
    with caplog.at_level("WARNING"):
        source, faces = region_faces([_face(0, "test"), _face(1, "train"), _face(0, "val")])
    assert source == "real" and len(faces) == 2 and "all real" in caplog.text
    source, faces = region_faces([_face(1, "train"), _face(1, "test"),
                                  {"status": "missing_crop", "label": 0, "split": "train"}])
    assert source == "all" and len(faces) == 2
    with pytest.raises(LrerrError, match="no crop got landmarks"):
        region_faces([{"status": "no_landmarks", "label": 0, "split": "train"}])


def test_cli_prints_counts_and_the_picture(extract_dir, tmp_path):
    out = tmp_path / "lm"
    result = CliRunner().invoke(app, ["landmarks", str(extract_dir), "--out", str(out), "--expand", "4"])
    assert result.exit_code == 0, result.output
    assert "crops_in" in result.output and "parent_non_ok" in result.output
    assert str(out / "key_region.png") in result.output
    assert json.loads((out / "manifest.json").read_text())["config"]["expand"] == 4


def test_a_key_region_train_mae_could_not_cover_is_a_warning_at_landmarks(caplog):
    from lrerr_tools.landmarks import _warn_if_uncovered

    with caplog.at_level("WARNING"):
        _warn_if_uncovered(list(range(100)), [list(range(60))] * 3, 196)
    assert not caplog.records  # 0.9 of 100 fits the 147 patches masked
    with caplog.at_level("WARNING"):
        _warn_if_uncovered(list(range(170)), [list(range(60)), list(range(180))], 196)
    first, second = (r.getMessage() for r in caplog.records)
    assert first.startswith("at train-mae's default masking, the key region T holds 170 of the 196 patches")
    assert first.endswith("raise --mask-ratio to 0.78 or more; train-mae refuses to train so")
    assert second.startswith("1 of 2 faces have their own key region larger than")
