"""RLGC (Reconstruction Learning fusing Gradient and Content features, IEEE TCE 2024), after
its public inference code (a DGNet-style network), with one fake logit, and its losses.

    net = RlgcNet(width=1.0)
    load_efficientnet_b4(net.encoder, tf_efficientnet_b4_state_dict)   # the content encoder only
    out = net({"images": x, "gradient": g})      # x in ImageNet mean/std, g = sobel_magnitude(face)
    losses = rlgc_losses(out, x, g, labels, dist)

A content encoder (EfficientNet-B4 at strides 8, 16, 32, each reduced to 64 channels) and a
gradient branch on the RGB face (32 channels at stride 8, and ĝ, its prediction of the face's
Sobel magnitude) are fused by grouped interleaving; a neighbour-connection decoder
reconstructs the face from the fused maps; RECCE's guided attention from |x − x̂| weighs the
stride-32 map before an Xception-style head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from timm.models.xception import Block
from torch import nn

from lrerr_tools.blocks.guided_attention import GuidedAttention
from lrerr_tools.blocks.layers import conv_bn_relu, sep_conv_bn_relu
from lrerr_tools.blocks.losses import real_l1
from lrerr_tools.blocks.pretrained import load_fitting
from lrerr_tools.normalization import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from lrerr_tools.training import Distributed

ENCODER = "tf_efficientnet_b4"
FEATURE_STAGES = (2, 3, 4)  # timm feature indices at strides 8, 16 and 32: 56, 160, 448 channels
INTERLEAVE_GROUPS = 8
MIX_GROUPS = (4, 8, 16)
HEAD = (512, 1024)


def efficientnet_b4_features(width: float = 1.0) -> nn.Module:
    """timm's tf_efficientnet_b4 as a feature extractor (`features_only`) at FEATURE_STAGES,
    every channel count times `width` (its depth kept); at width 1 its state dict is the
    classifier's less conv_head, bn2 and classifier."""
    # timm's tf_efficientnet_b4() fixes the channel multiplier, so the generator it calls is
    # used directly, with the same TF-compatible settings.
    from timm.models.efficientnet import BN_EPS_TF_DEFAULT, _gen_efficientnet

    model = _gen_efficientnet(ENCODER, channel_multiplier=1.4 * width, depth_multiplier=1.8,
                              bn_eps=BN_EPS_TF_DEFAULT, pad_type="same", features_only=True,
                              out_indices=FEATURE_STAGES)
    model.width = width
    return model


def load_efficientnet_b4(encoder: nn.Module, state_dict) -> nn.Module:
    """tf_efficientnet_b4 classifier weights into `efficientnet_b4_features` (width 1 only)."""
    return load_fitting(encoder, state_dict, ENCODER, "RLGC's content encoder",
                        dropped=("conv_head.", "bn2.", "classifier."), width=encoder.width)


def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # Bilinear with aligned corners, as RLGC's code resizes every map (×2, ×8, ½, ¼).
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


def interleave(content: torch.Tensor, gradient: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, h, w) and (B, G, h, w) → (B, C + G, h, w): the channels in `groups` chunks each,
    content chunk 1, gradient chunk 1, content chunk 2, …"""
    batch, _, height, width = content.shape
    parts = [t.reshape(batch, groups, -1, height, width) for t in (content, gradient)]
    return torch.cat(parts, dim=2).reshape(batch, -1, height, width)


def _channels(count: int, width: float) -> int:
    return max(8, round(count * width))


def fused_channels(width: float) -> tuple[int, int]:
    """The content and gradient widths of the fused maps: RLGC's 64 and 32 at width 1, and 32
    and 16 at widths up to 1/2. Steps of 32 keep every group whole: 8 interleaved chunks of
    each, and up to 16 groups over the 1.5× as many inputs."""
    content = 32 * max(1, round(2 * width))
    return content, content // 2


class ContentGradientFusion(nn.Module):
    """DGNet's gradient-induced transition: per scale, z = x + Σ_g conv1×1_groups=g(interleave(x,
    xg resized to x)), for g in MIX_GROUPS (96 → 64 channels at width 1)."""

    def __init__(self, content: int, gradient: int, scales: int = 3):
        super().__init__()
        self.mix = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(content + gradient, content, 1, groups=g, bias=False) for g in MIX_GROUPS)
            for _ in range(scales))

    def forward(self, contents: list[torch.Tensor], gradient: torch.Tensor) -> list[torch.Tensor]:
        fused = []
        for content, convs in zip(contents, self.mix):
            mixed = interleave(content, _resize(gradient, content), INTERLEAVE_GROUPS)
            fused.append(content + sum(conv(mixed) for conv in convs))
        return fused


class NeighbourConnectionDecoder(nn.Module):
    """DGNet's decoder: the stride-32, 16 and 8 maps (C channels each) → 3 channels at stride 8,
    each coarser map upsampled and multiplied into the finer one, then concatenated."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.up5_to4, self.up5_to4_cat = conv_bn_relu(c, c, 3), conv_bn_relu(c, c, 3)
        self.up41_to3, self.up4_to3 = conv_bn_relu(c, c, 3), conv_bn_relu(c, c, 3)
        self.up42_to3 = conv_bn_relu(2 * c, 2 * c, 3)
        self.cat4 = conv_bn_relu(2 * c, 2 * c, 3)
        self.cat3 = conv_bn_relu(3 * c, 3 * c, 3)
        self.out = nn.Sequential(conv_bn_relu(3 * c, 3 * c, 3), nn.Conv2d(3 * c, 3, 1))

    def forward(self, z5: torch.Tensor, z4: torch.Tensor, z3: torch.Tensor) -> torch.Tensor:
        z4_1 = self.up5_to4(_resize(z5, z4)) * z4
        z3_1 = self.up41_to3(_resize(z4_1, z3)) * self.up4_to3(_resize(z4, z3)) * z3
        z4_2 = self.cat4(torch.cat([z4_1, self.up5_to4_cat(_resize(z5, z4))], 1))
        z3_2 = self.cat3(torch.cat([z3_1, self.up42_to3(_resize(z4_2, z3))], 1))
        return self.out(z3_2)


class GradientBranch(nn.Module):
    """The RGB face → xg (`channels` at stride 8) and ĝ (1 channel at stride 8, ≥ 0); `hidden`
    is 64 in RLGC."""

    def __init__(self, channels: int, hidden: int = 64):
        super().__init__()
        self.layers = nn.Sequential(conv_bn_relu(3, hidden, 7, 2), conv_bn_relu(hidden, hidden, 3, 2),
                                    conv_bn_relu(hidden, channels, 3, 2))
        self.predict = conv_bn_relu(channels, 1, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.layers(images)
        return features, self.predict(features)


class RlgcNet(nn.Module):
    """RLGC with one fake logit. `forward({"images": x, "gradient": G})` takes (B, 3, S, S) faces
    in ImageNet mean/std (EfficientNet's) and G = `sobel_magnitude` of the faces, (B, 1, S, S)
    in [0, 1] (read by `bidirectional` only), and returns a dict:

    - `logit` (B,): the fake logit;
    - `recon` (B, 3, S, S): the reconstruction x̂ of the normalised faces (unbounded, as in RLGC);
    - `gradient` (B, 1, S, S): ĝ, the predicted Sobel magnitude;
    - `attention` (B, 1, h, w): the guided-attention mask M at stride 32 (7×7 at 224 px);
    - `gradient_attention`, with `bidirectional` only: M_g from |G − ĝ|, the same size.

    Every channel count is RLGC's times `width` (1: RLGC's network, the only width B4's
    pretrained weights fit), the fused maps' in steps of 32 (`fused_channels`).
    `bidirectional` adds M_g ⊙ h′(F) to the attended map (our reading of the abstract's
    bi-directional attention, which the public code lacks). Any S divisible by 32 runs.
    """

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, width: float = 1.0, bidirectional: bool = False, drop_rate: float = 0.2):
        super().__init__()
        self.width = width
        self.encoder = efficientnet_b4_features(width)
        content, gradient = fused_channels(width)
        self.reduce = nn.ModuleList(
            nn.Sequential(conv_bn_relu(channels, content, 3), conv_bn_relu(content, content, 3))
            for channels in self.encoder.feature_info.channels())
        self.gradient_branch = GradientBranch(gradient, _channels(64, width))
        self.fusion = ContentGradientFusion(content, gradient)
        self.decoder = NeighbourConnectionDecoder(content)
        self.attention = GuidedAttention(content, drop_rate)
        # Only its mask and h′ are used: the dropped-out F is added once, by `attention`.
        self.gradient_attention = (GuidedAttention(content, drop_rate, in_channels=1) if bidirectional
                                   else None)
        wide, wider = (_channels(c, width) for c in HEAD)
        self.head = nn.Sequential(
            sep_conv_bn_relu(content, content), sep_conv_bn_relu(content, content),       # RLGC's Block
            Block(content, wide, 2, 2, start_with_relu=True, grow_first=False), nn.ReLU(inplace=True),
            sep_conv_bn_relu(wide, wider), sep_conv_bn_relu(wider, wider))              # SeparableConvBlock
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(wider, 1)

    def forward(self, inputs: dict) -> dict:
        images = inputs["images"]
        contents = [reduce(f) for reduce, f in zip(self.reduce, self.encoder(images))]
        gradient_features, grad_pred = self.gradient_branch(images)
        z3, z4, z5 = self.fusion(contents, gradient_features)
        recon = _resize(self.decoder(z5, z4, z3), images)
        grad_pred = _resize(grad_pred, images)
        attended, attention = self.attention(images, recon, z5)
        out = {"recon": recon, "gradient": grad_pred, "attention": attention}
        if self.gradient_attention is not None:
            mask = self.gradient_attention.mask(inputs["gradient"], grad_pred, z5.shape[-2:])
            attended = attended + mask * self.gradient_attention.h(z5)
            out["gradient_attention"] = mask
        pooled = self.head(attended).mean((2, 3))  # (B, C) for any B
        out["logit"] = self.fc(self.dropout(pooled))[:, 0]
        return out


def rlgc_losses(out: dict, images: torch.Tensor, gradient: torch.Tensor, labels: torch.Tensor,
                dist: Distributed, rec_weight: float = 0.1, grad_weight: float = 0.1) -> dict:
    """RLGC's loss terms: `bce`, `rec` (L1 of x̂ on the real faces only), `grad` (MSE of ĝ
    against G on every face), and `total` = bce + rec_weight·rec + grad_weight·grad. The BCE and
    the MSE are plain means over equal local batches, so DDP-exact as they stand; `rec` is
    `real_l1`'s."""
    bce = F.binary_cross_entropy_with_logits(out["logit"].float(), labels.float())
    rec = real_l1(out["recon"], images, labels, dist)
    grad = F.mse_loss(out["gradient"].float(), gradient.float())
    return {"total": bce + rec_weight * rec + grad_weight * grad, "bce": bce, "rec": rec, "grad": grad}
