"""RECCE's graph reasoning: each vertex of a coarse map A gathers the finer-map vertices
under it, weighted by attention and gated by A, and the result is projected back to A's width.

RECCE's instance is `GraphReasoning(728, 256, [(256, 2), (128, 4)])` on A = block7's output
(h×h), B = out_d2 (2h×2h) and C = out_d4 (4h×4h); CRL's JointGR adds a fourth set. The caller
adds the output to A.

Vectorised: each neighbour map is unfolded into (batch, r², h·w, C) windows and all vertices
are scored at once; the reference loops over vertices in Python and is several times slower.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, bias=False)


class GraphReasoning(nn.Module):
    """A (a_channels @ h×w) plus neighbour maps (channels @ rh×rw, one per `(channels, r)` in
    `neighbours`) → a_channels @ h×w.

    Per neighbour set: gate g = 1 − σ(1×1 conv of A); neighbours embedded by Linear→ReLU→Linear;
    weights w = softmax over the r² neighbours of ReLU(Linear([emb_a; emb_nbr] → 1));
    agg = (Σ w·emb_nbr) ⊙ g. Output: reproject(σ(cat[agg_1, …, agg_n, emb_a])), reproject =
    1×1 conv → ReLU → 1×1 conv → Dropout. No layer has a bias, as in RECCE's code.
    """

    def __init__(self, a_channels: int, embed: int, neighbours: Sequence[tuple[int, int]],
                 dropout: float = 0.2):
        super().__init__()
        if not neighbours:
            raise ValueError("GraphReasoning needs at least one neighbour set")
        self.embed = embed
        self.ratios = tuple(int(ratio) for _, ratio in neighbours)
        self.embed_a = nn.Sequential(_conv1x1(a_channels, embed), nn.ReLU(inplace=True),
                                     _conv1x1(embed, embed))
        self.gates = nn.ModuleList(_conv1x1(a_channels, embed) for _ in neighbours)
        self.embed_nbr = nn.ModuleList(
            nn.Sequential(nn.Linear(channels, embed, bias=False), nn.ReLU(inplace=True),
                          nn.Linear(embed, embed, bias=False))
            for channels, _ in neighbours)
        # One Linear over [emb_a; emb_nbr], kept whole so its weight reads like the reference's;
        # forward applies its two halves separately rather than building the concatenation.
        self.scorers = nn.ModuleList(nn.Linear(2 * embed, 1, bias=False) for _ in neighbours)
        self.reproject = nn.Sequential(
            _conv1x1(embed * (len(neighbours) + 1), a_channels), nn.ReLU(inplace=True),
            _conv1x1(a_channels, a_channels), nn.Dropout(dropout))

    def forward(self, vert_a: torch.Tensor, *neighbour_maps: torch.Tensor) -> torch.Tensor:
        if len(neighbour_maps) != len(self.ratios):
            raise ValueError(f"GraphReasoning expects {len(self.ratios)} neighbour maps, "
                             f"got {len(neighbour_maps)}")
        batch, _, height, width = vert_a.shape
        emb_a = self.embed_a(vert_a).flatten(2).transpose(1, 2)  # (B, HW, E)
        parts = []
        for index, (nbr, ratio) in enumerate(zip(neighbour_maps, self.ratios)):
            if nbr.shape[-2:] != (ratio * height, ratio * width):
                raise ValueError(f"neighbour map {index} is {tuple(nbr.shape[-2:])}, expected "
                                 f"{ratio}× A's {height}×{width}")
            # (B, C·r², HW) → (B, r², HW, C): window k of the unfold lies under A's vertex k
            # in the same row-major order as A's flatten.
            windows = F.unfold(nbr, kernel_size=ratio, stride=ratio)
            windows = windows.view(batch, nbr.shape[1], ratio * ratio, height * width).permute(0, 2, 3, 1)
            emb_nbr = self.embed_nbr[index](windows)  # (B, r², HW, E)
            weight = self.scorers[index].weight[0]
            score = (emb_a @ weight[: self.embed]).unsqueeze(1) + emb_nbr @ weight[self.embed:]
            attn = torch.softmax(F.relu(score), dim=1).unsqueeze(-1)  # softmax over the r² neighbours
            gate = 1 - torch.sigmoid(self.gates[index](vert_a)).flatten(2).transpose(1, 2)
            parts.append((attn * emb_nbr).sum(1) * gate)
        parts.append(emb_a)
        fused = torch.sigmoid(torch.cat(parts, dim=-1))  # (B, HW, E·(n+1))
        fused = fused.transpose(1, 2).reshape(batch, -1, height, width)
        return self.reproject(fused)
