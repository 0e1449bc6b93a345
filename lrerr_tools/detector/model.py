"""The detector network: a trainable backbone with one fake logit, and for LRErr a frozen
copy of it whose features of a face and of its MAE reconstruction give the attention maps.

    detector = Detector(make_backbone("legacy_xception", pretrained=True), XCEPTION_LAYERS, "lrerr")
    inputs = prepare_inputs(detector, reconstructor, batch, device, dtype)
    logits = detector(inputs.images, inputs.maps)

`--method xception` is the same class without the frozen copy: the plain baseline of the
paper's Table V, trained by the same loop.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lrerr_tools.attention import (
    AttentionInjector,
    Backbone,
    FeatureTaps,
    local_difference_attention,
    resolve_layers,
)
from lrerr_tools.detector.reconstruction import Reconstructor
from lrerr_tools.normalization import mae_to, normalize_uint8
from lrerr_tools.training import autocast

METHODS = ("lrerr", "xception")


class _AllTapped(Exception):
    """Raised from a hook once every tapped layer has run: the rest of the frozen network
    (most of Xception: the middle and exit flows after block3) would be computed for nothing."""


class Detector(nn.Module):
    """`backbone` trained on one logit; with `method` lrerr, also a frozen copy of its starting
    weights (pretrained, or the same random init) that makes the maps for `layers`.

    The frozen copy is part of the state dict, so a checkpoint scores without the weights
    file it started from.
    """

    def __init__(self, backbone: Backbone, layers: Sequence[str], method: str):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method, self.layers = method, tuple(layers)
        self.mean, self.std = backbone.mean, backbone.std
        self.backbone = backbone.model
        self.extractor, self._tapping = None, False
        if method == "lrerr":
            self.extractor = copy.deepcopy(backbone.model).eval().requires_grad_(False)
            self.injector = AttentionInjector(self.backbone, self.layers)
            self.taps = FeatureTaps(self.extractor, self.layers)
            # After the taps' own hooks, so each layer's map is stored before the check.
            for _, module in resolve_layers(self.extractor, self.layers):
                module.register_forward_hook(self._stop_when_all_tapped)

    def _stop_when_all_tapped(self, module, inputs, output) -> None:
        if self._tapping and len(self.taps.outputs) == len(self.layers):
            raise _AllTapped

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        if self.extractor is not None:
            self.extractor.eval()  # frozen means its batch-norm statistics too
        return self

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor, recon: torch.Tensor) -> list[torch.Tensor]:
        """A_i = 1 − (1 + cos(f_i(images), f_i(recon))) / 2 per tapped layer, (B, 1, h_i, w_i),
        both inputs in the backbone's normalization.

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

    def forward(self, images: torch.Tensor, maps: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Fake logits (B,) of `images` (backbone normalization), the tapped layers scaled by
        `maps` when given."""
        if maps is None:
            return self.backbone(images).squeeze(1)
        with self.injector.maps(maps):
            return self.backbone(images).squeeze(1)


@dataclass
class Inputs:
    """A batch as the detector takes it: the faces in the backbone's normalization, and for
    lrerr their MAE reconstructions (in the MAE's normalization) and the attention maps."""

    images: torch.Tensor
    recon: torch.Tensor | None = None
    maps: list[torch.Tensor] | None = None


def prepare_inputs(detector: Detector, reconstructor: Reconstructor | None, batch: dict, device: torch.device,
                   dtype: torch.dtype | None) -> Inputs:
    """Shard batch (uint8 faces) → `Inputs`. The original goes to both backbones as it is; the
    reconstruction is converted from the MAE's ImageNet normalization to the backbone's."""
    images = normalize_uint8(batch["image"].to(device, non_blocking=True), detector.mean, detector.std)
    if reconstructor is None:
        return Inputs(images)
    with autocast(device, dtype):
        recon = reconstructor.reconstruct(batch, device).float()
        maps = detector.attention_maps(images, mae_to(recon, detector.mean, detector.std))
    return Inputs(images, recon, maps)
