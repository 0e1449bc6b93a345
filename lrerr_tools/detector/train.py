"""Stage `train-det`: train any registered detection method (`lrerr_tools/methods/`) on the
shards: LRErr (paper §III.C), its Xception baseline, RECCE, ...

    RUN_DIR/manifest.json, records.jsonl, log.csv, checkpoints/{last,best}.pt   (see run_dir.py)

The method supplies the network, its frozen context (LRErr's MAE, from the parent run given
as `--mae`), the inputs step and the named losses; this loop is the same for all. Two runs
that differ only in --method see the same batches, and start from the same weights where
their networks agree.

Each epoch is `--iters-per-epoch` steps of real/fake-balanced batches (drawn with
replacement, seeded by (seed, epoch, rank), so a resumed run draws what an uninterrupted one
would). After each, the val split is scored and best.pt follows the frame-level val AUC — frame
rather than video level because it rests on every face, not on a few dozen video means; the
video AUC is logged beside it. With one class or none in val, best.pt follows the train loss.
`val_loss` is the BCE of the val logits, whatever the method trains with.
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

from lrerr_tools.detector.checkpoint import STAGE, check_same_parent, open_parents
from lrerr_tools.detector.predict import EVAL_PRECISION, predict
from lrerr_tools.detector.provenance import describe_split
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import Manifest, StageDir, write_stage
from lrerr_tools.methods import get_method
from lrerr_tools.methods.base import Method, OptimizerDefaults
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
    check_optimizer,
    check_schedule,
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
RECIPE_FIELDS = tuple(f.name for f in fields(OptimizerDefaults))


def log_fields(method: Method) -> list[str]:
    """log.csv's columns: the total loss, then each of the method's named terms."""
    return ["epoch", "step", "train_loss", *(f"train_{t}" for t in method.loss_terms), "train_acc",
            *VAL_FIELDS, "lr", "seconds", "images_per_s"]


@dataclass
class DetTrainConfig:
    shard_dir: str
    out: str
    method: str = "lrerr"
    options: dict = field(default_factory=dict)  # the method's options; check() fills in the defaults
    parents: dict = field(default_factory=dict)  # the method's parent runs by name, e.g. {"mae": DIR}
    methods: list[str] | None = None
    pretrained: bool = True
    weights: str | None = None
    epochs: int = 30
    iters_per_epoch: int = 200
    batch_size: int = 32
    # None: the method's recipe (OptimizerDefaults); check() records the value used.
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    step_size: int | None = None
    gamma: float | None = None
    device: str = "auto"
    amp: bool = True
    workers: int = 4
    resume: bool = False
    seed: int = 0
    overwrite: bool = False

    # How and where a run goes, not what it computes: a resume may change them. Parent runs
    # are identified by their manifest hashes (checked separately), not by where they lie.
    RUN_OPTIONS = ("shard_dir", "out", "parents", "device", "amp", "workers", "resume", "overwrite")

    def identity(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.RUN_OPTIONS}

    def check(self) -> Method:
        """Refuse bad settings in one line; resolve the method's options and recipe in place."""
        method = get_method(self.method).resolve(self.options)
        self.options = method.settings
        method.check_start(self.pretrained, self.weights)
        for parent in method.parents:
            if not self.parents.get(parent.name):
                raise LrerrError(f"--method {method.name} needs {parent.flag} RUN_DIR (a finished "
                                 f"{parent.stage} run: {parent.help})")
        for name in self.parents:
            if name not in {p.name for p in method.parents}:
                raise LrerrError(method.not_an_option("--" + name.replace("_", "-")))
        for name in RECIPE_FIELDS:
            if getattr(self, name) is None:
                setattr(self, name, getattr(method.recipe, name))
        for name in ("epochs", "iters_per_epoch", "batch_size"):
            if getattr(self, name) < 1:
                raise LrerrError(f"--{name.replace('_', '-')} must be at least 1")
        check_optimizer(self.optimizer)
        check_schedule(self.schedule, self.step_size)
        if not self.lr > 0:
            raise LrerrError(f"--lr must be positive (got {self.lr})")
        if not self.weight_decay >= 0:
            raise LrerrError(f"--weight-decay must be 0 or more (got {self.weight_decay})")
        if not 0 < self.gamma <= 1:
            raise LrerrError(f"--gamma must be in (0, 1] (got {self.gamma})")
        if self.workers < 0:
            raise LrerrError("--workers must be 0 or more")
        if self.methods is not None:
            if not self.methods:
                raise LrerrError("--methods: name at least one fake method, or leave it out for all")
            self.methods = sorted(set(self.methods))  # the same training, whatever order they are named in
        return method


def _datasets(shards: StageDir, methods: list[str] | None,
              shard_fields: tuple[str, ...]) -> tuple[ShardDataset, ShardDataset]:
    """The train and val faces: all reals, and the fakes of `methods` (None: all)."""
    if methods is not None:
        present = describe_split(shards, "train")["methods"]
        absent = [m for m in methods if m not in present]
        if absent:
            raise LrerrError(f"--methods: no fake faces of {', '.join(absent)} in the train split of "
                             f"{shards.path} (it has {', '.join(present) or 'none'})")
    train = ShardDataset(shards.path, split="train", fake_methods=methods, fields=shard_fields)
    counts = np.bincount(train.labels, minlength=2)
    if 0 in counts:
        missing = "real" if counts[0] == 0 else "fake"
        raise LrerrError(f"{shards.path}: no {missing} faces in the train split — the detector needs both")
    # Model selection on the same manipulations as training, as in the single-method protocols.
    val = ShardDataset(shards.path, split="val", fake_methods=methods, fields=shard_fields)
    counts = np.bincount(val.labels, minlength=2)
    if 0 in counts:
        what = f"only {'real' if counts[1] == 0 else 'fake'} val faces" if counts.sum() else "no val faces"
        log.info("%s: the val AUC is undefined, so best.pt follows the lowest train loss", what)
    return train, val


class _Trainer:
    def __init__(self, cfg: DetTrainConfig, shards: StageDir, dist: Distributed, device: torch.device):
        self.cfg, self.shards, self.dist, self.device = cfg, shards, dist, device
        self.method = get_method(cfg.method).resolve(cfg.options)
        self.out = Path(cfg.out)
        self.train, self.val = _datasets(shards, cfg.methods, self.method.fields)
        if cfg.batch_size % dist.world_size:
            raise LrerrError(f"--batch-size {cfg.batch_size} must divide evenly among {dist.world_size} "
                             "processes")
        self.rank_batch = cfg.batch_size // dist.world_size
        self.dtype = amp_dtype(device, cfg.amp)
        parent_dirs = open_parents(self.method, cfg.parents)
        self.context = self.method.context(parent_dirs, cfg.seed, device)
        for dataset in (self.train, self.val):
            self.method.check_data(dataset, self.context)
        self.parents = {name: d.as_parent(self.out) for name, d in parent_dirs.items()}
        self.train_data = describe_split(shards, "train", cfg.methods)
        self.log_fields = log_fields(self.method)

    def check_parents(self, recorded: dict) -> None:
        """A run resumed or found finished must have been trained with these very parent runs."""
        for parent in self.method.parents:
            check_same_parent(self.out, parent, recorded[parent.name], self.parents[parent.name]["sha256"],
                              f"the detector run in {self.out}")

    def build(self, state: RunState) -> None:
        cfg = self.cfg
        # Seeded after the context is loaded, so methods whose networks agree start alike.
        seed_everything(cfg.seed)
        self.net = self.method.build()
        if state.checkpoint is None:
            self.method.init(self.net, cfg.pretrained, cfg.weights)
        self.net.to(self.device)
        self.optimizer = build_optimizer(self.net, cfg.optimizer, cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.epochs * cfg.iters_per_epoch,
                                         step_size=cfg.step_size, gamma=cfg.gamma)
        self.scaler = grad_scaler(self.device, self.dtype)
        self.epoch, self.step, self.history = 0, 0, []
        if state.checkpoint is not None:
            restore_training_state(state.checkpoint, self.net, self.optimizer, self.scheduler, self.scaler)
            self.epoch, self.step = state.checkpoint["epoch"], state.checkpoint["step"]
            self.history = state.checkpoint["extra"]["history"]
            log.info("resuming %s after epoch %d (step %d)", self.out, self.epoch, self.step)
        self.model = wrap_model(self.net, self.dist, self.device)

    def train_epoch(self) -> tuple[dict, float, int]:
        """Mean train loss, terms and accuracy, seconds and images of one epoch (over all processes)."""
        cfg, dist, method = self.cfg, self.dist, self.method
        seed = seeded_generator(cfg.seed, SAMPLE_STREAM, self.epoch, dist.rank).initial_seed()
        sampler = balanced_sampler(self.train, cfg.iters_per_epoch * self.rank_batch, seed=seed)
        loader = DataLoader(self.train, batch_size=self.rank_batch, sampler=sampler, num_workers=cfg.workers,
                            pin_memory=self.device.type == "cuda")
        bar = tqdm(total=cfg.iters_per_epoch * cfg.batch_size, unit="img", leave=False, dynamic_ncols=True,
                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=not dist.is_main)
        self.model.train()
        losses, sums, start = [], 0.0, time.perf_counter()
        for batch in loader:
            inputs = method.inputs(self.net, self.context, batch, self.device, self.dtype)
            labels = batch["label"].to(self.device).float()
            with autocast(self.device, self.dtype):
                outputs = self.model(inputs)
            terms = method.losses(outputs, inputs, labels, dist)
            value = dist.mean(terms["total"].detach()).item()
            check_finite(value, self.epoch + 1, self.step + 1, last_checkpoint(self.out))
            backward_step(terms["total"], self.optimizer, self.scaler)
            self.scheduler.step()
            self.step += 1
            losses.append(value)
            correct = ((outputs["logit"].detach() >= 0) == labels.bool()).float().mean()
            # One reduction for all the logged numbers, and no host sync: they are read at the end.
            logged = torch.stack([*(terms[t].detach().float() for t in method.loss_terms), correct])
            sums = dist.mean(logged) + sums
            bar.update(cfg.batch_size)
            bar.set_postfix(loss=f"{value:.4f}")
        bar.close()
        names = [*method.loss_terms, "acc"]
        means = {"train_loss": float(np.mean(losses)),
                 **{f"train_{name}": float(total) / len(losses) for name, total in zip(names, sums.tolist())}}
        return means, time.perf_counter() - start, cfg.iters_per_epoch * cfg.batch_size

    def validate(self) -> dict:
        if len(self.val) == 0:
            return dict.fromkeys(VAL_FIELDS)
        rows, logits = predict(self.method, self.net, self.context, self.val, batch_size=self.rank_batch,
                               workers=self.cfg.workers, device=self.device, desc="val")
        labels = np.array([r["label"] for r in rows], dtype=np.float64)
        loss = F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(labels)).item()
        metrics = compute_metrics(rows)
        return {"val_loss": loss, "val_acc": metrics[VAL_LEVEL]["acc"], "val_auc": metrics[VAL_LEVEL]["auc"],
                "val_video_auc": metrics["video"]["auc"]}

    def fit(self) -> None:
        cfg, dist = self.cfg, self.dist
        logger = CsvLogger(self.out / LOG_FILE, self.log_fields, self.history) if dist.is_main else None
        while self.epoch < cfg.epochs:
            lr = self.optimizer.param_groups[0]["lr"]
            train, seconds, images = self.train_epoch()
            self.epoch += 1
            if dist.is_main:
                record = {"epoch": self.epoch, "step": self.step, **train, **self.validate(), "lr": lr,
                          "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 2)}
                self.history.append(record)
                logger.log(record)
                self._report(record)
                self._save()
                self.write_manifest()
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
                      model_config={"method": self.method.name, "options": self.method.settings})
        if self._best()["epoch"] == self.epoch:
            save_checkpoint(best_checkpoint(self.out), self.model, extra={"parents": self.parents}, **common)
        save_checkpoint(last_checkpoint(self.out), self.model, optimizer=self.optimizer,
                        scheduler=self.scheduler, scaler=self.scaler,
                        extra={"history": self.history, "parents": self.parents}, **common)

    def write_manifest(self) -> None:
        """The manifest and records of the epochs done so far, complete after the last."""
        val_labels = np.asarray(self.val.labels)
        counts = {"epochs": self.epoch, "steps": self.step, "train_real": int((self.train.labels == 0).sum()),
                  "train_fake": int((self.train.labels == 1).sum()), "val_real": int((val_labels == 0).sum()),
                  "val_fake": int((val_labels == 1).sum())}
        extra = {"method": self.method.name, "parents": self.parents, "train_data": self.train_data,
                 "loss_terms": list(self.method.loss_terms),
                 "caveats": self.method.caveats(self.cfg.pretrained, self.cfg.weights),
                 "eval_precision": EVAL_PRECISION,
                 "normalization": {"mean": list(self.net.mean), "std": list(self.net.std)},
                 "best": self._best(), "last": self.history[-1], "world_size": self.dist.world_size,
                 "checkpoints": {"best": str(best_checkpoint(Path())), "last": str(last_checkpoint(Path()))}}
        manifest = Manifest(stage=STAGE, config=asdict(self.cfg), parent=self.shards.as_parent(self.out),
                            counts=counts, complete=self.epoch == self.cfg.epochs, extra=extra)
        write_stage(self.out, manifest, self.history)


def run(cfg: DetTrainConfig) -> Manifest:
    """Train (or resume, or find finished) the detector run `cfg.out`; returns its manifest."""
    return run_training(cfg, STAGE, _Trainer,
                        check_found=lambda trainer, extra: trainer.check_parents(extra["parents"]))
