"""Image gradients of a face's grey level: RLGC's gradient target and CRL's Sobel view.

Grey is ITU-R BT.601 luma (OpenCV's RGB2GRAY), the border is reflected without repeating the
edge pixel (OpenCV's default, BORDER_REFLECT_101), so the values are `cv2.Sobel`'s with
ksize 3, scaled to the ranges below. Everything runs on the tensors' device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GREY = (0.299, 0.587, 0.114)
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def grey(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB → (B, 1, H, W) luma, in the images' range."""
    weights = torch.as_tensor(GREY, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def sobel(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] → (B, 2, H, W): the x and y Sobel responses of its grey
    level divided by 4, so each lies in [−1, 1]. Smooth in the images, so a loss on it
    trains what made them."""
    kernel_x = torch.tensor(_SOBEL_X, dtype=images.dtype, device=images.device) / 4
    kernels = torch.stack([kernel_x, kernel_x.T]).unsqueeze(1)
    return F.conv2d(F.pad(grey(images), (1, 1, 1, 1), mode="reflect"), kernels)


def sobel_magnitude(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] → (B, 1, H, W) gradient magnitude in [0, 1]: OpenCV's
    sqrt(Sobel_x² + Sobel_y²) of the grey face divided by its largest value, 4√2."""
    return sobel(images).square().sum(1, keepdim=True).div(2).sqrt()
