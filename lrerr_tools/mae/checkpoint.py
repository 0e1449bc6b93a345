"""Load a finished `train-mae` run for a later stage (the detector): `load_mae`.

    model, info = load_mae("work/mae", device)
    mask = key_region_mask(key_masks_for(batch["key_mask"], info.key_patches, info.masking.key_region),
                           info.masking.mask_ratio, info.masking.key_mask_ratio, generator)
    recon = model.reconstruct(to_mae_input(batch["image"]), mask)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lrerr_tools.errors import LrerrError
from lrerr_tools.mae.masking import MaskingSettings
from lrerr_tools.mae.model import MaskedAutoencoder
from lrerr_tools.manifest import link, open_parent
from lrerr_tools.run_dir import best_checkpoint
from lrerr_tools.training import load_checkpoint

STAGE = "train-mae"


@dataclass(frozen=True)
class MaeInfo:
    """What a stage built on an MAE run records and needs besides the weights."""

    path: str             # the run directory, resolved
    sha256: str           # of its manifest.json: the child's parent hash
    config: dict          # the run's MaeTrainConfig, as a dict
    model_config: dict    # the architecture (MaskedAutoencoder.from_config)
    masking: MaskingSettings
    key_patches: list[int]  # the dataset-wide key region T the run masked with
    epoch: int            # the epoch best.pt is from

    def as_parent(self, child: str | Path) -> dict:
        """What the stage writing `child` records of this MAE run."""
        return link(self.path, child, self.sha256)


def load_mae(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[MaskedAutoencoder, MaeInfo]:
    """The best weights of a complete train-mae run, in eval mode with gradients off."""
    run = open_parent(run_dir, STAGE)  # refuses a missing, unfinished or altered run
    path = best_checkpoint(run.path)
    if not path.is_file():
        raise LrerrError(f"{path}: missing — the {STAGE} run in {run.path} is incomplete; rerun it")
    checkpoint = load_checkpoint(path)
    model = MaskedAutoencoder.from_config(checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval().requires_grad_(False)
    manifest = run.manifest
    info = MaeInfo(path=str(run.path.resolve()), sha256=run.sha256, config=manifest.config,
                   model_config=checkpoint["model_config"],
                   masking=MaskingSettings(**manifest.extra["masking"]),
                   key_patches=list(manifest.extra["key_patches"]), epoch=checkpoint["epoch"])
    return model, info
