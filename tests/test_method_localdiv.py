"""Local-Prediction with the Local-Diversity loss: its units, each loss term on hand-made
cases, the face probability as the mean unit probability, and the method through the real
trainer and `score` (exact resume, the figure)."""

import csv
import math

import cv2
import pytest
import torch
import torch.nn.functional as F
from test_shard import shared_png_shards
from test_train_det import config, read_log, shared_detector
from test_train_mae import stop_before_epoch
from typer.testing import CliRunner

import lrerr_tools.detector.train as train_module
from lrerr_tools.blocks.local_prediction import (
    LocalPredictionNet,
    key_units,
    local_diversity_loss,
    local_prediction_loss,
    mean_probability_logit,
)
from lrerr_tools.cli import app
from lrerr_tools.detector.checkpoint import load_detector
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import read_manifest
from lrerr_tools.methods import get_method
from lrerr_tools.shard_dataset import ShardDataset
from lrerr_tools.training import Distributed, load_checkpoint
from lrerr_tools.verify import verify

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = 1 / 16
SINGLE = Distributed()


@pytest.fixture(scope="module")
def shards(ffpp_root, tmp_path_factory):
    return shared_png_shards(ffpp_root, tmp_path_factory)


# --- the network ---------------------------------------------------------------------------

@pytest.mark.parametrize(("unit_layer", "grid"), [("block3", 14), ("block2", 28)])
def test_units_at_224_px(unit_layer, grid):
    torch.manual_seed(0)
    net = LocalPredictionNet(width=TINY, unit_layer=unit_layer)
    assert not hasattr(net.encoder, "block4") and not hasattr(net.encoder, "conv3")  # cut, not hidden
    images = torch.rand(3, 3, 224, 224) * 2 - 1
    out = net({"images": images})
    assert out["logit"].shape == (3,) and out["unit_logits"].shape == (3, grid, grid)
    assert out["features"].shape == (3, 16, grid, grid) and out["features"].min() >= 0  # 256 · 1/16, ReLU
    mean_prob = torch.sigmoid(out["unit_logits"]).flatten(1).mean(1)
    assert torch.allclose(torch.sigmoid(out["logit"]), mean_prob, atol=1e-6)


def test_a_batch_of_one_trains_and_scores_as_in_a_batch():
    torch.manual_seed(0)
    method = get_method("localdiv").resolve({"width": TINY})
    net = method.build()
    batch = {"image": torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8)}
    inputs = method.inputs(net, None, {"image": batch["image"][:1]}, torch.device("cpu"), None)
    terms = method.losses(net(inputs), inputs, torch.ones(1), SINGLE)
    terms["total"].backward()  # batch norm over one face's 196 units is well defined
    assert all(math.isfinite(v.item()) for v in terms.values())
    assert net.unit_head.weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        whole = net(method.inputs(net, None, batch, torch.device("cpu"), None))["logit"]
        single = net(inputs)["logit"]
    assert torch.allclose(single, whole[:1], atol=1e-5)


def test_the_face_probability_is_the_mean_unit_probability_even_at_the_extremes():
    z = torch.tensor([[-200.0, 200.0], [50.0, 60.0], [-300.0, -300.0], [0.3, -1.2]])
    logit = mean_probability_logit(z)
    assert torch.isfinite(logit).all()
    assert logit[0].item() == pytest.approx(0, abs=1e-6)  # p = 0 and p = 1: the mean is 1/2
    assert logit[1] > 40 and logit[2].item() == pytest.approx(-300, rel=1e-6)  # sigmoid rounds to 1, 0
    assert torch.sigmoid(logit[3]).item() == pytest.approx(torch.sigmoid(z[3]).mean().item(), abs=1e-7)


# --- the losses ----------------------------------------------------------------------------

def grid_of(*vectors):
    """(1, C, 1, U) features: one face whose U units have these feature vectors."""
    return torch.tensor(vectors, dtype=torch.float32).T[None, :, None, :]


def test_the_local_diversity_loss_on_hand_made_units():
    assert local_diversity_loss(grid_of([1, 0, 0], [0, 1, 0], [0, 0, 1])).item() == 0  # orthogonal
    identical = grid_of([1, 2, 0], [1, 2, 0], [2, 4, 0])
    assert local_diversity_loss(identical).item() == pytest.approx(0.5)  # 1 − 0.5 for every pair
    apart = grid_of([1, 0], [0.4 * 5, math.sqrt(0.84) * 5])  # cosine 0.4, whatever the lengths
    assert local_diversity_loss(apart, margin=0.5) == 0  # already more diverse than the margin
    assert local_diversity_loss(apart, margin=0.3).item() == pytest.approx(0.1)
    # Two faces: the mean of their per-face losses; one unit alone has no pair.
    two = torch.cat([grid_of([1, 0], [0, 1]), grid_of([1, 0], [1, 0])])
    assert local_diversity_loss(two).item() == pytest.approx(0.25)
    assert local_diversity_loss(grid_of([1, 0])) == 0
    # Its gradient pulls alike units apart.
    alike = grid_of([1.0, 0.5], [1.0, 0.6]).requires_grad_(True)
    local_diversity_loss(alike).backward()
    before, after = (F.cosine_similarity(f[0, :, 0, 0], f[0, :, 0, 1], dim=0).item()
                     for f in (alike.detach(), alike.detach() - alike.grad))
    assert after < before


def test_every_unit_is_supervised_by_the_face_label():
    logits = torch.tensor([[[2.0, -1.0], [0.5, 3.0]], [[-2.0, 1.0], [0.0, -0.5]]])
    labels = torch.tensor([1.0, 0.0])
    expected = F.binary_cross_entropy_with_logits(logits, labels[:, None, None].expand(2, 2, 2))
    assert local_prediction_loss(logits, labels, SINGLE).item() == pytest.approx(expected.item())


def test_units_key_ignores_the_units_outside_the_key_region():
    key_mask = torch.zeros(2, 14 * 14, dtype=torch.bool)
    key_mask[0, [3 * 14 + 5, 3 * 14 + 6]] = True
    key_mask[1, 10 * 14 + 2] = True
    units = key_units(key_mask, (14, 14))
    assert torch.equal(units.flatten(1), key_mask)  # block3's units are the patches
    fine = key_units(key_mask, (28, 28))  # block2's: 2×2 units per patch
    assert fine.sum().item() == 12 and fine[0, 6:8, 10:14].all() and fine[1, 20:22, 4:6].all()

    torch.manual_seed(0)
    logits, labels = torch.randn(2, 14, 14), torch.tensor([1.0, 0.0])
    loss = local_prediction_loss(logits, labels, SINGLE, units)
    targets = labels[:, None, None].expand(2, 14, 14)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert loss.item() == pytest.approx(bce[units].mean().item())  # each of the 3 key units weighs the same
    elsewhere = torch.where(units, logits, torch.full_like(logits, 40.0))
    assert local_prediction_loss(elsewhere, labels, SINGLE, units) == loss
    assert local_prediction_loss(elsewhere, labels, SINGLE) != local_prediction_loss(logits, labels, SINGLE)


def test_options_are_checked():
    method = get_method("localdiv")
    assert method.resolve({}).settings == {"width": 1.0, "unit_layer": "block3", "units": "all",
                                           "ld_margin": 0.5, "ld_weight": 0.1}
    for given, message in (({"unit_layer": "block4"}, r"--unit-layer must be one of block2, block3"),
                           ({"units": "some"}, r"--units must be one of all, key"),
                           ({"ld_margin": 1}, r"--ld-margin: must be in \[0, 1\)"),
                           ({"ld_weight": -0.1}, r"--ld-weight: must be 0 or more"),
                           ({"width": 0}, r"--width: must be in \(0, 1\]")):
        with pytest.raises(LrerrError, match=message):
            method.resolve(given)


# --- through train-det and score -----------------------------------------------------------

def test_localdiv_trains_and_logs_both_terms(ffpp_root, tmp_path_factory):
    out = shared_detector("localdiv", ffpp_root, tmp_path_factory)
    manifest = read_manifest(out)
    assert manifest.complete and manifest.extra["parents"] == {}
    assert manifest.extra["loss_terms"] == ["lp", "ld"]
    assert manifest.config["options"] == {"width": 0.0625, "unit_layer": "block3", "units": "all",
                                          "ld_margin": 0.5, "ld_weight": 0.1}
    assert manifest.extra["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    row = read_log(out)[0]
    lp, ld = float(row["train_lp"]), float(row["train_ld"])
    assert float(row["train_loss"]) == pytest.approx(lp + 0.1 * ld, rel=1e-5)
    assert lp > 0 and 0 < ld <= 0.5  # freshly initialised units are alike
    assert verify(out) == []


def test_resume_after_a_kill_equals_an_uninterrupted_run(shards, tmp_path, monkeypatch):
    # With the key-region units on block2: the shard's key masks reach the loss.
    settings = dict(method="localdiv", epochs=2, iters_per_epoch=1,
                    options={"units": "key", "unit_layer": "block2"})
    train_module.run(config(shards, tmp_path / "straight", **settings))
    stop_before_epoch(monkeypatch, 2, train_module._Trainer)
    with pytest.raises(KeyboardInterrupt):
        train_module.run(config(shards, tmp_path / "resumed", **settings))
    monkeypatch.undo()
    train_module.run(config(shards, tmp_path / "resumed", resume=True, **settings))
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in ("straight", "resumed"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    columns = [c for c in read_log(tmp_path / "straight")[0] if c not in ("seconds", "images_per_s")]
    rows = [[{k: r[k] for k in columns} for r in read_log(tmp_path / run)] for run in ("straight", "resumed")]
    assert rows[0] == rows[1] and len(rows[0]) == 2


def test_score_gives_each_face_its_mean_unit_probability_and_draws_the_units(ffpp_root, tmp_path_factory,
                                                                             shards, tmp_path):
    detector = shared_detector("localdiv", ffpp_root, tmp_path_factory)
    out = tmp_path / "score"
    result = CliRunner().invoke(app, ["score", str(shards), "--detector", str(detector), "--out", str(out),
                                      "--batch-size", "4", "--device", "cpu", "--workers", "0",
                                      "--overlays", "2"])
    assert result.exit_code == 0, result.output
    assert "(localdiv on ffpp test)" in result.output
    with open(out / "frames.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    loaded = load_detector(detector, torch.device("cpu"))
    faces = ShardDataset(shards, split="test")
    batch = {"image": torch.stack([faces[i]["image"] for i in range(3)])}
    with torch.no_grad():
        inputs = loaded.method.inputs(loaded.net, None, batch, torch.device("cpu"), None)
        units = loaded.net(inputs)["unit_logits"]
    expected = torch.sigmoid(units).flatten(1).mean(1).tolist()
    assert [float(r["prob"]) for r in rows[:3]] == pytest.approx(expected, abs=1e-6)
    # 2 reals + 2 fakes: face | unit probabilities, 224 px each, 4 px apart
    figure = cv2.imread(str(out / "attention.png"))
    assert figure.shape == (22 + 4 * 228 - 4, 2 * 228 - 4, 3)
    assert read_manifest(out).extra["attention"] == "attention.png"
    assert verify(out) == []
