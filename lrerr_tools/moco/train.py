"""The `train-moco` stage: MoCo v2 on the train faces, their labels never read (SCL-KD's
self-supervised first stage).

    run(MocoTrainConfig(shard_dir="work/shards", out="work/moco"))

Each step takes two aug-plus views of every face (`moco/augment.py`, on the device, from the
run's seeded stream), trains the query encoder by InfoNCE against the momentum encoder's
keys and the queue (`moco/model.py`), and enqueues the keys. After each epoch rank 0 measures
the features' health: the leave-one-out k-NN real/fake AUC of the query encoder's frozen
features on the val split. It is logged only, never used to pick an epoch: the run's product
is its last epoch. Runs plainly or under `torchrun`; `--batch-size` is the global batch.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader
from tqdm import tqdm

from lrerr_tools.blocks.xception import load_pretrained_xception
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import Manifest, StageDir, write_stage
from lrerr_tools.memory_format import channels_last
from lrerr_tools.moco.augment import aug_plus
from lrerr_tools.moco.model import Moco
from lrerr_tools.normalization import normalize_uint8
from lrerr_tools.run_dir import LOG_FILE, RunState, last_checkpoint, run_training
from lrerr_tools.shard_dataset import ShardDataset
from lrerr_tools.training import (
    CsvLogger,
    Distributed,
    amp_dtype,
    autocast,
    backward_step,
    build_optimizer,
    build_scheduler,
    check_finite,
    epoch_sampler,
    grad_scaler,
    restore_training_state,
    save_checkpoint,
    seed_everything,
    seeded_generator,
    unwrap,
    wrap_model,
)

log = logging.getLogger(__name__)

STAGE = "train-moco"
AUG_STREAM, SHUFFLE_STREAM = 0, 1  # seed parts of the run's random streams
KNN_NEIGHBOURS = 20
LOG_FIELDS = ["epoch", "step", "train_loss", "queue_fill", "val_knn_auc", "lr", "seconds", "images_per_s"]


@dataclass
class MocoTrainConfig:
    shard_dir: str
    out: str
    width: float = 1.0
    dim: int = 128
    queue_size: int = 65536
    momentum: float = 0.999
    temperature: float = 0.2
    bn_splits: int = 8
    crop_size: int = 224
    epochs: int = 200
    batch_size: int = 256
    lr: float = 0.03  # for a global batch of 256; scaled linearly with --batch-size
    weight_decay: float = 1e-4
    pretrained: bool = False
    weights: str | None = None
    device: str = "auto"
    amp: bool = True
    workers: int = 4
    resume: bool = False
    seed: int = 0
    max_steps: int | None = None
    overwrite: bool = False

    # How and where a run goes, not what it computes: a resume may change them.
    RUN_OPTIONS = ("shard_dir", "out", "device", "amp", "workers", "resume", "overwrite")

    def identity(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.RUN_OPTIONS}

    def check(self) -> None:
        if not 0 < self.width <= 1:
            raise LrerrError(f"--width must be in (0, 1] (got {self.width})")
        for name in ("dim", "queue_size", "bn_splits", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise LrerrError(f"--{name.replace('_', '-')} must be at least 1")
        if self.crop_size < 32:
            raise LrerrError(f"--crop-size must be at least 32 px (got {self.crop_size})")
        if not 0 <= self.momentum < 1:
            raise LrerrError(f"--momentum must be in [0, 1) (got {self.momentum})")
        for name in ("temperature", "lr"):
            if not getattr(self, name) > 0:
                raise LrerrError(f"--{name} must be positive (got {getattr(self, name)})")
        if self.weight_decay < 0:
            raise LrerrError(f"--weight-decay must be 0 or more (got {self.weight_decay})")
        if self.max_steps is not None and self.max_steps < 1:
            raise LrerrError("--max-steps must be at least 1")
        if self.workers < 0:
            raise LrerrError("--workers must be 0 or more")
        if self.queue_size % self.batch_size:
            lower = self.queue_size // self.batch_size * self.batch_size
            fits = " or ".join(str(n) for n in (lower, lower + self.batch_size) if n)
            raise LrerrError(f"--queue-size {self.queue_size} does not divide by the global --batch-size "
                             f"{self.batch_size}, so the keys would not tile the queue — use {fits}")

    @property
    def scaled_lr(self) -> float:
        return self.lr * self.batch_size / 256


def _check_batch(cfg: MocoTrainConfig, dist: Distributed, train: ShardDataset) -> int:
    """This rank's batch, or a one-line refusal naming the numbers that would work."""
    if cfg.batch_size % dist.world_size:
        raise LrerrError(f"--batch-size {cfg.batch_size} must divide evenly among {dist.world_size} "
                         "processes")
    rank_batch = cfg.batch_size // dist.world_size
    if not dist.enabled and cfg.batch_size % cfg.bn_splits:
        raise LrerrError(f"--bn-splits {cfg.bn_splits} must divide the --batch-size {cfg.batch_size}, so "
                         "that every part of the shuffle has as many faces")
    if len(train) < cfg.batch_size:
        raise LrerrError(f"the train split holds {len(train)} faces, fewer than one --batch-size of "
                         f"{cfg.batch_size} — use --batch-size {len(train)} or less")
    return rank_batch


def knn_auc(features: torch.Tensor, labels: np.ndarray, k: int = KNN_NEIGHBOURS) -> float | None:
    """Leave-one-out k-NN real/fake AUC: each face scored by the share of fakes among its k
    nearest other faces (cosine). None with fewer than 2 faces of each kind."""
    if min(np.bincount(labels, minlength=2)) < 2:
        return None
    normed = F.normalize(features.double(), dim=1)
    similarity = normed @ normed.T
    similarity.fill_diagonal_(-math.inf)
    nearest = similarity.topk(min(k, len(labels) - 1), dim=1).indices
    scores = torch.from_numpy(labels).double()[nearest].mean(1)
    return float(roc_auc_score(labels, scores.numpy()))


class _Trainer:
    def __init__(self, cfg: MocoTrainConfig, shards: StageDir, dist: Distributed, device: torch.device):
        self.cfg, self.shards, self.dist, self.device = cfg, shards, dist, device
        self.out = Path(cfg.out)
        # Every train face, real or fake; nothing below reads an item's label.
        self.train = ShardDataset(shards.path, split="train")
        self.val = ShardDataset(shards.path, split="val")
        self.rank_batch = _check_batch(cfg, dist, self.train)
        self.sampler = epoch_sampler(self.train, dist, cfg.seed)
        self.steps_per_epoch = len(self.sampler) // self.rank_batch  # full batches only: the queue tiles
        if cfg.max_steps:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps)
        self.dtype = amp_dtype(device, cfg.amp)

    def build(self, state: RunState) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        # Under torchrun each rank's batch norm is one part of the shuffle; in one process, splits.
        splits = 1 if self.dist.enabled else cfg.bn_splits
        model = channels_last(Moco(cfg.width, cfg.dim, cfg.queue_size, cfg.momentum, cfg.temperature, splits,
                                   self.dist))
        if state.checkpoint is None:
            load_pretrained_xception(model.encoder_q.backbone, cfg.pretrained, cfg.weights)
            model.encoder_k.load_state_dict(model.encoder_q.state_dict())
        model.to(self.device)
        self.optimizer = build_optimizer(model, "sgd", cfg.scaled_lr, weight_decay=cfg.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, "cosine", cfg.epochs * self.steps_per_epoch)
        self.scaler = grad_scaler(self.device, self.dtype)
        self.epoch, self.step, self.history = 0, 0, []
        if state.checkpoint is not None:
            restore_training_state(state.checkpoint, model, self.optimizer, self.scheduler, self.scaler)
            self.epoch, self.step = state.checkpoint["epoch"], state.checkpoint["step"]
            self.history = state.checkpoint["extra"]["history"]
            log.info("resuming %s after epoch %d (step %d)", self.out, self.epoch, self.step)
        self.model = wrap_model(model, self.dist, self.device)

    def views(self, faces: torch.Tensor, generator: torch.Generator) -> dict:
        size = self.cfg.crop_size
        query, key = (normalize_uint8(aug_plus(faces, size, generator) * 255, Moco.mean, Moco.std)
                      for _ in range(2))
        return {"query": query, "key": key}

    def train_epoch(self) -> tuple[float, float, int]:
        """Mean InfoNCE loss, seconds and images of one epoch (over all processes)."""
        cfg, dist = self.cfg, self.dist
        self.sampler.set_epoch(self.epoch)
        loader = DataLoader(self.train, batch_size=self.rank_batch, sampler=self.sampler, drop_last=True,
                            num_workers=cfg.workers, pin_memory=self.device.type == "cuda")
        augment = seeded_generator(cfg.seed, AUG_STREAM, self.epoch, dist.rank)
        shuffle = seeded_generator(cfg.seed, SHUFFLE_STREAM, self.epoch)  # the same on every rank
        bar = tqdm(total=self.steps_per_epoch * cfg.batch_size, unit="img", leave=False, dynamic_ncols=True,
                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=not dist.is_main)
        self.model.train()
        losses, start = [], time.perf_counter()
        for i, batch in enumerate(loader):
            if i == self.steps_per_epoch:
                break
            inputs = self.views(batch["image"].to(self.device, non_blocking=True), augment)
            inputs["shuffle"] = torch.randperm(cfg.batch_size, generator=shuffle).to(self.device)
            with autocast(self.device, self.dtype):
                loss = self.model(inputs)["loss"]
            value = dist.mean(loss.detach()).item()
            check_finite(value, self.epoch + 1, self.step + 1, last_checkpoint(self.out))
            backward_step(loss, self.optimizer, self.scaler)
            self.scheduler.step()
            self.step += 1
            losses.append(value)
            bar.update(cfg.batch_size)
            bar.set_postfix(loss=f"{value:.4f}")
        bar.close()
        return float(np.mean(losses)), time.perf_counter() - start, self.steps_per_epoch * cfg.batch_size

    @torch.no_grad()
    def health(self) -> float | None:
        """The val faces' k-NN AUC on the query encoder's pooled features, at the crop size."""
        if len(self.val) == 0:
            return None
        encoder = unwrap(self.model).encoder_q
        was_training = encoder.training
        encoder.eval()
        features = []
        for batch in DataLoader(self.val, batch_size=self.rank_batch, num_workers=self.cfg.workers):
            faces = normalize_uint8(batch["image"].to(self.device), Moco.mean, Moco.std)
            faces = F.interpolate(faces, size=self.cfg.crop_size, mode="bilinear", antialias=True,
                                  align_corners=False)
            features.append(encoder.features(faces).float().cpu())
        encoder.train(was_training)
        return knn_auc(torch.cat(features), self.val.labels.astype(np.int64))

    def fit(self) -> None:
        cfg, dist = self.cfg, self.dist
        logger = CsvLogger(self.out / LOG_FILE, LOG_FIELDS, self.history) if dist.is_main else None
        while self.epoch < cfg.epochs:
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss, seconds, images = self.train_epoch()
            self.epoch += 1
            if dist.is_main:
                record = {"epoch": self.epoch, "step": self.step, "train_loss": train_loss,
                          "queue_fill": unwrap(self.model).queue_fill, "val_knn_auc": self.health(),
                          "lr": lr, "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 2)}
                self.history.append(record)
                logger.log(record)
                auc = record["val_knn_auc"]
                log.info("epoch %d/%d: InfoNCE %.4f | queue %.0f%% full | val k-NN AUC %s | %.1f img/s",
                         self.epoch, cfg.epochs, train_loss, 100 * record["queue_fill"],
                         "n/a" if auc is None else f"{auc:.3f}", record["images_per_s"])
                save_checkpoint(last_checkpoint(self.out), self.model, optimizer=self.optimizer,
                                scheduler=self.scheduler, scaler=self.scaler, extra={"history": self.history},
                                **self._checkpoint_fields())
                self.write_manifest()
            dist.barrier()

    def _checkpoint_fields(self) -> dict:
        return dict(config=asdict(self.cfg), parent=self.shards.as_parent(self.out), epoch=self.epoch,
                    step=self.step, model_config=unwrap(self.model).config)

    def write_manifest(self) -> None:
        """The manifest and records of the epochs done so far, complete after the last."""
        val = self.val.labels
        counts = {"epochs": self.epoch, "steps": self.step, "train_images": len(self.train),
                  "val_real": int((val == 0).sum()), "val_fake": int((val == 1).sum())}
        extra = {"model": unwrap(self.model).config, "last": self.history[-1],
                 "world_size": self.dist.world_size, "lr": self.cfg.scaled_lr,
                 "checkpoints": {"last": str(last_checkpoint(Path()))}}
        manifest = Manifest(stage=STAGE, config=asdict(self.cfg), parent=self.shards.as_parent(self.out),
                            counts=counts, complete=self.epoch == self.cfg.epochs, extra=extra)
        write_stage(self.out, manifest, self.history)


def run(cfg: MocoTrainConfig) -> Manifest:
    """Train (or resume, or find finished) the MoCo run `cfg.out`; returns its manifest."""
    return run_training(cfg, STAGE, _Trainer)
