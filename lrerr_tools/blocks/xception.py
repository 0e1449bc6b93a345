"""timm's `legacy_xception` layers at any width, without its 1000-class head, optionally cut
after an entry- or middle-flow block.

At width 1 the state dict is legacy_xception's minus `fc.*` (and minus the layers after the
cut), so ImageNet weights load with `load_legacy_xception`; smaller widths give tiny nets of
the same shape for fast tests.

    layers = XceptionLayers(width=1.0)
    load_legacy_xception(layers, timm.create_model("legacy_xception", pretrained=True).state_dict())
    load_pretrained_xception(XceptionLayers(last_block=3), pretrained=True, weights=None)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from timm.models.xception import Block, SeparableConv2d
from torch import nn

from lrerr_tools.attention import make_backbone
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
LAST_BLOCK = 12
# legacy_xception's top-level layers that hold weights, in its order.
LEGACY_LAYERS = ("conv1", "bn1", "conv2", "bn2", *(f"block{i}" for i in range(1, LAST_BLOCK + 1)),
                 "conv3", "bn3", "conv4", "bn4", "fc")


def scaled(channels: int, width: float) -> int:
    """`channels` at `width`; never below 4, so a depthwise-separable layer stays meaningful."""
    if width <= 0:
        raise ValueError(f"width must be positive (got {width})")
    return max(4, round(channels * width))


def xception_channels(width: float = 1.0) -> dict[str, int]:
    """The channel count of each stage at `width` (keys as in `LEGACY_CHANNELS`)."""
    return {name: scaled(count, width) for name, count in LEGACY_CHANNELS.items()}


class XceptionLayers(nn.Module):
    """legacy_xception's conv1 … act4, with every channel count times `width`; or its conv1 …
    block`last_block`, for a network that stops early (the units of Local-Prediction).

    The attributes keep timm's names, so callers that run the stages by hand (RECCE and the
    methods built on it) read like the reference code. `forward` runs them all and returns
    the stride-32 feature map (the last block's output when cut).
    """

    def __init__(self, width: float = 1.0, last_block: int = LAST_BLOCK):
        super().__init__()
        if not 1 <= last_block <= LAST_BLOCK:
            raise ValueError(f"last_block must be in 1..{LAST_BLOCK} (got {last_block})")
        self.width, self.last_block = width, last_block
        self.channels = ch = xception_channels(width)
        mid = ch["middle"]

        self.conv1 = nn.Conv2d(3, ch["stem1"], 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(ch["stem1"])
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(ch["stem1"], ch["stem2"], 3, bias=False)
        self.bn2 = nn.BatchNorm2d(ch["stem2"])
        self.act2 = nn.ReLU(inplace=True)

        # (in, out, reps, stride) of block1 … block12; built in order, so the cut costs nothing
        blocks = [(ch["stem2"], ch["entry1"], 2, 2), (ch["entry1"], ch["entry2"], 2, 2),
                  (ch["entry2"], mid, 2, 2), *[(mid, mid, 3, 1)] * 8, (mid, ch["exit"], 2, 2)]
        for index, shape in enumerate(blocks[:last_block], start=1):
            setattr(self, f"block{index}", Block(*shape, start_with_relu=index != 1,
                                                 grow_first=index != LAST_BLOCK))

        if last_block == LAST_BLOCK:
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
        x = self.blocks(self.stem(x), 1, self.last_block)
        return self.exit_convs(x) if self.last_block == LAST_BLOCK else x


def load_legacy_xception(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Fill `module` (an `XceptionLayers`, e.g. `RecceNet.encoder`) from a legacy_xception state
    dict, dropping its `fc.*` head and the layers a cut `module` lacks. Every other key must
    match in name and shape (`pretrained.load_fitting`): a width other than 1 always mismatches.
    """
    built = dict(module.named_children())
    left_out = tuple(f"{name}." for name in LEGACY_LAYERS if name not in built)
    return load_fitting(module, state_dict, "legacy_xception", "this Xception", dropped=("fc.", *left_out),
                        width=getattr(module, "width", None))


def load_pretrained_xception(module: nn.Module, pretrained: bool, weights: str | None) -> None:
    """legacy_xception's ImageNet weights (the `weights` file, or the local cache; never
    downloaded) into `module` as `load_legacy_xception` does; nothing when neither is asked."""
    if weights is None and not pretrained:
        return
    source = make_backbone("legacy_xception", pretrained=True, weights=weights).model
    load_legacy_xception(module, source.state_dict())
