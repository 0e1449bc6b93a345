"""timm's `legacy_xception` layers at any width, without its 1000-class head.

At width 1 the state dict is legacy_xception's minus `fc.*`, so ImageNet weights load with
`load_legacy_xception`; smaller widths give tiny nets of the same shape for fast tests.

    layers = XceptionLayers(width=1.0)
    load_legacy_xception(layers, timm.create_model("legacy_xception", pretrained=True).state_dict())
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from timm.models.xception import Block, SeparableConv2d
from torch import nn

from lrerr_tools.blocks.pretrained import load_fitting

# legacy_xception's channel counts, by the role each plays.
LEGACY_CHANNELS = {
    "stem1": 32,      # conv1
    "stem2": 64,      # conv2
    "entry1": 128,    # block1 (stride 4)
    "entry2": 256,    # block2 (stride 8)
    "middle": 728,    # block3..block11 (stride 16)
    "exit": 1024,     # block12 (stride 32)
    "conv3": 1536,
    "features": 2048,  # conv4: the pooled feature width
}


def scaled(channels: int, width: float) -> int:
    """`channels` at `width`; never below 4, so a depthwise-separable layer stays meaningful."""
    if width <= 0:
        raise ValueError(f"width must be positive (got {width})")
    return max(4, round(channels * width))


def xception_channels(width: float = 1.0) -> dict[str, int]:
    """The channel count of each stage at `width` (keys as in `LEGACY_CHANNELS`)."""
    return {name: scaled(count, width) for name, count in LEGACY_CHANNELS.items()}


class XceptionLayers(nn.Module):
    """legacy_xception's conv1 … act4, with every channel count times `width`.

    The attributes keep timm's names, so callers that run the stages by hand (RECCE and the
    methods built on it) read like the reference code. `forward` runs them all and returns
    the stride-32 feature map.
    """

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.width = width
        self.channels = ch = xception_channels(width)
        mid = ch["middle"]

        self.conv1 = nn.Conv2d(3, ch["stem1"], 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(ch["stem1"])
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(ch["stem1"], ch["stem2"], 3, bias=False)
        self.bn2 = nn.BatchNorm2d(ch["stem2"])
        self.act2 = nn.ReLU(inplace=True)

        self.block1 = Block(ch["stem2"], ch["entry1"], 2, 2, start_with_relu=False)
        self.block2 = Block(ch["entry1"], ch["entry2"], 2, 2)
        self.block3 = Block(ch["entry2"], mid, 2, 2)
        for index in range(4, 12):
            setattr(self, f"block{index}", Block(mid, mid, 3, 1))
        self.block12 = Block(mid, ch["exit"], 2, 2, grow_first=False)

        self.conv3 = SeparableConv2d(ch["exit"], ch["conv3"], 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(ch["conv3"])
        self.act3 = nn.ReLU(inplace=True)
        self.conv4 = SeparableConv2d(ch["conv3"], ch["features"], 3, 1, 1)
        self.bn4 = nn.BatchNorm2d(ch["features"])
        self.act4 = nn.ReLU(inplace=True)

        # timm's own initialisation, so a randomly initialised run starts like legacy_xception.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(x)))

    def blocks(self, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """Run block`first` … block`last` (inclusive)."""
        for index in range(first, last + 1):
            x = getattr(self, f"block{index}")(x)
        return x

    def exit_convs(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act3(self.bn3(self.conv3(x)))
        return self.act4(self.bn4(self.conv4(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.exit_convs(self.blocks(self.stem(x), 1, 12))


def load_legacy_xception(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Fill `module` (an `XceptionLayers`, e.g. `RecceNet.encoder`) from a legacy_xception state
    dict, dropping its `fc.*` head. Every other key must match in name and shape
    (`pretrained.load_fitting`): a width other than 1 always mismatches.
    """
    return load_fitting(module, state_dict, "legacy_xception", "this Xception", dropped=("fc.",),
                        width=getattr(module, "width", None))
