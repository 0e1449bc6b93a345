"""RECCE's reconstruction-guided attention: where the reconstruction x̂ misses the face x,
the mask M highlights the features, M = σ(conv(ReLU(conv(|x − x̂|)))).

x̂ is not detached, so the classification loss also trains the decoder through M. RLGC uses
it as it is, and its `attention=bidir` adds a second one on the gradient map (one channel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GuidedAttention(nn.Module):
    """`forward(x, recon, features)` → (M ⊙ h(F) + Dropout(F), M), with M of shape (B, 1, h, w)
    and h = 1×1 conv → BN → ReLU at `depth` channels; x and x̂ have `in_channels` channels."""

    def __init__(self, depth: int, drop_rate: float = 0.2, in_channels: int = 3):
        super().__init__()
        self.gated = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, 1, 1, bias=False), nn.Sigmoid())
        self.h = nn.Sequential(nn.Conv2d(depth, depth, 1, bias=False), nn.BatchNorm2d(depth),
                               nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(drop_rate)

    def mask(self, x: torch.Tensor, recon: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """M at `size` (B, 1, *size), in [0, 1]."""
        # align_corners=True as in RECCE's code, which also resizes the reconstruction this way.
        residual = F.interpolate((x - recon).abs(), size=size, mode="bilinear", align_corners=True)
        return self.gated(residual)

    def forward(self, x: torch.Tensor, recon: torch.Tensor,
                features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.mask(x, recon, features.shape[-2:])
        return mask * self.h(features) + self.dropout(features), mask
