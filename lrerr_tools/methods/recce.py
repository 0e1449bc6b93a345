"""`--method recce`: End-to-End Reconstruction-Classification Learning (Cao et al., CVPR 2022),
after its public code, at 224 px (`blocks/recce.py` has the network).

An Xception encoder, cut at block4, feeds a decoder that reconstructs the face; graph
reasoning fuses the decoder's maps into the trunk, and guided attention from |x − x̂| weighs
block8's output. Three losses: flooded BCE, L1 reconstruction of the real faces only, and a
metric loss that pulls real embeddings together and away from fakes, gathered across ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lrerr_tools.blocks.recce import RecceNet, recce_losses
from lrerr_tools.blocks.xception import load_pretrained_xception
from lrerr_tools.detector.overlays import error_column, heat_panels, image_panels, layout
from lrerr_tools.methods import register
from lrerr_tools.methods.base import Method, OptimizerDefaults, Option, check_fraction, check_weight
from lrerr_tools.normalization import normalize_uint8


@register
class Recce(Method):
    name = "recce"
    title = "RECCE"
    summary = ("reconstruction-classification learning: an Xception encoder-decoder reconstructs real "
               "faces; graph reasoning and reconstruction-guided attention feed the classifier")
    options = (
        Option("width", float, 1.0, "channel multiplier of every layer; 1 is RECCE's network and the only "
               "width Xception's pretrained weights fit (smaller: quick CPU tests)", check=check_fraction),
        Option("rec_weight", float, 0.1, "weight of the L1 reconstruction loss on real faces",
               check=check_weight),
        Option("metric_weight", float, 0.1, "weight of the metric loss", check=check_weight),
        Option("flood", float, 0.04, "flooding level of the BCE (0: plain BCE)", check=check_weight),
    )
    # RECCE's own: Adam 2e-4, weight decay 1e-5, halved every 22,500 steps.
    recipe = OptimizerDefaults(optimizer="adam", lr=2e-4, weight_decay=1e-5, schedule="step",
                               step_size=22_500, gamma=0.5)
    loss_terms = ("cls", "rec", "metric")
    baseline = "xception"
    figure_title = "faces, reconstructions, |x − x̂| and guided attention"

    def build(self) -> RecceNet:
        return RecceNet(self.settings["width"])

    def init(self, net: RecceNet, pretrained: bool, weights: str | None) -> None:
        """Xception's ImageNet weights into the encoder and trunk (the decoder, graph reasoning,
        attention and head start from scratch, as in RECCE)."""
        load_pretrained_xception(net.encoder, pretrained, weights)

    def inputs(self, net: RecceNet, context, batch: dict, device, dtype, frozen=None) -> dict:
        return {"images": normalize_uint8(batch["image"].to(device, non_blocking=True), net.mean, net.std)}

    def cam_layer(self, net: RecceNet) -> nn.Module:
        """The trunk's last map, stride 32 (the encoder's act4: after the guided attention,
        block9-12 and the exit convolutions), which the head pools."""
        return net.encoder.act4

    def losses(self, outputs: dict, inputs: dict, labels: torch.Tensor, dist) -> dict:
        s = self.settings
        return recce_losses(outputs, inputs["images"], labels, dist, rec_weight=s["rec_weight"],
                            metric_weight=s["metric_weight"], flood=s["flood"])

    @torch.no_grad()
    def figure(self, net: RecceNet, context, batch: dict, probs: Sequence[float], device):
        """face | x̂ | |x − x̂| (0 to the largest over all rows) | guided attention M in [0, 1]."""
        images = self.inputs(net, context, batch, device, None)["images"]
        out = net({"images": images})
        faces = image_panels(batch["image"])
        return layout([("face", faces), ("reconstruction", image_panels((out["recon"] + 1) * 127.5)),
                       error_column(faces, (images + 1) / 2, (out["recon"] + 1) / 2),
                       ("attention M (0-1)", heat_panels(faces, out["attention"]))], batch, probs)
