"""Local-Prediction with the Local-Diversity loss (Learning Diverse Local Patterns for Deepfake
Detection with Image-level Supervision, IJCNN 2021), on a width-scaled legacy_xception cut
after block3, and its training losses.

    net = LocalPredictionNet(width=1.0, unit_layer="block3")
    out = net({"images": images})           # images in [−1, 1]: 14×14 units at 224 px
    terms = local_prediction_losses(out, labels, dist, ld_margin=0.5, ld_weight=0.1)

Every unit of the grid sees about 91 px of the face (block3; 43 px at block2) and predicts
fake from that alone; the face's label supervises every unit, and the Local-Diversity loss
pushes the units' features apart so they learn different patterns. The face's logit is the
one whose sigmoid is the mean unit probability.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lrerr_tools.blocks.xception import XceptionLayers, scaled

if TYPE_CHECKING:
    from lrerr_tools.training import Distributed

# The blocks a unit grid can sit on, and the channel role (blocks/xception.py) of their output.
UNIT_LAYERS = {"block2": "entry2", "block3": "middle"}
UNIT_CHANNELS = 256


def mean_probability_logit(unit_logits: torch.Tensor) -> torch.Tensor:
    """(B, U) unit logits → (B,) logits whose sigmoid is the mean of the units' sigmoids:
    log(p̄) − log(1 − p̄), with both means taken in log space so no probability rounds to 0 or 1."""
    z = unit_logits.float()
    return torch.logsumexp(F.logsigmoid(z), dim=1) - torch.logsumexp(F.logsigmoid(-z), dim=1)


class LocalPredictionNet(nn.Module):
    """`forward({"images": x})` takes (B, 3, S, S) faces normalised with mean = std = 0.5 and
    returns a dict:

    - `logit` (B,): the face's fake logit, sigmoid(logit) = mean unit probability;
    - `unit_logits` (B, h, w): each unit's fake logit (14×14 at 224 px after block3, 28×28
      after block2);
    - `features` (B, C, h, w): each unit's feature f_u = ReLU(BN(1×1 conv)), C = 256·width.

    `encoder` holds legacy_xception's layers up to `unit_layer`, so ImageNet weights load at
    width 1; the unit feature and logit convolutions are new.
    """

    mean = std = (0.5, 0.5, 0.5)

    def __init__(self, width: float = 1.0, unit_layer: str = "block3"):
        super().__init__()
        self.width, self.unit_layer = width, unit_layer
        self.encoder = XceptionLayers(width, last_block=int(unit_layer.removeprefix("block")))
        channels, dim = self.encoder.channels[UNIT_LAYERS[unit_layer]], scaled(UNIT_CHANNELS, width)
        self.unit_features = nn.Sequential(nn.Conv2d(channels, dim, 1, bias=False), nn.BatchNorm2d(dim),
                                           nn.ReLU(inplace=True))
        self.unit_head = nn.Conv2d(dim, 1, 1)

    def forward(self, inputs: dict) -> dict:
        features = self.unit_features(self.encoder(inputs["images"]))
        unit_logits = self.unit_head(features)[:, 0]
        return {"logit": mean_probability_logit(unit_logits.flatten(1)), "unit_logits": unit_logits,
                "features": features}


def key_units(key_mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, G·G) key-patch masks (patch id = row · G + col) → (B, h, w) masks of the units.

    Nearest neighbour is exact at 224 px: unit (i, j) after block3 is centred at pixel
    (16i + 3, 16j + 3), inside patch (i, j), and the 2×2 units after block2 at
    8·(2i, 2i + 1) + 3 both lie in patch i.
    """
    side = math.isqrt(key_mask.shape[1])
    patches = key_mask.reshape(-1, 1, side, side).float()
    return F.interpolate(patches, size=tuple(grid), mode="nearest")[:, 0].bool()


def local_prediction_loss(unit_logits: torch.Tensor, labels: torch.Tensor, dist: Distributed,
                          units: torch.Tensor | None = None) -> torch.Tensor:
    """BCE of every unit's logit against its face's label, averaged over the faces and units;
    with `units` (B, h, w), over those units alone (every chosen unit of the global batch
    weighs the same, and a batch without one gives 0).

    DDP-exact: a plain mean over equal local batches, or `dist.masked_mean`.
    """
    target = labels.float().reshape(-1, 1, 1).expand_as(unit_logits)
    bce = F.binary_cross_entropy_with_logits(unit_logits.float(), target, reduction="none")
    return bce.mean() if units is None else dist.masked_mean(bce, units)


def local_diversity_loss(features: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """mean over faces, and over unit pairs u ≠ v, of ReLU(cos(f_u, f_v) − margin): units whose
    features are already less alike than `margin` add nothing. A grid of one unit gives 0.

    DDP-exact: a per-face mean, averaged over equal local batches.
    """
    normed = F.normalize(features.float().flatten(2), dim=1)  # (B, C, U)
    similarity = normed.transpose(1, 2) @ normed  # (B, U, U)
    count = similarity.shape[-1]
    off_diagonal = ~torch.eye(count, dtype=torch.bool, device=similarity.device)
    per_face = (F.relu(similarity - margin) * off_diagonal).sum((1, 2)) / max(count * (count - 1), 1)
    return per_face.mean()


def local_prediction_losses(out: dict, labels: torch.Tensor, dist: Distributed,
                            units: torch.Tensor | None = None, ld_margin: float = 0.5,
                            ld_weight: float = 0.1) -> dict:
    """`lp` (the units' BCE, over `units` if given), `ld` (Local-Diversity), and
    `total` = lp + ld_weight·ld."""
    lp = local_prediction_loss(out["unit_logits"], labels, dist, units)
    ld = local_diversity_loss(out["features"], ld_margin)
    return {"total": lp + ld_weight * ld, "lp": lp, "ld": ld}
