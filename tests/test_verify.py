import dataclasses
import json
import shutil

import pytest
from test_shard import make_landmarks_dir, shared_extract_dir, shared_landmarks_dir, shared_png_shards
from typer.testing import CliRunner

from lrerr_tools.cli import app
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import read_manifest, write_stage
from lrerr_tools.shard import count_records as shard_counts
from lrerr_tools.verify import verify


@pytest.fixture
def extract_copy(ffpp_root, tmp_path_factory, tmp_path):
    """A private copy of the shared extract directory, free to damage."""
    copy = tmp_path / "extract"
    shutil.copytree(shared_extract_dir(ffpp_root, tmp_path_factory), copy)
    return copy


@pytest.fixture
def shards_copy(ffpp_root, tmp_path_factory, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shared_png_shards(ffpp_root, tmp_path_factory), copy)
    return copy


def test_whole_directories_of_every_stage_pass(ffpp_root, tmp_path_factory):
    for directory in (shared_extract_dir(ffpp_root, tmp_path_factory),
                      shared_landmarks_dir(ffpp_root, tmp_path_factory),
                      shared_png_shards(ffpp_root, tmp_path_factory)):
        assert verify(directory) == []
        assert verify(directory, deep=True) == []


def test_a_flipped_byte_in_a_shard_is_caught(shards_copy):
    shard = shards_copy / "shards" / "train-00001.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    problems = verify(shards_copy)
    assert problems == [f"{shard}: content changed since it was written (sha256 differs from the index)"]


def test_a_truncated_shard_is_unreadable(shards_copy):
    shard = shards_copy / "shards" / "val-00000.h5"
    shard.write_bytes(shard.read_bytes()[:5000])
    problems = verify(shards_copy)
    assert len(problems) == 2
    assert "sha256 differs" in problems[0]
    assert problems[1].startswith(f"{shard}: not readable as a shard")


def test_a_shard_that_disagrees_with_its_index_is_caught(shards_copy):
    manifest = read_manifest(shards_copy)
    entries = [dict(e) for e in manifest.extra["shards"]]
    entries[0]["count"] += 1
    entries[0]["n_fake"] += 1
    counts = {**manifest.counts, **shard_counts(entries, manifest)}
    manifest = dataclasses.replace(manifest, counts=counts, extra={**manifest.extra, "shards": entries})
    write_stage(shards_copy, manifest, entries)  # a consistent, re-hashed index that lies
    problems = verify(shards_copy)
    shard = shards_copy / entries[0]["file"]
    assert problems == [f"{shard}: holds 10 faces, the index says 11",
                        f"{shard}: holds 0 real and 10 fake faces, the index says 0 and 11"]


def test_a_leftover_temp_file_is_reported(shards_copy):
    (shards_copy / "shards" / ".test-00000.h5.99.tmp").write_bytes(b"half")
    assert len(verify(shards_copy)) == 1
    assert "temp file left by a run that was cut short" in verify(shards_copy)[0]


def test_a_missing_crop_is_caught_in_extract_and_landmarks_dirs(extract_copy, tmp_path):
    landmarks = make_landmarks_dir(extract_copy, tmp_path / "lm")
    crop = extract_copy / "crops" / "Deepfakes" / "000_001" / "000004.png"
    crop.unlink()
    for directory in (extract_copy, landmarks):
        problems = verify(directory)
        assert len(problems) == 1
        assert problems[0].startswith(f"{crop}: missing (record Deepfakes/000_001 frame 4)")


def test_a_corrupt_crop_is_caught_by_a_deep_check(extract_copy):
    crops = sorted(extract_copy.glob("crops/*/*/*.png"))
    for crop in crops:  # every crop: the default check decodes a sample of them
        crop.write_bytes(crop.read_bytes()[:100])
    problems = verify(extract_copy)
    assert 0 < len(problems) <= 21
    assert problems[0].endswith(": not a readable image")
    problems = verify(extract_copy, deep=True)
    assert len(problems) == 21  # 20 listed ...
    assert problems[-1] == "... and 52 more like the above (unreadable crop)"


def test_an_edited_records_file_is_caught(extract_copy):
    records = extract_copy / "records.jsonl"
    lines = records.read_text().splitlines()
    record = json.loads(lines[5])
    record["label"] = 7
    lines[5] = json.dumps(record)
    records.write_text("\n".join(lines) + "\n")
    problems = verify(extract_copy)
    assert problems == [
        f"{records}: changed since manifest.json was written (sha256 differs)",
        f"{records}:6: invalid extract record at label: 7 is not one of [0, 1]",
    ]


def test_an_incomplete_dir_and_a_changed_parent_are_caught(extract_copy, tmp_path):
    landmarks = make_landmarks_dir(extract_copy, tmp_path / "lm")
    manifest = read_manifest(extract_copy)
    write_stage(extract_copy, dataclasses.replace(manifest, complete=False, created="2001-01-01T00:00:00"),
                (json.loads(line) for line in (extract_copy / "records.jsonl").read_text().splitlines()))
    assert verify(extract_copy) == [
        f"{extract_copy}: the 'extract' stage has not completed (complete: false)"]
    assert len(verify(landmarks)) == 1
    assert "changed after the 'landmarks' stage was built on it" in verify(landmarks)[0]


def test_cli_exit_codes(ffpp_root, tmp_path_factory, tmp_path):
    runner = CliRunner()
    shards = shared_png_shards(ffpp_root, tmp_path_factory)
    result = runner.invoke(app, ["verify", str(shards)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"ok: {shards} (shard; faces 66")
    result = runner.invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 1
    assert "no manifest.json" in result.output


@pytest.mark.parametrize("stage, key", [("extract", "crops"), ("shard", "faces_train")])
def test_counts_edited_by_hand_are_caught(extract_copy, shards_copy, stage, key):
    stage_dir = {"extract": extract_copy, "shard": shards_copy}[stage]
    path = stage_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    true_count = manifest["counts"][key]
    manifest["counts"][key] = 999
    path.write_text(json.dumps(manifest))
    assert verify(stage_dir) == [f"{path}: counts.{key} is 999, but the records hold {true_count}"]


def test_a_crop_swapped_for_another_face_is_caught_by_verify_deep_and_by_shard(extract_copy, tmp_path):
    from lrerr_tools.shard import ShardConfig
    from lrerr_tools.shard import run as shard

    landmarks = make_landmarks_dir(extract_copy, tmp_path / "lm")
    real = extract_copy / "crops" / "youtube" / "000" / "000004.png"
    fake = extract_copy / "crops" / "Deepfakes" / "000_001" / "000004.png"
    real.write_bytes(fake.read_bytes())  # a fake packed as real
    for directory in (extract_copy, landmarks):
        assert verify(directory, deep=True) == [f"{real}: a valid image, but not the crop extract wrote "
                                                "(sha256 differs from record youtube/000 frame 4)"]
    refusal = rf"{real}: not the crop extract wrote \(sha256 differs from its record\)"
    with pytest.raises(LrerrError, match=refusal):
        shard(ShardConfig(landmarks=str(landmarks), out=str(tmp_path / "shards")))
