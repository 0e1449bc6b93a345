"""The frozen MAE's part in the detector: hide each face's key region and reconstruct it.

The mask hides all of the key region T (the MAE's own choice of T: dataset-wide or per
face, as it was trained), then fills the MAE's mask ratio at random, through the same
`key_region_mask` the MAE trained with. Its randomness is seeded per face, from the run seed
and a hash of the face's own uint8 pixels: a face gets the same reconstruction in every
epoch, in validation and in `score`, whatever batch it lands in (a score does not depend on
--batch-size), and whatever it is called (a renamed video scores the same, and so does the
same face met later in `predict`).

The MAE runs in the precision the run chose (LRErr's `--mae-precision`): bfloat16 autocast by
default, as the MAE release evaluates under autocast. Only its arithmetic changes: the
visible patches stay the face's own float32 pixels, and the maps are made from the float32
reconstruction at full precision. On the demo's trained MAE, bfloat16 moved the attention
maps by 0.4 % of their mean (correlation 0.99998), against a reconstruction error 200 times
the change; it made the reconstruction 2.2x faster on this project's CPUs (docs/performance.md).
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

import torch

from lrerr_tools.errors import LrerrError
from lrerr_tools.mae.checkpoint import MaeInfo, load_mae
from lrerr_tools.mae.masking import key_masks_for, masks_from_noise
from lrerr_tools.mae.model import GRID, IMAGE_SIZE, MaskedAutoencoder
from lrerr_tools.normalization import to_mae_input
from lrerr_tools.shard_dataset import ShardDataset
from lrerr_tools.training import autocast, seeded_generator

MASK_STREAM = 1  # a seed part of the detector run's random streams (sampling uses 0)
# All of T (the MAE trained hiding most of it, --key-mask-ratio): no original pixel of the
# key region, where forgeries live, may leak into the reconstruction the detector compares with.
KEY_MASK_RATIO = 1.0
MAE_PRECISIONS = {"bfloat16": torch.bfloat16, "float32": None}  # name → autocast dtype (None: none)


class Reconstructor:
    """A frozen MAE with its own key region T and mask ratio, run at `precision` (a name of
    MAE_PRECISIONS); `reconstruct(batch)` on a shard batch."""

    def __init__(self, model: MaskedAutoencoder, info: MaeInfo, seed: int, precision: str):
        self.model, self.info, self.seed, self.precision = model, info, seed, precision

    def check(self, dataset: ShardDataset) -> None:
        """Refuse shards the MAE cannot read: other image sizes or another patch grid."""
        grid = (dataset.key_region or {}).get("grid")
        if dataset.image_size != IMAGE_SIZE or grid != GRID:
            raise LrerrError(f"{dataset.shard_dir}: faces of {dataset.image_size} px with a {grid}x{grid} "
                             f"key patch grid; the MAE reconstructs {IMAGE_SIZE} px faces on {GRID}x{GRID}")

    def masks(self, key_masks: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(B, 196) bool, True = hidden, for uint8 faces (B, 3, 224, 224): each face's random
        numbers from a generator seeded by its pixels, all faces masked in one call."""
        masking = self.info.masking
        key = key_masks_for(key_masks, self.info.key_patches, masking.key_region)
        n = key.shape[1]
        generators = [seeded_generator(self.seed, MASK_STREAM, *face_seed(face)) for face in images]
        noise = torch.stack([torch.rand(2, n, generator=g) for g in generators], dim=1)
        return masks_from_noise(key, masking.mask_ratio, KEY_MASK_RATIO, noise)

    @torch.no_grad()
    def reconstruct(self, batch: dict, device: torch.device) -> torch.Tensor:
        """The MAE's reconstruction (visible patches + predicted masked ones) of a shard batch,
        (B, 3, 224, 224) float in the MAE's (ImageNet) normalization."""
        masks = self.masks(batch["key_mask"], batch["image"]).to(device)
        return self.reconstruct_masked(batch["image"].to(device, non_blocking=True), masks)

    def reconstruct_masked(self, faces: torch.Tensor, masks: torch.Tensor, precision: str | None = None
                           ) -> torch.Tensor:
        """`reconstruct` of uint8 faces (B, 3, 224, 224) hidden by given `masks` (B, 196),
        at `precision` (None: the run's): the part of it that an exported graph holds."""
        with autocast(faces.device, MAE_PRECISIONS[precision or self.precision]):
            return self.model.reconstruct(to_mae_input(faces), masks)

    @cached_property
    def fixed_mask(self) -> torch.Tensor:
        """(196,) bool: one mask for every face, drawn as a face's is, from the run seed alone
        (an exported graph's: the per-face seed is a hash of the face's bytes, which no graph
        computes). Refused for an MAE that hides each face's own key region. Cached: made
        once, before tracing, it is a constant of the graph."""
        if self.info.masking.key_region != "dataset":
            raise LrerrError("this LRErr's MAE hides each face's own key region, which comes from dlib's "
                             "points on the face: no exported graph computes them — not exported")
        generator = seeded_generator(self.seed, MASK_STREAM)
        key = key_masks_for(torch.zeros(1, GRID * GRID, dtype=torch.bool), self.info.key_patches, "dataset")
        noise = torch.rand(2, 1, GRID * GRID, generator=generator)
        return masks_from_noise(key, self.info.masking.mask_ratio, KEY_MASK_RATIO, noise)[0]


def face_seed(face: torch.Tensor) -> tuple[int, int]:
    """Two 32-bit seed parts from a hash of a uint8 face's bytes (on the CPU)."""
    digest = hashlib.blake2b(face.cpu().contiguous().numpy().tobytes(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def load_reconstructor(mae_dir: str | Path, seed: int, device: torch.device, precision: str) -> Reconstructor:
    """The frozen reconstructor of the train-mae run `mae_dir`, masks seeded by `seed`."""
    model, info = load_mae(mae_dir, device)
    return Reconstructor(model, info, seed, precision)
