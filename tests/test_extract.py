import json
import os
import signal
import subprocess
import sys
import time

import cv2
import pytest
from conftest import TINY_METHODS
from jsonschema import validate

import lrerr_tools.extract as extract_module
from lrerr_tools.errors import LrerrError
from lrerr_tools.extract import finalize, run
from lrerr_tools.manifest import open_parent, schema


def _records(out):
    return (out / "records.jsonl").read_text()


@pytest.fixture(scope="module")
def single_run(ffpp_root, tmp_path_factory):
    """One uninterrupted run: the reference that resumed and merged runs must reproduce."""
    from lrerr_tools.extract import ExtractConfig

    out = tmp_path_factory.mktemp("single") / "extract"
    manifest = run(ExtractConfig(root=str(ffpp_root), dataset="ffpp", out=str(out),
                                 splits=str(ffpp_root / "splits"), frames=4))
    return out, manifest


def test_every_video_gives_aligned_crops_and_every_frame_is_accounted_for(single_run):
    out, manifest = single_run
    n_videos = 6 + 6 * len(TINY_METHODS)
    assert manifest.complete
    assert manifest.counts["videos"] == n_videos
    assert manifest.counts["frames_tried"] == 4 * n_videos
    assert manifest.counts["crops"] == 4 * n_videos  # the astronaut is in every frame
    assert manifest.counts["videos_failed"] == 0
    records = [json.loads(line) for line in _records(out).splitlines()]
    assert len(records) == manifest.counts["frames_tried"]
    for r in records:
        validate(r, schema("extract-record"))
        crop = cv2.imread(str(out / r["crop"]))
        assert crop.shape == (224, 224, 3)
    by_split = {r["video_id"]: r["split"] for r in records}
    assert by_split["youtube/000"] == by_split["Deepfakes/000_001"] == "train"
    assert by_split["FaceSwap/005_004"] == "test"


def test_output_is_a_valid_parent_for_the_next_stage(single_run):
    out, _ = single_run
    parent = open_parent(out, "extract")
    assert parent.manifest.config["frames"] == 4
    assert not list(out.glob("crops/**/*.partial"))


def test_rerun_with_same_config_skips_everything_and_keeps_the_manifest(single_run, caplog):
    out, manifest = single_run
    before = (out / "manifest.json").read_bytes()
    options = {k: v for k, v in manifest.config.items() if k != "splits_sha256"}  # found, not chosen
    cfg = extract_module.ExtractConfig(**options, out=str(out))
    with caplog.at_level("INFO"):
        run(cfg)
    assert "18 of 18 videos already extracted" in caplog.text
    assert (out / "manifest.json").read_bytes() == before  # later stages stay valid


def test_a_finished_extract_prints_its_counts_in_the_order_of_the_first_run(single_run, ffpp_root):
    from typer.testing import CliRunner

    from lrerr_tools.cli import app

    out, manifest = single_run
    result = CliRunner().invoke(app, ["extract", str(ffpp_root), "--dataset", "ffpp", "--out", str(out),
                                      "--splits", str(ffpp_root / "splits"), "--frames", "4"])
    assert result.exit_code == 0, result.output
    printed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert printed == list(manifest.counts)  # videos first, as the stage computed them


def test_dry_run_counts_what_a_run_extracts_and_writes_nothing(single_run, ffpp_root, tmp_path):
    from typer.testing import CliRunner

    from lrerr_tools.cli import app

    _, manifest = single_run
    out = tmp_path / "extract"
    result = CliRunner().invoke(app, ["extract", str(ffpp_root), "--dataset", "ffpp", "--out", str(out),
                                      "--splits", str(ffpp_root / "splits"), "--dry-run"])
    assert result.exit_code == 0, result.output
    counts = dict(line.split() for line in result.stdout.splitlines() if line.startswith("  "))
    assert int(counts["videos"]) == manifest.counts["videos"] == 18
    assert (counts["train_real"], counts["train_fake"], counts["test_fake"]) == ("2", "4", "4")
    assert not out.exists()


def test_resume_after_an_interruption_equals_an_uninterrupted_run(
        single_run, extract_config, monkeypatch):
    reference, _ = single_run
    cfg = extract_config()
    real_write = extract_module._write_image
    calls = {"n": 0}

    def interrupted_write(*args):
        calls["n"] += 1
        if calls["n"] == 30:  # in the middle of the 8th video
            raise KeyboardInterrupt
        return real_write(*args)

    monkeypatch.setattr(extract_module, "_write_image", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    out = extract_module.Path(cfg.out)
    assert not (out / "manifest.json").exists()
    assert len(list(out.glob("work/videos/**/*.json"))) == 7
    monkeypatch.setattr(extract_module, "_write_image", real_write)
    run(cfg)
    assert _records(out) == _records(reference)
    assert not list(out.glob("crops/**/*.partial"))


def test_resume_after_sigkill_equals_an_uninterrupted_run(single_run, extract_config):
    reference, _ = single_run
    cfg = extract_config()
    command = [sys.executable, "-m", "lrerr_tools", "extract", cfg.root, "--dataset", "ffpp",
               "--splits", cfg.splits, "--out", cfg.out, "--frames", "4"]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    done = extract_module.Path(cfg.out) / "work" / "videos"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(done.glob("**/*.json"))) < 3:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (extract_module.Path(cfg.out) / "manifest.json").exists(), "killed too late"
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert _records(extract_module.Path(cfg.out)) == _records(reference)


def test_parts_merged_equal_a_single_run(single_run, extract_config):
    reference, manifest = single_run
    results = [run(extract_config(part=f"{i}/3")) for i in (1, 2, 3)]
    assert results[0] is None and results[1] is None  # other parts still missing
    merged = results[2]
    out = extract_module.Path(extract_config().out)
    assert _records(out) == _records(reference)
    assert merged.counts == manifest.counts and merged.config == manifest.config
    assert finalize(out).records_sha256 == manifest.records_sha256


def test_parts_are_disjoint_and_cover_every_video():
    ids = [f"Method{m}/{i:03d}_{i + 1:03d}" for m in range(4) for i in range(200)]
    parts = [{v for v in ids if extract_module.in_part(v, f"{p}/5")} for p in range(1, 6)]
    assert sum(map(len, parts)) == len(ids) and set().union(*parts) == set(ids)
    assert min(map(len, parts)) > 100  # roughly balanced


def test_merge_before_all_parts_finish_is_refused(extract_config):
    from typer.testing import CliRunner

    from lrerr_tools.cli import app

    run(extract_config(part="1/4"))
    result = CliRunner().invoke(app, ["merge", extract_config().out])
    assert result.exit_code == 2
    assert "not extracted yet" in result.output


@pytest.mark.parametrize("policy", ["central", "track"])
def test_face_policy_is_recorded(extract_config, policy):
    manifest = run(extract_config(face=policy, methods=["Deepfakes"], frames=2))
    records = [json.loads(line) for line in _records(extract_module.Path(extract_config().out))
               .splitlines()]
    assert manifest.counts["crops"] == len(records)
    assert {r["face_choice"] for r in records} == {policy}


def test_keep_splits_extracts_only_those_videos(extract_config):
    manifest = run(extract_config(keep_splits=["test"], methods=["Deepfakes"], frames=2))
    records = [json.loads(line) for line in _records(extract_module.Path(extract_config().out)).splitlines()]
    assert {r["split"] for r in records} == {"test"} and manifest.counts["crops"] == len(records) > 0
    with pytest.raises(LrerrError, match=r"--keep-splits unassigned: no such videos under .* \(it has "
                                         r"\d+ test, \d+ train, \d+ val\)"):
        run(extract_config(keep_splits=["unassigned"], overwrite=True))
    with pytest.raises(LrerrError, match="--keep-splits: unknown split tst"):
        run(extract_config(keep_splits=["tst"]))


def test_an_output_made_before_an_option_existed_still_resumes_and_merges(extract_config):
    # Options added later (keep_splits here) are absent from older work/config.json files.
    cfg = extract_config(methods=["Deepfakes"], frames=2, part="1/2")
    run(cfg)
    config_path = extract_module.Path(cfg.out) / "work" / "config.json"
    config = json.loads(config_path.read_text())
    del config["keep_splits"]
    config_path.write_text(json.dumps(config))
    assert run(extract_config(methods=["Deepfakes"], frames=2, part="2/2")).complete
    assert finalize(cfg.out).complete
