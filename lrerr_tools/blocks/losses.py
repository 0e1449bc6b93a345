"""Loss functions of the reconstruction-classification methods (RECCE and its descendants).

Label 1 is fake, 0 real. Each docstring says what happens under DDP, where DDP averages the
ranks' gradients: a loss is DDP-exact when the ranks' mean of its value (and gradient) equals
the value a single process would compute on the whole global batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from lrerr_tools.training import Distributed


def flooded_bce(logits: torch.Tensor, labels: torch.Tensor, dist: Distributed,
                flood: float = 0.04) -> torch.Tensor:
    """|BCE-with-logits − flood| + flood, the BCE being the batch mean: below the flood level
    the gradient reverses, which keeps the training loss from reaching 0.

    DDP-exact: the side of the flood is decided by the global batch's BCE, so the ranks'
    mean (and gradient) is the flooded global BCE even when ranks straddle the level.
    """
    bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    side = torch.sign(dist.mean(bce.detach()) - flood)
    return side * (bce - flood) + flood


def real_l1(recon: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
            dist: Distributed) -> torch.Tensor:
    """Mean |x̂ − x| over the real faces: per face the mean over pixels, then the mean over
    reals. Fakes contribute neither value nor gradient; with no real face it is 0.

    DDP-exact: the mean over the reals of the global batch, through `dist.masked_mean` (each
    rank returns its share, whose ranks' mean is that value).
    """
    per_face = (recon.float() - images.float()).abs().flatten(1).mean(1)
    return dist.masked_mean(per_face, labels == 0)


def _pair_mean(corr: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    # An empty pair set contributes 0, i.e. its term is left out of 1 − sim + diff
    # (RECCE's code does the same with an ε in the denominator).
    return (corr * pairs).sum() / pairs.sum().clamp(min=1)


def metric_loss(embeddings: list[torch.Tensor], labels: torch.Tensor, dist: Distributed) -> torch.Tensor:
    """RECCE's metric loss, summed over the (B, C) `embeddings`: with ê the L2-normalised
    embeddings and corr = (ê êᵀ + 1)/2, each adds max(1 − sim + diff, 0), where sim is the
    mean corr over real–real pairs i ≠ j and diff over real–fake pairs; fake–fake pairs are
    ignored. A part whose pair set is empty is dropped: fewer than 2 reals gives 1 + diff,
    no fakes 1 − sim, no reals 1, so the value stays finite and that part has no gradient.

    DDP-exact: the embeddings are gathered across ranks (differentiably), so every rank
    computes the same global-batch value, and the gathered gradients sum back to each rank
    such that DDP's average is the single-process gradient. The gather needs the same local
    batch size on every rank (as `DistributedSampler` gives).
    """
    real = dist.gather(labels.reshape(-1)) == 0
    eye = torch.eye(real.numel(), dtype=torch.bool, device=real.device)
    same_real = real[:, None] & real[None, :] & ~eye
    real_fake = real[:, None] ^ real[None, :]
    total = torch.zeros((), device=real.device)
    for embedding in embeddings:
        normed = dist.gather(F.normalize(embedding.float(), dim=1))
        corr = (normed @ normed.T + 1) / 2
        total = total + F.relu(1 - _pair_mean(corr, same_real) + _pair_mean(corr, real_fake))
    return total


def binary_kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor,
                   alpha: float = 0.5, temperature: float = 4.0) -> dict[str, torch.Tensor]:
    """SCL-KD's distillation loss on one fake logit per face (Hinton et al.'s, for two classes):
    α·T²·KL + (1 − α)·BCE on the `labelled` faces and T²·KL alone on the others, averaged
    over the batch. KL(teacher ‖ student) is between the Bernoulli distributions
    sigmoid(logit / T); T² keeps its gradients on the scale of the BCE's.

    Returns {"total", "kl": mean T²·KL over all faces, "bce": mean BCE over the labelled faces
    (0 with none)}. A rank's batch mean: DDP-exact when every rank holds as many faces.
    """
    s, t = student.float() / temperature, teacher.float() / temperature
    p = torch.sigmoid(t)
    kl = (p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s)))
    kl = temperature ** 2 * kl
    bce = F.binary_cross_entropy_with_logits(student.float(), labels.float(), reduction="none")
    labelled = labelled.to(kl.device, torch.bool)
    per_face = torch.where(labelled, alpha * kl + (1 - alpha) * bce, kl)
    count = labelled.sum()
    return {"total": per_face.mean(), "kl": kl.mean(),
            "bce": (bce * labelled).sum() / count.clamp(min=1)}
