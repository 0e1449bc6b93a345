"""RECCE through the real trainer and `score`: its three logged losses, exact resume, and its
figure. The network and loss blocks themselves are tested in test_blocks.py."""

import csv

import cv2
import pytest
import torch
from test_shard import shared_png_shards
from test_train_det import config, read_log, shared_detector
from test_train_mae import stop_before_epoch
from typer.testing import CliRunner

import lrerr_tools.detector.train as train_module
from lrerr_tools.cli import app
from lrerr_tools.detector.checkpoint import load_detector
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import read_manifest
from lrerr_tools.training import load_checkpoint
from lrerr_tools.verify import verify

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(ffpp_root, tmp_path_factory):
    return shared_png_shards(ffpp_root, tmp_path_factory)


def test_recce_trains_with_its_recipe_and_logs_each_loss(ffpp_root, tmp_path_factory):
    out = shared_detector("recce", ffpp_root, tmp_path_factory)
    manifest = read_manifest(out)
    assert manifest.complete and manifest.extra["parents"] == {}
    config = manifest.config
    assert config["options"] == {"width": 0.0625, "rec_weight": 0.1, "metric_weight": 0.1, "flood": 0.04}
    # The recipe resolved into the config: RECCE's, but for the test's own --lr.
    assert [config[k] for k in ("optimizer", "lr", "weight_decay", "schedule", "step_size", "gamma")] == [
        "adam", 1e-3, 1e-5, "step", 22_500, 0.5]
    assert manifest.extra["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    row = read_log(out)[0]
    cls, rec, metric = (float(row[f"train_{t}"]) for t in ("cls", "rec", "metric"))
    assert float(row["train_loss"]) == pytest.approx(cls + 0.1 * rec + 0.1 * metric, rel=1e-5)
    assert cls >= 0.04 and rec > 0 and metric > 0
    assert verify(out) == []


def test_resume_after_a_kill_equals_an_uninterrupted_run(shards, tmp_path, monkeypatch):
    settings = dict(method="recce", epochs=2, iters_per_epoch=1)
    train_module.run(config(shards, tmp_path / "straight", **settings))
    stop_before_epoch(monkeypatch, 2, train_module._Trainer)
    with pytest.raises(KeyboardInterrupt):
        train_module.run(config(shards, tmp_path / "resumed", **settings))
    monkeypatch.undo()
    train_module.run(config(shards, tmp_path / "resumed", resume=True, **settings))
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in ("straight", "resumed"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    columns = [c for c in read_log(tmp_path / "straight")[0] if c not in ("seconds", "images_per_s")]
    rows = [[{k: r[k] for k in columns} for r in read_log(tmp_path / run)] for run in ("straight", "resumed")]
    assert rows[0] == rows[1] and len(rows[0]) == 2


def test_score_writes_the_reconstruction_figure(ffpp_root, tmp_path_factory, shards, tmp_path):
    detector = shared_detector("recce", ffpp_root, tmp_path_factory)
    out = tmp_path / "score"
    result = CliRunner().invoke(app, ["score", str(shards), "--detector", str(detector), "--out", str(out),
                                      "--batch-size", "1", "--device", "cpu", "--workers", "0",
                                      "--overlays", "2"])
    assert result.exit_code == 0, result.output
    assert "score complete" in result.output and "(recce on ffpp test)" in result.output
    with open(out / "frames.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 22  # batches of one face score
    # 2 reals + 2 fakes, face | reconstruction | error | attention, 224 px each, 4 px apart
    figure = cv2.imread(str(out / "attention.png"))
    assert figure.shape == (22 + 4 * 228 - 4, 4 * 228 - 4, 3)
    assert figure[22:, 228:452].std() > 5  # the reconstruction column is a picture, not a blank
    assert read_manifest(out).extra["attention"] == "attention.png"
    assert verify(out) == []


def test_the_batch_size_does_not_change_a_score(ffpp_root, tmp_path_factory, shards):
    loaded = load_detector(shared_detector("recce", ffpp_root, tmp_path_factory), torch.device("cpu"))
    from lrerr_tools.detector.predict import predict
    from lrerr_tools.shard_dataset import ShardDataset

    dataset = ShardDataset(shards, split="test")
    probs = [[r["prob"] for r in predict(loaded.method, loaded.net, loaded.context, dataset, batch_size=size,
                                         workers=0, device=torch.device("cpu"),
                                         progress=False)[0]] for size in (1, 8)]
    assert probs[0] == pytest.approx(probs[1], abs=1e-5)


def test_recce_refuses_options_it_does_not_have(shards, tmp_path):
    with pytest.raises(LrerrError, match=r"--backbone is not an option of --method recce \(it belongs to "
                                         r"--method lrerr, sclkd, xception\); recce takes --width"):
        train_module.run(config(shards, tmp_path / "a", method="recce", options={"backbone": "x"}))
    with pytest.raises(LrerrError, match=r"--width: must be in \(0, 1\] \(got 2.0\)"):
        train_module.run(config(shards, tmp_path / "a", method="recce", options={"width": 2}))
    # Pretrained Xception weights fit only RECCE's own width.
    weights = tmp_path / "xception.pth"
    from lrerr_tools.attention import make_backbone

    torch.save(make_backbone("legacy_xception", pretrained=False).model.state_dict(), weights)
    with pytest.raises(LrerrError, match="width 1 only"):
        train_module.run(config(shards, tmp_path / "a", method="recce", weights=str(weights)))
    assert not (tmp_path / "a").exists()
