"""Augmentations for MAE training, on the device and from the run's seeded generator (so a
resumed run draws the same numbers). Both keep the alignment the key region relies on, as
crops would not.

- Colour jitter: faces of one video share a white balance and exposure; an MAE that has seen
  few videos then paints masked patches in its training videos' colours instead of taking
  them from the visible patches. Per-image gains, gamma and offset (the changes a camera
  makes) teach it to take them from the face in front of it.
- Horizontal flip: the alignment template is left-right symmetric, so a mirrored aligned
  face is an aligned face, and its key region is the mirrored patch grid. Without it, an MAE
  that saw one orientation of few people reconstructs the other badly.
"""

from __future__ import annotations

import torch


def colour_jitter(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """uint8 faces (B, 3, H, W) with, per face, each channel's gain in [1 − s, 1 + s], one gamma
    in [1 − s, 1 + s] and one offset in ±s·64 grey levels; `strength` s = 0 returns them as they are."""
    if strength == 0:
        return images
    b = images.shape[0]
    draws = torch.rand(b, 5, generator=generator, device=generator.device).to(images.device)
    spread = 2 * draws - 1  # uniform in [-1, 1)
    gains = (1 + strength * spread[:, :3])[:, :, None, None]
    gamma = (1 + strength * spread[:, 3])[:, None, None, None]
    offset = (64 * strength * spread[:, 4])[:, None, None, None]
    jittered = 255 * (images.float() / 255).pow(gamma) * gains + offset
    return jittered.round().clamp(0, 255).to(torch.uint8)


def horizontal_flip(images: torch.Tensor, key_masks: torch.Tensor, probability: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Faces (B, C, H, W) and their key regions (B, G·G) bool, each pair mirrored left-right
    with `probability`; 0 returns them as they are and draws nothing, so runs without flips
    keep their random stream."""
    if probability == 0:
        return images, key_masks
    b, n = key_masks.shape
    grid = round(n ** 0.5)
    flip = torch.rand(b, generator=generator, device=generator.device).to(images.device) < probability
    mirrored_masks = key_masks.reshape(b, grid, grid).flip(-1).reshape(b, n)
    return (torch.where(flip[:, None, None, None], images.flip(-1), images),
            torch.where(flip.to(key_masks.device)[:, None], mirrored_masks, key_masks))
