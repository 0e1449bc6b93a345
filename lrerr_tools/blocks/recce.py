"""RECCE (End-to-End Reconstruction-Classification Learning for Face Forgery Detection) on a
width-scaled legacy_xception, and its training losses.

    net = RecceNet(width=1.0)
    load_legacy_xception(net.encoder, imagenet_state_dict)   # encoder and trunk only
    out = net(images)                                        # images in [−1, 1]
    losses = recce_losses(out, images, labels, dist)         # losses["total"].backward()

The encoder (stem, block1–4) feeds a decoder that reconstructs the face; the trunk (block5–12)
classifies, with graph reasoning over encoder and decoder features after block7 and attention
guided by the reconstruction error after block8.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from timm.models.xception import Block
from torch import nn

from lrerr_tools.blocks.graph_reasoning import GraphReasoning
from lrerr_tools.blocks.guided_attention import GuidedAttention
from lrerr_tools.blocks.layers import sep_conv_bn_relu
from lrerr_tools.blocks.losses import flooded_bce, metric_loss, real_l1
from lrerr_tools.blocks.xception import XceptionLayers

if TYPE_CHECKING:
    from lrerr_tools.training import Distributed


def _up_sepconv(in_channels: int, out_channels: int) -> nn.Sequential:
    # Flat, so the state-dict keys stay decoderN.1 (conv), .2 (BN) as in RECCE's code.
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         *sep_conv_bn_relu(in_channels, out_channels))


class RecceNet(nn.Module):
    """RECCE with one fake logit. `forward({"images": x})` takes (B, 3, S, S) faces normalised
    with mean = std = 0.5 and returns a dict:

    - `logit` (B,): the fake logit;
    - `recon` (B, 3, S, S): the reconstruction x̂ in [−1, 1], the images' range;
    - `embeddings`: the pooled block4 output, out_d2 and out_d4, each (B, C), for the metric loss;
    - `attention` (B, 1, h, w): the guided-attention mask at block8, stride 16 (14×14 at 224 px).

    Every channel count is the reference's times `width`. Any S from 7 up runs (block4 is then
    at least 1×1); tests use 64 px. `encoder` holds the Xception layers; the rest is new.
    `extra_neighbours` adds vertex sets `(channels, ratio)` to the graph reasoning (CRL's
    JointGR); a subclass that gives them passes their maps to `classify`.
    """

    mean = std = (0.5, 0.5, 0.5)

    def __init__(self, width: float = 1.0, drop_rate: float = 0.2,
                 extra_neighbours: Sequence[tuple[int, int]] = ()):
        super().__init__()
        self.width = width
        self.encoder = XceptionLayers(width)
        ch = self.encoder.channels
        mid, d2, d4, d8 = ch["middle"], ch["entry2"], ch["entry1"], ch["stem2"]
        # The decoder's 256, 128 and 64 mirror the entry flow's widths, so they scale with it.

        self.decoder1 = _up_sepconv(mid, d2)
        self.decoder2 = Block(d2, d2, 3, 1)
        self.decoder3 = _up_sepconv(d2, d4)
        self.decoder4 = Block(d4, d4, 3, 1)
        self.decoder5 = _up_sepconv(d4, d8)
        self.decoder6 = nn.Sequential(nn.Conv2d(d8, 3, 1, bias=False), nn.Tanh())

        self.reasoning = GraphReasoning(mid, embed=d2, neighbours=[(d2, 2), (d4, 4), *extra_neighbours],
                                        dropout=drop_rate)
        self.attention = GuidedAttention(mid, drop_rate)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(ch["features"], 1)

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))  # (B, C) for any B; `.squeeze()` would drop a batch of 1

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The encoder's block4 embedding, the decoder's out_d2 and out_d4, and x̂ at the
        images' size."""
        enc = self.encoder
        embedding = enc.blocks(enc.stem(images), 1, 4)
        out_d2 = self.decoder2(self.decoder1(self.dropout(embedding)))
        out_d4 = self.decoder4(self.decoder3(out_d2))
        recon = self.decoder6(self.decoder5(out_d4))
        recon = F.interpolate(recon, size=images.shape[-2:], mode="bilinear", align_corners=True)
        return embedding, out_d2, out_d4, recon

    def classify(self, images: torch.Tensor, embedding: torch.Tensor, recon: torch.Tensor,
                 neighbour_maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The trunk from the (undropped) embedding: graph reasoning over `neighbour_maps` after
        block7, guided attention after block8. Returns the logit, the attention mask and the
        pooled features."""
        enc = self.encoder
        trunk = enc.blocks(embedding, 5, 7)
        trunk = enc.block8(self.reasoning(trunk, *neighbour_maps) + trunk)
        trunk, attention = self.attention(images, recon, trunk)
        features = self._pool(enc.exit_convs(enc.blocks(trunk, 9, 12)))
        return self.fc(self.dropout(features))[:, 0], attention, features

    def forward(self, inputs: dict) -> dict:
        images = inputs["images"]
        embedding, out_d2, out_d4, recon = self.reconstruct(images)
        logit, attention, _ = self.classify(images, embedding, recon, [out_d2, out_d4])
        return {"logit": logit, "recon": recon, "attention": attention,
                "embeddings": [self._pool(embedding), self._pool(out_d2), self._pool(out_d4)]}


def recce_losses(out: dict, images: torch.Tensor, labels: torch.Tensor, dist: Distributed,
                 rec_weight: float = 0.1, metric_weight: float = 0.1, flood: float = 0.04) -> dict:
    """RECCE's loss terms: `cls` (flooded BCE), `rec` (L1 on reals), `metric`, and
    `total` = cls + rec_weight·rec + metric_weight·metric. See `blocks.losses` for how each
    behaves under DDP."""
    cls = flooded_bce(out["logit"], labels, dist, flood)
    rec = real_l1(out["recon"], images, labels, dist)
    metric = metric_loss(out["embeddings"], labels, dist)
    total = cls + rec_weight * rec + metric_weight * metric
    return {"total": total, "cls": cls, "rec": rec, "metric": metric}
