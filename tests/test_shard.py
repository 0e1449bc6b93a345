import json
import shutil
import zlib

import cv2
import h5py
import numpy as np
import pytest
from jsonschema import validate
from typer.testing import CliRunner

import lrerr_tools.shard as shard_module
from lrerr_tools.cli import app
from lrerr_tools.errors import LrerrError
from lrerr_tools.extract import run as run_extract
from lrerr_tools.landmarks import count_records as landmark_counts
from lrerr_tools.manifest import Manifest, open_parent, read_manifest, schema, write_stage
from lrerr_tools.shard import ShardConfig, run

KEY_REGION = {"rect": [40.0, 60.0, 184.0, 200.0], "patch": 16, "grid": 14}


def template_landmarks() -> np.ndarray:
    """A plausible 68-point layout (dlib's order) for a 224x224 aligned crop."""
    def arc(cx, cy, rx, ry, start, stop, n):
        t = np.linspace(start, stop, n)
        return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)

    return np.concatenate([
        arc(112, 110, 78, 95, np.pi, 0, 17),                            # jaw, left to right
        arc(78, 92, 24, 10, np.pi, 2 * np.pi, 5),                       # left brow
        arc(146, 92, 24, 10, np.pi, 2 * np.pi, 5),                      # right brow
        np.stack([np.full(4, 112.0), np.linspace(100, 135, 4)], axis=1),  # nose bridge
        np.stack([np.linspace(98, 126, 5), np.full(5, 142.0)], axis=1),   # nostrils
        arc(80, 108, 12, 5, np.pi, 3 * np.pi, 7)[:6],                   # left eye
        arc(144, 108, 12, 5, np.pi, 3 * np.pi, 7)[:6],                  # right eye
        arc(112, 168, 30, 12, np.pi, 3 * np.pi, 13)[:12],               # outer lips
        arc(112, 168, 20, 6, np.pi, 3 * np.pi, 9)[:8],                  # inner lips
    ])


def make_landmarks_dir(extract_dir, out, status_of=None):
    """A landmarks directory over an extract run's crops, with jittered template landmarks.

    `status_of(record) -> str` may mark faces as failures ("no_landmarks", ...).
    """
    parent = open_parent(extract_dir, "extract")
    base = template_landmarks()
    records, union = [], set()
    for r in parent.records():
        if r["status"] != "ok":
            continue
        status = status_of(r) if status_of else "ok"
        if status != "ok":
            records.append({**r, "status": status, "error": "made up by the test"})
            continue
        rng = np.random.default_rng(zlib.crc32(f"{r['video_id']}/{r['frame_index']}".encode()))
        points = np.round(base + rng.normal(0, 2, base.shape), 2)
        x0, y0 = np.floor(points[17:].min(axis=0) / 16).astype(int)
        x1, y1 = np.floor(points[17:].max(axis=0) / 16).astype(int)
        patches = sorted(int(row * 14 + col) for row in range(y0, y1 + 1) for col in range(x0, x1 + 1))
        union.update(patches)
        records.append({**r, "landmarks": points.tolist(), "key_patches": patches})
    manifest = Manifest(
        stage="landmarks", config={"extract_dir": str(extract_dir), "made_by": "test"},
        parent=parent.as_parent(out), counts=landmark_counts(records, None), complete=True,
        extra={"key_region": {**KEY_REGION, "patches": sorted(union), "mask_len": 196}})
    write_stage(out, manifest, records)
    return out


_BUILT: dict[str, object] = {}


def built(name, make):
    """Build a shared input once per test session, for every test module that needs it."""
    if name not in _BUILT:
        _BUILT[name] = make()
    return _BUILT[name]


def some_faceswap_fail(record):
    return "no_landmarks" if record["frame_index"] % 5 == 1 and record["method"] == "FaceSwap" else "ok"


def shared_extract_dir(ffpp_root, tmp_path_factory):
    """72 crops: 18 videos x 4 frames, 24 per split (8 real, 16 fake)."""
    from lrerr_tools.extract import ExtractConfig

    def make():
        out = tmp_path_factory.mktemp("shard-extract") / "extract"
        run_extract(ExtractConfig(root=str(ffpp_root), dataset="ffpp", out=str(out),
                                  splits=str(ffpp_root / "splits"), frames=4))
        return out

    return built("extract", make)


def shared_landmarks_dir(ffpp_root, tmp_path_factory):
    """The 72 crops with landmarks, but for 6 FaceSwap faces (2 per split) marked no_landmarks."""
    extract = shared_extract_dir(ffpp_root, tmp_path_factory)
    return built("landmarks", lambda: make_landmarks_dir(
        extract, tmp_path_factory.mktemp("shard-lm") / "landmarks", some_faceswap_fail))


def shared_png_shards(ffpp_root, tmp_path_factory):
    """Those 66 faces in PNG shards of 10."""
    landmarks = shared_landmarks_dir(ffpp_root, tmp_path_factory)

    def make():
        out = tmp_path_factory.mktemp("png-shards") / "shards"
        run(ShardConfig(landmarks=str(landmarks), out=str(out), shard_size=10))
        return out

    return built("png_shards", make)


@pytest.fixture
def extract_dir(ffpp_root, tmp_path_factory):
    return shared_extract_dir(ffpp_root, tmp_path_factory)


@pytest.fixture
def landmarks_dir(ffpp_root, tmp_path_factory):
    return shared_landmarks_dir(ffpp_root, tmp_path_factory)


@pytest.fixture
def png_shards(ffpp_root, tmp_path_factory):
    return shared_png_shards(ffpp_root, tmp_path_factory)


def read_shard(path):
    """Every face of a shard as a dict keyed by (video_id, frame_index), images as RGB."""
    faces = {}
    with h5py.File(path, "r") as f:
        codec = f.attrs["codec"]
        videos = f["video_ids"].asstr()[:]
        methods = f["methods"].asstr()[:]
        datasets = f["datasets"].asstr()[:]
        for i in range(len(f["label"])):
            image = f["images"][i]
            if codec != "raw":
                image = cv2.cvtColor(cv2.imdecode(image, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            key = (videos[f["video_index"][i]], int(f["frame_index"][i]))
            faces[key] = {"image": image, "landmarks": f["landmarks"][i], "key_mask": f["key_mask"][i],
                          "label": int(f["label"][i]), "method": methods[f["method_index"][i]],
                          "dataset": datasets[f["dataset_index"][i]], "split": f.attrs["split"]}
    return faces


def shard_contents(out):
    faces = {}
    for path in sorted((out / "shards").glob("*.h5")):
        faces.update(read_shard(path))
    return faces


@pytest.mark.parametrize("codec", ["png", "raw"])
def test_round_trip_is_bit_exact(codec, landmarks_dir, extract_dir, png_shards, tmp_path):
    if codec == "png":
        out = png_shards
    else:
        out = tmp_path / "shards"
        run(ShardConfig(landmarks=str(landmarks_dir), out=str(out), shard_size=10, codec="raw"))
    faces = shard_contents(out)
    ok = [r for r in open_parent(landmarks_dir, "landmarks").records() if r["status"] == "ok"]
    assert len(faces) == len(ok) == 72 - 6  # 6 faces without landmarks are left out
    for r in ok:
        face = faces[(r["video_id"], r["frame_index"])]
        crop = cv2.cvtColor(cv2.imread(str(extract_dir / r["crop"])), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(face["image"], crop)
        assert face["landmarks"].dtype == np.float32
        np.testing.assert_array_equal(face["landmarks"], np.asarray(r["landmarks"], np.float32))
        assert face["key_mask"].shape == (196,)
        assert sorted(np.flatnonzero(face["key_mask"]).tolist()) == r["key_patches"]
        assert (face["label"], face["method"], face["dataset"], face["split"]) == (
            r["label"], r["method"], r["dataset"], r["split"])


def test_shards_are_sorted_chunked_per_split_and_indexed(png_shards, landmarks_dir):
    manifest = read_manifest(png_shards)
    entries = manifest.extra["shards"]
    records = [json.loads(line) for line in (png_shards / "records.jsonl").read_text().splitlines()]
    assert records == entries
    for entry in entries:
        validate(entry, schema("shard-record"))
    # 24 faces a split, 2 of them without landmarks: 22 -> shards of 10, 10, 2
    assert [(e["file"], e["count"]) for e in entries] == [
        (f"shards/{split}-{k:05d}.h5", n) for split in ("test", "train", "val")
        for k, n in enumerate((10, 10, 2))]
    assert manifest.counts["faces"] == 66
    assert manifest.counts["skipped"] == manifest.counts["skipped_no_landmarks"] == 6
    assert manifest.counts["faces_train"] == manifest.counts["faces_val"] == 22
    assert manifest.counts["shards_test"] == 3
    assert manifest.parent["sha256"] == open_parent(landmarks_dir, "landmarks").sha256
    ok = sorted((r["split"], r["video_id"], r["frame_index"])
                for r in open_parent(landmarks_dir, "landmarks").records() if r["status"] == "ok")
    packed = []
    for entry in entries:
        with h5py.File(png_shards / entry["file"], "r") as f:
            videos = f["video_ids"].asstr()[:]
            packed += [(f.attrs["split"], videos[v], int(i))
                       for v, i in zip(f["video_index"][:], f["frame_index"][:])]
            assert f.attrs["parent_sha256"] == manifest.parent["sha256"]
            assert f.attrs["codec"] == "png" and f.attrs["schema_version"] == 1
            assert f.attrs["dataset_key_patches"].tolist() == manifest.extra["key_region"]["patches"]
            labels = f["label"][:]
            assert (entry["n_real"], entry["n_fake"]) == ((labels == 0).sum(), (labels == 1).sum())
            assert sum(entry["methods"].values()) == entry["count"]
    assert packed == ok


def test_jpeg_codec_is_close_to_the_crops(landmarks_dir, extract_dir, tmp_path):
    out = tmp_path / "shards"
    run(ShardConfig(landmarks=str(landmarks_dir), out=str(out), shard_size=100, codec="jpeg",
                    jpeg_quality=90))
    faces = shard_contents(out)
    r = next(r for r in open_parent(landmarks_dir, "landmarks").records() if r["status"] == "ok")
    crop = cv2.cvtColor(cv2.imread(str(extract_dir / r["crop"])), cv2.COLOR_BGR2RGB)
    image = faces[(r["video_id"], r["frame_index"])]["image"]
    assert image.shape == crop.shape
    assert 0 < np.abs(image.astype(int) - crop).mean() < 4


def test_rerun_skips_everything_and_keeps_the_manifest(png_shards, landmarks_dir, caplog):
    before = (png_shards / "manifest.json").read_bytes()
    with caplog.at_level("INFO"):
        run(ShardConfig(landmarks=str(landmarks_dir), out=str(png_shards), shard_size=10))
    assert "9 of 9 shards already written" in caplog.text
    assert (png_shards / "manifest.json").read_bytes() == before


def test_resume_after_a_killed_write_equals_an_uninterrupted_run(png_shards, landmarks_dir, tmp_path,
                                                                   monkeypatch):
    out = tmp_path / "shards"
    cfg = ShardConfig(landmarks=str(landmarks_dir), out=str(out), shard_size=10)
    real_load = shard_module._load_crop
    calls = {"n": 0}

    def dying_load(*args):
        calls["n"] += 1
        if calls["n"] == 25:  # in the middle of the fourth shard, train-00000
            raise KeyboardInterrupt
        return real_load(*args)

    monkeypatch.setattr(shard_module, "_load_crop", dying_load)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"test-0000{k}.h5" for k in range(3)]
    assert not (out / "manifest.json").exists()
    # What a SIGKILL leaves: a temp file mid-write, and a shard renamed into place whose
    # entry was never recorded (killed between the two steps).
    (out / "shards" / ".train-00000.h5.4242.tmp").write_bytes(b"\x89HDF half a shard")
    (out / "shards" / "train-00001.h5").write_bytes(b"garbage")

    manifest = run(cfg)
    reference = read_manifest(png_shards)
    assert manifest.records_sha256 == reference.records_sha256  # same shards, byte for byte
    assert (out / "records.jsonl").read_bytes() == (png_shards / "records.jsonl").read_bytes()
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(
        p.name for p in (png_shards / "shards").iterdir())


def test_parallel_jobs_write_the_same_shards(png_shards, landmarks_dir, tmp_path):
    manifest = run(ShardConfig(landmarks=str(landmarks_dir), out=str(tmp_path / "s"), shard_size=10,
                               jobs=2))
    assert manifest.records_sha256 == read_manifest(png_shards).records_sha256


def test_an_empty_split_has_no_shards(extract_dir, tmp_path):
    landmarks = make_landmarks_dir(extract_dir, tmp_path / "lm",
                                   lambda r: "no_landmarks" if r["split"] == "val" else "ok")
    manifest = run(ShardConfig(landmarks=str(landmarks), out=str(tmp_path / "s"), shard_size=100))
    assert [e["split"] for e in manifest.extra["shards"]] == ["test", "train"]
    assert manifest.counts["faces_val"] == manifest.counts["shards_val"] == 0
    assert manifest.counts["skipped"] == 24


def test_no_face_with_landmarks_is_a_clear_error(extract_dir, tmp_path):
    landmarks = make_landmarks_dir(extract_dir, tmp_path / "lm", lambda r: "no_landmarks")
    with pytest.raises(LrerrError, match=r"no face has landmarks \(72 no_landmarks\)"):
        run(ShardConfig(landmarks=str(landmarks), out=str(tmp_path / "s")))
    assert not (tmp_path / "s").exists()


def test_a_changed_landmarks_dir_is_refused(extract_dir, tmp_path):
    landmarks = make_landmarks_dir(extract_dir, tmp_path / "lm")
    records = landmarks / "records.jsonl"
    original = records.read_text()
    records.write_text(original.replace('"label": 1', '"label": 0', 1))
    with pytest.raises(LrerrError, match="changed or missing since its manifest"):
        run(ShardConfig(landmarks=str(landmarks), out=str(tmp_path / "s")))
    records.write_text(original)
    cfg = ShardConfig(landmarks=str(landmarks), out=str(tmp_path / "s"), shard_size=50)
    run(cfg)
    first = next(open_parent(extract_dir, "extract").records())
    # Landmarks redone with another result (one face lost): a new content hash.
    make_landmarks_dir(extract_dir, landmarks, status_of=lambda r: "no_landmarks" if r == first else "ok")
    with pytest.raises(LrerrError, match="made from an earlier version of .* --overwrite"):
        run(cfg)
    cfg.overwrite = True
    assert run(cfg).parent["sha256"] == open_parent(landmarks, "landmarks").sha256


def test_a_changed_extract_dir_is_refused(extract_dir, tmp_path):
    extract = tmp_path / "extract"
    shutil.copytree(extract_dir, extract)
    landmarks = make_landmarks_dir(extract, tmp_path / "lm")
    manifest_path = extract / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["counts"]["crops"] -= 1
    manifest_path.write_text(json.dumps(data))  # rewritten after landmarks were made
    with pytest.raises(LrerrError, match="changed after the 'landmarks' stage"):
        run(ShardConfig(landmarks=str(landmarks), out=str(tmp_path / "s")))


def test_another_config_on_the_same_output_is_refused(png_shards, landmarks_dir):
    with pytest.raises(LrerrError, match="differs in shard_size"):
        run(ShardConfig(landmarks=str(landmarks_dir), out=str(png_shards), shard_size=11))


def test_malformed_landmarks_are_a_clear_error(landmarks_dir, tmp_path):
    parent = open_parent(landmarks_dir, "landmarks")
    records = list(parent.records())
    bad = next(r for r in records if r["status"] == "ok")
    bad["landmarks"] = bad["landmarks"][:67]
    write_stage(tmp_path / "lm", Manifest(**{**parent.manifest.__dict__, "created": "2001-01-01"}), records)
    with pytest.raises(LrerrError, match=rf"{bad['video_id']} frame {bad['frame_index']}: landmarks have "
                                         r"shape \(67, 2\), expected \(68, 2\)"):
        run(ShardConfig(landmarks=str(tmp_path / "lm"), out=str(tmp_path / "s")))


def test_a_missing_crop_stops_the_run_with_its_name(extract_dir, tmp_path):
    copy = tmp_path / "extract"
    shutil.copytree(extract_dir, copy)
    landmarks = make_landmarks_dir(copy, tmp_path / "lm")
    victim = next(copy.glob("crops/FaceSwap/*/*.png"))
    victim.unlink()
    with pytest.raises(LrerrError, match=f"{victim.name}: crop missing"):
        run(ShardConfig(landmarks=str(landmarks), out=str(tmp_path / "s")))
    assert not list((tmp_path / "s" / "shards").glob("*"))  # nothing partial left


def test_cli(landmarks_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["shard", str(landmarks_dir), "--out", str(tmp_path / "s"),
                                 "--shard-size", "40", "--codec", "raw"])
    assert result.exit_code == 0, result.output
    assert "shard complete" in result.output and "faces_train" in result.output
    result = runner.invoke(app, ["shard", str(landmarks_dir), "--out", str(tmp_path / "t"),
                                 "--codec", "webp"])
    assert result.exit_code == 2
    assert "--codec must be one of png, jpeg, raw" in result.output


def test_end_to_end_from_extract_through_real_landmarks(extract_dir, tmp_path):
    from lrerr_tools.landmarks import LandmarksConfig
    from lrerr_tools.landmarks import run as run_landmarks
    from lrerr_tools.verify import verify

    landmarks = tmp_path / "landmarks"
    run_landmarks(LandmarksConfig(extract_dir=str(extract_dir), out=str(landmarks)))
    manifest = run(ShardConfig(landmarks=str(landmarks), out=str(tmp_path / "shards"), shard_size=16))
    ok = [r for r in open_parent(landmarks, "landmarks").records() if r["status"] == "ok"]
    assert manifest.counts["faces"] == len(ok) > 60
    faces = shard_contents(tmp_path / "shards")
    for r in ok:
        face = faces[(r["video_id"], r["frame_index"])]
        np.testing.assert_array_equal(face["landmarks"], np.asarray(r["landmarks"], np.float32))
        assert np.flatnonzero(face["key_mask"]).tolist() == r["key_patches"]
    with h5py.File(tmp_path / "shards" / manifest.extra["shards"][0]["file"], "r") as f:
        region = read_manifest(landmarks).extra["key_region"]
        assert f.attrs["dataset_key_patches"].tolist() == region["patches"]
    for directory in (extract_dir, landmarks, tmp_path / "shards"):
        assert verify(directory) == []
