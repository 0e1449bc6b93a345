"""What every trainer here (train-mae, train-moco, train-det) needs around its own loop: the
device, seeds, DDP under torchrun, mixed precision, optimizers, checkpoints that resume
exactly, a CSV epoch log and a stop on a non-finite loss.

Exact resume rests on one rule: nothing random is carried from step to step except what a
checkpoint holds. The sample order of an epoch comes from (seed, epoch) through
`epoch_sampler`, masks and other draws from `seeded_generator(seed, stream, epoch, rank, ...)`, and
checkpoints are taken at epoch ends with the weights, optimizer, scheduler, scaler and RNGs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import random
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from lrerr_tools.atomic_io import atomic_write_bytes
from lrerr_tools.errors import LrerrError

DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")
CHECKPOINT_FORMAT = 1


# --- device, seeds, DDP -------------------------------------------------------------------

def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` is CUDA when there is one; `cuda` where there is none is the user's error."""
    if name not in DEVICES:
        raise LrerrError(f"--device must be one of {', '.join(DEVICES)} (got {name!r})")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise LrerrError(f"--device cuda: no CUDA device is available (torch {torch.__version__}) "
                         "— use --device cpu or auto")
    return torch.device("cuda", local_rank)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def seeded_generator(*seed_parts: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from several integers (run seed, epoch, rank, ...): a stream that
    can be recreated at any epoch without saving its state."""
    seed = 0
    for part in seed_parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(seed)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a `torchrun` job; rank 0 of 1 when run plainly."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and logs progress."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over all processes: every rank gets the same number, so they
        all take the same decision on it (e.g. stop on a NaN)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        torch_dist.all_reduce(value)
        return value / self.world_size

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor`, concatenated in rank order along dim 0. Gradients flow back
        to each rank's own part, so a loss over the gathered batch trains as if one process
        held the whole global batch."""
        if not self.enabled:
            return tensor
        from torch.distributed.nn.functional import all_gather

        # Deprecated in new torch for a private replacement that torch 2.4 lacks; it still works.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(all_gather(tensor.contiguous()))

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics) to every rank: DDP syncs them only at the
        start of a training forward, so after the last step each rank holds its own."""
        if self.enabled:
            for buffer in module.buffers():
                torch_dist.broadcast(buffer, src=0)

    def gather_objects(self, obj: object) -> list:
        """Every rank's picklable `obj`, in rank order (no gradients: for results, not losses)."""
        if not self.enabled:
            return [obj]
        gathered = [None] * self.world_size
        torch_dist.all_gather_object(gathered, obj)
        return gathered

    def masked_mean(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The global batch's mean of `values[mask]`, as this rank's share: the ranks' mean of
        the result (and of its gradient, which is what DDP averages) is that mean. 0, with a
        graph, when no rank has a masked value."""
        values = values.float()
        count = mask.sum().float()
        if self.enabled:
            count = count.clone()
            torch_dist.all_reduce(count)
        total = (values * mask).sum()
        return total * self.world_size / count.clamp(min=1)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process: the one that writes and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the process group when started by torchrun (RANK/WORLD_SIZE/LOCAL_RANK set):
    NCCL on CUDA, gloo on CPU. Returns this process's place and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = Distributed(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name, dist.local_rank)
    if dist.enabled and not torch_dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist, device


def teardown_distributed(dist: Distributed) -> None:
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def wrap_model(model: nn.Module, dist: Distributed, device: torch.device) -> nn.Module:
    if not dist.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def epoch_sampler(dataset: Dataset, dist: Distributed, seed: int, shuffle: bool = True) -> DistributedSampler:
    """This rank's share of each epoch, in an order fixed by (seed, epoch): call
    `set_epoch` before each. Used by single processes too (as rank 0 of 1), so that a run
    resumed at any epoch sees the same order as one that never stopped."""
    return DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=shuffle,
                              seed=seed)


# --- mixed precision, optimizers ----------------------------------------------------------

def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32: AMP is CUDA only; bfloat16 where the
    GPU has it (no loss scaling needed), else float16."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A scaler that only scales under float16; disabled, it passes steps straight through,
    so a loop has one code path for every precision."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def check_optimizer(name: str) -> None:
    if name not in OPTIMIZERS:
        raise LrerrError(f"--optimizer must be one of {', '.join(OPTIMIZERS)} (got {name!r})")


def check_schedule(schedule: str, step_size: int) -> None:
    if schedule not in SCHEDULES:
        raise LrerrError(f"--schedule must be one of {', '.join(SCHEDULES)} (got {schedule!r})")
    if schedule == "step" and step_size < 1:
        raise LrerrError(f"--step-size must be at least 1 with --schedule step (got {step_size})")


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.9,
                    no_weight_decay: tuple[str, ...] = (),
                    lr_scale: Callable[[str], float] | None = None) -> torch.optim.Optimizer:
    """`adam`, `adamw` or `sgd` (with `momentum`) over the trainable parameters of `model`.

    With weight decay, biases, norms and `no_weight_decay` are left undecayed (timm's grouping,
    as in the MAE and most timm recipes); without, every trainable parameter is one group.
    `lr_scale(name)` multiplies a parameter's lr: each group is split by multiplier, the
    largest first (the group the logs read the lr of).
    """
    check_optimizer(name)
    if weight_decay:
        from timm.optim import param_groups_weight_decay

        params = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_weight_decay)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    if lr_scale is not None:
        params = _scaled_groups(model, params, lr, lr_scale)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=0.0)
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def _scaled_groups(model: nn.Module, params: list, lr: float, lr_scale: Callable[[str], float]) -> list:
    """`params` (parameters, or groups of them) as groups of one lr multiplier each; unchanged
    when every multiplier is 1, so that the optimizer state of earlier runs still loads."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    scales = {id(p): float(lr_scale(names[id(p)])) for g in groups for p in g["params"]}
    if all(s == 1 for s in scales.values()):
        return params
    split = []
    for scale in sorted(set(scales.values()), reverse=True):
        for group in groups:
            chosen = [p for p in group["params"] if scales[id(p)] == scale]
            if chosen:
                split.append({**group, "params": chosen, "lr": lr * scale})
    return split


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, warmup_steps: int = 0,
                    step_size: int = 0, gamma: float = 0.5) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration: linear warm-up over `warmup_steps`, then `constant`,
    `cosine` (to zero at `total_steps`) or `step` (times `gamma` every `step_size` steps,
    counted from the start, like torch's StepLR)."""
    check_schedule(schedule, step_size)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if schedule == "step":
            return gamma ** (step // step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- checkpoints ---------------------------------------------------------------------------

def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                       "has_gauss": has_gauss, "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, model: nn.Module, *, config: dict, parent: dict | None, epoch: int,
                    step: int, model_config: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    scaler: torch.amp.GradScaler | None = None, extra: dict | None = None) -> None:
    """Write a checkpoint atomically (a kill leaves the previous one whole).

    `epoch` counts completed epochs. With `optimizer` it is a resumable training checkpoint
    (optimizer, scheduler, scaler and RNG states too); without, weights only.
    `config` and `parent` are what a resume is checked against; `model_config` rebuilds the
    architecture; `extra` is the trainer's own (e.g. its per-epoch history).
    """
    payload = {"format": CHECKPOINT_FORMAT, "model": unwrap(model).state_dict(), "model_config": model_config,
               "config": config, "parent": parent, "epoch": epoch, "step": step, "extra": extra or {}}
    if optimizer is not None:
        payload.update(optimizer=optimizer.state_dict(),
                       scheduler=scheduler.state_dict() if scheduler is not None else None,
                       scaler=scaler.state_dict() if scaler is not None else None, rng=rng_state())
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents on the CPU. Loaded with weights_only: plain data, no code."""
    path = Path(path)
    if not path.is_file():
        raise LrerrError(f"{path}: no checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not how it broke inside
        raise LrerrError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise LrerrError(f"{path}: not a lrerr-tools checkpoint (format {CHECKPOINT_FORMAT})")
    return checkpoint


def restore_training_state(checkpoint: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
                           scheduler: torch.optim.lr_scheduler.LRScheduler,
                           scaler: torch.amp.GradScaler) -> None:
    """Put model, optimizer, scheduler, scaler and RNGs back as `save_checkpoint` found them."""
    if "optimizer" not in checkpoint:
        raise LrerrError("this checkpoint holds weights only and cannot be resumed from")
    unwrap(model).load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint["scheduler"] is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    if checkpoint["scaler"]:
        scaler.load_state_dict(checkpoint["scaler"])
    set_rng_state(checkpoint["rng"])


# --- epoch log, loss guard -----------------------------------------------------------------

class CsvLogger:
    """One CSV row per epoch, appended and flushed as each ends.

    Opened with the `rows` of the epochs a checkpoint holds, it rewrites the file as those:
    a resumed run drops the rows of an epoch that was logged but never checkpointed (it
    redoes that epoch), and never keeps a row that a kill cut short.
    """

    def __init__(self, path: str | Path, fields: list[str], rows: Iterable[dict] = ()):
        self.path, self.fields = Path(path), fields
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(map(self._row, rows))
        atomic_write_bytes(self.path, buffer.getvalue().encode())

    def _row(self, record: dict) -> dict:
        return {k: "" if record.get(k) is None else record[k] for k in self.fields}

    def log(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, lineterminator="\n").writerow(self._row(row))


class NonFiniteLoss(LrerrError):
    """Training diverged; the checkpoints on disk are from before it did."""


def check_finite(loss: float, epoch: int, step: int, last_good: Path) -> None:
    """Stop on a NaN/inf loss, before anything is saved from the diverged weights."""
    if math.isfinite(loss):
        return
    kept = (f"the last good checkpoint, {last_good}, is kept" if last_good.is_file()
            else "no checkpoint had been written yet")
    raise NonFiniteLoss(f"loss became {loss} at epoch {epoch}, step {step}: training stopped and {kept} "
                        "— lower --lr (or try --no-amp), then rerun with --resume")
