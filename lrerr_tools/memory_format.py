"""Networks in channels-last (NHWC) memory format, for every method and for MoCo.

oneDNN's CPU convolutions and poolings work in NHWC: PyTorch's default NCHW layout makes
each of them reorder its input and output, and its NCHW max-pooling is 5x slower than in
NHWC (Xception's 3x3 poolings were 40 % of LRErr's frozen extractor). With the weights in
NHWC every convolution's output is NHWC too, so the inputs need no conversion. On a GPU it
is the layout tensor cores take under AMP (timm's `--channels-last`). The values are the same
up to float rounding; state dicts load into a network in either layout.
"""

from __future__ import annotations

import torch
from torch import nn


def channels_last(net: nn.Module) -> nn.Module:
    """`net` with its 4-d weights in NHWC (in place; returned for chaining)."""
    return net.to(memory_format=torch.channels_last)
