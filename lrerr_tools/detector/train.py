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
Runs plainly or under `torchrun` (DDP); `--batch-size` is the global batch. Under DDP each
rank validates every world_size-th val face and the ranks' scores are gathered.

With `--label-fraction F` only some train videos keep their labels (`label_fraction.py`):
a method that learns from unlabelled faces (`Method.uses_unlabelled`; the SCL-KD student)
trains on every face, each batch flagging which are `labelled`, and draws the labelled ones
balanced real/fake; any other trains on the labelled faces alone. The chosen videos are in
the manifest's `labels`. Val keeps every label: it picks the epoch, as in the full runs.

A method's frozen part (`Method.frozen`; LRErr's attention maps) is computed once per face
and kept in RUN/cache (`detector/frozen_cache.py`, bounded by `--cache-gb`), for the later
epochs, a `--resume` and `score`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, Subset
from tqdm import tqdm

from lrerr_tools.calibration import fit_calibration, unfitted
from lrerr_tools.detector.checkpoint import STAGE, check_same_parent, open_parents
from lrerr_tools.detector.frozen_cache import FrozenCache
from lrerr_tools.detector.predict import EVAL_PRECISION, eval_loader, predict, prepared_inputs
from lrerr_tools.detector.provenance import describe_split
from lrerr_tools.errors import LrerrError
from lrerr_tools.label_fraction import check_fraction, labelled_videos
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
FINITE_CHECK_EVERY = 20  # steps between NaN/inf checks of the loss (each one waits for the device)
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
    label_fraction: float | None = None  # None: every train label (runs from before it match)
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
    cache_gb: float | None = None  # None: room for every train and val face; 0: no cache
    resume: bool = False
    seed: int = 0
    overwrite: bool = False

    # How and where a run goes, not what it computes: a resume may change them. Parent runs
    # are identified by their manifest hashes (checked separately), not by where they lie.
    RUN_OPTIONS = ("shard_dir", "out", "parents", "device", "amp", "workers", "cache_gb", "resume",
                   "overwrite")

    def complete_recorded(self, stored: dict) -> dict:
        """A checkpoint's config as this code reads it: a method option added since the run
        was made takes the value the run had (`Option.before`, else the default)."""
        if stored.get("method") != self.method or not isinstance(stored.get("options"), dict):
            return stored
        return {**stored, "options": get_method(self.method).resolve_recorded(stored["options"]).settings}

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
        check_fraction(self.label_fraction)
        if self.cache_gb is not None and not self.cache_gb >= 0:
            raise LrerrError(f"--cache-gb must be 0 or more (got {self.cache_gb})")
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


class _EpochDraws(Sampler):
    """The balanced draws of one epoch, reseeded by `set_seed` before each: the DataLoader,
    and with it its workers, lives for the whole run."""

    def __init__(self, dataset: ShardDataset, num_samples: int, labelled: np.ndarray | None = None):
        self.dataset, self.num_samples, self.labelled, self._draws = dataset, num_samples, labelled, None

    def set_seed(self, seed: int) -> None:
        self._draws = balanced_sampler(self.dataset, self.num_samples, seed=seed, labelled=self.labelled)

    def __iter__(self):
        return iter(self._draws)

    def __len__(self) -> int:
        return self.num_samples


class _Trainer:
    def __init__(self, cfg: DetTrainConfig, shards: StageDir, dist: Distributed, device: torch.device):
        self.cfg, self.shards, self.dist, self.device = cfg, shards, dist, device
        self.method = get_method(cfg.method).resolve(cfg.options)
        self.out = Path(cfg.out)
        self.train, self.val = _datasets(shards, cfg.methods, self.method.fields)
        self.labelled_videos, self.face_labelled = self._label_subset()
        if cfg.batch_size % dist.world_size:
            raise LrerrError(f"--batch-size {cfg.batch_size} must divide evenly among {dist.world_size} "
                             "processes")
        self.rank_batch = cfg.batch_size // dist.world_size
        self.dtype = amp_dtype(device, cfg.amp)
        parent_dirs = open_parents(self.method, cfg.parents)
        self.context = self.method.context(parent_dirs, cfg.seed, device)  # refuses a wrong kind of parent
        self._check_parent_labels(parent_dirs)
        for dataset in (self.train, self.val):
            self.method.check_data(dataset, self.context)
        self.parents = {name: d.as_parent(self.out) for name, d in parent_dirs.items()}
        self.train_data = describe_split(shards, "train", cfg.methods)
        self.log_fields = log_fields(self.method)

    def _label_subset(self) -> tuple[list[str] | None, np.ndarray | None]:
        """The videos that keep their labels (None: all), and for a method that also learns
        from unlabelled faces, a labelled flag per train face; any other method's train set
        becomes the labelled faces alone."""
        cfg = self.cfg
        self.train_videos = len(np.unique(self.train._video))  # of the faces kept, not of the shards
        if cfg.label_fraction is None:
            return None, None
        chosen = labelled_videos(self.train, cfg.label_fraction, cfg.seed)
        log.info("--label-fraction %g: %d of %d train videos keep their labels", cfg.label_fraction,
                 len(chosen), len(self.train.video_ids))
        if self.method.uses_unlabelled:
            return chosen, np.isin(self.train.face_videos, chosen)
        self.train = self.train.only_videos(chosen)
        return chosen, None

    def _check_parent_labels(self, parent_dirs: dict) -> None:
        """A detector learning from another detector run (SCL-KD's student from its teacher)
        must have the labels that run had: a teacher trained on more labelled videos than its
        student would carry them into a few-label result, and one trained on fewer would not be
        the teacher the protocol means."""
        ours = self.labelled_videos
        count = self.train_videos if ours is None else len(ours)
        for parent in self.method.parents:
            run = parent_dirs[parent.name]
            labels = run.manifest.extra.get("labels") if parent.stage == STAGE else None
            if labels is None:  # not a detector, or one from before labels were recorded
                continue
            theirs = labels.get("video_ids")
            if (theirs is None) == (ours is None) and sorted(theirs or []) == sorted(ours or []):
                continue
            raise LrerrError(
                f"{parent.flag} {run.path}: trained on the labels of {labels['videos']} train videos "
                f"(--label-fraction {labels['fraction']}), this run on {count} (--label-fraction "
                f"{self.cfg.label_fraction}) — give it the same --label-fraction, --seed and --methods")

    def check_parents(self, recorded: dict) -> None:
        """A run resumed or found finished must have been trained with these very parent runs."""
        for parent in self.method.parents:
            check_same_parent(self.out, parent, recorded[parent.name], self.parents[parent.name]["sha256"],
                              f"the detector run in {self.out}")

    def build(self, state: RunState) -> None:
        cfg = self.cfg
        # Seeded after the context is loaded, so methods whose networks agree start alike.
        seed_everything(cfg.seed)
        self.net = self.method.network()
        if state.checkpoint is None:
            self.method.init(self.net, cfg.pretrained, cfg.weights)
            self.method.init_from_parents(self.net, self.context)
        self.net.to(self.device)
        self.optimizer = build_optimizer(self.net, cfg.optimizer, cfg.lr, weight_decay=cfg.weight_decay,
                                         lr_scale=self.method.lr_scale)
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
        self.cache = self._frozen_cache()
        pin = self.device.type == "cuda"
        self.draws = _EpochDraws(self.train, cfg.iters_per_epoch * self.rank_batch, self.face_labelled)
        self.train_loader = DataLoader(self.train, batch_size=self.rank_batch, sampler=self.draws,
                                       num_workers=cfg.workers, pin_memory=pin,
                                       persistent_workers=cfg.workers > 0)
        # Every world_size-th face: the ranks share validation, and each sees the same faces
        # every epoch, so its own cache holds them.
        self.val_part = Subset(self.val, range(self.dist.rank, len(self.val), self.dist.world_size))
        self.val_loader = eval_loader(self.val_part, batch_size=self.rank_batch, workers=cfg.workers,
                                      device=self.device, persistent=True)

    def _frozen_cache(self) -> FrozenCache | None:
        identity = self.method.frozen_identity(self.net, self.context)
        if identity is None or self.cfg.cache_gb == 0:
            return None
        budget = None if self.cfg.cache_gb is None else self.cfg.cache_gb * 1e9 / self.dist.world_size
        return FrozenCache(self.out, identity, {**self.train.shard_rows, **self.val.shard_rows},
                           rank=self.dist.rank, budget_bytes=budget)

    def train_epoch(self) -> tuple[dict, float, int]:
        """Mean train loss, terms and accuracy, seconds and images of one epoch (over all processes)."""
        cfg, dist, method = self.cfg, self.dist, self.method
        self.draws.set_seed(seeded_generator(cfg.seed, SAMPLE_STREAM, self.epoch, dist.rank).initial_seed())
        bar = tqdm(total=cfg.iters_per_epoch * cfg.batch_size, unit="img", leave=False, dynamic_ncols=True,
                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=not dist.is_main)
        self.model.train()
        totals, sums, start = [], 0.0, time.perf_counter()
        for batch in self.train_loader:
            if method.uses_unlabelled:
                batch["labelled"] = self._labelled(batch)
            inputs = prepared_inputs(method, self.net, self.context, batch, self.device, self.dtype,
                                     self.cache)
            labels = batch["label"].to(self.device).float()
            with autocast(self.device, self.dtype):
                outputs = self.model(inputs)
            terms = method.losses(outputs, inputs, labels, dist)
            totals.append(dist.mean(terms["total"].detach().float()))
            backward_step(terms["total"], self.optimizer, self.scaler)
            self.scheduler.step()
            self.step += 1
            correct = ((outputs["logit"].detach() >= 0) == labels.bool()).float().mean()
            # One reduction for all the logged numbers, and no host sync: they are read at the end.
            logged = torch.stack([*(terms[t].detach().float() for t in method.loss_terms), correct])
            sums = dist.mean(logged) + sums
            bar.update(cfg.batch_size)
            if len(totals) % FINITE_CHECK_EVERY == 0 or len(totals) == cfg.iters_per_epoch:
                self._check_finite(totals)
                bar.set_postfix(loss=f"{float(totals[-1]):.4f}")
        bar.close()
        names = [*method.loss_terms, "acc"]
        means = {"train_loss": float(torch.stack(totals).double().mean()),
                 **{f"train_{name}": float(total) / len(totals) for name, total in zip(names, sums.tolist())}}
        return means, time.perf_counter() - start, cfg.iters_per_epoch * cfg.batch_size

    def _labelled(self, batch: dict) -> torch.Tensor:
        """Which faces of a train batch keep their labels (all, without --label-fraction)."""
        if self.labelled_videos is None:
            return torch.ones(len(batch["video_id"]), dtype=torch.bool)
        chosen = set(self.labelled_videos)
        return torch.tensor([v in chosen for v in batch["video_id"]], dtype=torch.bool)

    def _check_finite(self, totals: list[torch.Tensor]) -> None:
        """Stop on the first NaN/inf loss of the steps since the last check, naming its step.
        Checked every few steps, not each one, so that the GPU need not wait for the host."""
        window = torch.stack(totals[-FINITE_CHECK_EVERY:]).cpu()
        bad = (~torch.isfinite(window)).nonzero()
        if len(bad):
            first = int(bad[0])
            check_finite(float(window[first]), self.epoch + 1, self.step - len(window) + first + 1,
                         last_checkpoint(self.out))

    def validate(self) -> dict:
        """The val metrics and calibration, on every rank: each scores its part, and the parts
        are gathered."""
        if len(self.val) == 0:
            return {**dict.fromkeys(VAL_FIELDS), "calibration": fit_calibration(np.zeros(0), np.zeros(0))}
        self.dist.broadcast_buffers(self.net)  # every rank validates the weights rank 0 saves
        part = predict(self.method, self.net, self.context, self.val_part, batch_size=self.rank_batch,
                       workers=self.cfg.workers, device=self.device, desc="val", progress=self.dist.is_main,
                       loader=self.val_loader, cache=self.cache)
        rows, logits = [None] * len(self.val), np.zeros(len(self.val))
        for rank, (rank_rows, rank_logits) in enumerate(self.dist.gather_objects(part)):
            rows[rank::self.dist.world_size] = rank_rows
            logits[rank::self.dist.world_size] = rank_logits
        labels = np.array([r["label"] for r in rows], dtype=np.float64)
        loss = F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(labels)).item()
        metrics = compute_metrics(rows)
        return {"val_loss": loss, "val_acc": metrics[VAL_LEVEL]["acc"], "val_auc": metrics[VAL_LEVEL]["auc"],
                "val_video_auc": metrics["video"]["auc"], "calibration": fit_calibration(logits, labels)}

    def fit(self) -> None:
        cfg, dist = self.cfg, self.dist
        logger = CsvLogger(self.out / LOG_FILE, self.log_fields, self.history) if dist.is_main else None
        while self.epoch < cfg.epochs:
            lr = self.optimizer.param_groups[0]["lr"]
            train, seconds, images = self.train_epoch()
            self.epoch += 1
            val = self.validate()
            if self.cache is not None:
                self.cache.commit()
            if dist.is_main:
                record = {"epoch": self.epoch, "step": self.step, **train, **val, "lr": lr,
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

    def _calibration(self) -> dict:
        """The thresholds and temperature fitted on the val logits of the best epoch, which
        `score` applies (the records hold every epoch's)."""
        best = self._best()["epoch"]
        recorded = next(r for r in self.history if r["epoch"] == best).get("calibration")
        if recorded is None:  # an epoch trained before train-det recorded calibration, then resumed
            recorded = unfitted("not recorded by the version of train-det that trained this epoch")
        return {**recorded, "epoch": best}

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
                 "best": self._best(), "calibration": self._calibration(), "last": self.history[-1],
                 "world_size": self.dist.world_size, "labels": self._labels(),
                 "checkpoints": {"best": str(best_checkpoint(Path())), "last": str(last_checkpoint(Path()))}}
        manifest = Manifest(stage=STAGE, config=asdict(self.cfg), parent=self.shards.as_parent(self.out),
                            counts=counts, complete=self.epoch == self.cfg.epochs, extra=extra)
        write_stage(self.out, manifest, self.history)


    def _labels(self) -> dict:
        """Which train videos kept their labels: all, or those `--label-fraction` chose."""
        if self.labelled_videos is None:
            return {"fraction": None, "videos": self.train_videos, "of_videos": self.train_videos}
        return {"fraction": self.cfg.label_fraction, "videos": len(self.labelled_videos),
                "of_videos": self.train_videos, "trains_on_unlabelled": self.method.uses_unlabelled,
                "video_ids": self.labelled_videos}


def run(cfg: DetTrainConfig) -> Manifest:
    """Train (or resume, or find finished) the detector run `cfg.out`; returns its manifest."""
    return run_training(cfg, STAGE, _Trainer,
                        check_found=lambda trainer, extra: trainer.check_parents(extra["parents"]))
