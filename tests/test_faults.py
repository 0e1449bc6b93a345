"""Hostile and careless input from issue 12's review: each case is one `error:` line (exit 2)
or a record, with nothing written or lost. Small inputs only, so CI runs every case."""

import json

import pytest
from test_extract_bad_input import assert_one_error_line, clip, folder_config, invoke, write_video
from test_shard import shared_landmarks_dir

from lrerr_tools.errors import LrerrError
from lrerr_tools.extract import run


@pytest.fixture
def one_video_root(tmp_path):
    root = tmp_path / "root"
    write_video(root / "real" / "good.mp4", clip(6, seed=1))
    return root


@pytest.mark.parametrize("option, value, message", [
    ("--batch-size", "-1", "--batch-size must be 0 (the device's default) or more (got -1)"),
    ("--det-max-side", "0", "--det-max-side must be at least 1 pixel (got 0)"),
    ("--det-max-side", "-1", "--det-max-side must be at least 1 pixel (got -1)"),
    ("--crop-size", "0", "--crop-size must be a multiple of 16 px, at least 32 (got 0)"),
    ("--crop-size", "100", "--crop-size must be a multiple of 16 px, at least 32 (got 100)"),
    ("--crop-size", "16", "--crop-size must be a multiple of 16 px, at least 32 (got 16)"),
    ("--threshold", "0", "--threshold must be between 0 and 1, exclusive (got 0.0)"),
    ("--threshold", "1.5", "--threshold must be between 0 and 1, exclusive (got 1.5)"),
    ("--jpeg-quality", "0", "--jpeg-quality must be from 1 to 100 (got 0)"),
    ("--jpeg-quality", "101", "--jpeg-quality must be from 1 to 100 (got 101)"),
    ("--jobs", "-1", "--jobs must be 0 (one per core) or more (got -1)"),
])
def test_extract_options_that_would_break_deep_inside_are_refused_up_front(one_video_root, tmp_path, option,
                                                                           value, message):
    out = tmp_path / "extract"
    result = invoke("extract", one_video_root, "--dataset", "folder", "--out", out, option, value)
    assert_one_error_line(result, message)
    assert not out.exists()


def test_usable_crop_sizes_still_run(one_video_root, tmp_path):
    manifest = run(folder_config(one_video_root, tmp_path / "extract", crop_size=112, frames=2))
    assert manifest.complete and manifest.counts["crops"] == 2


def test_a_video_shorter_than_frames_is_listed_as_short(one_video_root, tmp_path):
    # 6 frames, 10 asked: every frame is sampled, yet the video gave fewer crops than asked.
    manifest = run(folder_config(one_video_root, tmp_path / "extract", frames=10))
    assert manifest.counts["crops"] == 6
    assert manifest.extra["short_videos"] == ["real/good"] and manifest.counts["videos_short"] == 1
    assert run(folder_config(one_video_root, tmp_path / "every", frames=None, every=2)).extra[
        "short_videos"] == []


def test_report_out_naming_a_directory_is_one_line(tmp_path):
    from test_report import FFPP, score_dir

    run_dir = score_dir(tmp_path, "score", "lrerr", FFPP, "ffpp")
    (tmp_path / "reports").mkdir()
    result = invoke("report", run_dir, "--out", tmp_path / "reports")
    assert_one_error_line(result, "--out", "is a directory; name the Markdown file to write")
    assert list((tmp_path / "reports").iterdir()) == []


def test_merge_on_a_directory_that_is_not_an_extract_is_one_line(ffpp_root, tmp_path_factory):
    landmarks = shared_landmarks_dir(ffpp_root, tmp_path_factory)
    before = (landmarks / "manifest.json").read_bytes()
    result = invoke("merge", landmarks)
    assert_one_error_line(result, "is a 'landmarks' directory, not an extract output directory")
    assert (landmarks / "manifest.json").read_bytes() == before


def test_merge_on_another_stages_unfinished_work_is_one_line(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "config.json").write_text(json.dumps({"coverage": 0.9}))
    result = invoke("merge", tmp_path)
    assert_one_error_line(result, "is another stage's work directory, not an extract output directory")


def test_sample_into_an_existing_file_is_one_line(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    result = invoke("sample", target)
    assert_one_error_line(result, "exists and is not a folder")
    assert target.read_text() == "keep me"


def test_negative_jobs_are_refused_by_every_parallel_stage():
    from lrerr_tools.parallel import resolve_jobs

    with pytest.raises(LrerrError, match="--jobs must be 0"):
        resolve_jobs(-2)
    assert resolve_jobs(3) == 3 and resolve_jobs(0) >= 1


def test_a_video_name_near_name_max_extracts_and_resumes(tmp_path):
    root = tmp_path / "root"
    name = "interview-" + "x" * 236  # 250 characters with ".mp4": the work names would overflow
    write_video(root / "real" / f"{name}.mp4", clip(4, seed=2))
    out = tmp_path / "extract"
    manifest = run(folder_config(root, out, frames=2))
    assert manifest.complete and manifest.counts["crops"] == 2
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["video_id"] for r in records} == {f"real/{name}"}  # the real id, not a shortened one
    assert all((out / r["crop"]).is_file() for r in records)
    (work,) = (out / "work" / "videos" / "real").iterdir()
    assert len(work.name) <= 255 - 14 and work.name.startswith("interview-x")
    assert run(folder_config(root, out, frames=2)) == manifest  # a rerun finds it done


def test_long_work_names_stay_distinct():
    from lrerr_tools.stage_dir import work_name

    a, b = ("y" * 300 + tail for tail in ("-a", "-b"))
    assert work_name("short", ".json") == "short.json"
    assert work_name(a, ".json") != work_name(b, ".json")
    assert all(len(work_name(n, ".partial").encode()) <= 255 - 14 for n in (a, b, "é" * 200))


WORKER_SCRIPT = """
import os, sys, time
from lrerr_tools.parallel import run_parallel

def work(i):
    with open(os.path.join(sys.argv[1], f"worker-{os.getpid()}"), "w"):
        pass
    time.sleep(60)
    return i

for _ in run_parallel(work, [0, 1], jobs=2, desc="test", unit="item"):
    pass
"""


def test_workers_end_with_a_main_process_killed_by_sigkill(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    main = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, str(tmp_path)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("worker-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]
    assert len(workers) == 2
    main.send_signal(signal.SIGKILL)
    main.wait()

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper is gone
            return f.read().split()[2] != "Z"

    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)


def test_ctrl_c_in_a_parallel_extract_exits_130_and_leaves_no_worker(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "root"
    for i in range(8):
        write_video(root / "real" / f"v{i}.mp4", clip(24, seed=i))
    out = tmp_path / "out"
    # Ctrl-C signals the terminal's whole process group: the workers get SIGINT too.
    command = ["extract", root, "--dataset", "folder", "--out", out, "--jobs", "2", "--frames", "24"]
    run_ = subprocess.Popen([sys.executable, "-m", "lrerr_tools", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("work/videos/**/*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-g", str(run_.pid), "-f", "LokyProcess"], capture_output=True,
                             text=True).stdout.split()
    os.killpg(run_.pid, signal.SIGINT)
    _, stderr = run_.communicate(timeout=60)
    assert run_.returncode == 130
    assert stderr.strip().splitlines()[-1] == "interrupted — rerun the same command to resume"
    assert workers and not any(os.path.exists(f"/proc/{pid}") for pid in workers)
    assert not (out / "manifest.json").exists()
    assert invoke(*command).exit_code == 0


@pytest.mark.parametrize("damage", ["truncated", "deleted", "flipped byte"])
def test_training_refuses_a_damaged_shard_before_it_starts(ffpp_root, tmp_path_factory, tmp_path, damage):
    import shutil

    from test_shard import shared_png_shards
    from test_train_det import config
    from test_train_mae import config as mae_config

    from lrerr_tools.detector.train import run as train_det
    from lrerr_tools.mae.train import run as train_mae
    from lrerr_tools.shard_dataset import ShardDataset

    shards = tmp_path / "shards"
    shutil.copytree(shared_png_shards(ffpp_root, tmp_path_factory), shards)
    entries = json.loads((shards / "manifest.json").read_text())["extra"]["shards"]
    # A shard with reals: the MAE reads it too.
    victim = shards / next(e["file"] for e in entries if e["split"] == "train" and e["n_real"])
    data = bytearray(victim.read_bytes())
    if damage == "truncated":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "deleted":
        victim.unlink()
    else:
        data[-len(data) // 3] ^= 0xFF  # one byte, as a bad sector or a stray edit changes it
        victim.write_bytes(data)
    found = {"truncated": r"has \d+ bytes, the manifest \d+", "deleted": "is missing",
             "flipped byte": r"changed since it was written \(sha256 differs from the manifest\)"}[damage]
    refusal = rf"{victim}: {found} — check the directory with `lrerr-tools verify {shards}`"
    with pytest.raises(LrerrError, match=refusal):
        ShardDataset(shards, split="train")
    with pytest.raises(LrerrError, match=refusal):
        train_det(config(shards, tmp_path / "run", "xception"))
    with pytest.raises(LrerrError, match=refusal):
        train_mae(mae_config(shards, tmp_path / "mae"))
    assert not (tmp_path / "run").exists() and not (tmp_path / "mae").exists()
    assert len(ShardDataset(shards, split="val")) == 22  # the other splits still read


def test_video_named_entries_that_are_skipped_are_named_in_a_warning(tmp_path, caplog):
    from lrerr_tools.datasets.base import list_video_files

    root = tmp_path / "videos"
    for name in ("a.mp4", "b.m4v", "c.MPG", "d.wmv"):
        write_video(root / name, clip(2))
    for name in ("._a.mp4", "notes.txt"):
        (root / name).write_text("not a video")
    (root / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (root / "folder.mov").mkdir()
    with caplog.at_level("WARNING"):
        found = list_video_files(root)
    assert [p.name for p in found] == ["a.mp4", "b.m4v", "c.MPG", "d.wmv"]
    text = caplog.text
    assert "gone.mp4: named like a video but a symlink to nothing" in text
    assert "folder.mov: named like a video but not a file" in text
    assert "skipped 1 hidden files named like videos" in text and "notes.txt" not in text


@pytest.fixture
def read_only_view(tmp_path):
    """`view(src)`: `src` mounted read-only (a bind mount; as root, chmod would not stop writes)."""
    import subprocess

    mounts = []

    def view(src):
        target = tmp_path / f"ro-{len(mounts)}"
        target.mkdir()
        if subprocess.run(["mount", "--bind", str(src), str(target)], capture_output=True).returncode:
            pytest.skip("bind mounts are not allowed here")
        mounts.append(target)
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True).returncode:
            pytest.skip("read-only remounts are not allowed here")
        return target

    yield view
    for target in reversed(mounts):
        subprocess.run(["umount", str(target)], capture_output=True)


def test_a_finished_extract_on_read_only_storage_reports_complete(ffpp_root, tmp_path_factory, tmp_path,
                                                                  read_only_view, extract_config):
    import shutil

    from test_shard import shared_extract_dir

    work = tmp_path / "work"
    shutil.copytree(shared_extract_dir(ffpp_root, tmp_path_factory), work / "extract")
    archived = read_only_view(work) / "extract"
    with pytest.raises(OSError):
        (archived / "probe").write_text("x")
    manifest = run(extract_config(out=str(archived)))
    assert manifest.complete and manifest.counts["crops"] == 72
    result = invoke("extract", ffpp_root, "--dataset", "ffpp", "--splits", ffpp_root / "splits",
                    "--frames", "4", "--out", archived)
    assert result.exit_code == 0, result.output


def test_a_read_only_output_is_one_line_naming_the_file(tmp_path, read_only_view):
    from test_report import FFPP, score_dir

    run_dir = score_dir(tmp_path, "score", "lrerr", FFPP, "ffpp")
    (tmp_path / "reports").mkdir()
    archive = read_only_view(tmp_path / "reports")
    result = invoke("report", run_dir, "--out", archive / "paper.md")
    assert_one_error_line(result, f"cannot write {archive / 'paper.md'}: Read-only file system",
                          "write somewhere writable (--out)")


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs filled to the last byte (root only, where mounts are allowed)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("tmpfs mounts are not allowed here")
    try:
        with open(disk / "filler", "wb") as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_full_disk_is_one_line_with_the_free_space_and_loses_nothing(tmp_path, full_disk):
    from test_report import FFPP, score_dir

    run_dir = score_dir(tmp_path, "score", "lrerr", FFPP, "ffpp")
    result = invoke("report", run_dir, "--out", full_disk / "paper.md")
    assert_one_error_line(result, f"cannot write {full_disk / 'paper.md'}: No space left on device",
                          "MiB free there", "free some space, then rerun")
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]  # no half-written file left
    (full_disk / "filler").unlink()
    assert invoke("report", run_dir, "--out", full_disk / "paper.md").exit_code == 0


def test_a_second_run_on_the_same_out_is_refused_while_parts_go_on(one_video_root, tmp_path):
    import fcntl
    import os

    out = tmp_path / "extract"
    out.mkdir()
    holder = os.open(out / ".lock-1of1", os.O_RDWR | os.O_CREAT)
    os.write(holder, b"pid 4242 on lab-7")
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running extract holds it
    try:
        with pytest.raises(LrerrError, match=r"--out .*extract: another extract run is working in it "
                                             r"\(pid 4242 on lab-7\) — wait for it"):
            run(folder_config(one_video_root, out, frames=2))
        assert sorted(p.name for p in out.iterdir()) == [".lock-1of1"]  # nothing written or wiped
        # The parts of one job lock apart: neither is held up, and the last one finishes the stage.
        results = [run(folder_config(one_video_root, out, frames=2, part=part)) for part in ("1/2", "2/2")]
        assert results[-1] is not None and results[-1].complete and results[-1].counts["crops"] == 2
    finally:
        os.close(holder)  # the holder ends: its lock goes with it
    manifest = run(folder_config(one_video_root, out, frames=2))
    assert manifest.complete and manifest.counts["crops"] == 2
    assert run(folder_config(one_video_root, out, frames=2, overwrite=True)).complete


def test_a_disk_that_fills_during_extract_is_one_line_and_the_rerun_finishes(one_video_root, tmp_path,
                                                                            full_disk):
    out = full_disk / "extract"
    (full_disk / "filler").unlink()
    (full_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 96 * 1024))  # room for the claim, not the crops
    result = invoke("extract", one_video_root, "--dataset", "folder", "--out", out, "--frames", "6")
    assert result.exit_code == 2 and "Traceback" not in result.output
    error = result.stderr.strip().splitlines()[-1]  # after the progress bar
    assert error.startswith(f"error: cannot write {out}/") and "No space left on device" in error
    assert "MiB free there) — free some space, then rerun the same command to resume" in error
    assert not (out / "manifest.json").exists()
    (full_disk / "filler").unlink()
    manifest = run(folder_config(one_video_root, out, frames=6))
    assert manifest.complete and manifest.counts["crops"] == 6


def test_a_disk_that_fills_during_shard_is_one_line_naming_the_shard(ffpp_root, tmp_path_factory, full_disk):
    landmarks = shared_landmarks_dir(ffpp_root, tmp_path_factory)
    (full_disk / "filler").unlink()  # 1 MiB: about one shard of ten 224 px PNG faces
    out = full_disk / "shards"
    result = invoke("shard", landmarks, "--out", out, "--shard-size", "10", "--jobs", "1")
    assert result.exit_code == 2 and "Traceback" not in result.output
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: cannot write {out}/shards/")
    assert ".h5: No space left on device (" in error
    assert not list(out.glob("shards/.*.tmp"))  # no half-written shard left behind


def test_a_split_list_edited_after_extract_is_refused_then_relabelled_without_extracting(
        extract_config, ffpp_root, tmp_path, monkeypatch):
    import shutil

    from lrerr_tools import extract as extract_module

    splits = tmp_path / "splits"
    shutil.copytree(ffpp_root / "splits", splits)
    cfg = extract_config(splits=str(splits))
    run(cfg)
    train, test = (splits / "train.json").read_text(), (splits / "test.json").read_text()
    (splits / "train.json").write_text(test)
    (splits / "test.json").write_text(train)
    with pytest.raises(LrerrError, match=r"the split lists changed since it was made — pass --overwrite to "
                                         r"relabel its records \(nothing is computed again\)"):
        run(cfg)

    def no_extracting(*args):
        raise AssertionError("a crop was extracted again")

    monkeypatch.setattr(extract_module, "_write_image", no_extracting)
    relabelled = run(extract_config(splits=str(splits), overwrite=True))
    monkeypatch.undo()
    fresh = run(extract_config(splits=str(splits), out=str(tmp_path / "fresh")))
    assert relabelled.records_sha256 == fresh.records_sha256
    assert relabelled.config == fresh.config
    records = [json.loads(line) for line in (tmp_path / "extract" / "records.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records if r["video_id"] == "youtube/000"} == {"test"}  # was train


def test_a_face_that_jumps_across_the_frame_is_counted_per_video(tmp_path):
    import numpy as np

    frames = clip(4, seed=3)
    height, width = frames.shape[1:3]
    # The face on the left for two frames, then on the right: the chosen box jumps once.
    wide = np.zeros((4, height, 2 * width, 3), np.uint8)
    wide[:2, :, :width], wide[2:, :, width:] = frames[:2], frames[2:]
    write_video(tmp_path / "root" / "real" / "jump.mp4", wide)
    write_video(tmp_path / "root" / "real" / "still.mp4", clip(4, seed=4))
    manifest = run(folder_config(tmp_path / "root", tmp_path / "out", frames=4))
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    assert [r["face_jump"] for r in records if r["video_id"] == "real/jump"] == [False, False, True, False]
    assert {r["face_choice"] for r in records} == {"track"}  # the default
    assert manifest.counts["face_jumps"] == 1 and manifest.extra["face_jumps"] == {"real/jump": 1}
