import json
from importlib import import_module

import pytest

from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import (
    COUNTED_STAGES,
    Manifest,
    check_parent_unchanged,
    open_parent,
    read_manifest,
    write_stage,
)


def _write(path, complete=True, stage="extract", parent=None):
    records = [{"status": "ok", "video_id": "v", "i": 0}, {"status": "ok", "video_id": "v", "i": 1}]
    manifest = Manifest(stage=stage, config={"frames": 2}, parent=parent, counts={}, complete=complete,
                        extra={"missing_videos": []})
    manifest.counts = import_module(COUNTED_STAGES[stage]).count_records(records, manifest)
    return write_stage(path, manifest, records)


def test_round_trip(tmp_path):
    written = _write(tmp_path)
    read = read_manifest(tmp_path)
    assert read == written
    assert len(read.records_sha256) == 64
    assert [r["i"] for r in open_parent(tmp_path, "extract").records()] == [0, 1]


def test_no_temp_files_are_left_behind(tmp_path):
    _write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "records.jsonl"]


def test_incomplete_parent_is_refused(tmp_path):
    _write(tmp_path, complete=False)
    with pytest.raises(LrerrError, match="not completed"):
        open_parent(tmp_path, "extract")


def test_parent_of_another_stage_is_refused(tmp_path):
    _write(tmp_path, stage="landmarks")
    with pytest.raises(LrerrError, match="expected the output of 'extract'"):
        open_parent(tmp_path, "extract")


def test_missing_parent_says_which_stage_to_run(tmp_path):
    with pytest.raises(LrerrError, match="run `lrerr-tools extract` first"):
        open_parent(tmp_path / "nope", "extract")


def test_tampered_records_are_refused(tmp_path):
    _write(tmp_path)
    records = tmp_path / "records.jsonl"
    records.write_text(records.read_text().replace('"i": 1', '"i": 7'))
    with pytest.raises(LrerrError, match="changed or missing"):
        open_parent(tmp_path, "extract")


def test_invalid_manifest_names_the_field(tmp_path):
    _write(tmp_path)
    path = tmp_path / "manifest.json"
    data = json.loads(path.read_text())
    data["counts"]["crops"] = -1
    path.write_text(json.dumps(data))
    with pytest.raises(LrerrError, match="counts/crops"):
        read_manifest(tmp_path)


def test_unparsable_manifest_is_one_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(LrerrError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_child_notices_its_parent_changed(tmp_path):
    _write(tmp_path / "p")
    parent = open_parent(tmp_path / "p", "extract")
    child = _write(tmp_path / "c", stage="landmarks", parent=parent.as_parent(tmp_path / "c"))
    check_parent_unchanged(tmp_path / "c", child)  # unchanged: no error
    write_stage(tmp_path / "p", parent.manifest, [{"status": "ok", "i": 0}])
    with pytest.raises(LrerrError, match="changed after"):
        check_parent_unchanged(tmp_path / "c", child)


def test_a_parent_rebuilt_to_the_same_records_keeps_its_children_valid(tmp_path):
    # e.g. a shard directory deleted to free space and rebuilt: the MAE trained on it stays valid.
    _write(tmp_path / "p")
    before = open_parent(tmp_path / "p", "extract")
    child = _write(tmp_path / "c", stage="landmarks", parent=before.as_parent(tmp_path / "c"))
    (tmp_path / "p" / "manifest.json").unlink()
    _write(tmp_path / "p")  # same records, a later `created`

    after = open_parent(tmp_path / "p", "extract")
    assert after.manifest.created != before.manifest.created
    assert after.sha256 == before.sha256
    check_parent_unchanged(tmp_path / "c", child)
