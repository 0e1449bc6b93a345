"""MoCo v2 (He et al. 2020, Chen et al. 2020) on a width-scaled legacy_xception, after
facebookresearch/moco: a query encoder trained by InfoNCE against its momentum copy's keys
and a queue of earlier keys.

    moco = Moco(width=1.0, queue_size=65536, dist=dist)
    out = moco({"query": q_views, "key": k_views, "shuffle": permutation_of_the_global_batch})
    out["loss"].backward()   # then step the optimizer; the key encoder follows by momentum

Shuffle-BN keeps the batch-norm statistics from telling a query's key apart from the other
keys (the "cheating" MoCo warns of): the keys are encoded in a shuffled order, so a face's
query and key share no statistics. Under torchrun the global batch is shuffled across the
ranks (each rank's BN is one part); in one process `SplitBatchNorm` takes the statistics of
`bn_splits` parts of the batch apart, as in MoCo's single-GPU demo.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lrerr_tools.blocks.xception import XceptionLayers
from lrerr_tools.training import Distributed


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from `splits` parts of the batch apart
    (faces i ≡ s mod splits form part s); the running statistics are the parts' mean. Same
    state dict as BatchNorm2d; in eval it is one."""

    def __init__(self, num_features: int, splits: int):
        super().__init__(num_features)
        self.splits = splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.splits == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        mean, var = self.running_mean.repeat(self.splits), self.running_var.repeat(self.splits)
        out = F.batch_norm(x.reshape(-1, c * self.splits, h, w), mean, var, self.weight.repeat(self.splits),
                           self.bias.repeat(self.splits), True, self.momentum, self.eps)
        self.running_mean.copy_(mean.view(self.splits, c).mean(0))
        self.running_var.copy_(var.view(self.splits, c).mean(0))
        self.num_batches_tracked.add_(1)
        return out.reshape(n, c, h, w)


def split_batch_norms(module: nn.Module, splits: int) -> nn.Module:
    """Every BatchNorm2d of `module` as a `SplitBatchNorm` with the same state."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            split = SplitBatchNorm(child.num_features, splits)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            split_batch_norms(child, splits)
    return module


class MocoEncoder(nn.Module):
    """legacy_xception's layers (`backbone`, so ImageNet weights load at width 1), global
    average pooling, and MoCo v2's MLP head (features → features → `dim`); `forward` gives
    L2-normalised embeddings, `features` the pooled backbone output a later stage keeps."""

    def __init__(self, width: float = 1.0, dim: int = 128, bn_splits: int = 1):
        super().__init__()
        self.backbone = XceptionLayers(width)
        features = self.backbone.channels["features"]
        self.head = nn.Sequential(nn.Linear(features, features), nn.ReLU(inplace=True),
                                  nn.Linear(features, dim))
        split_batch_norms(self, bn_splits)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images).mean((2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(images)), dim=1)


class Moco(nn.Module):
    """`forward({"query", "key", "shuffle"})` takes this rank's two views of its faces (B, 3,
    S, S), normalised as Xception's inputs (mean = std = 0.5), and a permutation of the global
    batch (the same on every rank), and returns {"loss": InfoNCE, "logits": (B, 1 + K)} with
    the positive at index 0. It also moves the key encoder by momentum and enqueues the
    global batch's keys, so every rank holds the same queue. `queue_size` must be a multiple
    of the global batch (the trainer checks)."""

    mean = std = (0.5, 0.5, 0.5)

    def __init__(self, width: float = 1.0, dim: int = 128, queue_size: int = 65536, momentum: float = 0.999,
                 temperature: float = 0.2, bn_splits: int = 1, dist: Distributed | None = None):
        super().__init__()
        self.config = {"width": width, "dim": dim, "queue_size": queue_size, "momentum": momentum,
                       "temperature": temperature, "bn_splits": bn_splits}
        self.momentum, self.temperature = momentum, temperature
        self.dist = dist or Distributed()
        self.encoder_q = MocoEncoder(width, dim, bn_splits)
        self.encoder_k = copy.deepcopy(self.encoder_q).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("enqueued", torch.zeros((), dtype=torch.long))

    @property
    def queue_fill(self) -> float:
        """The share of the queue that holds keys of faces (the rest: its random start)."""
        return min(int(self.enqueued), self.queue.shape[1]) / self.queue.shape[1]

    @torch.no_grad()
    def momentum_update(self) -> None:
        for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            k.mul_(self.momentum).add_(q.detach(), alpha=1 - self.momentum)

    @torch.no_grad()
    def shuffled_keys(self, views: torch.Tensor, shuffle: torch.Tensor) -> torch.Tensor:
        """The key encoder's embeddings of the global batch's key views, in global-batch
        order, each rank having encoded the faces `shuffle` dealt it."""
        dist, n = self.dist, len(views)
        everything = dist.gather(views)
        mine = shuffle.view(dist.world_size, n)[dist.rank]
        keys = dist.gather(self.encoder_k(everything[mine]))
        ordered = torch.empty_like(keys)
        ordered[shuffle] = keys
        return ordered

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        start, size = int(self.queue_ptr), self.queue.shape[1]
        self.queue[:, start:start + len(keys)] = keys.T.to(self.queue.dtype)
        self.queue_ptr.fill_((start + len(keys)) % size)
        self.enqueued.add_(len(keys))

    def forward(self, inputs: dict) -> dict:
        query = self.encoder_q(inputs["query"]).float()
        self.momentum_update()
        keys = self.shuffled_keys(inputs["key"], inputs["shuffle"]).float()
        n, rank = len(query), self.dist.rank
        positive = (query * keys[rank * n:(rank + 1) * n]).sum(1, keepdim=True)
        negative = query @ self.queue.clone()
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        loss = F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=logits.device))
        self.enqueue(keys)
        return {"loss": loss, "logits": logits}
