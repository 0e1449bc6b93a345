"""RECCE's reconstruction-guided attention: where the reconstruction x̂ misses the face x,
the mask M highlights the features, M = σ(conv(ReLU(conv(|x − x̂|)))).

x̂ is not detached, so the classification loss also trains the decoder through M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GuidedAttention(nn.Module):
    """`forward(x, recon, features)` → (M ⊙ h(F) + Dropout(F), M), with M of shape (B, 1, h, w)
    and h = 1×1 conv → BN → ReLU at `depth` channels."""

    def __init__(self, depth: int, drop_rate: float = 0.2):
        super().__init__()
        self.gated = nn.Sequential(
            nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(3, 1, 1, bias=False), nn.Sigmoid())
        self.h = nn.Sequential(nn.Conv2d(depth, depth, 1, bias=False), nn.BatchNorm2d(depth),
                               nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor, recon: torch.Tensor,
                features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # align_corners=True as in RECCE's code, which also resizes the reconstruction this way.
        residual = F.interpolate((x - recon).abs(), size=features.shape[-2:], mode="bilinear",
                                 align_corners=True)
        mask = self.gated(residual)
        return mask * self.h(features) + self.dropout(features), mask
