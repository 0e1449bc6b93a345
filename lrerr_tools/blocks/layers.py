"""Small convolution units that several methods' networks are built from."""

from __future__ import annotations

from timm.models.xception import SeparableConv2d
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding for odd kernels) → BN → ReLU."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def sep_conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """Xception's 3×3 depthwise-separable conv → BN → ReLU."""
    return nn.Sequential(SeparableConv2d(in_channels, out_channels, 3, 1, 1), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))
