"""Image normalizations, named so that no tensor crosses between models in the wrong one.

The MAE works in ImageNet mean/std (what MAE and its pretrained encoders use); Xception
uses mean = std = 0.5. Shards hold uint8 RGB. Every conversion goes through these helpers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
XCEPTION_MEAN = (0.5, 0.5, 0.5)
XCEPTION_STD = (0.5, 0.5, 0.5)


def _per_channel(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1)


def normalize_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (..., 3, H, W) in [0, 255] -> float32 (x/255 - mean) / std."""
    x = images.float() / 255
    return (x - _per_channel(mean, x)) / _per_channel(std, x)


def to_mae_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 in the MAE's (ImageNet) normalization."""
    return normalize_uint8(images, IMAGENET_MEAN, IMAGENET_STD)


def from_mae(images: torch.Tensor) -> torch.Tensor:
    """MAE-normalized float -> [0, 1]. Clamped: predicted pixels may overshoot the valid
    range, and whatever consumes them next (a PNG, Xception) expects a real image."""
    return (images * _per_channel(IMAGENET_STD, images) + _per_channel(IMAGENET_MEAN, images)).clamp_(0, 1)


def mae_to(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """MAE-normalized float -> another normalization, e.g. `mae_to(x, XCEPTION_MEAN, XCEPTION_STD)`."""
    x = from_mae(images)
    return (x - _per_channel(mean, x)) / _per_channel(std, x)


def unnormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x − mean)/std-normalized float -> the [0, 1] range it came from (not clamped: a
    network's reconstruction may overshoot it)."""
    return images * _per_channel(std, images) + _per_channel(mean, images)
