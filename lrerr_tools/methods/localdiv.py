"""`--method localdiv`: Local-Prediction with the Local-Diversity loss (IJCNN 2021), after
`../shared/paper/methods-spec.md` (the loss's form is unpublished; ours is an option).

legacy_xception cut after block3 gives 14×14 local units at 224 px, each with a 256-d feature
and a fake logit; the face's label supervises every unit (`lp`), and a hinge on the pairwise
cosine similarity of the units' features keeps them diverse (`ld`). The face's probability
is the mean unit probability, so `score` needs nothing of its own. `blocks/local_prediction.py`
has the network and the losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lrerr_tools.blocks.local_prediction import (
    UNIT_LAYERS,
    LocalPredictionNet,
    key_units,
    local_prediction_losses,
)
from lrerr_tools.blocks.xception import load_pretrained_xception
from lrerr_tools.detector.overlays import heat_panels, image_panels, layout
from lrerr_tools.methods import register
from lrerr_tools.methods.base import Method, Option, check_fraction, check_weight
from lrerr_tools.normalization import normalize_uint8

UNIT_SETS = ("all", "key")


def _check_margin(margin: float) -> str | None:
    return None if 0 <= margin < 1 else "must be in [0, 1): the units' ReLU features have cosines in [0, 1]"


@register
class LocalDiversity(Method):
    name = "localdiv"
    title = "Local-Prediction"
    summary = ("an Xception cut at block3 predicts fake in each of 14×14 local units, all supervised by "
               "the face's label; the Local-Diversity loss keeps the units' features apart")
    fields = ("key_mask",)  # read with --units key
    options = (
        Option("width", float, 1.0, "channel multiplier of every layer; 1 is the method's network and the "
               "only width Xception's pretrained weights fit (smaller: quick CPU tests)",
               check=check_fraction),
        Option("unit_layer", str, "block3", "the block the units sit on: block3 (14×14 units of about "
               "91 px at 224 px) or block2 (28×28 of about 43 px)", choices=tuple(UNIT_LAYERS)),
        Option("units", str, "all", "the units the face's label supervises: all, or key (those in the face's "
               "key region, from the shard's key mask); the face's probability is the mean over all units "
               "either way", choices=UNIT_SETS),
        Option("ld_margin", float, 0.5, "the Local-Diversity hinge: unit pairs whose feature cosine is below "
               "it add no loss", check=_check_margin),
        Option("ld_weight", float, 0.1, "weight of the Local-Diversity loss (0: Local-Prediction alone)",
               check=check_weight),
    )
    loss_terms = ("lp", "ld")
    baseline = "xception"
    figure_title = "faces and the fake probability of each local unit"

    def build(self) -> LocalPredictionNet:
        return LocalPredictionNet(self.settings["width"], self.settings["unit_layer"])

    def init(self, net: LocalPredictionNet, pretrained: bool, weights: str | None) -> None:
        """Xception's ImageNet weights into the layers up to the unit layer (the unit
        convolutions start from scratch)."""
        load_pretrained_xception(net.encoder, pretrained, weights)

    def face_fields(self, context) -> tuple[str, ...]:
        """The key mask counts only where it chooses the supervised units (`units=key`); the
        face's probability is the mean over all units either way."""
        return self.fields if self.settings["units"] == "key" else ()

    def inputs(self, net: LocalPredictionNet, context, batch: dict, device, dtype, frozen=None) -> dict:
        inputs = {"images": normalize_uint8(batch["image"].to(device, non_blocking=True), net.mean, net.std)}
        if self.settings["units"] == "key":
            inputs["key_mask"] = batch["key_mask"].to(device, non_blocking=True)
        return inputs

    def cam_layer(self, net: LocalPredictionNet) -> nn.Module:
        """The units' features (B, C, h, w), from which each unit's logit is made."""
        return net.unit_features

    def losses(self, outputs: dict, inputs: dict, labels: torch.Tensor, dist) -> dict:
        s = self.settings
        units = (key_units(inputs["key_mask"], outputs["unit_logits"].shape[-2:]) if s["units"] == "key"
                 else None)
        return local_prediction_losses(outputs, labels, dist, units, ld_margin=s["ld_margin"],
                                       ld_weight=s["ld_weight"])

    @torch.no_grad()
    def figure(self, net: LocalPredictionNet, context, batch: dict, probs: Sequence[float], device):
        """face | each unit's p(fake) over the face, 0 to 1 on every row, so real and fake rows
        compare by eye; the row's p(fake) is their mean."""
        unit_logits = net(self.inputs(net, context, batch, device, None))["unit_logits"]
        faces = image_panels(batch["image"])
        height, width = unit_logits.shape[-2:]
        units = torch.sigmoid(unit_logits.float())[:, None]
        return layout([("face", faces),
                       (f"p(fake) of {height}x{width} units (0-1)", heat_panels(faces, units))], batch, probs)
