"""RLGC and CRL, RECCE's two descendants: their networks at 224 px, what each loss term sees,
and both methods through the real trainer and `score` (exact resume, the figure, the start
they refuse). Their DDP exactness is checked with RECCE's in test_blocks.py."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from test_shard import shared_png_shards
from test_train_det import config, read_log, shared_detector
from test_train_mae import stop_before_epoch
from typer.testing import CliRunner

import lrerr_tools.detector.train as train_module
from lrerr_tools.blocks.crl import CrlNet, crl_losses
from lrerr_tools.blocks.losses import centre_compactness, multi_view_l1, pair_compactness
from lrerr_tools.blocks.rlgc import efficientnet_b4_features, load_efficientnet_b4, rlgc_losses
from lrerr_tools.blocks.sobel import sobel_magnitude
from lrerr_tools.cli import app
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import read_manifest
from lrerr_tools.methods import get_method
from lrerr_tools.training import Distributed, load_checkpoint
from lrerr_tools.verify import verify

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = 1 / 16
SINGLE = Distributed()
LABELS = torch.tensor([0, 1, 0, 1])


@pytest.fixture(scope="module")
def shards(ffpp_root, tmp_path_factory):
    return shared_png_shards(ffpp_root, tmp_path_factory)


def faces(n: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def net_inputs(method: str, images: torch.Tensor, **options):
    """A tiny network of `method` and its inputs for the uint8 `images`, as the trainer makes them."""
    resolved = get_method(method).resolve({"width": TINY, **options})
    net = resolved.build()
    return resolved, net, resolved.inputs(net, None, {"image": images}, torch.device("cpu"), None)


# --- the gradient target ---------------------------------------------------------------------

def test_the_gradient_target_is_opencvs_sobel_magnitude_and_0_on_a_flat_face():
    image = faces(1, 40)[0].permute(1, 2, 0).numpy()
    grey = cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2GRAY)
    sobel_x, sobel_y = (cv2.Sobel(grey, cv2.CV_32F, dx, dy, ksize=3) for dx, dy in ((1, 0), (0, 1)))
    expected = np.sqrt(sobel_x ** 2 + sobel_y ** 2) / (4 * math.sqrt(2))
    ours = sobel_magnitude(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)[0, 0].numpy()
    assert np.abs(ours - expected).max() < 1e-5 and ours.min() >= 0 and ours.max() <= 1

    flat = torch.full((2, 3, 64, 64), 117, dtype=torch.uint8)
    _, _, inputs = net_inputs("rlgc", flat)
    assert inputs["gradient"].shape == (2, 1, 64, 64) and inputs["gradient"].abs().max() < 1e-6


# --- the networks ----------------------------------------------------------------------------

def test_rlgc_outputs_at_224_px_and_a_batch_of_one():
    torch.manual_seed(0)
    _, net, inputs = net_inputs("rlgc", faces(3), attention="bidir")
    out = net(inputs)
    assert out["logit"].shape == (3,)
    assert out["recon"].shape == (3, 3, 224, 224) and out["gradient"].shape == (3, 1, 224, 224)
    assert out["gradient"].min() >= 0
    for name in ("attention", "gradient_attention"):  # at stride 32
        assert out[name].shape == (3, 1, 7, 7) and out[name].min() >= 0 and out[name].max() <= 1
    # x̂ and ĝ reach the logit only through the attention masks: detached, they would not train.
    out["logit"].sum().backward()
    assert net.decoder.out[1].weight.grad.abs().sum() > 0
    assert net.gradient_branch.predict[0].weight.grad.abs().sum() > 0

    net.eval()
    with torch.no_grad():
        single = net({k: v[:1] for k, v in inputs.items()})
        batch = net(inputs)
    assert single["logit"].shape == (1,)
    assert torch.allclose(single["logit"], batch["logit"][:1], atol=1e-5)
    assert "gradient_attention" not in net_inputs("rlgc", faces(1))[1].eval()(inputs)


def test_crl_outputs_at_224_px_and_a_batch_of_one():
    torch.manual_seed(0)
    _, net, inputs = net_inputs("crl", faces(3))
    ch = net.encoder.channels
    out = net(inputs)
    assert out["logit"].shape == (3,) and out["attention"].shape == (3, 1, 14, 14)
    assert [tuple(r.shape[-2:]) for r in out["recons"]] == [(28, 28), (56, 56), (224, 224)]
    assert all(r.min() >= -1 and r.max() <= 1 for r in out["recons"])
    assert out["recons"][-1] is out["recon"]
    assert [tuple(e.shape) for e in out["embeddings"]] == [(3, ch["features"]), (3, ch["middle"])]
    # JointGR's fourth vertex set, from |x − x̂|, reaches the logit.
    out["logit"].sum().backward()
    assert net.error_stem[2].weight.grad.abs().sum() > 0

    net.eval()
    with torch.no_grad():
        single, batch = net({"images": inputs["images"][:1]}), net(inputs)
    assert single["logit"].shape == (1,)
    assert torch.allclose(single["logit"], batch["logit"][:1], atol=1e-5)


def test_rlgcs_encoder_is_tf_efficientnet_b4s_features_and_takes_its_weights():
    reference = timm.create_model("tf_efficientnet_b4", features_only=True, out_indices=(2, 3, 4)).eval()
    encoder = efficientnet_b4_features(1.0).eval()
    assert {k: v.shape for k, v in encoder.state_dict().items()} == \
           {k: v.shape for k, v in reference.state_dict().items()}
    classifier = timm.create_model("tf_efficientnet_b4")
    load_efficientnet_b4(encoder, classifier.state_dict())
    own = reference.state_dict()
    reference.load_state_dict({k: v for k, v in classifier.state_dict().items() if k in own})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(encoder(x), reference(x)))
    with pytest.raises(LrerrError, match="b4 weights fit width 1 only, this model has width 0.5"):
        load_efficientnet_b4(efficientnet_b4_features(0.5), classifier.state_dict())


# --- the losses ------------------------------------------------------------------------------

def test_rlgcs_reconstruction_term_sees_reals_only_and_its_gradient_term_every_face():
    torch.manual_seed(0)
    images, target = torch.randn(4, 3, 8, 8), torch.rand(4, 1, 8, 8)
    out = {"logit": torch.randn(4), "recon": torch.randn(4, 3, 8, 8), "gradient": torch.rand(4, 1, 8, 8)}
    terms = rlgc_losses(out, images, target, LABELS, SINGLE)
    by_hand = ((out["recon"] - images)[[0, 2]]).abs().mean()
    assert torch.allclose(terms["rec"], by_hand)
    assert torch.allclose(terms["grad"], (out["gradient"] - target).square().mean())
    assert torch.allclose(terms["total"], terms["bce"] + 0.1 * terms["rec"] + 0.1 * terms["grad"])
    fake_changed = {**out, "recon": out["recon"].clone(), "gradient": out["gradient"].clone()}
    fake_changed["recon"][1] += 3
    fake_changed["gradient"][3] += 1
    changed = rlgc_losses(fake_changed, images, target, LABELS, SINGLE)
    assert torch.equal(changed["rec"], terms["rec"]) and changed["grad"] > terms["grad"]


def test_crls_multi_view_term_sees_reals_only_at_every_scale():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    exact = [F.interpolate(images, size=(s, s), mode="area") for s in (4, 8, 32)]
    assert multi_view_l1(exact, images, LABELS, SINGLE, sobel_view=True) < 1e-6
    fakes_wrong = [r.clone() for r in exact]
    for r in fakes_wrong:
        r[[1, 3]] = -r[[1, 3]]
    assert multi_view_l1(fakes_wrong, images, LABELS, SINGLE, sobel_view=True) < 1e-6
    # A real face's error counts at each scale, averaged over the views; the Sobel view is a view more.
    reals_wrong = [r.clone() for r in exact]
    reals_wrong[0][0] += 0.3
    assert multi_view_l1(reals_wrong, images, LABELS, SINGLE) == pytest.approx(0.3 / 2 / 3, rel=1e-5)
    shifted = exact[:2] + [images.roll(1, dims=-1)]
    assert multi_view_l1(shifted, images, LABELS, SINGLE, sobel_view=True) > \
           multi_view_l1(shifted, images, LABELS, SINGLE) * 3 / 4  # the 4th view is not 0


def test_compactness_is_zero_for_identical_real_embeddings():
    torch.manual_seed(0)
    real = torch.randn(1, 6)
    same = [torch.cat([real, torch.randn(1, 6), real * 2, torch.randn(1, 6)]) for _ in range(2)]
    assert pair_compactness(same, LABELS, SINGLE) < 1e-6
    spread = [torch.randn(4, 6) for _ in range(2)]
    assert pair_compactness(spread, LABELS, SINGLE) > 0.1
    one_real = pair_compactness(spread, torch.tensor([0, 1, 1, 1]), SINGLE)
    assert one_real.item() == 0

    centres = [torch.zeros(6), torch.zeros(6)]
    assert centre_compactness(same, centres, LABELS, SINGLE, momentum=0.9) < 1e-6
    assert torch.allclose(centres[0], F.normalize(real[0], dim=0))  # the first reals set the centre
    previous = centres[0].clone()
    moved = centre_compactness(spread, centres, LABELS, SINGLE, momentum=0.9)
    mean = F.normalize(spread[0][[0, 2]], dim=1).mean(0)
    assert torch.allclose(centres[0], 0.9 * previous + 0.1 * mean) and moved > 0


def test_crls_centres_are_buffers_of_its_state_dict_that_the_loss_moves():
    torch.manual_seed(0)
    net = CrlNet(TINY, centres=True)
    assert {"centre_features", "centre_block4"} <= set(net.state_dict())
    assert "centre_features" not in CrlNet(TINY).state_dict()
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    out = net({"images": images})
    terms = crl_losses(out, images, LABELS, SINGLE)
    # Set from zero by the first reals: the mean direction of their embeddings.
    first_reals = F.normalize(out["embeddings"][0][[0, 2]].detach(), dim=1).mean(0)
    assert torch.allclose(net.centre_features, first_reals)
    terms["total"].backward()
    assert set(terms) == {"total", "cls", "mv", "rsc"} and terms["rsc"] >= 0


# Their losses under DDP are checked with RECCE's, in one pair of processes (test_blocks.py).


# --- through the trainer and score -----------------------------------------------------------

EXPECTED = {
    "rlgc": {"terms": ("bce", "rec", "grad"), "weights": (1, 0.1, 0.1),
             "options": {"width": TINY, "rec_weight": 0.1, "grad_weight": 0.1, "attention": "guided"},
             "recipe": ["adam", 1e-3, 1e-5, "constant"],
             "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}},
    "crl": {"terms": ("cls", "mv", "rsc"), "weights": (1, 0.1, 0.1),
            "options": {"width": TINY, "views": "scales", "compactness": "pairs", "centre_momentum": 0.99,
                        "mv_weight": 0.1, "rsc_weight": 0.1, "flood": 0.04},
            "recipe": ["adamw", 1e-3, 1e-4, "step"], "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}},
}


@pytest.mark.parametrize("method", ["rlgc", "crl"])
def test_train_then_score_with_each_loss_logged_and_the_figure(method, ffpp_root, tmp_path_factory, shards,
                                                               tmp_path):
    run = shared_detector(method, ffpp_root, tmp_path_factory)
    manifest, expected = read_manifest(run), EXPECTED[method]
    assert manifest.complete and manifest.extra["loss_terms"] == list(expected["terms"])
    assert manifest.config["options"] == expected["options"]
    # The recipe resolved into the config, but for the test's own --lr.
    assert [manifest.config[k] for k in ("optimizer", "lr", "weight_decay", "schedule")] == expected["recipe"]
    assert manifest.extra["normalization"] == expected["normalization"]
    row = read_log(run)[0]
    terms = [float(row[f"train_{t}"]) for t in expected["terms"]]
    assert float(row["train_loss"]) == pytest.approx(sum(w * t for w, t in zip(expected["weights"], terms)),
                                                     rel=1e-5)
    assert all(t > 0 for t in terms)

    out = tmp_path / "score"
    result = CliRunner().invoke(app, ["score", str(shards), "--detector", str(run), "--out", str(out),
                                      "--batch-size", "8", "--device", "cpu", "--workers", "0",
                                      "--overlays", "2"])
    assert result.exit_code == 0, result.output
    assert f"({method} on ffpp test)" in result.output
    # 2 reals + 2 fakes; 6 panels of 224 px, 4 px apart: RLGC face | x̂ | error | ĝ | G | M,
    # CRL face | x̂ at 28, 56 and 224 px | error | M
    figure = cv2.imread(str(out / "attention.png"))
    assert figure.shape == (22 + 4 * 228 - 4, 6 * 228 - 4, 3)
    assert figure[22:, 228:452].std() > 5  # the first reconstruction column is a picture, not a blank
    assert read_manifest(out).extra["attention"] == "attention.png"
    assert verify(out) == []


@pytest.mark.parametrize(("method", "options"), [("rlgc", {}), ("crl", {"compactness": "centre"})])
def test_resume_after_a_kill_equals_an_uninterrupted_run(method, options, shards, tmp_path, monkeypatch):
    settings = dict(method=method, options=options, epochs=2, iters_per_epoch=1)
    train_module.run(config(shards, tmp_path / "straight", **settings))
    stop_before_epoch(monkeypatch, 2, train_module._Trainer)
    with pytest.raises(KeyboardInterrupt):
        train_module.run(config(shards, tmp_path / "resumed", **settings))
    monkeypatch.undo()
    train_module.run(config(shards, tmp_path / "resumed", resume=True, **settings))
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in ("straight", "resumed"))
    for key in a["model"]:  # CRL's EMA centres included
        assert torch.equal(a["model"][key], b["model"][key]), key
    columns = [c for c in read_log(tmp_path / "straight")[0] if c not in ("seconds", "images_per_s")]
    rows = [[{k: r[k] for k in columns} for r in read_log(tmp_path / run)] for run in ("straight", "resumed")]
    assert rows[0] == rows[1] and len(rows[0]) == 2


def test_rlgc_refuses_to_start_from_weights_it_cannot_have(shards, tmp_path, monkeypatch):
    with pytest.raises(LrerrError, match=r"pretrained tf_efficientnet_b4 weights fit --width 1 only "
                                         r"\(got --width 0.0625\)"):
        train_module.run(config(shards, tmp_path / "a", method="rlgc", pretrained=True))
    # At width 1, the default start needs B4's weights in the local cache; none is there.
    import lrerr_tools.weights as weights

    monkeypatch.setattr(weights, "cached_file", lambda name: None)
    with pytest.raises(LrerrError, match="pretrained tf_efficientnet_b4 weights are not cached locally"):
        train_module.run(config(shards, tmp_path / "a", method="rlgc", options={"width": 1.0},
                                pretrained=True))
    assert not (tmp_path / "a").exists()
    with pytest.raises(LrerrError, match=r"--attention must be one of guided, bidir \(got 'both'\)"):
        train_module.run(config(shards, tmp_path / "a", method="rlgc", options={"attention": "both"}))
    with pytest.raises(LrerrError, match=r"--views must be one of scales, scales\+grad"):
        train_module.run(config(shards, tmp_path / "a", method="crl", options={"views": "grad"}))
