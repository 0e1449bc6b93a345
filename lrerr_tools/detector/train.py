"""Stage `train-det`: train LRErr's detector (paper §III.C) or the plain Xception baseline.

    RUN_DIR/manifest.json, records.jsonl, log.csv, checkpoints/{last,best}.pt   (see run_dir.py)

`--method lrerr`: every face is masked over its key region and reconstructed by the frozen
MAE (`reconstruction.py`); a frozen copy of the backbone gives features of the face and of
the reconstruction at `--attn-layers`, their local difference attention A_i scales the
trainable backbone's maps at the same layers, and one logit is trained with BCE.
`--method xception` is the same loop without the MAE and the maps: the Table V baseline.
Two runs that differ only in --method start from the same weights and see the same batches.

Each epoch is `--iters-per-epoch` steps of real/fake-balanced batches (drawn with
replacement, seeded by (seed, epoch, rank), so a resumed run draws what an uninterrupted one
would). After each, the val split is scored and best.pt follows the frame-level val AUC — frame
rather than video level because it rests on every face, not on a few dozen video means; the
video AUC is logged beside it. With one class or none in val, best.pt follows the train loss.
Runs plainly or under `torchrun` (DDP); `--batch-size` is the global batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from lrerr_tools.attention import XCEPTION_LAYERS, make_backbone
from lrerr_tools.detector.checkpoint import STAGE, check_same_mae, load_reconstructor
from lrerr_tools.detector.model import METHODS, Detector, prepare_inputs
from lrerr_tools.detector.predict import predict
from lrerr_tools.detector.provenance import describe_split
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import Manifest, StageDir, write_stage
from lrerr_tools.metrics import compute_metrics
from lrerr_tools.run_dir import LOG_FILE, RunState, best_checkpoint, last_checkpoint, run_training
from lrerr_tools.shard_dataset import ShardDataset, balanced_sampler
from lrerr_tools.training import (
    CsvLogger,
    Distributed,
    amp_dtype,
    autocast,
    backward_step,
    build_optimizer,
    build_scheduler,
    check_finite,
    grad_scaler,
    restore_training_state,
    save_checkpoint,
    seed_everything,
    seeded_generator,
    wrap_model,
)

log = logging.getLogger(__name__)

SAMPLE_STREAM = 0  # seed part of the batch draws (reconstruction masks use 1)
VAL_LEVEL = "frame"
VAL_FIELDS = ["val_loss", "val_acc", "val_auc", "val_video_auc"]
LOG_FIELDS = ["epoch", "step", "train_loss", "train_acc", *VAL_FIELDS, "lr", "seconds", "images_per_s"]


@dataclass
class DetTrainConfig:
    shard_dir: str
    out: str
    mae: str | None = None
    method: str = "lrerr"
    methods: list[str] | None = None
    backbone: str = "legacy_xception"
    attn_layers: list[str] = field(default_factory=lambda: list(XCEPTION_LAYERS))
    pretrained: bool = True
    weights: str | None = None
    epochs: int = 30
    iters_per_epoch: int = 200
    batch_size: int = 32
    lr: float = 1e-4
    device: str = "auto"
    amp: bool = True
    workers: int = 4
    resume: bool = False
    seed: int = 0
    overwrite: bool = False

    # How and where a run goes, not what it computes: a resume may change them. The MAE is
    # identified by its manifest hash (checked separately), not by where it lies.
    RUN_OPTIONS = ("shard_dir", "out", "mae", "device", "amp", "workers", "resume", "overwrite")

    def identity(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.RUN_OPTIONS}

    def check(self) -> None:
        if self.method not in METHODS:
            raise LrerrError(f"--method must be one of {', '.join(METHODS)} (got {self.method!r})")
        if self.method == "lrerr" and not self.mae:
            raise LrerrError("--method lrerr needs --mae RUN_DIR (a finished train-mae run)")
        if self.method == "xception" and self.mae:
            raise LrerrError("--mae is for --method lrerr; the xception baseline uses no MAE — drop --mae")
        for name in ("epochs", "iters_per_epoch", "batch_size"):
            if getattr(self, name) < 1:
                raise LrerrError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.lr > 0:
            raise LrerrError(f"--lr must be positive (got {self.lr})")
        if self.workers < 0:
            raise LrerrError("--workers must be 0 or more")
        if not self.attn_layers:
            raise LrerrError("--attn-layers: name at least one layer")
        if self.methods is not None:
            if not self.methods:
                raise LrerrError("--methods: name at least one fake method, or leave it out for all")
            self.methods = sorted(set(self.methods))  # the same training, whatever order they are named in


def _datasets(shards: StageDir, methods: list[str] | None) -> tuple[ShardDataset, ShardDataset]:
    """The train and val faces: all reals, and the fakes of `methods` (None: all)."""
    if methods is not None:
        present = describe_split(shards, "train")["methods"]
        absent = [m for m in methods if m not in present]
        if absent:
            raise LrerrError(f"--methods: no fake faces of {', '.join(absent)} in the train split of "
                             f"{shards.path} (it has {', '.join(present) or 'none'})")
    train = ShardDataset(shards.path, split="train", fake_methods=methods)
    counts = np.bincount(train.labels, minlength=2)
    if 0 in counts:
        missing = "real" if counts[0] == 0 else "fake"
        raise LrerrError(f"{shards.path}: no {missing} faces in the train split — the detector needs both")
    # Model selection on the same manipulations as training, as in the single-method protocols.
    val = ShardDataset(shards.path, split="val", fake_methods=methods)
    counts = np.bincount(val.labels, minlength=2)
    if 0 in counts:
        what = f"only {'real' if counts[1] == 0 else 'fake'} val faces" if counts.sum() else "no val faces"
        log.info("%s: the val AUC is undefined, so best.pt follows the lowest train loss", what)
    return train, val


class _Trainer:
    def __init__(self, cfg: DetTrainConfig, shards: StageDir, dist: Distributed, device: torch.device):
        self.cfg, self.shards, self.dist, self.device = cfg, shards, dist, device
        self.out = Path(cfg.out)
        self.train, self.val = _datasets(shards, cfg.methods)
        if cfg.batch_size % dist.world_size:
            raise LrerrError(f"--batch-size {cfg.batch_size} must divide evenly among {dist.world_size} "
                             "processes")
        self.rank_batch = cfg.batch_size // dist.world_size
        self.dtype = amp_dtype(device, cfg.amp)
        self.reconstructor = None
        if cfg.method == "lrerr":
            self.reconstructor = load_reconstructor(cfg.mae, cfg.seed, device)
            for dataset in (self.train, self.val):
                self.reconstructor.check(dataset)
        self.mae = self.reconstructor.info.as_parent(self.out) if self.reconstructor else None
        self.train_data = describe_split(shards, "train", cfg.methods)

    def check_mae(self, recorded: dict | None) -> None:
        """A run resumed or found finished must have been trained with this very MAE."""
        if self.mae is not None:
            check_same_mae(self.out, recorded, self.mae["sha256"], f"the detector run in {self.out}")

    def build(self, state: RunState) -> None:
        cfg = self.cfg
        # Seeded after the MAE is loaded, so lrerr and xception runs start from the same weights.
        seed_everything(cfg.seed)
        backbone = make_backbone(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.weights)
        self.detector = Detector(backbone, cfg.attn_layers, cfg.method).to(self.device)
        self.optimizer = build_optimizer(self.detector.backbone, "adam", cfg.lr)
        self.scheduler = build_scheduler(self.optimizer, "adam", 0, cfg.epochs * cfg.iters_per_epoch)
        self.scaler = grad_scaler(self.device, self.dtype)
        self.epoch, self.step, self.history = 0, 0, []
        if state.checkpoint is not None:
            restore_training_state(state.checkpoint, self.detector, self.optimizer, self.scheduler,
                                   self.scaler)
            self.epoch, self.step = state.checkpoint["epoch"], state.checkpoint["step"]
            self.history = state.checkpoint["extra"]["history"]
            log.info("resuming %s after epoch %d (step %d)", self.out, self.epoch, self.step)
        self.model = wrap_model(self.detector, self.dist, self.device)

    def train_epoch(self) -> tuple[float, float, float, int]:
        """Mean train loss and accuracy, seconds and images of one epoch (over all processes)."""
        cfg, dist = self.cfg, self.dist
        seed = seeded_generator(cfg.seed, SAMPLE_STREAM, self.epoch, dist.rank).initial_seed()
        sampler = balanced_sampler(self.train, cfg.iters_per_epoch * self.rank_batch, seed=seed)
        loader = DataLoader(self.train, batch_size=self.rank_batch, sampler=sampler, num_workers=cfg.workers,
                            pin_memory=self.device.type == "cuda")
        bar = tqdm(total=cfg.iters_per_epoch * cfg.batch_size, unit="img", leave=False, dynamic_ncols=True,
                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=not dist.is_main)
        self.model.train()
        losses, accs, start = [], [], time.perf_counter()
        for batch in loader:
            inputs = prepare_inputs(self.detector, self.reconstructor, batch, self.device, self.dtype)
            labels = batch["label"].to(self.device).float()
            with autocast(self.device, self.dtype):
                logits = self.model(inputs.images, inputs.maps)
            loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
            value = dist.mean(loss.detach()).item()
            check_finite(value, self.epoch + 1, self.step + 1, last_checkpoint(self.out))
            backward_step(loss, self.optimizer, self.scaler)
            self.scheduler.step()
            self.step += 1
            losses.append(value)
            accs.append(dist.mean(((logits.detach() >= 0) == labels.bool()).float().mean()).item())
            bar.update(cfg.batch_size)
            bar.set_postfix(loss=f"{value:.4f}")
        bar.close()
        images = cfg.iters_per_epoch * cfg.batch_size
        return float(np.mean(losses)), float(np.mean(accs)), time.perf_counter() - start, images

    def validate(self) -> dict:
        if len(self.val) == 0:
            return dict.fromkeys(VAL_FIELDS)
        rows, logits = predict(self.detector, self.reconstructor, self.val, batch_size=self.rank_batch,
                               workers=self.cfg.workers, device=self.device, dtype=self.dtype, desc="val")
        labels = np.array([r["label"] for r in rows], dtype=np.float64)
        loss = F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(labels)).item()
        metrics = compute_metrics(rows)
        return {"val_loss": loss, "val_acc": metrics[VAL_LEVEL]["acc"], "val_auc": metrics[VAL_LEVEL]["auc"],
                "val_video_auc": metrics["video"]["auc"]}

    def fit(self) -> None:
        cfg, dist = self.cfg, self.dist
        logger = CsvLogger(self.out / LOG_FILE, LOG_FIELDS, self.epoch) if dist.is_main else None
        while self.epoch < cfg.epochs:
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss, train_acc, seconds, images = self.train_epoch()
            self.epoch += 1
            if dist.is_main:
                record = {"epoch": self.epoch, "step": self.step, "train_loss": train_loss,
                          "train_acc": train_acc, **self.validate(), "lr": lr, "seconds": round(seconds, 3),
                          "images_per_s": round(images / seconds, 2)}
                self.history.append(record)
                logger.log(record)
                self._report(record)
                self._save()
                self._write_manifest(complete=self.epoch == cfg.epochs)
            dist.barrier()

    def _report(self, r: dict) -> None:
        def fmt(value, spec=".4f"):
            return "n/a" if value is None else format(value, spec)

        log.info("epoch %d/%d: train loss %s acc %s | val loss %s acc %s AUC frame %s video %s | %s img/s",
                 r["epoch"], self.cfg.epochs, fmt(r["train_loss"]), fmt(r["train_acc"], ".3f"),
                 fmt(r["val_loss"]), fmt(r["val_acc"], ".3f"), fmt(r["val_auc"], ".3f"),
                 fmt(r["val_video_auc"], ".3f"), fmt(r["images_per_s"], ".1f"))

    def _best(self) -> dict:
        if self.history[0]["val_auc"] is not None:
            best = max(self.history, key=lambda r: r["val_auc"])  # the earliest of ties
            return {"epoch": best["epoch"], "metric": "val_auc", "level": VAL_LEVEL, "value": best["val_auc"]}
        best = min(self.history, key=lambda r: r["train_loss"])
        return {"epoch": best["epoch"], "metric": "train_loss", "value": best["train_loss"],
                "note": "val has one class or none, so the AUC is undefined: best is the lowest train loss"}

    def _save(self) -> None:
        common = dict(config=asdict(self.cfg), parent=self.shards.as_parent(self.out), epoch=self.epoch,
                      step=self.step,
                      model_config={"backbone": self.cfg.backbone, "attn_layers": self.cfg.attn_layers,
                                    "method": self.cfg.method})
        if self._best()["epoch"] == self.epoch:
            save_checkpoint(best_checkpoint(self.out), self.model, extra={"mae": self.mae}, **common)
        save_checkpoint(last_checkpoint(self.out), self.model, optimizer=self.optimizer,
                        scheduler=self.scheduler, scaler=self.scaler,
                        extra={"history": self.history, "mae": self.mae}, **common)

    def _write_manifest(self, complete: bool) -> None:
        val_labels = np.asarray(self.val.labels)
        counts = {"epochs": self.epoch, "steps": self.step, "train_real": int((self.train.labels == 0).sum()),
                  "train_fake": int((self.train.labels == 1).sum()), "val_real": int((val_labels == 0).sum()),
                  "val_fake": int((val_labels == 1).sum())}
        extra = {"method": self.cfg.method, "mae": self.mae, "train_data": self.train_data,
                 "normalization": {"mean": list(self.detector.mean), "std": list(self.detector.std)},
                 "best": self._best(), "last": self.history[-1], "world_size": self.dist.world_size,
                 "checkpoints": {"best": str(best_checkpoint(Path())), "last": str(last_checkpoint(Path()))}}
        manifest = Manifest(stage=STAGE, config=asdict(self.cfg), parent=self.shards.as_parent(self.out),
                            counts=counts, complete=complete, extra=extra)
        write_stage(self.out, manifest, self.history)


def run(cfg: DetTrainConfig) -> Manifest:
    """Train (or resume, or find finished) the detector run `cfg.out`; returns its manifest."""
    return run_training(cfg, STAGE, _Trainer,
                        check_found=lambda trainer, extra: trainer.check_mae(extra["mae"]))
