"""CRL (Compact Reconstruction Learning with Joint-Guided Reasoning, JISA 2025) on RECCE's
network, and its losses. The authors' code is unreleased: what the abstract leaves open is our
reading (docs/usage.md lists it).

    net = CrlNet(width=1.0)
    load_legacy_xception(net.encoder, imagenet_state_dict)   # encoder and trunk only
    out = net({"images": x})                                  # x in [−1, 1]
    losses = crl_losses(out, x, labels, dist)

RECCE's encoder, decoder and guided attention, with three changes: RGB heads on the decoder's
out_d2 and out_d4 give reconstructions at 1/8 and 1/4 of the size beside x̂ (the multi-view
loss); JointGR, RECCE's graph reasoning with a fourth vertex set D from the reconstruction
error |x − x̂|; and the pooled features feed the real-sample compactness loss instead of
RECCE's metric loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lrerr_tools.blocks.layers import conv_bn_relu
from lrerr_tools.blocks.losses import centre_compactness, flooded_bce, multi_view_l1, pair_compactness
from lrerr_tools.blocks.recce import RecceNet
from lrerr_tools.blocks.xception import xception_channels

if TYPE_CHECKING:
    from lrerr_tools.training import Distributed

ERROR_RATIO = 4  # D lies at stride 4 (56² at 224 px), 4×4 of its vertices under each of A's


def _rgb_head(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, 3, 1, bias=False), nn.Tanh())


class CrlNet(RecceNet):
    """CRL with one fake logit. `forward({"images": x})` takes (B, 3, S, S) faces normalised
    with mean = std = 0.5 and returns RECCE's `logit`, `recon` and `attention`, and:

    - `recons`: the reconstructions at S/8, S/4 and S (the out_d2 and out_d4 heads, then x̂),
      each in [−1, 1];
    - `embeddings`: the pooled 2048-d features and the pooled block4 output, each (B, C);
    - `centres` (with `centres`): the two EMA real-centre buffers, one per embedding,
      which `crl_losses` moves in place.

    The error stem turns |x − x̂| into D: 3×3 s2 conv → BN → ReLU (32 channels), 3×3 s2 conv
    → BN → ReLU (64), 1×1 conv (128), at width 1. S must be divisible by 16.
    """

    def __init__(self, width: float = 1.0, drop_rate: float = 0.2, centres: bool = False):
        ch = xception_channels(width)
        super().__init__(width, drop_rate, extra_neighbours=[(ch["entry1"], ERROR_RATIO)])
        self.error_stem = nn.Sequential(conv_bn_relu(3, ch["stem1"], 3, 2),
                                        conv_bn_relu(ch["stem1"], ch["stem2"], 3, 2),
                                        nn.Conv2d(ch["stem2"], ch["entry1"], 1, bias=False))
        self.rgb_d2, self.rgb_d4 = _rgb_head(ch["entry2"]), _rgb_head(ch["entry1"])
        self.centres = centres
        if centres:
            self.register_buffer("centre_features", torch.zeros(ch["features"]))
            self.register_buffer("centre_block4", torch.zeros(ch["middle"]))

    def forward(self, inputs: dict) -> dict:
        images = inputs["images"]
        embedding, out_d2, out_d4, recon = self.reconstruct(images)
        error = self.error_stem((images - recon).abs())
        logit, attention, features = self.classify(images, embedding, recon, [out_d2, out_d4, error])
        out = {"logit": logit, "recon": recon, "attention": attention,
               "recons": [self.rgb_d2(out_d2), self.rgb_d4(out_d4), recon],
               "embeddings": [features, self._pool(embedding)]}
        if self.centres:
            out["centres"] = [self.centre_features, self.centre_block4]
        return out


def crl_losses(out: dict, images: torch.Tensor, labels: torch.Tensor, dist: Distributed,
               mv_weight: float = 0.1, rsc_weight: float = 0.1, flood: float = 0.04,
               sobel_view: bool = False, centre_momentum: float = 0.99) -> dict:
    """CRL's loss terms: `cls` (flooded BCE), `mv` (multi-view reconstruction of the reals,
    `multi_view_l1`), `rsc` (real-sample compactness: over real pairs, or against the EMA
    centres when `out` has them), and `total` = cls + mv_weight·mv + rsc_weight·rsc. Each is
    DDP-exact (see `blocks.losses`)."""
    cls = flooded_bce(out["logit"], labels, dist, flood)
    mv = multi_view_l1(out["recons"], images, labels, dist, sobel_view=sobel_view)
    if "centres" in out:
        rsc = centre_compactness(out["embeddings"], out["centres"], labels, dist, centre_momentum)
    else:
        rsc = pair_compactness(out["embeddings"], labels, dist)
    return {"total": cls + mv_weight * mv + rsc_weight * rsc, "cls": cls, "mv": mv, "rsc": rsc}
