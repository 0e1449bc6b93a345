import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_shard import shared_extract_dir, shared_landmarks_dir, shared_png_shards
from typer.testing import CliRunner

import lrerr_tools.mae.train as train_module
from lrerr_tools.cli import app
from lrerr_tools.errors import LrerrError
from lrerr_tools.mae.checkpoint import load_mae
from lrerr_tools.mae.model import MaskedAutoencoder
from lrerr_tools.manifest import content_sha256, read_manifest
from lrerr_tools.shard import ShardConfig
from lrerr_tools.shard import run as run_shard
from lrerr_tools.training import load_checkpoint
from lrerr_tools.verify import verify

# 8 real train faces, 8 real + 14 fake val faces: batches of 4 give 2 steps an epoch. AdamW
# with warm-up, so that a resume must restore the scheduler too.
TINY = dict(preset="tiny", epochs=2, batch_size=4, workers=0, device="cpu", lr=1e-3, optimizer="adamw",
            warmup_epochs=1)
LOSS_COLUMNS = ["epoch", "step", "train_loss", "val_real_loss", "val_fake_loss", "val_real_key_error",
                "val_fake_key_error", "key_auc", "lr"]


@pytest.fixture(scope="module")
def shards(ffpp_root, tmp_path_factory):
    return shared_png_shards(ffpp_root, tmp_path_factory)


def config(shards, out, **overrides):
    return train_module.MaeTrainConfig(shard_dir=str(shards), out=str(out), **{**TINY, **overrides})


def test_a_key_region_the_mask_cannot_cover_is_refused_before_any_work(shards, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(LrerrError, match=r"the key region T holds \d+ of the 196 patches .* masks only 39 "
                                         r"patches, so \d+ of T would stay visible — raise --mask-ratio to "):
        train_module.run(config(shards, out, mask_ratio=0.2))
    assert not out.exists()


@pytest.fixture(scope="module")
def finished(shards, tmp_path_factory):
    """A complete 2-epoch run; tests only read it (or copy it)."""
    out = tmp_path_factory.mktemp("mae") / "run"
    train_module.run(config(shards, out))
    return out


def stop_before_epoch(monkeypatch, epoch, trainer=train_module._Trainer):
    """Make runs of `trainer` die (as if killed) when they start epoch `epoch` (1-based)."""
    real = trainer.train_epoch

    def train_epoch(self):
        if self.epoch + 1 == epoch:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(trainer, "train_epoch", train_epoch)


@pytest.fixture(scope="module")
def unfinished(shards, tmp_path_factory):
    """A run killed after its first of 2 epochs; tests only read it."""
    out = tmp_path_factory.mktemp("mae-unfinished") / "run"
    with pytest.MonkeyPatch.context() as mp:
        stop_before_epoch(mp, 2)
        with pytest.raises(KeyboardInterrupt):
            train_module.run(config(shards, out))
    return out


def read_log(path):
    with open(path / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_writes_manifest_log_checkpoints_and_grids(finished, shards):
    manifest = read_manifest(finished)
    assert manifest.stage == "train-mae" and manifest.complete
    assert manifest.parent["sha256"] == content_sha256(read_manifest(shards))
    assert manifest.counts == {"epochs": 2, "steps": 4, "train_images": 8, "val_real": 8, "val_fake": 14}
    assert manifest.extra["masking"] == {"mask_ratio": 0.75, "key_mask_ratio": 0.9, "key_region": "dataset"}
    assert manifest.extra["key_patches"] == read_manifest(shards).extra["key_region"]["patches"]
    records = [json.loads(line) for line in (finished / "records.jsonl").read_text().splitlines()]
    log = read_log(finished)
    assert [r["epoch"] for r in records] == [1, 2] and [r["epoch"] for r in log] == ["1", "2"]
    for record, row in zip(records, log):
        assert record["val_real_loss"] > 0 and record["val_fake_key_error"] > 0
        assert 0 <= record["key_auc"] <= 1  # both classes in val: the AUC is defined
        assert float(row["train_loss"]) == record["train_loss"]
    assert manifest.extra["best"]["metric"] == "val_real_loss"
    assert sorted(p.name for p in (finished / "grids").iterdir()) == ["epoch-001.png", "epoch-002.png"]
    last = load_checkpoint(finished / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and "optimizer" in last and last["extra"]["history"] == records
    assert verify(finished) == []


def test_load_mae_gives_a_frozen_model_and_what_to_record(finished):
    model, info = load_mae(finished)
    manifest = read_manifest(finished)
    assert info.sha256 == content_sha256(read_manifest(finished))
    child = finished.parent / "det" / "run"
    assert info.as_parent(child) == {"path": f"../../{finished.name}", "sha256": info.sha256}
    assert info.epoch == manifest.extra["best"]["epoch"]
    assert info.masking.mask_ratio == 0.75 and info.key_patches == manifest.extra["key_patches"]
    assert info.config["preset"] == "tiny" and info.model_config["embed_dim"] == 96
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    best = load_checkpoint(finished / "checkpoints" / "best.pt")
    assert all(torch.equal(v, best["model"][k]) for k, v in model.state_dict().items())
    images, mask = torch.zeros(1, 3, 224, 224), torch.zeros(1, 196, dtype=torch.bool)
    mask[0, :147] = True
    assert model.reconstruct(images, mask).shape == (1, 3, 224, 224)


def test_load_mae_refuses_an_unfinished_or_missing_run(unfinished, tmp_path):
    with pytest.raises(LrerrError, match="has not completed"):
        load_mae(unfinished)
    with pytest.raises(LrerrError, match="not found — run `lrerr-tools train-mae` first"):
        load_mae(tmp_path / "nothing")


def test_resume_after_a_kill_equals_an_uninterrupted_run(finished, unfinished, shards, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(unfinished, resumed)
    assert load_checkpoint(resumed / "checkpoints" / "last.pt")["epoch"] == 1
    train_module.run(config(shards, resumed, resume=True))
    a = load_checkpoint(finished / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["scheduler"] == b["scheduler"] and a["step"] == b["step"] == 4
    rows = [[{k: r[k] for k in LOSS_COLUMNS} for r in read_log(run)] for run in (finished, resumed)]
    assert rows[0] == rows[1] and len(rows[0]) == 2


@pytest.mark.parametrize("epoch", [1, 2])  # after the last epoch, only the resume can write the manifest
def test_a_kill_just_after_the_checkpoint_lands_resumes_to_the_same_run(finished, shards, tmp_path,
                                                                       monkeypatch, epoch):
    out = tmp_path / "run"
    real_save = train_module._Trainer._save

    def save_then_die(self):
        real_save(self)
        if self.epoch == epoch:
            raise KeyboardInterrupt  # last.pt holds the epoch; its manifest was not written

    monkeypatch.setattr(train_module._Trainer, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_module.run(config(shards, out))
    monkeypatch.undo()
    for half_written in ("checkpoints/.last.pt.k1ll3d00.tmp", "grids/.epoch-002.png.k1ll3d00.tmp"):
        (out / half_written).write_bytes(b"what a SIGKILL mid-write leaves")
    train_module.run(config(shards, out, resume=True))
    files = [sorted(p.relative_to(run) for p in run.rglob("*")) for run in (finished, out)]
    assert files[0] == files[1]  # the temp files are gone
    grids = [sorted((run / "grids").iterdir()) for run in (finished, out)]
    assert [p.name for p in grids[1]] == ["epoch-001.png", "epoch-002.png"]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(*grids))
    rows = [[{k: r[k] for k in LOSS_COLUMNS} for r in read_log(run)] for run in (finished, out)]
    assert rows[0] == rows[1]
    manifests = [read_manifest(run) for run in (finished, out)]
    assert manifests[0].counts == manifests[1].counts and manifests[1].complete
    assert manifests[0].extra["best"] == manifests[1].extra["best"]
    histories = [[{k: r[k] for k in LOSS_COLUMNS} for r in map(json.loads, (run / "records.jsonl").open())]
                 for run in (finished, out)]
    assert histories[0] == histories[1] and len(histories[0]) == 2


def test_a_finished_run_is_kept_and_another_config_refused(finished, shards, tmp_path):
    before = (finished / "manifest.json").read_bytes()
    manifest = train_module.run(config(shards, finished, workers=2))  # a run option: same run
    assert manifest.complete and (finished / "manifest.json").read_bytes() == before
    with pytest.raises(LrerrError, match=r"holds a train-mae run made with another config \(differs in lr\) "
                                         "— pass --overwrite"):
        train_module.run(config(shards, finished, lr=5e-4))
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    manifest = train_module.run(config(shards, copy, lr=5e-4, epochs=1, warmup_epochs=0, overwrite=True))
    assert manifest.config["lr"] == 5e-4 and manifest.counts["epochs"] == 1
    assert [p.name for p in (copy / "grids").iterdir()] == ["epoch-001.png"]  # the old run is gone


def test_resume_refuses_another_config_or_other_shards(unfinished, shards, landmarks_dir, tmp_path):
    with pytest.raises(LrerrError, match=r"cannot --resume: .*last.pt was trained with another config "
                                         r"\(differs in mask_ratio\)"):
        train_module.run(config(shards, unfinished, mask_ratio=0.5, resume=True))
    other = tmp_path / "other-shards"
    run_shard(ShardConfig(landmarks=str(landmarks_dir), out=str(other), shard_size=50))
    with pytest.raises(LrerrError, match=r"cannot --resume: .* trained with other input"):
        train_module.run(config(other, unfinished, resume=True))
    with pytest.raises(LrerrError, match=r"holds an unfinished run \(1 epochs done\) — pass --resume"):
        train_module.run(config(shards, unfinished))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(LrerrError, match="not empty and holds no train-mae checkpoint"):
        train_module.run(config(shards, foreign))


def test_overwrite_never_clears_another_stage(shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)  # should the guard fail, the shared shards survive
    before = sorted(p.name for p in copy.iterdir())
    with pytest.raises(LrerrError, match="holds a 'shard' stage, not a train-mae run"):
        train_module.run(config(copy, copy, overwrite=True))
    assert sorted(p.name for p in copy.iterdir()) == before


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(shards, tmp_path, monkeypatch):
    real_forward = MaskedAutoencoder.forward
    calls = {"train": 0}

    def forward(self, images, mask):
        pred, loss = real_forward(self, images, mask)
        if self.training:
            calls["train"] += 1
            if calls["train"] > 2:  # epoch 1 (2 steps) is fine, epoch 2 diverges
                loss = loss * float("nan")
        return pred, loss

    monkeypatch.setattr(MaskedAutoencoder, "forward", forward)
    out = tmp_path / "run"
    with pytest.raises(LrerrError, match=r"loss became nan at epoch 2, step 3: .*last.pt, is kept"):
        train_module.run(config(shards, out))
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert load_checkpoint(out / "checkpoints" / "best.pt")["epoch"] == 1
    weights = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert not read_manifest(out).complete and len(read_log(out)) == 1


@pytest.fixture
def landmarks_dir(ffpp_root, tmp_path_factory):
    return shared_landmarks_dir(ffpp_root, tmp_path_factory)


def shards_without(ffpp_root, tmp_path_factory, tmp_path, drop):
    from test_shard import make_landmarks_dir

    extract = shared_extract_dir(ffpp_root, tmp_path_factory)
    landmarks = make_landmarks_dir(extract, tmp_path / "lm", lambda r: "no_landmarks" if drop(r) else "ok")
    run_shard(ShardConfig(landmarks=str(landmarks), out=str(tmp_path / "shards"), shard_size=100))
    return tmp_path / "shards"


def test_no_real_train_faces_is_a_clear_error(ffpp_root, tmp_path_factory, tmp_path):
    shards = shards_without(ffpp_root, tmp_path_factory, tmp_path,
                            lambda r: r["split"] == "train" and r["label"] == 0)
    with pytest.raises(LrerrError, match="no real faces in the train split — train-mae learns from real"):
        train_module.run(config(shards, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_without_val_faces_best_follows_the_train_loss(ffpp_root, tmp_path_factory, tmp_path, caplog):
    shards = shards_without(ffpp_root, tmp_path_factory, tmp_path, lambda r: r["split"] == "val")
    with caplog.at_level("INFO"):
        manifest = train_module.run(config(shards, tmp_path / "run", epochs=1, warmup_epochs=0))
    assert "no val faces" in caplog.text
    assert manifest.extra["best"]["metric"] == "train_loss"
    assert manifest.extra["last"]["key_auc"] is None and manifest.extra["last"]["val_real_loss"] is None
    assert read_log(tmp_path / "run")[0]["key_auc"] == ""
    assert (tmp_path / "run" / "grids" / "epoch-001.png").is_file()  # grids of train reals instead


def test_eval_every_validates_and_draws_every_k_epochs_and_the_last(shards, tmp_path):
    out = tmp_path / "run"
    train_module.run(config(shards, out, epochs=5, eval_every=2, max_steps=1))
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [bool(r["val_real_loss"]) for r in rows] == [False, True, False, True, True]
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["epoch-002.png", "epoch-004.png",
                                                                  "epoch-005.png"]
    best = read_manifest(out).extra["best"]
    assert best["metric"] == "val_real_loss" and best["epoch"] in (2, 4, 5)
    with pytest.raises(LrerrError, match="--eval-every must be at least 1"):
        train_module.run(config(shards, tmp_path / "bad", eval_every=0))


def test_the_mean_colour_baseline_is_what_painting_the_visible_mean_scores():
    from lrerr_tools.mae.evaluate import masked_errors

    model = MaskedAutoencoder("tiny")
    images = torch.zeros(1, 3, 224, 224)
    images[:, 0] = 1.0  # red everywhere ...
    images[:, 0, :16, :16] = 3.0  # ... but patch 0, which is masked
    mask = torch.zeros(1, 196, dtype=torch.bool)
    mask[0, 0] = True
    perfect = model.patchify(images)  # a prediction that is the image itself
    recon, colour = masked_errors(model, images, perfect, mask)
    assert recon.item() == 0.0
    assert colour.item() == pytest.approx((3.0 - 1.0) ** 2 / 3)  # red off by 2; green, blue right


def test_cli(shards, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train-mae", str(shards), "--out", str(out), "--preset", "tiny", "--epochs", "1",
            "--batch-size", "4", "--max-steps", "1", "--workers", "0", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "train-mae complete" in result.output and "key-region error: real" in result.output
    assert "val real faces, masked patches: MSE" in result.output
    assert "painted each face's mean colour" in result.output
    assert "grids/epoch-001.png" in result.output
    assert read_manifest(out).counts["steps"] == 1
    result = runner.invoke(app, [*args, "--preset", "huge"])
    assert result.exit_code == 2
    assert "error: --preset must be one of base, small, tiny (got 'huge')" in result.output


def test_ddp_with_two_gloo_processes(shards, tmp_path):
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "lrerr_tools", "train-mae",
         str(shards), "--out", str(out), "--preset", "tiny", "--epochs", "1", "--batch-size", "4",
         "--max-steps", "2", "--workers", "0", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("train-mae complete") == 1  # only rank 0 reports
    manifest = read_manifest(out)
    assert manifest.complete and manifest.extra["world_size"] == 2
    assert manifest.counts["steps"] == 2  # 8 faces, 2 per process per step: 2 steps cover the epoch
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1


def test_colour_jitter_changes_each_faces_colours_alike_per_seed_and_nothing_at_zero():
    from lrerr_tools.mae.augment import colour_jitter
    from lrerr_tools.training import seeded_generator

    faces = torch.full((4, 3, 8, 8), 128, dtype=torch.uint8)
    assert colour_jitter(faces, 0.0, seeded_generator(0)) is faces
    a = colour_jitter(faces, 0.3, seeded_generator(0))
    assert torch.equal(a, colour_jitter(faces, 0.3, seeded_generator(0)))  # a resume draws the same
    assert a.dtype == torch.uint8 and not torch.equal(a, faces)
    per_face = a.float().mean(dim=(2, 3))  # (4, 3): every face its own colours, flat as before
    assert len({tuple(row.tolist()) for row in per_face}) == 4
    assert all(torch.equal(a[i, c], a[i, c, 0, 0].expand(8, 8)) for i in range(4) for c in range(3))


def test_a_jittered_run_resumes_exactly(shards, tmp_path, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    settings = dict(epochs=2, colour_jitter=0.3, max_steps=1)
    train_module.run(config(shards, straight, **settings))
    with monkeypatch.context() as patch:
        stop_before_epoch(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            train_module.run(config(shards, resumed, **settings))
    train_module.run(config(shards, resumed, resume=True, **settings))
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt")["model"] for run in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_flip_mirrors_each_face_with_its_key_region_and_nothing_at_zero():
    from lrerr_tools.mae.augment import horizontal_flip
    from lrerr_tools.training import seeded_generator

    faces = torch.arange(2 * 3 * 28 * 28, dtype=torch.float32).reshape(2, 3, 28, 28)
    key = torch.zeros(2, 4, dtype=torch.bool)  # a 2x2 patch grid of 14 px patches
    key[:, 0] = True  # the top-left patch
    generator = seeded_generator(0)
    state = generator.get_state()
    same, same_key = horizontal_flip(faces, key, 0.0, generator)
    assert same is faces and same_key is key
    assert torch.equal(generator.get_state(), state)  # runs without flips keep their stream
    mirrored, mirrored_key = horizontal_flip(faces, key, 1.0, generator)
    assert torch.equal(mirrored, faces.flip(-1))
    assert mirrored_key[:, 1].all() and mirrored_key.sum() == 2  # now the top-right patch
    some, some_key = horizontal_flip(faces.repeat(32, 1, 1, 1), key.repeat(32, 1), 0.5, seeded_generator(1))
    flipped = some_key[:, 1]
    assert 0 < flipped.sum() < 64  # some faces, not all
    assert torch.equal(some[flipped], faces.repeat(32, 1, 1, 1)[flipped].flip(-1))
    assert torch.equal(some[~flipped], faces.repeat(32, 1, 1, 1)[~flipped])


def test_a_run_from_before_an_option_resumes_while_the_option_keeps_its_default(unfinished, shards,
                                                                                tmp_path):
    old = tmp_path / "old"
    shutil.copytree(unfinished, old)
    checkpoint = load_checkpoint(old / "checkpoints" / "last.pt")
    del checkpoint["config"]["flip"]  # as written before --flip existed
    torch.save(checkpoint, old / "checkpoints" / "last.pt")
    with pytest.raises(LrerrError, match=r"cannot --resume: .* another config \(differs in flip\)"):
        train_module.run(config(shards, old, flip=0.5, resume=True))
    assert train_module.run(config(shards, old, resume=True)).complete
