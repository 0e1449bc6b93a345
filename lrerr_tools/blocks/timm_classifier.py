"""A timm backbone with one fake logit, and its pretrained weights from a local file or cache.

The network of the Xception baseline and the trainable half of LRErr's detector.
"""

from __future__ import annotations

from torch import nn

from lrerr_tools.attention import make_backbone
from lrerr_tools.errors import LrerrError


class TimmClassifier(nn.Module):
    """timm model `name` with a 1-output head; `forward({"images": x})` → {"logit": (B,)}."""

    def __init__(self, name: str):
        super().__init__()
        backbone = make_backbone(name, pretrained=False)
        self.name, self.mean, self.std = name, backbone.mean, backbone.std
        self.backbone = backbone.model

    def forward(self, inputs: dict) -> dict:
        return {"logit": self.backbone(inputs["images"]).flatten()}

    def last_map(self) -> nn.Module:
        """The layer whose output is the backbone's `forward_features` map, the one its head
        pools: the child built just before `global_pool` (timm's Xception, ResNets and
        EfficientNets alike)."""
        names = [name for name, _ in self.backbone.named_children()]
        if "global_pool" not in names[1:]:
            raise LrerrError(f"timm model {self.name} pools no spatial map (no global_pool), so it has "
                             "no map for Grad-CAM")
        return getattr(self.backbone, names[names.index("global_pool") - 1])


def load_pretrained(model: nn.Module, name: str, pretrained: bool, weights: str | None) -> None:
    """Copy timm `name`'s pretrained weights (`weights` file, or the local cache) into `model`,
    a freshly built timm model of that name, keeping its own new classifier head."""
    if weights is None and not pretrained:
        return
    source = make_backbone(name, pretrained=True, weights=weights).model.state_dict()
    head = {f"{prefix}.{key}" for prefix, module in model.named_modules()
            if module is model.get_classifier() for key in module.state_dict()}
    state = {k: v for k, v in source.items() if k not in head}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - head or unexpected:
        raise LrerrError(f"pretrained {name} weights do not fit the model (missing "
                         f"{sorted(set(missing) - head)[:3]}, unexpected {sorted(unexpected)[:3]})")

