"""Loss functions of the reconstruction-classification methods (RECCE and its descendants, RLGC
and CRL).

Label 1 is fake, 0 real. Each docstring says what happens under DDP, where DDP averages the
ranks' gradients: a loss is DDP-exact when the ranks' mean of its value (and gradient) equals
the value a single process would compute on the whole global batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lrerr_tools.blocks.sobel import sobel

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


def multi_view_l1(recons: list[torch.Tensor], images: torch.Tensor, labels: torch.Tensor,
                  dist: Distributed, sobel_view: bool = False) -> torch.Tensor:
    """CRL's multi-view reconstruction loss: the mean over views of `real_l1`, one view per
    reconstruction in `recons` (each against the images area-downsampled to its size), and
    with `sobel_view` one more, the L1 between the Sobel responses of the full-size x̂ (the
    last of `recons`) and of x. Images and reconstructions are in [−1, 1].

    DDP-exact, as `real_l1` is for each view: reals only, averaged over the global batch.
    """
    views = [real_l1(recon, F.interpolate(images.float(), size=recon.shape[-2:], mode="area"), labels, dist)
             for recon in recons]
    if sobel_view:
        gradients = (sobel((x.float() + 1) / 2) for x in (recons[-1], images))
        views.append(real_l1(*gradients, labels, dist))
    return torch.stack(views).mean()


def _unit_rows(embedding: torch.Tensor) -> torch.Tensor:
    return F.normalize(embedding.float(), dim=1)


def pair_compactness(embeddings: list[torch.Tensor], labels: torch.Tensor, dist: Distributed) -> torch.Tensor:
    """CRL's real-sample compactness: per (B, C) embedding, the mean of 1 − cos(e_i, e_j) over
    the real pairs i ≠ j of the global batch; then the mean over the embeddings. 0 when the
    reals agree in direction; with fewer than 2 reals, 0 and no gradient.

    DDP-exact like `metric_loss`: the embeddings are gathered across ranks, with gradients.
    """
    real = dist.gather(labels.reshape(-1)) == 0
    eye = torch.eye(real.numel(), dtype=torch.bool, device=real.device)
    pairs = real[:, None] & real[None, :] & ~eye
    parts = [_pair_mean(1 - normed @ normed.T, pairs)
             for normed in (dist.gather(_unit_rows(e)) for e in embeddings)]
    return torch.stack(parts).mean()


@torch.no_grad()
def update_centre(centre: torch.Tensor, embedding: torch.Tensor, real: torch.Tensor, dist: Distributed,
                  momentum: float) -> None:
    """Move `centre` (C,), in place, towards the mean direction of the global batch's real
    embeddings: centre ← momentum·centre + (1 − momentum)·mean, or the mean itself while the
    centre is still all zeros (its first batch with reals). Every rank sees the same global
    reals, so the ranks' centres stay equal."""
    normed, real = dist.gather(_unit_rows(embedding)), dist.gather(real)
    if not real.any():
        return
    mean = normed[real].mean(0)
    centre.copy_(mean if not centre.any() else momentum * centre + (1 - momentum) * mean)


def centre_compactness(embeddings: list[torch.Tensor], centres: list[torch.Tensor], labels: torch.Tensor,
                       dist: Distributed, momentum: float) -> torch.Tensor:
    """CRL's compactness against an EMA real centre, one centre buffer (C,) per (B, C)
    embedding: each centre is first moved towards this batch's reals (`update_centre`), then
    the loss is the mean over the global batch's reals of 1 − cos(e_i, centre), averaged over
    the embeddings. 0 with no real face.

    DDP-exact: the update uses the global batch's reals, and the mean is `dist.masked_mean`.
    """
    real = labels.reshape(-1) == 0
    parts = []
    for embedding, centre in zip(embeddings, centres):
        update_centre(centre, embedding, real, dist, momentum)
        # A copy: the buffer moves again next step, and autograd keeps what this step used.
        target = F.normalize(centre.clone(), dim=0)
        parts.append(dist.masked_mean(1 - _unit_rows(embedding) @ target, real))
    return torch.stack(parts).mean()


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
