"""Reconstruction grids (the paper's Fig. 4): per face, a row of original | masked input |
reconstruction (visible patches pasted back) | |difference|, to see what the MAE learned.

The same faces and masks every epoch, and a fixed gain on the difference (not one scaled to
each image's maximum), so grids of different epochs compare by eye.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from lrerr_tools.atomic_io import atomic_write_bytes
from lrerr_tools.mae.model import GRID, PATCH, MaskedAutoencoder
from lrerr_tools.normalization import from_mae, to_mae_input

DIFF_GAIN = 4.0
MASKED_GREY = 0.5
GAP = 4  # pixels between panels


def _to_uint8(images01: torch.Tensor) -> np.ndarray:
    return (images01.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def reconstruction_grid(model: MaskedAutoencoder, images: torch.Tensor, masks: torch.Tensor,
                        captions: list[str], device: torch.device) -> np.ndarray:
    """uint8 RGB grid for `images` (K, 3, 224, 224) uint8 under `masks` (K, 196)."""
    was_training = model.training
    model.eval()
    x = to_mae_input(images.to(device))
    masks = masks.to(device)
    recon = from_mae(model.reconstruct(x, masks).float())
    model.train(was_training)
    original = from_mae(x)
    pixel_mask = masks.float().view(-1, 1, GRID, GRID).repeat_interleave(PATCH, 2).repeat_interleave(PATCH, 3)
    masked = original * (1 - pixel_mask) + MASKED_GREY * pixel_mask
    diff = (recon - original).abs() * DIFF_GAIN
    panels = [_to_uint8(p) for p in (original, masked, recon, diff)]
    size = images.shape[-1]
    grid = np.full((len(images) * (size + GAP) - GAP, 4 * (size + GAP) - GAP, 3), 255, np.uint8)
    for row in range(len(images)):
        for col, panel in enumerate(panels):
            y, x0 = row * (size + GAP), col * (size + GAP)
            grid[y:y + size, x0:x0 + size] = panel[row]
        cv2.putText(grid, captions[row], (4, row * (size + GAP) + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 0), 1, cv2.LINE_AA)
    return grid


def write_grid(path: str | Path, grid: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, png.tobytes())
