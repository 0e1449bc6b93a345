"""A training run killed at random moments (SIGKILL, or SIGINT as Ctrl-C sends it) and resumed
after each kill ends as the uninterrupted run does: the same weights, log, grids and manifest.

The CLI runs as a subprocess, so a kill lands wherever the process happens to be: mid-step,
or between (or in) the writes of an epoch's log row, grid, checkpoints and manifest."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from test_shard import shared_png_shards
from typer.testing import CliRunner

from lrerr_tools.cli import app
from lrerr_tools.manifest import read_manifest
from lrerr_tools.training import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPOCHS = 4
KILLS = (signal.SIGINT, signal.SIGKILL, signal.SIGINT)
TIMING = ("seconds", "images_per_s")  # how fast an epoch ran, not what it computed
POLL = 0.005


@pytest.fixture(scope="module")
def shards(ffpp_root, tmp_path_factory):
    return shared_png_shards(ffpp_root, tmp_path_factory)


def logged_epochs(run_dir):
    """How many epoch rows log.csv holds now (the header and a half-written row not counted)."""
    try:
        return max(0, (run_dir / "log.csv").read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def committed_epochs(run_dir):
    last = run_dir / "checkpoints" / "last.pt"
    return load_checkpoint(last)["epoch"] if last.is_file() else 0


def start(args, run_dir, resume=False):
    """The CLI on `run_dir`; its stderr goes to a file, as a pipe nobody reads could fill."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(stderr_file(run_dir), "w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "lrerr_tools", *args, "--out", str(run_dir),
                                 *(["--resume"] if resume else [])],
                                stdout=subprocess.DEVNULL, stderr=stderr, env=env)


def stderr_file(run_dir):
    return run_dir.with_name(f"{run_dir.name}.stderr")


def stderr_tail(run_dir):
    return stderr_file(run_dir).read_text()[-2000:]


def wait_for_rows(process, run_dir, rows, since=0):
    """Wait until log.csv holds `rows` rows, written after `since` (time.time()): a resumed
    run finds the rows of the killed one until it rewrites the log. Fail if the process ends
    first."""
    log = run_dir / "log.csv"
    while logged_epochs(run_dir) < rows or log.stat().st_mtime < since:
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before epoch {rows} was logged: "
                        f"{stderr_tail(run_dir)}")
        time.sleep(POLL)


def manifest_mtime(run_dir):
    try:
        return (run_dir / "manifest.json").stat().st_mtime_ns
    except FileNotFoundError:
        return None


def run_straight(args, run_dir):
    """An uninterrupted run, in this process (the same CLI, one torch thread as the killed
    runs have). Returns how long its epochs take, log row to log row, and how long the
    commit of one takes, log row to manifest, as they run now."""
    rows, manifests = [], []
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(CliRunner().invoke, app, [*args, "--out", str(run_dir)])
        written, running = None, True
        while running:
            running = not result.done()  # one more look after the end: the last commit may be new
            if logged_epochs(run_dir) > len(rows):
                rows.append(time.monotonic())
            if manifest_mtime(run_dir) != written:
                written = manifest_mtime(run_dir)
                manifests.append(time.monotonic())
            time.sleep(POLL)
    assert result.result().exit_code == 0, result.result().output
    assert len(rows) == len(manifests) == EPOCHS, "the epochs went too fast to time"
    return (rows[-1] - rows[0]) / (EPOCHS - 1), max(m - r for r, m in zip(rows, manifests))


def run_with_kills(args, run_dir, seconds, seed):
    """Kill the run at seeded random moments, resuming after each, then let it finish.

    Each kill waits for the log row of the epoch after the last committed one (at most two
    before the last epoch, so the run cannot finish first), then up to the time that epoch's
    commit takes (log row, grid, best.pt, last.pt, records, manifest) or up to a whole epoch:
    it lands in the commit or in the next epoch's steps."""
    rng = random.Random(seed)
    landed = []
    for i, sig in enumerate(rng.sample(KILLS, len(KILLS))):
        started = time.time()
        process = start(args, run_dir, resume=i > 0)
        wait_for_rows(process, run_dir, min(committed_epochs(run_dir) + 1, EPOCHS - 2), since=started)
        time.sleep(rng.uniform(0, rng.choice(seconds)))
        process.send_signal(sig)
        code = process.wait(60)
        # killed mid-run, not a run that had finished (a Ctrl-C exits 130)
        assert code != 0, (sig.name, stderr_tail(run_dir))
        manifest = read_manifest(run_dir) if (run_dir / "manifest.json").is_file() else None
        assert manifest is None or not manifest.complete
        landed.append((sig.name, logged_epochs(run_dir), committed_epochs(run_dir),
                       manifest.counts["epochs"] if manifest else 0))
    process = start(args, run_dir, resume=True)
    assert process.wait(120) == 0, stderr_tail(run_dir)
    return landed


def without_timing(record):
    return {k: v for k, v in record.items() if k not in TIMING}


def comparable_manifest(run_dir):
    """The manifest but for when it was written, how fast the epochs ran, and the run options
    (--out, --resume), which a resume may change."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    config = manifest.pop("config")
    for key in ("created", "records_sha256"):
        manifest.pop(key)
    manifest["extra"]["last"] = without_timing(manifest["extra"]["last"])
    manifest["config"] = {k: v for k, v in config.items() if k not in ("out", "resume")}
    return manifest


def run_contents(run_dir):
    """What an interrupted run must have written as the uninterrupted one did."""
    with open(run_dir / "log.csv", newline="") as f:
        log = [without_timing(row) for row in csv.DictReader(f)]
    records = [without_timing(json.loads(line)) for line in (run_dir / "records.jsonl").open()]
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    grids = {p.name: p.read_bytes() for p in sorted((run_dir / "grids").glob("*"))}
    return {"files": files, "log": log, "records": records, "grids": grids,
            "manifest": comparable_manifest(run_dir)}


def assert_same_weights(a, b):
    for name in ("last.pt", "best.pt"):
        wa, wb = (load_checkpoint(run / "checkpoints" / name)["model"] for run in (a, b))
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), (name, key)


def check_kills_change_nothing(args, tmp_path, seed):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    seconds = run_straight(args, straight)
    landed = run_with_kills(args, killed, seconds, seed)
    assert run_contents(killed) == run_contents(straight), landed
    assert_same_weights(straight, killed)
    assert len(run_contents(straight)["log"]) == EPOCHS


def test_train_mae_killed_and_resumed_equals_an_uninterrupted_run(shards, tmp_path):
    # 8 real train faces in batches of 4: 2 steps an epoch; AdamW with warm-up and cosine.
    args = ["train-mae", str(shards), "--preset", "tiny", "--epochs", str(EPOCHS), "--batch-size", "4",
            "--lr", "1e-3", "--optimizer", "adamw", "--warmup-epochs", "1", "--workers", "0",
            "--device", "cpu"]
    check_kills_change_nothing(args, tmp_path, seed=12)


def test_train_det_killed_and_resumed_equals_an_uninterrupted_run(shards, tmp_path):
    args = ["train-det", str(shards), "--method", "xception", "--backbone", "test_resnet", "--no-pretrained",
            "--epochs", str(EPOCHS), "--iters-per-epoch", "2", "--batch-size", "4", "--lr", "1e-3",
            "--workers", "0", "--device", "cpu"]
    check_kills_change_nothing(args, tmp_path, seed=10)

