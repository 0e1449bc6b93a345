"""`--method rlgc`: Reconstruction Learning fusing Gradient and Content features (Xu et al.,
IEEE TCE 2024), after its public inference code, at 224 px (`blocks/rlgc.py` has the network).

An EfficientNet-B4 content encoder and a gradient branch on the RGB face are fused and decoded
into a reconstruction x̂; RECCE's guided attention from |x − x̂| weighs the stride-32 map for
the classifier. Three losses: BCE, L1 reconstruction of the real faces only, and the MSE of
the gradient branch's ĝ against G, the Sobel magnitude of each face, made on the device from
the shard's uint8 face. The loss weights and G are our reading (the paper's are unpublished).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lrerr_tools.attention import make_backbone
from lrerr_tools.blocks.rlgc import ENCODER, RlgcNet, load_efficientnet_b4, rlgc_losses
from lrerr_tools.blocks.sobel import sobel_magnitude
from lrerr_tools.detector.overlays import error_column, heat_panels, image_panels, layout
from lrerr_tools.errors import LrerrError
from lrerr_tools.methods import register
from lrerr_tools.methods.base import Method, OptimizerDefaults, Option, check_fraction, check_weight
from lrerr_tools.normalization import normalize_uint8, unnormalize


@register
class Rlgc(Method):
    name = "rlgc"
    title = "RLGC"
    summary = ("reconstruction learning fusing gradient and content: an EfficientNet-B4 content encoder "
               "and a gradient branch reconstruct the face and its Sobel map; reconstruction-guided "
               "attention feeds the classifier")
    options = (
        Option("width", float, 1.0, "channel multiplier of every layer (of the fused maps in steps of 32); 1 "
               "is RLGC's network and the only width B4's pretrained weights fit (smaller: quick CPU tests)",
               check=check_fraction),
        Option("rec_weight", float, 0.1, "weight of the L1 reconstruction loss on real faces (ours)",
               check=check_weight),
        Option("grad_weight", float, 0.1, "weight of the MSE between the predicted gradient map ĝ and the "
               "face's Sobel magnitude G (ours)", check=check_weight),
        Option("attention", str, "guided", "guided: RECCE's attention from |x − x̂|, as in RLGC's code; "
               "bidir: also a map from |G − ĝ| (ours, after the abstract's bi-directional attention)",
               choices=("guided", "bidir")),
    )
    # RLGC's paper does not give its recipe; RECCE's optimizer, without its step schedule.
    recipe = OptimizerDefaults(optimizer="adam", lr=2e-4, weight_decay=1e-5)
    loss_terms = ("bce", "rec", "grad")
    baseline = "xception"
    figure_title = "faces, reconstructions, |x − x̂|, predicted and true gradient maps, and guided attention"

    def build(self) -> RlgcNet:
        return RlgcNet(self.settings["width"], bidirectional=self.settings["attention"] == "bidir")

    def check_start(self, pretrained: bool, weights: str | None) -> None:
        width = self.settings["width"]
        if (pretrained or weights) and width != 1:
            raise LrerrError(f"pretrained {ENCODER} weights fit --width 1 only (got --width {width}) — pass "
                             "--no-pretrained to train a smaller RLGC from random weights")

    def init(self, net: RlgcNet, pretrained: bool, weights: str | None) -> None:
        """EfficientNet-B4's ImageNet weights into the content encoder (the gradient branch,
        fusion, decoder, attention and head start from scratch)."""
        if weights is None and not pretrained:
            return
        source = make_backbone(ENCODER, pretrained=True, weights=weights).model
        load_efficientnet_b4(net.encoder, source.state_dict())

    def inputs(self, net: RlgcNet, context, batch: dict, device, dtype, frozen=None) -> dict:
        faces = batch["image"].to(device, non_blocking=True)
        return {"images": normalize_uint8(faces, net.mean, net.std),
                "gradient": sobel_magnitude(faces.float() / 255)}

    def cam_layer(self, net: RlgcNet) -> nn.Module:
        """The head's output (4×4 at 224 px): the attended map after its strided block, which the
        classifier pools."""
        return net.head

    def losses(self, outputs: dict, inputs: dict, labels: torch.Tensor, dist) -> dict:
        s = self.settings
        return rlgc_losses(outputs, inputs["images"], inputs["gradient"], labels, dist,
                           rec_weight=s["rec_weight"], grad_weight=s["grad_weight"])

    @torch.no_grad()
    def figure(self, net: RlgcNet, context, batch: dict, probs: Sequence[float], device):
        """face | x̂ | |x − x̂| | ĝ | G (both grey, 0 to the largest of either over all rows) |
        guided attention M in [0, 1] (| M_g, with attention=bidir)."""
        inputs = self.inputs(net, context, batch, device, None)
        out = net(inputs)
        faces = image_panels(batch["image"])
        recon = unnormalize(out["recon"], net.mean, net.std)
        top = max(float(out["gradient"].max()), float(inputs["gradient"].max()), 1e-6)

        def grey(maps: torch.Tensor):
            return image_panels(maps.expand(-1, 3, -1, -1) * 255 / top)

        columns = [("face", faces), ("reconstruction", image_panels(recon * 255)),
                   error_column(faces, unnormalize(inputs["images"], net.mean, net.std), recon),
                   (f"predicted g^ (0-{top:.3f})", grey(out["gradient"])),
                   (f"Sobel G (0-{top:.3f})", grey(inputs["gradient"])),
                   ("attention M (0-1)", heat_panels(faces, out["attention"]))]
        if "gradient_attention" in out:
            columns.append(("gradient attention M_g (0-1)", heat_panels(faces, out["gradient_attention"])))
        return layout(columns, batch, probs)
