"""SCL-KD: the teacher from a MoCo run, the student distilled from it, and the few-label
subset of `train-det --label-fraction` both (and every other method) train with."""

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_shard import built, shared_png_shards
from test_train_mae import stop_before_epoch

import lrerr_tools.detector.train as train_module
from lrerr_tools.blocks.losses import binary_kd_loss
from lrerr_tools.errors import LrerrError
from lrerr_tools.label_fraction import labelled_videos
from lrerr_tools.manifest import open_parent, read_manifest
from lrerr_tools.methods import get_method
from lrerr_tools.methods.sclkd_teacher import ENCODER_PREFIX
from lrerr_tools.moco.train import MocoTrainConfig
from lrerr_tools.moco.train import run as run_moco
from lrerr_tools.score import ScoreConfig
from lrerr_tools.score import run as run_score
from lrerr_tools.shard_dataset import ShardDataset
from lrerr_tools.training import build_optimizer, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDTH = 1 / 16
TINY = dict(pretrained=False, epochs=1, iters_per_epoch=2, batch_size=4, workers=0, device="cpu", lr=1e-3)
TEACHER = {"width": WIDTH}
STUDENT = {"backbone": "test_resnet"}


def shared_moco(ffpp_root, tmp_path_factory):
    """A one-step MoCo run at 1/16 width: the teacher needs its encoder, not its skill."""
    shards = shared_png_shards(ffpp_root, tmp_path_factory)

    def make():
        out = tmp_path_factory.mktemp("sclkd-moco") / "moco"
        run_moco(MocoTrainConfig(shard_dir=str(shards), out=str(out), width=WIDTH, queue_size=8, batch_size=8,
                                 bn_splits=2, crop_size=32, epochs=1, max_steps=1, workers=0, device="cpu"))
        return out

    return built("sclkd_moco", make)


def det_config(shards, out, method, options, parents, **overrides):
    return train_module.DetTrainConfig(shard_dir=str(shards), out=str(out), method=method, options=options,
                                       parents=parents, **{**TINY, **overrides})


@pytest.fixture(scope="module")
def shards(ffpp_root, tmp_path_factory):
    return shared_png_shards(ffpp_root, tmp_path_factory)


@pytest.fixture(scope="module")
def moco(ffpp_root, tmp_path_factory):
    return shared_moco(ffpp_root, tmp_path_factory)


@pytest.fixture(scope="module")
def teacher(shards, moco, tmp_path_factory):
    """A teacher fine-tuned on half the train videos' labels."""
    out = tmp_path_factory.mktemp("sclkd-teacher") / "teacher"
    train_module.run(det_config(shards, out, "sclkd-teacher", TEACHER, {"init": str(moco)},
                                label_fraction=0.5))
    return out


def encoder_state(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# --- the label subset ----------------------------------------------------------------------

def listing(videos: list[tuple[str, int, str]]):
    """A stand-in for a ShardDataset's per-face tables, two faces a video, in this order."""
    ids = [v for v, _, _ in videos]
    methods = sorted({m for _, _, m in videos})
    faces = [(ids.index(v), methods.index(m), label) for v, label, m in videos for _ in range(2)]
    return SimpleNamespace(face_videos=np.array([ids[f[0]] for f in faces]), method_names=methods,
                           _method=np.array([f[1] for f in faces]), labels=np.array([f[2] for f in faces]))


VIDEOS = ([(f"youtube/{i:03d}", 0, "youtube") for i in range(40)]
          + [(f"Deepfakes/{i:03d}_x", 1, "Deepfakes") for i in range(20)]
          + [(f"FaceSwap/{i:03d}_x", 1, "FaceSwap") for i in range(3)])


def test_the_label_subset_is_stratified_seeded_and_independent_of_listing_order():
    chosen = labelled_videos(listing(VIDEOS), 0.1, seed=0)
    by_stratum = {m: sum(v.startswith(m) for v in chosen) for m in ("youtube", "Deepfakes", "FaceSwap")}
    assert by_stratum == {"youtube": 4, "Deepfakes": 2, "FaceSwap": 1}  # at least one of each stratum
    shuffled = [VIDEOS[i] for i in np.random.default_rng(0).permutation(len(VIDEOS))]
    assert labelled_videos(listing(shuffled), 0.1, seed=0) == chosen
    assert labelled_videos(listing(VIDEOS), 0.1, seed=1) != chosen
    assert labelled_videos(listing(VIDEOS), 1.0, seed=0) == sorted(v for v, _, _ in VIDEOS)
    # Other strata's videos do not move a stratum's choice.
    fakes_alone = labelled_videos(listing(VIDEOS[40:] + VIDEOS[:1]), 0.1, seed=0)
    assert [v for v in fakes_alone if "youtube" not in v] == [v for v in chosen if "youtube" not in v]
    for bad in (0, 1.5, -0.1):
        with pytest.raises(LrerrError, match=r"--label-fraction must be in \(0, 1\]"):
            labelled_videos(listing(VIDEOS), bad, seed=0)


def test_a_method_without_unlabelled_faces_trains_on_the_labelled_videos_alone(shards, teacher):
    labels = read_manifest(teacher).extra["labels"]
    chosen = labels["video_ids"]
    assert labels["fraction"] == 0.5 and labels["videos"] == len(chosen) < labels["of_videos"] == 6
    assert not labels["trains_on_unlabelled"]
    every = ShardDataset(shards, split="train")
    labelled = every.only_videos(chosen)
    assert set(labelled.face_videos) == set(chosen) and len(labelled) < len(every)
    assert [labelled[i]["video_id"] for i in range(len(labelled))] == list(labelled.face_videos)
    counts = read_manifest(teacher).counts
    assert (counts["train_real"], counts["train_fake"]) == tuple(np.bincount(labelled.labels, minlength=2))


# --- the teacher ---------------------------------------------------------------------------

def test_the_teacher_starts_from_the_moco_query_encoder(moco):
    method = get_method("sclkd-teacher").resolve(TEACHER)
    context = method.context({"init": open_parent(moco, "train-moco")}, 0, torch.device("cpu"))
    torch.manual_seed(0)
    net = method.build()
    method.init_from_parents(net, context)
    moco_state = encoder_state(load_checkpoint(moco / "checkpoints" / "last.pt")["model"], ENCODER_PREFIX)
    state = encoder_state(net.state_dict(), "encoder.")
    assert state.keys() == moco_state.keys() and len(state) > 50
    for key in state:
        assert torch.equal(state[key], moco_state[key]), key


def test_the_encoder_trains_at_its_share_of_the_lr():
    method = get_method("sclkd-teacher").resolve({**TEACHER, "encoder_lr_scale": 0.25})
    net = method.build()
    for decay in (0.0, 1e-4):
        optimizer = build_optimizer(net, "adam", 1e-3, weight_decay=decay, lr_scale=method.lr_scale)
        lrs = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        assert optimizer.param_groups[0]["lr"] == 1e-3  # the classifier's: what log.csv shows
        assert {lrs[id(p)] for p in net.classifier.parameters()} == {1e-3}
        assert {lrs[id(p)] for p in net.encoder.parameters()} == {2.5e-4}
        assert len(lrs) == len(list(net.parameters()))
    plain = build_optimizer(net, "adam", 1e-3, lr_scale=get_method("xception").resolve({}).lr_scale)
    assert len(plain.param_groups) == 1


def test_a_linear_probe_leaves_the_encoder_as_moco_trained_it(shards, moco, tmp_path):
    out = tmp_path / "probe"
    train_module.run(det_config(shards, out, "sclkd-teacher", {**TEACHER, "linear_probe": True},
                                {"init": str(moco)}))
    trained = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    start = encoder_state(load_checkpoint(moco / "checkpoints" / "last.pt")["model"], ENCODER_PREFIX)
    encoder = encoder_state(trained, "encoder.")
    assert all(torch.equal(encoder[k], start[k]) for k in start)  # batch-norm statistics included
    assert read_manifest(out).extra["caveats"] == ["linear probe"]


# --- the student ---------------------------------------------------------------------------

def test_the_kd_loss_on_hand_made_logits():
    logits = torch.tensor([2.0, -1.0, 0.5])
    labels = torch.tensor([1.0, 0.0, 0.0])
    everyone = torch.ones(3, dtype=torch.bool)
    same = binary_kd_loss(logits, logits, labels, everyone)
    assert same["kl"].abs() < 1e-6
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    assert torch.allclose(same["total"], 0.5 * bce) and torch.allclose(same["bce"], bce)
    # Unlabelled faces: T²·KL alone, whatever their label says.
    teacher = torch.tensor([0.0, 3.0, -2.0])
    nobody = torch.zeros(3, dtype=torch.bool)
    unlabelled = binary_kd_loss(logits, teacher, labels, nobody, temperature=2.0)
    assert torch.equal(unlabelled["total"], binary_kd_loss(logits, teacher, 1 - labels, nobody,
                                                           temperature=2.0)["total"])
    assert unlabelled["bce"] == 0
    p, q = torch.sigmoid(teacher / 2), torch.sigmoid(logits / 2)
    kl = 4 * (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log())
    assert torch.allclose(unlabelled["total"], kl.mean(), atol=1e-6)


def student_config(shards, out, teacher, **overrides):
    return det_config(shards, out, "sclkd", STUDENT, {"teacher": str(teacher)},
                      **{"label_fraction": 0.5, **overrides})


def test_the_student_learns_from_every_face_its_labels_only_where_chosen(shards, teacher, tmp_path,
                                                                         monkeypatch):
    seen = []
    real = train_module._Trainer._labelled

    def labelled(self, batch):
        flags = real(self, batch)
        seen.extend(zip(batch["video_id"], flags.tolist()))
        return flags

    monkeypatch.setattr(train_module._Trainer, "_labelled", labelled)
    out = tmp_path / "student"
    train_module.run(student_config(shards, out, teacher, iters_per_epoch=6))
    manifest = read_manifest(out)
    chosen = set(manifest.extra["labels"]["video_ids"])
    assert chosen == set(read_manifest(teacher).extra["labels"]["video_ids"])  # same fraction and seed
    assert manifest.counts["train_real"] + manifest.counts["train_fake"] == 22  # every train face
    assert all(flag == (video in chosen) for video, flag in seen)
    assert {flag for _, flag in seen} == {True, False}
    state = load_checkpoint(out / "checkpoints" / "best.pt")["model"]
    assert all(key.startswith("backbone.") for key in state)  # no teacher weight in the student
    assert state.keys() == get_method("sclkd").resolve(STUDENT).build().state_dict().keys()
    assert (out / "cache").is_dir()  # the teacher's logits, computed once per face


def test_student_resume_is_exact_and_score_needs_no_teacher(shards, teacher, tmp_path, monkeypatch):
    own_teacher = tmp_path / "teacher"
    shutil.copytree(teacher, own_teacher)
    settings = dict(epochs=2)
    train_module.run(student_config(shards, tmp_path / "straight", own_teacher, **settings))
    stop_before_epoch(monkeypatch, 2, train_module._Trainer)
    with pytest.raises(KeyboardInterrupt):
        train_module.run(student_config(shards, tmp_path / "resumed", own_teacher, **settings))
    monkeypatch.undo()
    train_module.run(student_config(shards, tmp_path / "resumed", own_teacher, resume=True, **settings))
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in ("straight", "resumed"))
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key

    shutil.rmtree(own_teacher)
    score = run_score(ScoreConfig(shard_dir=str(shards), detector=str(tmp_path / "straight"),
                                  out=str(tmp_path / "score"), device="cpu", workers=0, resamples=0))
    assert score.counts["frames"] > 0 and score.extra["method"] == "sclkd"


def test_a_student_with_other_labels_than_its_teacher_is_refused(shards, teacher, tmp_path):
    # The teacher learnt from half the train videos' labels: a student with all of them would
    # not be distilled from the teacher the protocol means; one with fewer would be reported
    # as a few-label result it is not (the sample has too few videos for a smaller subset).
    for fraction in (1.0, None):
        with pytest.raises(LrerrError, match=rf"--teacher .*teacher: trained on the labels of \d+ train "
                                             rf"videos \(--label-fraction 0.5\), this run on \d+ "
                                             rf"\(--label-fraction {fraction}\)"):
            train_module.run(student_config(shards, tmp_path / f"student-{fraction}", teacher,
                                            label_fraction=fraction))
        assert not (tmp_path / f"student-{fraction}" / "checkpoints").exists()


def test_a_teacher_that_is_not_a_teacher_is_refused(shards, moco, teacher, tmp_path):
    plain = tmp_path / "xception"
    train_module.run(det_config(shards, plain, "xception", {"backbone": "test_resnet"}, {}))
    with pytest.raises(LrerrError, match=r"--teacher .*xception: a xception run, not a sclkd-teacher run"):
        train_module.run(student_config(shards, tmp_path / "student", plain))
    with pytest.raises(LrerrError, match=r"has --width 0.0625, the teacher 1.0 — pass --width 0.0625"):
        train_module.run(det_config(shards, tmp_path / "wide", "sclkd-teacher", {}, {"init": str(moco)}))
