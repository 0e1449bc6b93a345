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
import hashlib
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
from lrerr_tools.detector.frozen_cache import rounded
from lrerr_tools.detector.overlays import heat_panels, image_panels, layout
from lrerr_tools.detector.predict import EVAL_PRECISION
from lrerr_tools.detector.reconstruction import MAE_PRECISIONS, Reconstructor, load_reconstructor
from lrerr_tools.errors import LrerrError
from lrerr_tools.mae.checkpoint import MaeInfo
from lrerr_tools.mae.masking import MaskingSettings
from lrerr_tools.mae.model import MaskedAutoencoder
from lrerr_tools.methods import register
from lrerr_tools.methods.base import Option, Parent
from lrerr_tools.methods.xception import BACKBONE, XceptionBaseline
from lrerr_tools.normalization import from_mae, mae_to


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
               Option("mae_precision", str, "bfloat16",
                      "the frozen MAE's arithmetic: bfloat16 (autocast; about 2x faster where the CPU or GPU "
                      "has bfloat16 units, maps within 0.4 %) or float32", choices=tuple(MAE_PRECISIONS),
                      before="float32"),
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
        return load_reconstructor(parents["mae"].path, seed, device, self.settings["mae_precision"])

    def face_fields(self, context: Reconstructor) -> tuple[str, ...]:
        """A face's own key mask counts only where the MAE hides each face's own key region;
        with the dataset-wide one (the default) the shard's `key_mask` only gives the shape."""
        return self.fields if context.info.masking.key_region == "per-face" else ()

    def check_data(self, dataset, context: Reconstructor) -> None:
        context.check(dataset)

    def frozen_identity(self, net: LrerrNet, context: Reconstructor) -> dict:
        """The maps of a face follow from its pixels, the MAE run, the mask seed and the
        frozen extractor's weights at the tapped layers; the cache is keyed by all of them."""
        weights = hashlib.sha256()
        for name, tensor in net.extractor.state_dict().items():
            weights.update(name.encode())
            weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return {"method": self.name, "mae_sha256": context.info.sha256, "mask_seed": context.seed,
                "mae_precision": context.precision,
                "extractor_sha256": weights.hexdigest(), "backbone": net.name, "layers": list(net.layers),
                "precision": EVAL_PRECISION}

    @torch.no_grad()
    def frozen(self, net: LrerrNet, context: Reconstructor, batch: dict, device) -> list[torch.Tensor]:
        """The attention maps, at full precision whatever the run's AMP: the reconstruction,
        converted from the MAE's ImageNet normalization to the backbone's, against the face."""
        images = super().inputs(net, context, batch, device, None)["images"]
        return self.maps_against(net, images, context.reconstruct(batch, device))

    @staticmethod
    def maps_against(net: LrerrNet, images: torch.Tensor, recon: torch.Tensor) -> list[torch.Tensor]:
        return net.attention_maps(images, mae_to(recon, net.mean, net.std))

    def graph_frozen(self, net: LrerrNet, context: Reconstructor, faces: torch.Tensor) -> list[torch.Tensor]:
        """`frozen` with one mask for every face, fixed by the run seed (`fixed_mask`), rounded
        as the cache rounds them; the MAE at float32, which every runtime a graph goes to has
        kernels for (onnxruntime's CPU has no bfloat16 matrix products)."""
        images = super().inputs(net, context, {"image": faces}, faces.device, None)["images"]
        masks = context.fixed_mask.to(faces.device).expand(faces.shape[0], -1)
        recon = context.reconstruct_masked(faces, masks, precision="float32")
        return rounded(self.maps_against(net, images, recon))

    def inputs(self, net: LrerrNet, context: Reconstructor, batch: dict, device, dtype, frozen=None) -> dict:
        """The faces go to the trainable backbone as they are, with the maps that scale it."""
        inputs = super().inputs(net, context, batch, device, dtype)
        maps = rounded(self.frozen(net, context, batch, device)) if frozen is None else frozen
        # float16 values are exact in float32; the injector casts them to the layer's dtype
        return {**inputs, "maps": [a.to(device, torch.float32, non_blocking=True) for a in maps]}

    @torch.no_grad()
    def figure(self, net: LrerrNet, context: Reconstructor, batch: dict, probs: Sequence[float], device):
        """face | MAE reconstruction | each layer's A over the face. A map's colours span 0 to
        the largest A of that layer over all the rows, so real and fake rows compare by eye."""
        maps = self.inputs(net, context, batch, device, None)["maps"]
        recon = context.reconstruct(batch, device)
        faces = image_panels(batch["image"])
        columns = [("face", faces), ("MAE reconstruction", image_panels(from_mae(recon) * 255))]
        for name, a in zip(net.layers, maps):
            top = max(float(a.max()), 1e-6)
            columns.append((f"A {name} (0-{top:.3f})", heat_panels(faces, a / top)))
        return layout(columns, batch, probs)

    def example_context(self, device) -> Reconstructor:
        """A random base-preset MAE over a central key region of 72 patches (the demo's size)."""
        mae = MaskedAutoencoder("base").to(device).eval().requires_grad_(False)
        key_patches = [row * 14 + col for row in range(4, 13) for col in range(3, 11)]
        info = MaeInfo(path="", sha256="", config={}, model_config=mae.config, masking=MaskingSettings(),
                       key_patches=key_patches, epoch=0)
        return Reconstructor(mae, info, seed=0, precision=self.settings["mae_precision"])
