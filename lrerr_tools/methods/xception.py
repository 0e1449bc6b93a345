"""`--method xception`: the plain Xception classifier, LRErr's ablation baseline (Table V)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lrerr_tools.blocks.timm_classifier import TimmClassifier, load_pretrained
from lrerr_tools.methods import register
from lrerr_tools.methods.base import Method, Option
from lrerr_tools.normalization import normalize_uint8

BACKBONE = Option("backbone", str, "legacy_xception",
                  "timm model of the classifier (and of LRErr's frozen feature extractor)")


@register
class XceptionBaseline(Method):
    name = "xception"
    title = "Xception"
    summary = "timm legacy_xception with one fake logit and BCE: the paper's Table V baseline"
    options = (BACKBONE,)

    def build(self) -> TimmClassifier:
        return TimmClassifier(self.settings["backbone"])

    def init(self, net: TimmClassifier, pretrained: bool, weights: str | None) -> None:
        load_pretrained(net.backbone, net.name, pretrained, weights)

    def inputs(self, net, context, batch: dict, device, dtype, frozen=None) -> dict:
        return {"images": normalize_uint8(batch["image"].to(device, non_blocking=True), net.mean, net.std)}

    def cam_layer(self, net: TimmClassifier) -> nn.Module:
        """The backbone's last feature map (legacy_xception's act4), before its pooled head."""
        return net.last_map()

    def losses(self, outputs: dict, inputs: dict, labels: torch.Tensor, dist) -> dict:
        bce = F.binary_cross_entropy_with_logits(outputs["logit"].float(), labels)
        return {"total": bce, "bce": bce}
