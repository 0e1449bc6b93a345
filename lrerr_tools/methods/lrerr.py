"""`--method lrerr`: the paper's detector (§III.C).

Each face is masked over its key region and reconstructed by the frozen MAE of the parent
`train-mae` run (`detector/reconstruction.py`, the method's frozen context). A frozen copy of
the backbone's starting weights gives features of the face and of the reconstruction at
`attn_layers`; their local-difference attention A_i = 1 − (1 + cos)/2 scales the trainable
backbone's maps at the same layers, and one logit is trained with BCE. Without the maps it
is the Xception baseline, whose options and recipe it shares.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from lrerr_tools.attention import (
    ATTENTION_FORMS,
    XCEPTION_LAYERS,
    AttentionInjector,
    FeatureTaps,
    local_difference_attention,
    resolve_layers,
)
from lrerr_tools.blocks.timm_classifier import TimmClassifier
from lrerr_tools.detector.overlays import heat_panels, image_panels, layout
from lrerr_tools.detector.reconstruction import Reconstructor, load_reconstructor
from lrerr_tools.errors import LrerrError
from lrerr_tools.mae.checkpoint import MaeInfo
from lrerr_tools.mae.masking import MaskingSettings
from lrerr_tools.mae.model import MaskedAutoencoder
from lrerr_tools.methods import register
from lrerr_tools.methods.base import Option, Parent
from lrerr_tools.methods.xception import BACKBONE, XceptionBaseline
from lrerr_tools.normalization import from_mae, mae_to
from lrerr_tools.training import autocast


class _AllTapped(Exception):
    """Raised from a hook once every tapped layer has run: the rest of the frozen network
    (most of Xception: the middle and exit flows after block3) would be computed for nothing."""


class LrerrNet(TimmClassifier):
    """The trainable backbone, and a frozen copy of its starting weights (pretrained, or the
    same random init) that makes the maps for `layers`. The frozen copy is part of the state
    dict, so a checkpoint scores without the weights file it started from."""

    def __init__(self, name: str, layers: Sequence[str], form: str = "mul"):
        super().__init__(name)
        self.layers = tuple(layers)
        self.extractor = copy.deepcopy(self.backbone).eval().requires_grad_(False)
        self._tapping = False
        self.injector = AttentionInjector(self.backbone, self.layers, form)
        self.taps = FeatureTaps(self.extractor, self.layers)
        # After the taps' own hooks, so each layer's map is stored before the check.
        for _, module in resolve_layers(self.extractor, self.layers):
            module.register_forward_hook(self._stop_when_all_tapped)

    def _stop_when_all_tapped(self, module, inputs, output) -> None:
        if self._tapping and len(self.taps.outputs) == len(self.layers):
            raise _AllTapped

    def train(self, mode: bool = True) -> LrerrNet:
        super().train(mode)
        self.extractor.eval()  # frozen means its batch-norm statistics too
        return self

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor, recon: torch.Tensor) -> list[torch.Tensor]:
        """A_i per tapped layer, (B, 1, h_i, w_i), both inputs in the backbone's normalization.

        Under no_grad, not inference_mode: the injector's product saves the maps for backward.
        """
        self._tapping = True  # only the maps' own passes stop early; any other runs the whole net
        try:
            self.taps(torch.cat([images, recon]))
        except _AllTapped:
            pass
        finally:
            self._tapping = False
        features, self.taps.outputs = self.taps.outputs, {}  # not kept alive until the next batch
        return [local_difference_attention(*features[name].float().chunk(2)) for name in self.layers]

    def forward(self, inputs: dict) -> dict:
        with self.injector.maps(inputs["maps"]):
            return super().forward(inputs)


def _check_layers(layers: list) -> str | None:
    return None if layers else "name at least one layer"


@register
class Lrerr(XceptionBaseline):
    name = "lrerr"
    title = "LRErr"
    summary = ("local-difference attention between a face and its key-region MAE reconstruction "
               "scales an Xception's maps (the paper)")
    fields = ("key_mask",)
    parents = (Parent("mae", "train-mae", "the train-mae run whose reconstructions make the attention maps"),)
    options = (BACKBONE,
               Option("attn_layers", list, list(XCEPTION_LAYERS),
                      "backbone layers scaled by the attention maps, comma-separated", check=_check_layers),
               Option("attn_form", str, "mul", "how a map scales its layer: mul, f·A (the paper's), or "
                      "residual, f·(1 + A), which keeps the features where the reconstruction is good",
                      choices=ATTENTION_FORMS),
               Option("random_extractor", bool, False,
                      "allow --no-pretrained, whose frozen extractor is random: its attention maps then "
                      "come from random features (quick tests only)"))
    baseline = "xception"
    figure_title = "faces, MAE reconstructions and attention maps"

    def build(self) -> LrerrNet:
        return LrerrNet(self.settings["backbone"], self.settings["attn_layers"], self.settings["attn_form"])

    def caveats(self, pretrained: bool, weights: str | None) -> list[str]:
        random = not pretrained and weights is None
        return super().caveats(pretrained, weights) + (["random extractor"] if random else [])

    def check_start(self, pretrained: bool, weights: str | None) -> None:
        if not pretrained and weights is None and not self.settings["random_extractor"]:
            raise LrerrError("--no-pretrained makes LRErr's frozen extractor random, so every attention map "
                             "would come from random features — give it pretrained weights (the local "
                             "cache, or --weights FILE), or pass --random-extractor to do so on purpose")

    def init(self, net: LrerrNet, pretrained: bool, weights: str | None) -> None:
        super().init(net, pretrained, weights)
        net.extractor.load_state_dict(net.backbone.state_dict())

    def context(self, parents: dict, seed: int, device) -> Reconstructor:
        return load_reconstructor(parents["mae"].path, seed, device)

    def check_data(self, dataset, context: Reconstructor) -> None:
        context.check(dataset)

    def inputs(self, net: LrerrNet, context: Reconstructor, batch: dict, device, dtype) -> dict:
        """The faces go to both backbones as they are; the reconstruction is converted from the
        MAE's ImageNet normalization to the backbone's."""
        inputs = super().inputs(net, context, batch, device, dtype)
        with torch.no_grad(), autocast(device, dtype):
            recon = context.reconstruct(batch, device).float()
            maps = net.attention_maps(inputs["images"], mae_to(recon, net.mean, net.std))
        return {**inputs, "recon": recon, "maps": maps}

    @torch.no_grad()
    def figure(self, net: LrerrNet, context: Reconstructor, batch: dict, probs: Sequence[float], device):
        """face | MAE reconstruction | each layer's A over the face. A map's colours span 0 to
        the largest A of that layer over all the rows, so real and fake rows compare by eye."""
        inputs = self.inputs(net, context, batch, device, None)
        faces = image_panels(batch["image"])
        columns = [("face", faces), ("MAE reconstruction", image_panels(from_mae(inputs["recon"]) * 255))]
        for name, a in zip(net.layers, inputs["maps"]):
            top = max(float(a.max()), 1e-6)
            columns.append((f"A {name} (0-{top:.3f})", heat_panels(faces, a / top)))
        return layout(columns, batch, probs)

    def example_context(self, device) -> Reconstructor:
        """A random base-preset MAE over a central key region of 72 patches (the demo's size)."""
        mae = MaskedAutoencoder("base").to(device).eval().requires_grad_(False)
        key_patches = [row * 14 + col for row in range(4, 13) for col in range(3, 11)]
        info = MaeInfo(path="", sha256="", config={}, model_config=mae.config, masking=MaskingSettings(),
                       key_patches=key_patches, epoch=0)
        return Reconstructor(mae, info, seed=0)
