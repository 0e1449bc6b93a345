"""The `train-mae` stage (paper §III.B): a masked autoencoder trained on real faces only.

    run(MaeTrainConfig(shard_dir="work/shards", out="work/mae", preset="base"))

Each epoch trains on the real faces of the train split under key-region masking, then
(rank 0) evaluates the val split with fixed masks — loss on reals and fakes and the AUC of
the key-region error as a fake score — writes a reconstruction grid, logs, and checkpoints.
`best.pt` is the epoch with the lowest val-real loss (train loss without val reals); it is
what `load_mae` gives the detector. Runs plainly or under `torchrun` (DDP, one process per
device); `--batch-size` is the global batch, split across processes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from lrerr_tools.errors import LrerrError
from lrerr_tools.mae.augment import colour_jitter, horizontal_flip
from lrerr_tools.mae.evaluate import VAL_METRICS, evaluate
from lrerr_tools.mae.grid import reconstruction_grid, write_grid
from lrerr_tools.mae.masking import MaskingSettings, key_masks_for, key_region_mask, uncovered_key_region
from lrerr_tools.mae.model import GRID, PATCH, PRESETS, MaskedAutoencoder
from lrerr_tools.mae.pretrained import load_encoder
from lrerr_tools.manifest import Manifest, StageDir, write_stage
from lrerr_tools.normalization import to_mae_input
from lrerr_tools.run_dir import (
    LOG_FILE,
    RunState,
    best_checkpoint,
    last_checkpoint,
    run_training,
)
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

STAGE = "train-mae"
GRIDS = "grids"
TRAIN_STREAM, GRID_STREAM = 0, 2  # seed parts of the run's random streams (evaluate uses 1)
GRID_FACES = 2  # per class
LOG_FIELDS = ["epoch", "step", "train_loss", *VAL_METRICS, "lr", "seconds", "images_per_s"]
# `adam` is the paper's plain setting; `adamw` the MAE recipe: betas (0.9, 0.95), weight
# decay 0.05 on weight matrices only, warm-up then cosine.
OPTIMIZER_RECIPES = {"adam": {}, "adamw": {"weight_decay": 0.05, "betas": (0.9, 0.95),
                                           "no_weight_decay": ("cls_token", "mask_token")}}
SCHEDULE = {"adam": "constant", "adamw": "cosine"}


@dataclass
class MaeTrainConfig:
    shard_dir: str
    out: str
    preset: str = "base"
    epochs: int = 300
    batch_size: int = 32
    lr: float = 1e-4
    optimizer: str = "adam"
    warmup_epochs: int = 15
    mask_ratio: float = 0.75
    key_mask_ratio: float = 0.9
    key_region: str = "dataset"
    norm_pix: bool = False
    init: str | None = None
    device: str = "auto"
    amp: bool = True
    workers: int = 4
    resume: bool = False
    seed: int = 0
    max_steps: int | None = None
    # Validate (and draw the grid) every K epochs and after the last; None: every epoch, as
    # runs made before the option did (so they still resume).
    eval_every: int | None = None
    # Strength of per-face colour jitter in training (lrerr_tools/mae/augment.py); 0, the
    # paper's (which names no augmentation), leaves the faces as they are.
    colour_jitter: float = 0.0
    # Probability of mirroring a training face and its key region (augment.py); 0, the paper's.
    flip: float = 0.0
    overwrite: bool = False

    # How and where a run goes, not what it computes: a resume may change them.
    RUN_OPTIONS = ("shard_dir", "out", "device", "amp", "workers", "resume", "overwrite")

    def identity(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.RUN_OPTIONS}

    @property
    def masking(self) -> MaskingSettings:
        return MaskingSettings(self.mask_ratio, self.key_mask_ratio, self.key_region)

    def check(self) -> None:
        self.masking.check()
        if self.preset not in PRESETS:
            raise LrerrError(f"--preset must be one of {', '.join(PRESETS)} (got {self.preset!r})")
        if self.optimizer not in OPTIMIZER_RECIPES:
            raise LrerrError(f"--optimizer must be one of {', '.join(OPTIMIZER_RECIPES)} "
                             f"(got {self.optimizer!r})")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise LrerrError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise LrerrError("--max-steps must be at least 1")
        if not 0 <= self.flip <= 1:
            raise LrerrError(f"--flip must be a probability in [0, 1] (got {self.flip})")
        if not 0 <= self.colour_jitter < 1:
            raise LrerrError(f"--colour-jitter must be in [0, 1) (got {self.colour_jitter})")
        if self.eval_every is not None and self.eval_every < 1:
            raise LrerrError(f"--eval-every must be at least 1 (got {self.eval_every})")
        if not self.lr > 0:
            raise LrerrError(f"--lr must be positive (got {self.lr})")
        if self.optimizer == "adamw" and not 0 <= self.warmup_epochs < self.epochs:
            raise LrerrError(f"--warmup-epochs must be in [0, --epochs) (got {self.warmup_epochs} of "
                             f"{self.epochs})")
        if self.workers < 0:
            raise LrerrError("--workers must be 0 or more")


def _datasets(shards: StageDir, masking: MaskingSettings) -> tuple[ShardDataset, ShardDataset, list[int]]:
    train = ShardDataset(shards.path, split="train", labels=[0], fields=("key_mask",))
    if len(train) == 0:
        raise LrerrError(f"{shards.path}: no real faces in the train split — train-mae learns from real "
                         "faces only")
    region = train.key_region or {}
    if (region.get("grid"), region.get("patch")) != (GRID, PATCH) or not region.get("patches"):
        raise LrerrError(f"{shards.path}: the key region is given on a {region.get('grid')}x"
                         f"{region.get('grid')} grid of {region.get('patch')} px patches; the MAE needs "
                         f"{GRID}x{GRID} of {PATCH} px — rerun landmarks with --patch {PATCH}")
    uncovered = uncovered_key_region(len(region["patches"]), GRID * GRID, masking)
    if uncovered and masking.key_region == "dataset":
        raise LrerrError(uncovered)
    val = ShardDataset(shards.path, split="val", fields=("key_mask",))
    counts = np.bincount(val.labels, minlength=2)
    if counts.sum() == 0:
        log.info("no val faces: best.pt follows the train loss, and there is no key-region AUC")
    elif 0 in counts:
        log.info("val has only %s faces: the key-region AUC is undefined (logged empty)",
                 "real" if counts[1] == 0 else "fake")
    return train, val, list(region["patches"])


def _grid_faces(train: ShardDataset, val: ShardDataset, cfg: MaeTrainConfig,
                patches: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A few fixed faces and masks for the grids: real and fake val faces, or train reals."""
    source, picks = val if len(val) else train, []
    for label in (0, 1):
        where = np.flatnonzero(source.labels == label)
        spread = np.linspace(0, len(where) - 1, min(GRID_FACES, len(where))).round().astype(int)
        picks += where[spread].tolist()
    items = [source[i] for i in picks]
    key = key_masks_for(torch.stack([it["key_mask"] for it in items]), patches, cfg.key_region)
    masks = key_region_mask(key, cfg.mask_ratio, cfg.key_mask_ratio, seeded_generator(cfg.seed, GRID_STREAM))
    captions = [f"{'fake' if it['label'] else 'real'} {it['video_id']} #{it['frame_index']}" for it in items]
    return torch.stack([it["image"] for it in items]), masks, captions


class _Trainer:
    def __init__(self, cfg: MaeTrainConfig, shards: StageDir, dist: Distributed, device: torch.device):
        self.cfg, self.shards, self.dist, self.device = cfg, shards, dist, device
        self.out = Path(cfg.out)
        self.train, self.val, self.patches = _datasets(shards, cfg.masking)
        if cfg.batch_size % dist.world_size:
            raise LrerrError(f"--batch-size {cfg.batch_size} must divide evenly among {dist.world_size} "
                             "processes")
        self.rank_batch = cfg.batch_size // dist.world_size
        self.sampler = epoch_sampler(self.train, dist, cfg.seed)
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.rank_batch)
        if cfg.max_steps:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps)
        self.dtype = amp_dtype(device, cfg.amp)

    def build(self, state: RunState) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        model = MaskedAutoencoder(cfg.preset, norm_pix=cfg.norm_pix)
        self.init_file = None
        if cfg.init and state.checkpoint is None:
            self.init_file = load_encoder(model, cfg.init)
            log.info("encoder initialised from %s", self.init_file)
        model.to(self.device)
        self.optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, **OPTIMIZER_RECIPES[cfg.optimizer])
        warmup = cfg.warmup_epochs * self.steps_per_epoch if cfg.optimizer == "adamw" else 0
        self.scheduler = build_scheduler(self.optimizer, SCHEDULE[cfg.optimizer],
                                         cfg.epochs * self.steps_per_epoch, warmup_steps=warmup)
        self.scaler = grad_scaler(self.device, self.dtype)
        self.epoch, self.step, self.history = 0, 0, []
        if state.checkpoint is not None:
            restore_training_state(state.checkpoint, model, self.optimizer, self.scheduler, self.scaler)
            self.epoch, self.step = state.checkpoint["epoch"], state.checkpoint["step"]
            self.history = state.checkpoint["extra"]["history"]
            self.init_file = state.checkpoint["extra"].get("init_file")
            log.info("resuming %s after epoch %d (step %d)", self.out, self.epoch, self.step)
        self.model = wrap_model(model, self.dist, self.device)

    def train_epoch(self) -> tuple[float, float, int]:
        """Mean train loss, seconds and images of one epoch (over all processes)."""
        cfg, dist = self.cfg, self.dist
        self.sampler.set_epoch(self.epoch)
        loader = DataLoader(self.train, batch_size=self.rank_batch, sampler=self.sampler,
                            num_workers=cfg.workers, pin_memory=self.device.type == "cuda")
        generator = seeded_generator(cfg.seed, TRAIN_STREAM, self.epoch, dist.rank)
        total_images = min(len(self.sampler), self.steps_per_epoch * self.rank_batch) * dist.world_size
        bar = tqdm(total=total_images, unit="img", desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   disable=not dist.is_main, leave=False, dynamic_ncols=True)
        self.model.train()
        losses, images_seen, start = [], 0, time.perf_counter()
        for i, batch in enumerate(loader):
            if i == self.steps_per_epoch:
                break
            key = key_masks_for(batch["key_mask"], self.patches, cfg.key_region)
            faces = batch["image"].to(self.device, non_blocking=True)
            faces, key = horizontal_flip(faces, key, cfg.flip, generator)
            mask = key_region_mask(key, cfg.mask_ratio, cfg.key_mask_ratio, generator).to(self.device)
            images = to_mae_input(colour_jitter(faces, cfg.colour_jitter, generator))
            with autocast(self.device, self.dtype):
                _, loss = self.model(images, mask)
            value = dist.mean(loss.detach()).item()
            check_finite(value, self.epoch + 1, self.step + 1, last_checkpoint(self.out))
            backward_step(loss, self.optimizer, self.scaler)
            self.scheduler.step()
            self.step += 1
            losses.append(value)
            images_seen += len(images) * dist.world_size
            bar.update(len(images) * dist.world_size)
            bar.set_postfix(loss=f"{value:.4f}")
        bar.close()
        return float(np.mean(losses)), time.perf_counter() - start, images_seen

    def fit(self) -> None:
        cfg, dist = self.cfg, self.dist
        logger = CsvLogger(self.out / LOG_FILE, LOG_FIELDS, self.history) if dist.is_main else None
        grid_faces = _grid_faces(self.train, self.val, cfg, self.patches) if dist.is_main else None
        while self.epoch < cfg.epochs:
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss, seconds, images = self.train_epoch()
            self.epoch += 1
            if dist.is_main:
                evaluated = len(self.val) and self._evaluates(self.epoch)
                metrics = evaluate(unwrap(self.model), self.val, masking=cfg.masking,
                                   dataset_patches=self.patches, batch_size=cfg.batch_size,
                                   workers=cfg.workers, device=self.device, dtype=self.dtype,
                                   seed=cfg.seed) if evaluated else dict.fromkeys(VAL_METRICS)
                record = {"epoch": self.epoch, "step": self.step, "train_loss": train_loss, **metrics,
                          "lr": lr, "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 2)}
                self.history.append(record)
                logger.log(record)
                self._report(record)
                # The epoch's artefacts before its checkpoint, which commits the epoch: a kill
                # before it redoes the epoch and rewrites them alike, a kill after finds them.
                if self._evaluates(self.epoch):
                    write_grid(self.out / GRIDS / f"epoch-{self.epoch:03d}.png",
                               reconstruction_grid(unwrap(self.model), *grid_faces, self.device))
                self._save()
                self.write_manifest()
            dist.barrier()

    def _report(self, r: dict) -> None:
        def fmt(value, spec=".4f"):
            return "n/a" if value is None else format(value, spec)

        log.info("epoch %d/%d: train loss %s | val loss real %s fake %s | key-region error real %s fake %s "
                 "| key AUC %s | %s img/s", r["epoch"], self.cfg.epochs, fmt(r["train_loss"]),
                 fmt(r["val_real_loss"]), fmt(r["val_fake_loss"]), fmt(r["val_real_key_error"]),
                 fmt(r["val_fake_key_error"]), fmt(r["key_auc"], ".3f"), fmt(r["images_per_s"], ".1f"))

    def _evaluates(self, epoch: int) -> bool:
        return epoch == self.cfg.epochs or epoch % (self.cfg.eval_every or 1) == 0

    def _best(self) -> dict:
        """The epoch of the lowest val real loss among the epochs validated, or of the lowest
        train loss while none has been (or val has no reals)."""
        validated = [r for r in self.history if r["val_real_loss"] is not None]
        metric = "val_real_loss" if validated else "train_loss"
        best = min(validated or self.history, key=lambda r: r[metric])
        return {"epoch": best["epoch"], "metric": metric, "value": best[metric]}

    def _save(self) -> None:
        common = dict(config=asdict(self.cfg), parent=self.shards.as_parent(self.out), epoch=self.epoch,
                      step=self.step, model_config=unwrap(self.model).config)
        if self._best()["epoch"] == self.epoch:
            save_checkpoint(best_checkpoint(self.out), self.model, **common)
        save_checkpoint(last_checkpoint(self.out), self.model, optimizer=self.optimizer,
                        scheduler=self.scheduler, scaler=self.scaler,
                        extra={"history": self.history, "init_file": self.init_file}, **common)

    def write_manifest(self) -> None:
        """The manifest and records of the epochs done so far, complete after the last."""
        counts = {"epochs": self.epoch, "steps": self.step, "train_images": len(self.train),
                  "val_real": int((self.val.labels == 0).sum()),
                  "val_fake": int((self.val.labels == 1).sum())}
        extra = {"model": unwrap(self.model).config, "masking": asdict(self.cfg.masking),
                 "key_patches": self.patches, "best": self._best(), "last": self.history[-1],
                 "world_size": self.dist.world_size, "init_file": self.init_file,
                 "checkpoints": {"best": str(best_checkpoint(Path())), "last": str(last_checkpoint(Path()))}}
        manifest = Manifest(stage=STAGE, config=asdict(self.cfg), parent=self.shards.as_parent(self.out),
                            counts=counts, complete=self.epoch == self.cfg.epochs, extra=extra)
        write_stage(self.out, manifest, self.history)


def run(cfg: MaeTrainConfig) -> Manifest:
    """Train (or resume, or find finished) the MAE run `cfg.out`; returns its manifest."""
    return run_training(cfg, STAGE, _Trainer, (GRIDS,))

