import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from test_shard import built, shared_png_shards
from test_train_mae import stop_before_epoch
from typer.testing import CliRunner

import lrerr_tools.detector.train as train_module
from lrerr_tools.atomic_io import atomic_write_json
from lrerr_tools.attention import AttentionInjector, FeatureTaps, local_difference_attention, make_backbone
from lrerr_tools.cli import app
from lrerr_tools.detector.checkpoint import load_detector
from lrerr_tools.detector.reconstruction import Reconstructor
from lrerr_tools.errors import LrerrError
from lrerr_tools.mae.train import MaeTrainConfig
from lrerr_tools.mae.train import run as run_mae
from lrerr_tools.manifest import content_sha256, read_manifest
from lrerr_tools.methods import all_methods, get_method
from lrerr_tools.normalization import mae_to, normalize_uint8
from lrerr_tools.shard_dataset import ShardDataset
from lrerr_tools.training import load_checkpoint
from lrerr_tools.verify import verify

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# timm's 0.4M-parameter test_resnet stands in for Xception (20M) to keep CPU steps fast:
# layer1 and layer2 give 56 and 28 px maps at 224. 22 train faces (8 real, 14 fake).
LAYERS = ["layer1", "layer2"]
TINY = dict(pretrained=False, epochs=1, iters_per_epoch=2, batch_size=4, workers=0, device="cpu", lr=1e-3)
# RECCE's network at 1/16 of its width (46 middle channels) keeps its layout at CPU speed, as do
# CRL's (RECCE's), RLGC's (its EfficientNet-B4 and head; the fusion and decoder stay as they are)
# and Local-Prediction's.
TINY_OPTIONS = {"lrerr": {"backbone": "test_resnet", "attn_layers": LAYERS, "random_extractor": True},
                "xception": {"backbone": "test_resnet"}, "recce": {"width": 0.0625},
                "rlgc": {"width": 0.0625}, "crl": {"width": 0.0625}, "localdiv": {"width": 0.0625},
                "sclkd-teacher": {"width": 1 / 16}, "sclkd": {"backbone": "test_resnet"}}


def shared_mae(ffpp_root, tmp_path_factory):
    """A tiny MAE, trained for one step: what the detector needs is its interface, not its skill."""
    shards = shared_png_shards(ffpp_root, tmp_path_factory)

    def make():
        out = tmp_path_factory.mktemp("det-mae") / "mae"
        run_mae(MaeTrainConfig(shard_dir=str(shards), out=str(out), preset="tiny", epochs=1, batch_size=4,
                               max_steps=1, workers=0, device="cpu"))
        return out

    return built("tiny_mae", make)


def config(shards, out, method="lrerr", mae=None, options=None, **overrides):
    parents = {"mae": str(mae)} if mae and method == "lrerr" else {}
    return train_module.DetTrainConfig(shard_dir=str(shards), out=str(out), method=method, parents=parents,
                                       options={**TINY_OPTIONS.get(method, {}), **(options or {})},
                                       **{**TINY, **overrides})


def shared_parents(method, ffpp_root, tmp_path_factory) -> dict:
    """The parent runs (`Method.parents`, by name) a shared `method` run trains from, each
    shared too."""
    from test_method_sclkd import shared_moco

    makers = {"mae": lambda: shared_mae(ffpp_root, tmp_path_factory),
              "init": lambda: shared_moco(ffpp_root, tmp_path_factory),
              "teacher": lambda: shared_detector("sclkd-teacher", ffpp_root, tmp_path_factory)}
    return {parent.name: str(makers[parent.name]()) for parent in get_method(method).parents}


def shared_detector(method, ffpp_root, tmp_path_factory):
    """A finished 1-epoch detector run of `method`, shared by every module; tests only read it."""
    shards = shared_png_shards(ffpp_root, tmp_path_factory)
    parents = shared_parents(method, ffpp_root, tmp_path_factory)

    def make():
        out = tmp_path_factory.mktemp(f"det-{method}") / "run"
        cfg = config(shards, out, method)
        cfg.parents = parents
        train_module.run(cfg)
        return out

    return built(f"detector_{method}", make)


@pytest.fixture(scope="module")
def shards(ffpp_root, tmp_path_factory):
    return shared_png_shards(ffpp_root, tmp_path_factory)


@pytest.fixture(scope="module")
def mae(ffpp_root, tmp_path_factory):
    return shared_mae(ffpp_root, tmp_path_factory)


def read_log(path):
    with open(path / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_baseline_trains_without_an_mae(ffpp_root, tmp_path_factory, shards):
    out = shared_detector("xception", ffpp_root, tmp_path_factory)
    manifest = read_manifest(out)
    assert manifest.stage == "train-det" and manifest.complete
    assert manifest.parent["sha256"] == content_sha256(read_manifest(shards))
    assert manifest.counts == {"epochs": 1, "steps": 2, "train_real": 8, "train_fake": 14, "val_real": 8,
                               "val_fake": 14}
    assert manifest.extra["parents"] == {} and manifest.extra["method"] == "xception"
    assert manifest.extra["train_data"] == {"dataset": "ffpp", "compression": "c23",
                                            "methods": ["Deepfakes", "FaceSwap"]}
    assert manifest.extra["best"]["metric"] == "val_auc"
    row = read_log(out)[0]
    assert row["epoch"] == "1" and 0 <= float(row["val_auc"]) <= 1 and float(row["train_loss"]) > 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    loaded = load_detector(out, torch.device("cpu"))
    assert loaded.context is None and not hasattr(loaded.net, "extractor")
    assert verify(out) == []


def test_the_run_records_the_val_calibration_of_its_best_epoch(ffpp_root, tmp_path_factory, shards):
    from lrerr_tools.calibration import fit_calibration
    from lrerr_tools.detector.predict import predict

    out = shared_detector("xception", ffpp_root, tmp_path_factory)
    manifest = read_manifest(out)
    calibration = manifest.extra["calibration"]
    assert set(calibration) == {"threshold", "temperature", "epoch", "fitted_on"}
    assert set(calibration["threshold"]) == {"balanced_acc", "eer"} and calibration["fitted_on"] == "val"
    assert calibration["epoch"] == manifest.extra["best"]["epoch"] == 1
    # What best.pt's val logits give, and each epoch's own in the records.
    loaded = load_detector(out, torch.device("cpu"))
    val = ShardDataset(shards, split="val", fields=loaded.method.fields)
    rows, logits = predict(loaded.method, loaded.net, loaded.context, val, batch_size=4, workers=0,
                           device=torch.device("cpu"), progress=False)
    expected = fit_calibration(logits, np.array([r["label"] for r in rows]))
    assert calibration["temperature"] == pytest.approx(expected["temperature"], rel=1e-6)
    for name in ("balanced_acc", "eer"):
        assert 0 < calibration["threshold"][name] < 1
        assert calibration["threshold"][name] == pytest.approx(expected["threshold"][name], rel=1e-6)
    record = json.loads((out / "records.jsonl").read_text())
    assert record["calibration"] == {k: v for k, v in calibration.items() if k != "epoch"}


def test_val_of_one_class_records_null_calibration(ffpp_root, tmp_path_factory, tmp_path):
    from test_train_mae import shards_without

    reals_only = shards_without(ffpp_root, tmp_path_factory, tmp_path,
                                lambda r: r["split"] == "val" and r["label"] == 1)
    manifest = train_module.run(config(reals_only, tmp_path / "run", "xception", iters_per_epoch=1))
    assert manifest.extra["calibration"] == {
        "threshold": {"balanced_acc": None, "eer": None}, "temperature": None, "fitted_on": "val", "epoch": 1,
        "note": "only real val faces: no threshold or temperature can be fitted"}


def test_lrerr_differs_from_the_baseline_only_in_the_method(ffpp_root, tmp_path_factory, shards, mae,
                                                           tmp_path, monkeypatch):
    runs = {m: shared_detector(m, ffpp_root, tmp_path_factory) for m in ("lrerr", "xception")}
    lrerr, base = read_manifest(runs["lrerr"]), read_manifest(runs["xception"])
    assert {k for k in lrerr.config if lrerr.config[k] != base.config[k]} == {"method", "parents", "out",
                                                                              "options"}
    assert lrerr.config["options"] == {"backbone": "test_resnet", "attn_layers": LAYERS, "attn_form": "mul",
                                       "mae_precision": "bfloat16", "random_extractor": True}
    assert base.config["options"] == {"backbone": "test_resnet"}
    assert [base.config[k] for k in ("optimizer", "lr", "schedule")] == ["adam", 1e-3, "constant"]
    assert lrerr.extra["parents"] == {"mae": {"path": os.path.relpath(mae.resolve(), runs["lrerr"].resolve()),
                                              "sha256": content_sha256(read_manifest(mae))}}
    for name in ("best.pt", "last.pt"):
        checkpoint = load_checkpoint(runs["lrerr"] / "checkpoints" / name)
        assert checkpoint["extra"]["parents"] == lrerr.extra["parents"]
    # Same starting weights, same batches.
    seen = {}
    real_build, real_train_epoch = train_module._Trainer.build, train_module._Trainer.train_epoch

    def build(self, state):
        real_build(self, state)
        weights = {k: v.clone() for k, v in self.net.backbone.state_dict().items()}
        seen[self.cfg.method] = {"weights": weights, "batches": []}

    def train_epoch(self):
        real_inputs = self.method.inputs

        def inputs(net, context, batch, *args):
            faces = list(zip(batch["video_id"], batch["frame_index"].tolist()))
            seen[self.cfg.method]["batches"].append(faces)
            return real_inputs(net, context, batch, *args)

        self.method.inputs = inputs  # the train batches only, not validation's
        try:
            return real_train_epoch(self)
        finally:
            del self.method.inputs

    monkeypatch.setattr(train_module._Trainer, "build", build)
    monkeypatch.setattr(train_module._Trainer, "train_epoch", train_epoch)
    for method in ("lrerr", "xception"):
        train_module.run(config(shards, tmp_path / method, method, mae))
    a, b = seen["lrerr"], seen["xception"]
    assert a["batches"] == b["batches"] and len(a["batches"]) == 2
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])


def test_a_faces_mask_follows_its_pixels_not_its_name_or_batch(shards, mae):
    from lrerr_tools.detector.reconstruction import load_reconstructor
    from lrerr_tools.shard_dataset import ShardDataset

    reconstructor = load_reconstructor(mae, seed=0, device=torch.device("cpu"), precision="float32")
    faces = ShardDataset(shards, split="val", fields=("key_mask",))
    items = [faces[i] for i in range(6)]
    images = torch.stack([it["image"] for it in items])
    key = torch.stack([it["key_mask"] for it in items])
    masks = reconstructor.masks(key, images)
    order = [5, 2, 0, 4, 1, 3]
    assert torch.equal(reconstructor.masks(key[order], images[order]), masks[order])  # any batch
    assert len({tuple(m.tolist()) for m in masks}) == 6  # each face its own
    changed = images.clone()
    changed[0, 0, 0, 0] ^= 1  # one pixel's lowest bit: another face
    assert not torch.equal(reconstructor.masks(key[:1], changed[:1]), masks[:1])
    other_run = load_reconstructor(mae, seed=1, device=torch.device("cpu"), precision="float32")
    assert not torch.equal(other_run.masks(key, images), masks)


def test_the_mae_precision_changes_its_arithmetic_only_and_is_recorded(shards, mae, tmp_path):
    from lrerr_tools.detector.reconstruction import load_reconstructor
    from lrerr_tools.methods.lrerr import Lrerr

    faces = ShardDataset(shards, split="val", fields=("key_mask",))
    items = [faces[i] for i in range(4)]
    images = torch.stack([it["image"] for it in items])
    masks = torch.stack([it["key_mask"] for it in items])
    recon = {}
    for precision in ("float32", "bfloat16"):
        reconstructor = load_reconstructor(mae, seed=0, device=torch.device("cpu"), precision=precision)
        hidden = reconstructor.masks(masks, images)
        recon[precision] = reconstructor.reconstruct_masked(images, hidden)
        assert recon[precision].dtype == torch.float32
    visible = ~hidden[:, :, None].expand(-1, -1, 16 * 16 * 3)
    patches = {p: reconstructor.model.patchify(r) for p, r in recon.items()}
    assert torch.equal(patches["bfloat16"][visible], patches["float32"][visible])  # the face's own pixels
    gap = (patches["bfloat16"] - patches["float32"])[~visible].abs()
    assert 0 < gap.mean() < 0.02  # bfloat16 rounding, not another reconstruction

    train_module.run(config(shards, tmp_path / "run", mae=mae))
    run = load_detector(tmp_path / "run", torch.device("cpu"))
    assert run.method.settings["mae_precision"] == "bfloat16" == run.context.precision
    [identity] = (tmp_path / "run" / "cache").glob("*/rank0/identity.json")
    assert json.loads(identity.read_text())["mae_precision"] == "bfloat16"  # another cache than float32's
    # A run recorded before the option existed made its maps at float32, and scores so.
    assert Lrerr.resolve_recorded({"backbone": "test_resnet"}).settings["mae_precision"] == "float32"


def test_a_run_from_before_an_option_resumes_only_with_the_value_it_had(shards, mae, tmp_path):
    out = tmp_path / "run"
    train_module.run(config(shards, out, mae=mae, options={"mae_precision": "float32"}))
    last = out / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, weights_only=False)
    del checkpoint["config"]["options"]["mae_precision"]  # as a run made before the option existed
    torch.save(checkpoint, last)
    with pytest.raises(LrerrError, match=r"differs in options\.mae_precision: 'float32' in the run, "
                                         r"'bfloat16' now\) — rerun with its settings"):
        train_module.run(config(shards, out, mae=mae, resume=True))
    again = train_module.run(config(shards, out, mae=mae, resume=True, options={"mae_precision": "float32"}))
    assert again.complete


def test_attention_from_the_reconstruction_is_injected_at_the_named_layers(shards, mae, tmp_path,
                                                                          monkeypatch):
    seen = {"recon": [], "maps": [], "masks": []}
    real_reconstruct, real_masks = Reconstructor.reconstruct, Reconstructor.masks
    real_maps = AttentionInjector.maps

    def reconstruct(self, batch, device):
        recon = real_reconstruct(self, batch, device)
        seen["recon"].append((batch, recon))
        return recon

    def maps(self, maps):
        seen["maps"].append((self.layers, maps))
        return real_maps(self, maps)

    def masks(self, key_masks, images):
        result = real_masks(self, key_masks, images)
        seen["masks"].append((self.info, result))
        return result

    monkeypatch.setattr(Reconstructor, "reconstruct", reconstruct)
    monkeypatch.setattr(AttentionInjector, "maps", maps)
    monkeypatch.setattr(Reconstructor, "masks", masks)
    out = tmp_path / "run"
    train_module.run(config(shards, out, mae=mae, iters_per_epoch=1))
    assert len(seen["maps"]) == 1 + 6  # one train step, then val: 22 faces in batches of 4
    layers, maps = seen["maps"][0]
    assert layers == tuple(LAYERS)
    assert [tuple(a.shape) for a in maps] == [(4, 1, 56, 56), (4, 1, 28, 28)]
    # Every mask hides all of the MAE's key region T and fills up to its 75 %.
    info, masks = seen["masks"][0]
    assert masks.sum(dim=1).tolist() == [147] * 4 and masks[:, info.key_patches].all()
    # The maps are A = 1 - (1 + cos) / 2 between the frozen extractor's features of the face
    # and of the MAE's reconstruction, both in the backbone's normalization, kept as float16.
    batch, recon = seen["recon"][0]
    detector = load_detector(out, torch.device("cpu")).net
    extractor = make_backbone("test_resnet", pretrained=False).model.eval()
    extractor.load_state_dict(detector.extractor.state_dict())
    with torch.no_grad(), FeatureTaps(extractor, LAYERS) as taps:
        original = taps(normalize_uint8(batch["image"], detector.mean, detector.std))
        rebuilt = taps(mae_to(recon, detector.mean, detector.std))
    for a, f, g in zip(maps, original, rebuilt):
        assert torch.allclose(a, local_difference_attention(f, g), atol=5e-4)
        assert a.max() > 0.01  # the reconstruction differs from the face
    # The frozen extractor is stored, and is the backbone's starting point, not its trained state.
    backbone, extractor = detector.backbone.state_dict(), detector.extractor.state_dict()
    assert backbone.keys() == extractor.keys()
    assert not all(torch.equal(backbone[k], extractor[k]) for k in backbone)


def test_resume_after_a_kill_equals_an_uninterrupted_run(shards, mae, tmp_path, monkeypatch):
    settings = dict(mae=mae, epochs=2)
    train_module.run(config(shards, tmp_path / "straight", **settings))
    stop_before_epoch(monkeypatch, 2, train_module._Trainer)
    with pytest.raises(KeyboardInterrupt):
        train_module.run(config(shards, tmp_path / "resumed", **settings))
    monkeypatch.undo()
    with pytest.raises(LrerrError, match=r"holds an unfinished run \(1 epochs done\) — pass --resume"):
        train_module.run(config(shards, tmp_path / "resumed", **settings))
    train_module.run(config(shards, tmp_path / "resumed", resume=True, **settings))
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in ("straight", "resumed"))
    assert a["model"].keys() == b["model"].keys() and a["step"] == b["step"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    columns = [c for c in read_log(tmp_path / "straight")[0] if c not in ("seconds", "images_per_s")]
    assert "train_bce" in columns
    rows = [[{k: r[k] for k in columns} for r in read_log(tmp_path / run)] for run in ("straight", "resumed")]
    assert rows[0] == rows[1] and len(rows[0]) == 2


def change(run_dir):
    """Rewrite a run's manifest as a retraining with other data would (another count)."""
    manifest = read_manifest(run_dir)
    manifest.counts = {**manifest.counts, "train_images": manifest.counts["train_images"] + 1}
    atomic_write_json(run_dir / "manifest.json", asdict(manifest))


def test_a_changed_mae_is_refused_at_resume_and_at_score(shards, mae, tmp_path, monkeypatch):
    from lrerr_tools.score import ScoreConfig
    from lrerr_tools.score import run as run_score

    own_mae = tmp_path / "mae"
    shutil.copytree(mae, own_mae)
    original = (own_mae / "manifest.json").read_bytes()
    out = tmp_path / "run"
    settings = dict(mae=own_mae, epochs=2, iters_per_epoch=1)
    stop_before_epoch(monkeypatch, 2, train_module._Trainer)
    with pytest.raises(KeyboardInterrupt):
        train_module.run(config(shards, out, **settings))
    monkeypatch.undo()
    change(own_mae)
    refusal = rf"the detector run in {out} was trained with the train-mae run {own_mae}, which has changed"
    with pytest.raises(LrerrError, match=refusal):
        train_module.run(config(shards, out, resume=True, **settings))
    (own_mae / "manifest.json").write_bytes(original)
    train_module.run(config(shards, out, resume=True, **settings))
    change(own_mae)
    with pytest.raises(LrerrError, match=refusal):
        train_module.run(config(shards, out, **settings))  # finished, but not on this MAE
    score = ScoreConfig(shard_dir=str(shards), detector=str(out), out=str(tmp_path / "score"), device="cpu",
                        workers=0)
    with pytest.raises(LrerrError, match=rf"the detector in {out} was trained with the train-mae run .* ch"):
        run_score(score)
    own_mae.rename(tmp_path / "moved")
    with pytest.raises(LrerrError, match=rf"with the train-mae run {own_mae}, which is gone — put it back"):
        run_score(score)
    assert not (tmp_path / "score").exists()  # refused before the output was claimed


def test_methods_narrow_the_fakes_and_keep_every_real(shards, tmp_path):
    # The single-method and leave-one-out protocols (Tables II and III) train this way.
    out = tmp_path / "run"
    manifest = train_module.run(config(shards, out, "xception", methods=["FaceSwap"], iters_per_epoch=1))
    assert manifest.counts == {"epochs": 1, "steps": 1, "train_real": 8, "train_fake": 6, "val_real": 8,
                               "val_fake": 6}
    assert manifest.extra["train_data"]["methods"] == ["FaceSwap"]
    assert manifest.config["methods"] == ["FaceSwap"]
    with pytest.raises(LrerrError, match=r"--methods: no fake faces of NeuralTextures in the train split of "
                                         r".* \(it has Deepfakes, FaceSwap\)"):
        train_module.run(config(shards, tmp_path / "other", "xception",
                                methods=["FaceSwap", "NeuralTextures"]))
    assert not (tmp_path / "other").exists()


def test_bad_options_are_one_line_errors(shards, mae, tmp_path):
    with pytest.raises(LrerrError, match="--method lrerr needs --mae RUN_DIR"):
        train_module.run(config(shards, tmp_path / "a", mae=None))
    with pytest.raises(LrerrError, match=r"--mae is not an option of --method xception \(it belongs to "
                                         r"--method lrerr\); xception takes --backbone"):
        train_module.run(train_module.DetTrainConfig(shard_dir=str(shards), out=str(tmp_path / "b"),
                                                     method="xception", parents={"mae": str(mae)}))
    with pytest.raises(LrerrError, match="has no layer x9"):
        train_module.run(config(shards, tmp_path / "c", mae=mae, options={"attn_layers": ["layer1", "x9"]}))
    with pytest.raises(LrerrError, match="--attn-layers: name at least one layer"):
        train_module.run(config(shards, tmp_path / "c", mae=mae, options={"attn_layers": ""}))
    with pytest.raises(LrerrError, match="--schedule must be one of constant, cosine, step"):
        train_module.run(config(shards, tmp_path / "c", "xception", schedule="linear"))
    with pytest.raises(LrerrError, match="--step-size must be at least 1 with --schedule step"):
        train_module.run(config(shards, tmp_path / "c", "xception", schedule="step"))
    assert not (tmp_path / "c").exists()
    registered = ", ".join(all_methods())
    cases = {("--method", "resnet"): f"error: --method must be one of {registered} (got 'resnet')",
             ("--method", "xception", "--mae", "x"): "error: --mae is not an option of --method xception",
             ("--method", "lrerr", "--mae"): "error: --mae needs a value",
             ("--method", "xception", "--backbon", "x"): "unknown option, did you mean --backbone?",
             ("--method", "xception", "--lr", "fast"): "Invalid value for '--lr'"}
    for args, message in cases.items():
        result = CliRunner().invoke(app, ["train-det", str(shards), "--out", str(tmp_path / "d"), *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert not (tmp_path / "d").exists()


def test_lrerr_refuses_a_random_extractor_unless_told_so_on_purpose(shards, mae, tmp_path):
    out = tmp_path / "run"
    options = {"random_extractor": False}
    with pytest.raises(LrerrError, match="--no-pretrained makes LRErr's frozen extractor random, so every "
                                         "attention map would come from random features"):
        train_module.run(config(shards, out, mae=mae, options=options))
    assert not out.exists()
    train_module.run(config(shards, out, mae=mae))
    assert read_manifest(out).config["options"]["random_extractor"] is True  # the run says so


def test_cli(shards, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train-det", str(shards), "--out", str(out), "--method", "xception", "--backbone=test_resnet",
        "--no-pretrained", "--epochs", "1", "--iters-per-epoch", "1", "--batch-size", "4", "--workers", "0",
        "--device", "cpu", "--optimizer", "sgd", "--weight-decay", "1e-4"])
    assert result.exit_code == 0, result.output
    assert "train-det complete" in result.output and "best epoch 1 (val_auc" in result.output
    config = read_manifest(out).config
    assert config["options"] == {"backbone": "test_resnet"}
    assert (config["optimizer"], config["weight_decay"], config["lr"]) == ("sgd", 1e-4, 1e-4)
    assert json.loads((out / "records.jsonl").read_text())["epoch"] == 1


@pytest.mark.parametrize("method", ["lrerr", "recce"])
def test_ddp_with_two_gloo_processes(shards, mae, tmp_path, method):
    # RECCE gathers its metric loss's embeddings across the ranks inside the DDP step.
    own = {"lrerr": ["--mae", str(mae), "--backbone", "test_resnet", "--attn-layers", "layer1,layer2",
                     "--random-extractor"],
           "recce": ["--width", "0.0625"]}[method]
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "lrerr_tools", "train-det",
         str(shards), "--out", str(out), "--method", method, *own, "--no-pretrained", "--epochs", "1",
         "--iters-per-epoch", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("train-det complete") == 1  # only rank 0 reports
    manifest = read_manifest(out)
    assert manifest.complete and manifest.extra["world_size"] == 2 and manifest.counts["steps"] == 2
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    # The ranks split validation and gather it: the logged val loss is one process's on all 22 faces.
    from lrerr_tools.detector.predict import predict

    loaded = load_detector(out, torch.device("cpu"))
    val = ShardDataset(shards, split="val", fields=loaded.method.fields)
    rows, logits = predict(loaded.method, loaded.net, loaded.context, val, batch_size=4, workers=0,
                           device=torch.device("cpu"), progress=False)
    labels = torch.tensor([r["label"] for r in rows], dtype=torch.float64)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits), labels).item()
    assert float(read_log(out)[0]["val_loss"]) == pytest.approx(loss, rel=1e-5)
    if method == "lrerr":  # each rank keeps what it computed, in its own files
        done = {p.parent.name: int(np.fromfile(p, np.uint8).sum()) for p in (out / "cache").glob("*/rank*/*")
                if p.suffix == ".done"}
        assert set(done) == {"rank0", "rank1"}


def count_frozen_faces(monkeypatch):
    """Every face whose frozen inputs LRErr computes, as (shard sha256, row), in order."""
    from lrerr_tools.methods.lrerr import Lrerr

    computed, real_frozen = [], Lrerr.frozen

    def frozen(self, net, context, batch, device):
        computed.extend(zip(batch["shard_sha256"], batch["row"].tolist()))
        return real_frozen(self, net, context, batch, device)

    monkeypatch.setattr(Lrerr, "frozen", frozen)
    return computed


def test_the_frozen_cache_changes_no_number_only_the_work(shards, mae, tmp_path, monkeypatch):
    computed = count_frozen_faces(monkeypatch)
    one_face = (56 * 56 + 28 * 28) * 2  # float16 maps at layer1 and layer2
    runs = {"none": 0.0, "all": None, "five faces": 5 * one_face / 1e9}
    work = {}
    for name, cache_gb in runs.items():
        computed.clear()
        train_module.run(config(shards, tmp_path / name, mae=mae, epochs=3, iters_per_epoch=3,
                                cache_gb=cache_gb))
        work[name] = list(computed)
    columns = [c for c in read_log(tmp_path / "none")[0] if c not in ("seconds", "images_per_s")]
    logs = {name: [{k: r[k] for k in columns} for r in read_log(tmp_path / name)] for name in runs}
    assert logs["all"] == logs["none"] == logs["five faces"] and len(logs["none"]) == 3
    weights = {name: load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"] for name in runs}
    for key in weights["none"]:
        assert torch.equal(weights["all"][key], weights["none"][key]), key
        assert torch.equal(weights["five faces"][key], weights["none"][key]), key
    # Without a cache every epoch recomputes its 12 train and 22 val faces; with one, each face once.
    assert len(work["none"]) == 3 * (12 + 22)
    assert len(work["all"]) == len(set(work["all"])) == len(set(work["none"]))
    assert len(work["all"]) < len(work["five faces"]) < len(work["none"])
    assert not (tmp_path / "none" / "cache").exists()
    stored = list((tmp_path / "all" / "cache").glob("*/rank0/*.done"))
    assert sum(int(np.fromfile(f, np.uint8).sum()) for f in stored) == len(work["all"])

    # A run resumed after a kill reads back what the first epoch stored: val is not recomputed.
    stop_before_epoch(monkeypatch, 2, train_module._Trainer)
    with pytest.raises(KeyboardInterrupt):
        train_module.run(config(shards, tmp_path / "resumed", mae=mae, epochs=2, iters_per_epoch=3))
    monkeypatch.undo()
    computed = count_frozen_faces(monkeypatch)
    train_module.run(config(shards, tmp_path / "resumed", mae=mae, epochs=2, iters_per_epoch=3, resume=True))
    val = ShardDataset(shards, split="val")
    val_faces = {(val[i]["shard_sha256"], val[i]["row"]) for i in range(len(val))}
    assert computed and not val_faces & set(computed)
    assert read_log(tmp_path / "resumed")[1]["val_loss"] == logs["none"][1]["val_loss"]


def test_score_reads_the_runs_cache_and_scores_the_same(shards, mae, tmp_path, monkeypatch):
    from lrerr_tools.score import ScoreConfig
    from lrerr_tools.score import run as run_score

    out = tmp_path / "run"
    train_module.run(config(shards, out, mae=mae))
    before = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*")}
    probs = {}
    for cached in (True, False):
        if not cached:
            shutil.rmtree(out / "cache")
        computed = count_frozen_faces(monkeypatch)
        score = tmp_path / f"score-{cached}"
        run_score(ScoreConfig(shard_dir=str(shards), detector=str(out), out=str(score), split="val",
                              device="cpu", workers=0, overlays=0))
        probs[cached] = (score / "frames.csv").read_text()
        assert len(computed) == (0 if cached else 22)  # the run validated on these very faces
        monkeypatch.undo()
        if cached:
            assert {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*")} == before  # read-only
    assert probs[True] == probs[False]


def test_a_nan_loss_stops_the_run_naming_its_step(shards, tmp_path, monkeypatch):
    # The loss is read back every few steps, not at each one; the stop still names the step.
    from lrerr_tools.methods.xception import XceptionBaseline

    real_losses, calls = XceptionBaseline.losses, []

    def losses(self, outputs, inputs, labels, dist):
        terms = real_losses(self, outputs, inputs, labels, dist)
        calls.append(1)
        return {**terms, "total": terms["total"] * float("nan")} if len(calls) == 5 else terms

    monkeypatch.setattr(XceptionBaseline, "losses", losses)
    out = tmp_path / "run"
    with pytest.raises(LrerrError, match=r"loss became nan at epoch 2, step 5: training stopped and the "
                                         r"last good checkpoint, .*last.pt, is kept"):
        train_module.run(config(shards, out, "xception", epochs=2, iters_per_epoch=3))
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1


def test_a_face_drawn_twice_into_one_batch_is_computed_once(tmp_path):
    from lrerr_tools.detector.frozen_cache import FrozenCache

    def batch(rows):
        return {"shard_sha256": ["ab" * 32] * len(rows), "row": torch.tensor(rows),
                "image": torch.tensor(rows, dtype=torch.float32)}

    computed = []

    def compute(faces):  # a value per face that shows which face it is
        computed.extend(faces["row"].tolist())
        return [faces["image"][:, None, None].expand(-1, 2, 3) * 0.5]

    cache = FrozenCache(tmp_path, {"test": 1}, {"ab" * 32: 5})
    for rows in ([3, 1, 3], [1, 4, 4, 3], [4, 1]):  # the very first batch already repeats a face
        (values,) = cache.fetch(batch(rows), compute)
        assert values.dtype == torch.float16 and values.shape == (len(rows), 2, 3)
        assert values[:, 0, 0].tolist() == [r * 0.5 for r in rows]
    assert computed == [3, 1, 4]
    cache.commit()
    reopened = FrozenCache(tmp_path, {"test": 1}, {"ab" * 32: 5}, writable=False)
    assert reopened.fetch(batch([4, 3]), compute)[0][:, 0, 0].tolist() == [2.0, 1.5] and computed == [3, 1, 4]
