"""train-moco: the aug-plus views, split batch norm, the queue and the shuffled keys, and the
stage itself (labels never read, exact resume, the health AUC, refusals, DDP under gloo)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_shard import shared_png_shards
from test_train_mae import stop_before_epoch
from typer.testing import CliRunner

import lrerr_tools.moco.train as train_module
from lrerr_tools.cli import app
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import read_manifest
from lrerr_tools.moco.augment import aug_plus
from lrerr_tools.moco.model import Moco, SplitBatchNorm
from lrerr_tools.moco.train import knn_auc
from lrerr_tools.shard_dataset import ShardDataset
from lrerr_tools.training import load_checkpoint, seeded_generator
from lrerr_tools.verify import verify

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 22 train faces in batches of 8: 2 steps an epoch; a queue of 32 fills in the second epoch.
TINY = dict(width=1 / 16, queue_size=32, batch_size=8, bn_splits=2, crop_size=32, epochs=2, workers=0,
            device="cpu", lr=0.3)
MODEL = dict(width=1 / 16, dim=8, queue_size=12, momentum=0.9, bn_splits=2)


@pytest.fixture(scope="module")
def shards(ffpp_root, tmp_path_factory):
    return shared_png_shards(ffpp_root, tmp_path_factory)


def config(shards, out, **overrides):
    return train_module.MocoTrainConfig(shard_dir=str(shards), out=str(out), **{**TINY, **overrides})


@pytest.fixture(scope="module")
def finished(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("moco") / "run"
    train_module.run(config(shards, out))
    return out


def read_log(run):
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- views, batch norm, queue --------------------------------------------------------------

def test_aug_plus_views_follow_the_seeded_stream_alone():
    faces = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    first = aug_plus(faces, 32, seeded_generator(0, 1))
    assert first.shape == (4, 3, 32, 32) and first.min() >= 0 and first.max() <= 1
    assert torch.equal(aug_plus(faces, 32, seeded_generator(0, 1)), first)
    generator = seeded_generator(0, 1)
    aug_plus(faces, 32, generator)
    second = aug_plus(faces, 32, generator)  # the stream moves on: new crops and colours
    assert not torch.allclose(second, first, atol=0.05)


def test_split_batch_norm_takes_each_parts_statistics_apart():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 4) + torch.arange(6.0).view(6, 1, 1, 1)
    split = SplitBatchNorm(3, splits=2)
    plain = torch.nn.BatchNorm2d(3)
    assert split.state_dict().keys() == plain.state_dict().keys()
    out = split(x)
    for part in (0, 1):  # faces 0, 2, 4 and 1, 3, 5
        assert torch.allclose(out[part::2], F.batch_norm(x[part::2], None, None, training=True), atol=1e-5)
    parts = [x[p::2].transpose(0, 1).flatten(1) for p in (0, 1)]
    assert torch.allclose(split.running_mean, 0.1 * (parts[0].mean(1) + parts[1].mean(1)) / 2, atol=1e-6)
    plain.load_state_dict(split.state_dict())
    assert torch.equal(split.eval()(x), plain.eval()(x))  # the same layer at inference


def test_infonce_with_the_positive_first_the_queue_and_the_momentum_encoder():
    torch.manual_seed(0)
    moco = Moco(**MODEL).train()
    queue, key_weights = moco.queue.clone(), [p.clone() for p in moco.encoder_k.parameters()]
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    inputs = {"query": images, "key": images.flip(3), "shuffle": torch.tensor([2, 0, 3, 1])}
    out = moco(inputs)
    assert out["logits"].shape == (4, 1 + 12)
    q = moco.encoder_q(images)  # the query encoder has not been stepped: the same queries
    assert torch.allclose(out["logits"][:, 1:], q @ queue / 0.2, atol=1e-5)  # negatives: the queue before
    target = torch.zeros(4, dtype=torch.long)
    assert out["loss"].item() == pytest.approx(F.cross_entropy(out["logits"], target).item(), rel=1e-6)
    keys = moco.queue[:, :4].T  # enqueued in batch order, unit length
    assert torch.allclose(out["logits"][:, 0], (q * keys).sum(1) / 0.2, atol=1e-5)
    assert torch.allclose(keys.norm(dim=1), torch.ones(4)) and torch.equal(moco.queue[:, 4:], queue[:, 4:])
    assert moco.queue_fill == pytest.approx(4 / 12)
    # k ← 0.9 k + 0.1 q; the two started equal, so k did not move yet.
    pairs = zip(moco.encoder_q.parameters(), moco.encoder_k.parameters(), key_weights)
    for q_param, k_param, k_before in pairs:
        assert torch.allclose(k_param, 0.9 * k_before + 0.1 * q_param.detach(), atol=1e-6)
    for _ in range(3):
        moco(inputs)
    assert int(moco.queue_ptr) == 4 and moco.queue_fill == 1  # 16 keys: wrapped round once


def test_keys_come_back_in_batch_order_and_the_shuffle_changes_their_statistics():
    torch.manual_seed(0)
    moco = Moco(**MODEL)
    views = torch.rand(4, 3, 32, 32) * 2 - 1
    moco.encoder_k.eval()  # running statistics: the order cannot matter
    straight = moco.shuffled_keys(views, torch.arange(4))
    assert torch.allclose(moco.shuffled_keys(views, torch.tensor([3, 1, 0, 2])), straight, atol=1e-6)
    moco.encoder_k.train()  # batch statistics per part: which faces share a part is what shuffles
    parts = moco.shuffled_keys(views, torch.arange(4))
    assert not torch.allclose(moco.shuffled_keys(views, torch.tensor([0, 2, 1, 3])), parts, atol=1e-4)


def test_knn_auc_of_features_that_separate_and_of_one_class():
    labels = np.array([0, 0, 0, 1, 1, 1])
    features = torch.tensor([[1.0, 0.1], [1, 0.2], [1, 0], [0.1, 1], [0, 1], [0.2, 1]])
    assert knn_auc(features, labels, k=2) == 1.0
    assert knn_auc(features, np.zeros(6, np.int64)) is None


# --- the stage -----------------------------------------------------------------------------

def test_a_run_logs_infonce_queue_fill_and_the_health_auc(finished, shards):
    manifest = read_manifest(finished)
    assert manifest.stage == "train-moco" and manifest.complete
    assert manifest.counts == {"epochs": 2, "steps": 4, "train_images": 22, "val_real": 8, "val_fake": 14}
    assert manifest.extra["lr"] == pytest.approx(0.3 * 8 / 256)
    rows = read_log(finished)
    assert [r["queue_fill"] for r in rows] == ["0.5", "1.0"]
    assert all(float(r["train_loss"]) > 0 and 0 <= float(r["val_knn_auc"]) <= 1 for r in rows)
    assert float(rows[1]["lr"]) < float(rows[0]["lr"]) == pytest.approx(0.3 * 8 / 256)  # cosine
    state = load_checkpoint(finished / "checkpoints" / "last.pt")["model"]
    assert {k.split(".")[0] for k in state} == {"encoder_q", "encoder_k", "queue", "queue_ptr", "enqueued"}
    assert verify(finished) == []


def test_labels_are_never_read_for_training(finished, shards, tmp_path, monkeypatch):
    real_init = ShardDataset.__init__

    def shuffled_labels(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.labels = np.random.default_rng(1).permutation(self.labels)  # items take theirs from here

    monkeypatch.setattr(ShardDataset, "__init__", shuffled_labels)
    train_module.run(config(shards, tmp_path / "shuffled"))
    runs = (finished, tmp_path / "shuffled")
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt")["model"] for run in runs)
    for key in a:
        assert a[key].numpy().tobytes() == b[key].numpy().tobytes(), key
    losses = [[r["train_loss"] for r in read_log(run)] for run in runs]
    assert losses[0] == losses[1]


def test_resume_after_a_kill_equals_an_uninterrupted_run(finished, shards, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    stop_before_epoch(monkeypatch, 2, train_module._Trainer)
    with pytest.raises(KeyboardInterrupt):
        train_module.run(config(shards, out))
    monkeypatch.undo()
    with pytest.raises(LrerrError, match=r"holds an unfinished run \(1 epochs done\) — pass --resume"):
        train_module.run(config(shards, out))
    train_module.run(config(shards, out, resume=True))
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (finished, out))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    columns = [c for c in read_log(finished)[0] if c not in ("seconds", "images_per_s")]
    rows = [[{k: r[k] for k in columns} for r in read_log(run)] for run in (finished, out)]
    assert rows[0] == rows[1] and len(rows[0]) == 2


def test_bad_settings_are_refused_before_training_with_numbers_that_work(shards, tmp_path):
    cases = {"queue_size": (36, r"--queue-size 36 does not divide by the global --batch-size 8, so the keys "
                                r"would not tile the queue — use 32 or 40"),
             "bn_splits": (3, r"--bn-splits 3 must divide the --batch-size 8"),
             "batch_size": (32, r"the train split holds 22 faces, fewer than one --batch-size of 32 — use "
                                r"--batch-size 22 or less")}
    for name, (value, message) in cases.items():
        with pytest.raises(LrerrError, match=message):
            train_module.run(config(shards, tmp_path / "run", **{name: value}))
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(app, ["train-moco", str(shards), "--out", str(tmp_path / "run"),
                                      "--queue-size", "100", "--batch-size", "8", "--device", "cpu"])
    assert result.exit_code == 2 and "use 96 or 104" in result.output, result.output


def test_ddp_with_two_gloo_processes_shares_one_queue(shards, tmp_path):
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "lrerr_tools", "train-moco",
         str(shards), "--out", str(out), "--width", "0.0625", "--queue-size", "16", "--batch-size", "8",
         "--crop-size", "32", "--epochs", "1", "--workers", "0", "--device", "cpu"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("train-moco complete") == 1  # only rank 0 reports
    manifest = read_manifest(out)
    assert manifest.complete and manifest.extra["world_size"] == 2 and manifest.counts["steps"] == 2
    model = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    # Both ranks enqueued the gathered global batch of 8 at each of the 2 steps.
    assert int(model["enqueued"]) == 16 and int(model["queue_ptr"]) == 0
    assert torch.allclose(model["queue"].norm(dim=0), torch.ones(16), atol=1e-5)
    assert read_log(out)[0]["queue_fill"] == "1.0"
