"""MoCo v2's augmentation ("aug-plus"), batched on the device from uint8 faces, every draw
taken from one seeded generator: a resumed run draws the same crops and colours.

Per face, in this order: RandomResizedCrop (area 0.2–1 of the face, aspect 3/4–4/3), with
p 0.8 a colour jitter (brightness, contrast, saturation 0.4, hue 0.1), with p 0.2 grey, with
p 0.5 a Gaussian blur (σ 0.1–2 px at 224 px, scaled with the output), and with p 0.5 a
horizontal flip. Unlike torchvision, the jitter's four parts come in a fixed order, and the
hue turns the colour in the YIQ plane (a linear map, so it batches) rather than in HSV.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCALE, RATIO = (0.2, 1.0), (3 / 4, 4 / 3)
JITTER, HUE, P_JITTER, P_GREY, P_BLUR, P_FLIP = 0.4, 0.1, 0.8, 0.2, 0.5, 0.5
SIGMA = (0.1, 2.0)  # at 224 px
DRAWS = 13  # uniform numbers per face, in the order `aug_plus` reads them
LUMA = (0.299, 0.587, 0.114)
# RGB ↔ YIQ (NTSC): hue is the angle in the IQ plane.
RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
YIQ_TO_RGB = torch.linalg.inv(RGB_TO_YIQ)


def _crop_grids(u: torch.Tensor, size: int) -> torch.Tensor:
    """Sampling grids (B, size, size, 2) of random resized crops, from 4 uniforms per face."""
    area = SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, 0]
    log_ratio = math.log(RATIO[0]) + (math.log(RATIO[1]) - math.log(RATIO[0])) * u[:, 1]
    ratio = log_ratio.exp()
    width = (area * ratio).sqrt().clamp(max=1)  # a share of the face's side
    height = (area / ratio).sqrt().clamp(max=1)
    centre_x = (2 * u[:, 2] - 1) * (1 - width)  # in [-1, 1], the crop inside the face
    centre_y = (2 * u[:, 3] - 1) * (1 - height)
    theta = torch.zeros(len(u), 2, 3, device=u.device)
    theta[:, 0, 0], theta[:, 0, 2] = width, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    return F.affine_grid(theta, [len(u), 3, size, size], align_corners=False)


def _grey(x: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(LUMA, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _colour_jitter(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation and hue from 4 uniforms per face; x in [0, 1]."""
    factor = (1 + JITTER * (2 * u[:, :3] - 1))[:, :, None, None, None]  # (B, 3, 1, 1, 1)
    x = (x * factor[:, 0]).clamp(0, 1)
    mean = _grey(x).mean((2, 3), keepdim=True)
    x = ((x - mean) * factor[:, 1] + mean).clamp(0, 1)
    grey = _grey(x)
    x = ((x - grey) * factor[:, 2] + grey).clamp(0, 1)
    angle = 2 * math.pi * HUE * (2 * u[:, 3] - 1)
    cos, sin = angle.cos(), angle.sin()
    turn = torch.zeros(len(u), 3, 3, device=x.device)
    turn[:, 0, 0], turn[:, 1, 1], turn[:, 1, 2], turn[:, 2, 1], turn[:, 2, 2] = 1, cos, -sin, sin, cos
    mix = YIQ_TO_RGB.to(x.device) @ turn @ RGB_TO_YIQ.to(x.device)  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", mix, x).clamp(0, 1)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A separable Gaussian blur, one σ (px) per face, reflecting at the borders."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B·C, k)
    flat = x.reshape(1, b * c, h, w)
    for pad, shape in (((radius, radius, 0, 0), (1, -1)), ((0, 0, radius, radius), (-1, 1))):
        flat = F.conv2d(F.pad(flat, pad, mode="reflect"), kernel.view(b * c, 1, *shape), groups=b * c)
    return flat.reshape(b, c, h, w)


def _where(apply: torch.Tensor, changed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.where(apply[:, None, None, None], changed, x)


def aug_plus(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """uint8 faces (B, 3, H, W) on any device → one augmented view each, float in [0, 1],
    (B, 3, size, size). The draws come from `generator` (a CPU one is fine for any device),
    DRAWS per face, so a view depends on the generator's state and the face alone."""
    u = torch.rand(len(images), DRAWS, generator=generator, device=generator.device).to(images.device)
    x = images.float() / 255
    x = F.grid_sample(x, _crop_grids(u[:, :4], size), mode="bilinear", padding_mode="border",
                      align_corners=False)
    x = _where(u[:, 4] < P_JITTER, _colour_jitter(x, u[:, 5:9]), x)
    x = _where(u[:, 9] < P_GREY, _grey(x).expand_as(x), x)
    sigma = (SIGMA[0] + (SIGMA[1] - SIGMA[0]) * u[:, 10]) * size / 224
    x = _where(u[:, 11] < P_BLUR, _blur(x, sigma), x)
    return _where(u[:, 12] < P_FLIP, x.flip(3), x)
