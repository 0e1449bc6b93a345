"""Key-region masking (paper §III.B.1): mask a fixed share of the patches, most of the key
facial region T among them.

Both the MAE trainer and the detector mask with `key_region_mask`, so a detector sees
reconstructions made exactly as the MAE learned to make them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lrerr_tools.errors import LrerrError

KEY_REGIONS = ("dataset", "per-face")


@dataclass(frozen=True)
class MaskingSettings:
    """How a run masks: `mask_ratio` of all patches, at least `key_mask_ratio` of T among
    them; T is the dataset-wide key patch set or each face's own (`key_region`)."""

    mask_ratio: float = 0.75
    key_mask_ratio: float = 0.9
    key_region: str = "dataset"

    def check(self) -> None:
        if not 0 < self.mask_ratio < 1:
            raise LrerrError(f"--mask-ratio must be in (0, 1) (got {self.mask_ratio})")
        if not 0 <= self.key_mask_ratio <= 1:
            raise LrerrError(f"--key-mask-ratio must be in [0, 1] (got {self.key_mask_ratio})")
        if self.key_region not in KEY_REGIONS:
            raise LrerrError(f"--key-region must be one of {', '.join(KEY_REGIONS)} "
                             f"(got {self.key_region!r})")


def masked_count(num_patches: int, mask_ratio: float) -> int:
    return round(num_patches * mask_ratio)


def uncovered_key_region(key_patches: int, num_patches: int, settings: MaskingSettings) -> str | None:
    """Why `settings` cannot mask the share of a key region of `key_patches` patches that they
    ask for (part of T beyond 1 − key_mask_ratio would stay visible), or None when they can."""
    budget = masked_count(num_patches, settings.mask_ratio)
    wanted = math.ceil(key_patches * settings.key_mask_ratio - 1e-6)  # as key_region_mask counts
    if wanted <= budget:
        return None
    enough = [r / 100 for r in range(1, 100) if masked_count(num_patches, r / 100) >= wanted]
    fix = f"raise --mask-ratio to {enough[0]:.2f} or more" if enough else "lower --key-mask-ratio"
    return (f"the key region T holds {key_patches} of the {num_patches} patches and --key-mask-ratio "
            f"{settings.key_mask_ratio} asks to mask {wanted} of them, but --mask-ratio "
            f"{settings.mask_ratio} masks only {budget} patches, so {key_patches - budget} of T would "
            f"stay visible — {fix}")


def key_masks_for(face_key_masks: torch.Tensor, dataset_patches: list[int], key_region: str) -> torch.Tensor:
    """The key region T of each face in a batch, (B, N) bool: its own (`per-face`, the
    shard's `key_mask`) or the dataset-wide set (`dataset`, the shard manifest's patches)."""
    if key_region == "per-face":
        return face_key_masks.bool()
    masks = torch.zeros_like(face_key_masks, dtype=torch.bool)
    masks[:, dataset_patches] = True
    return masks


def key_region_mask(key_masks: torch.Tensor, mask_ratio: float, key_mask_ratio: float,
                    generator: torch.Generator) -> torch.Tensor:
    """Masks (B, N) bool, True = masked, with exactly round(N * mask_ratio) per row, so a
    batch keeps one sequence length. Per row, ceil(key_mask_ratio * |T|) key patches (capped
    by the budget) are masked first, chosen at random within T; the rest of the budget is
    drawn at random from all patches not yet masked, T's leftovers included.

    Random numbers come from `generator` (on its own device), so masks are reproducible.
    """
    batch, n = key_masks.shape
    noise = torch.rand(2, batch, n, generator=generator, device=generator.device)
    return masks_from_noise(key_masks, mask_ratio, key_mask_ratio, noise.to(key_masks.device))


def masks_from_noise(key_masks: torch.Tensor, mask_ratio: float, key_mask_ratio: float,
                     noise: torch.Tensor) -> torch.Tensor:
    """`key_region_mask` with its random numbers given: `noise` (2, B, N) uniform in [0, 1),
    so each row may come from a generator of its own and a batch is still masked at once."""
    n = key_masks.shape[1]
    budget = masked_count(n, mask_ratio)
    key = key_masks.bool()
    # rank of each key patch among its row's key patches, in random order (non-key patches last)
    key_order = torch.where(key, noise[0], 2.0).argsort(dim=1).argsort(dim=1)
    # the small epsilon keeps e.g. 0.9 * 30 = 27.000000000000004 from asking for 28
    wanted = torch.ceil(key.sum(dim=1) * key_mask_ratio - 1e-6).clamp(max=budget).long()
    forced = key & (key_order < wanted[:, None])
    score = noise[1] + 2.0 * forced  # forced patches outrank every other: noise is in [0, 1)
    chosen = score.topk(budget, dim=1).indices
    return torch.zeros_like(key).scatter_(1, chosen, True)

