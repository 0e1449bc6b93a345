"""The MAE's validation pass: reconstruction loss on real and fake val faces, and how well
the key-region reconstruction error alone tells them apart (the paper's premise: an MAE
that learned real faces reconstructs a forged key region worse).

Masks are drawn from a generator seeded per batch from the run seed, so every epoch
evaluates the same masks and epochs compare.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from lrerr_tools.mae.masking import MaskingSettings, key_masks_for, key_region_mask
from lrerr_tools.mae.model import MaskedAutoencoder
from lrerr_tools.normalization import to_mae_input
from lrerr_tools.shard_dataset import ShardDataset
from lrerr_tools.training import autocast, seeded_generator

VAL_STREAM = 1  # a seed part no other random stream of a run uses
VAL_METRICS = ("val_real_loss", "val_fake_loss", "val_real_key_error", "val_fake_key_error", "key_auc",
               "val_real_masked_mse", "val_real_colour_mse")


def key_region_error(model: MaskedAutoencoder, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                     key: torch.Tensor) -> torch.Tensor:
    """Per image (B,): mean squared error of the reconstruction (`paste`, the image the
    detector sees) over the masked key patches, in MAE-normalized pixels."""
    recon = model.paste(images.float(), pred.float(), mask)
    errors = (model.patchify(recon) - model.patchify(images.float())).pow(2).mean(dim=-1)
    region = (key & mask).float()
    return (errors * region).sum(dim=1) / region.sum(dim=1).clamp(min=1)


def masked_errors(model: MaskedAutoencoder, images: torch.Tensor, pred: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image (B,), over the masked patches, in MAE-normalized pixels: the squared error of
    the reconstruction, and that of a baseline painting every masked pixel the mean colour of
    the face's visible ones. An MAE that learned faces must beat the baseline clearly; one that
    learned nothing (coloured noise) does not."""
    patches = model.patchify(images.float())
    recon = model.patchify(model.paste(images.float(), pred.float(), mask))
    rgb = patches.reshape(*patches.shape[:2], -1, 3)
    visible = (~mask).float()[:, :, None, None]
    colour = (rgb * visible).sum(dim=(1, 2)) / (visible.sum(dim=(1, 2)) * rgb.shape[2])
    baseline = colour[:, None, None, :].expand_as(rgb).reshape(patches.shape)
    m = mask.float()

    def over_masked(guess: torch.Tensor) -> torch.Tensor:
        return ((guess - patches).pow(2).mean(dim=-1) * m).sum(dim=1) / m.sum(dim=1)

    return over_masked(recon), over_masked(baseline)


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of `scores` for label 1 (fake), or None when only one class is present."""
    if len(np.unique(labels)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


@torch.no_grad()
def evaluate(model: MaskedAutoencoder, dataset: ShardDataset, *, masking: MaskingSettings,
             dataset_patches: list[int], batch_size: int, workers: int, device: torch.device,
             dtype: torch.dtype | None, seed: int) -> dict:
    """Mean loss and key-region error of the real and the fake faces, and the key-region
    error's AUC as a fake score; a value a class is missing for is None."""
    was_training = model.training
    model.eval()
    losses, errors, masked, colour = [], [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    for i, batch in enumerate(loader):
        key = key_masks_for(batch["key_mask"], dataset_patches, masking.key_region)
        mask = key_region_mask(key, masking.mask_ratio, masking.key_mask_ratio,
                               seeded_generator(seed, VAL_STREAM, i)).to(device)
        images = to_mae_input(batch["image"].to(device))
        with autocast(device, dtype):
            pred, _ = model(images, mask)
        m = mask.float()
        losses.append(((model.patch_loss(images, pred) * m).sum(dim=1) / m.sum(dim=1)).cpu())
        errors.append(key_region_error(model, images, pred, mask, key.to(device)).cpu())
        for values, out in zip(masked_errors(model, images, pred, mask), (masked, colour)):
            out.append(values.cpu())
    model.train(was_training)
    labels = np.asarray(dataset.labels)
    loss, error, masked, colour = (torch.cat(v).double().numpy() if v else np.zeros(0)
                                   for v in (losses, errors, masked, colour))

    def mean(values: np.ndarray, label: int) -> float | None:
        chosen = values[labels == label]
        return float(chosen.mean()) if len(chosen) else None

    values = (mean(loss, 0), mean(loss, 1), mean(error, 0), mean(error, 1), auc(labels, error),
              mean(masked, 0), mean(colour, 0))
    return dict(zip(VAL_METRICS, values))


def premise_lines(record: dict) -> list[str]:
    """What an epoch's validation says of the paper's premise, for the terminal: does the MAE
    reconstruct real faces (against the mean-colour baseline), and does its key-region error
    tell fakes from reals? Nothing for what was not measured."""
    lines = []
    masked, colour = record.get("val_real_masked_mse"), record.get("val_real_colour_mse")
    if masked is not None and colour:
        lines.append(f"val real faces, masked patches: MSE {masked:.4f} reconstructed vs {colour:.4f} "
                     f"painted each face's mean colour ({masked / colour:.2f}x)")
    errors = (record["val_real_key_error"], record["val_fake_key_error"])
    if None not in errors:
        auc_text = "n/a" if record["key_auc"] is None else f"{record['key_auc']:.3f}"
        lines.append(f"key-region error: real {errors[0]:.4f}, fake {errors[1]:.4f} (AUC {auc_text})")
    return lines
