"""LRErr's feature-level local difference attention (paper III.C) and the hooks that use it.

A frozen extractor is tapped at a few named layers for the original face and for its
reconstruction; `local_difference_attention` turns each pair of maps into A_i; a trainable
backbone of the same architecture has its own maps at those layers multiplied by A_i. Both
sides work through forward hooks on layer names, so any timm backbone works unmodified, and
a backbone with no maps set is the plain baseline (the paper's Table V ablation).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lrerr_tools.errors import LrerrError
from lrerr_tools.weights import require_cached

# timm `legacy_xception` entry-flow block outputs: 55, 28 and 14 px at 224 input (128, 256,
# 728 channels). They are the mid-level maps at three distinct scales: act2 (109 px) is
# barely past the stem, and block12 (7 px) is too coarse to localize a forged region.
XCEPTION_LAYERS = ("block1", "block2", "block3")


def local_difference_attention(f_orig: torch.Tensor, f_recon: torch.Tensor,
                               eps: float = 1e-8) -> torch.Tensor:
    """A = 1 − (1 + cos(f_orig, f_recon)) / 2, the cosine taken over channels at each location.

    (B, C, H, W) twice → (B, 1, H, W) in [0, 1]: 0 where the features agree, 1 where they
    point opposite ways. A location where either feature vector is zero has no direction,
    so its cosine counts as 0 and A there is 0.5.
    """
    if f_orig.shape != f_recon.shape or f_orig.dim() != 4:
        raise ValueError(f"need two (B, C, H, W) maps of one shape, got {tuple(f_orig.shape)} "
                         f"and {tuple(f_recon.shape)}")
    cosine = F.cosine_similarity(f_orig, f_recon, dim=1, eps=eps).unsqueeze(1)
    # Rounding can put the cosine a hair outside [-1, 1].
    return (1 - (1 + cosine) / 2).clamp(0, 1)


def resolve_layers(model: nn.Module, names: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """The modules called `names` in `model.named_modules()`, or a LrerrError naming the typo."""
    if not names:
        raise LrerrError("no attention layers given")
    if len(set(names)) != len(names):
        raise LrerrError(f"attention layers listed twice: {', '.join(names)}")
    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        # Listing every nested module of a backbone would be hundreds of names; the direct
        # children are the usual choice, and a close match catches most typos.
        hints = [match for name in unknown for match in difflib.get_close_matches(name, modules, n=1)]
        raise LrerrError(
            f"{type(model).__name__} has no layer {', '.join(unknown)}"
            + (f" (did you mean {', '.join(hints)}?)" if hints else "")
            + f"; top-level layers: {', '.join(n for n, _ in model.named_children())}"
            + " (dotted names from named_modules() work too)"
        )
    return [(name, modules[name]) for name in names]


def _feature_map(name: str, output: object) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise LrerrError(f"layer {name} gives {shape}, not a (B, C, H, W) feature map — pick another layer")
    return output


class _LayerHooks:
    """Forward hooks on named layers, removed on `remove()` or at the end of a `with` block."""

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        self.layers = tuple(layers)
        self._handles = [module.register_forward_hook(self._hook_for(name))
                         for name, module in resolve_layers(model, self.layers)]

    def _hook_for(self, name: str):
        raise NotImplementedError

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class FeatureTaps(_LayerHooks):
    """Collects the feature maps of named layers: `taps(x)` runs the model and returns them."""

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        self.model = model
        self.outputs: dict[str, torch.Tensor] = {}
        super().__init__(model, layers)

    def _hook_for(self, name: str):
        def store(module, inputs, output):
            # Cloned because a later in-place op (ReLU(inplace=True) after a tapped BN, say)
            # would otherwise rewrite the stored map.
            self.outputs[name] = _feature_map(name, output).clone()

        return store

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.outputs = {}
        self.model(x)
        missing = [name for name in self.layers if name not in self.outputs]
        if missing:
            raise LrerrError(f"layer {', '.join(missing)} is not run by the model's forward pass")
        return [self.outputs[name] for name in self.layers]


ATTENTION_FORMS = ("mul", "residual")


class AttentionInjector(_LayerHooks):
    """Scales the outputs of named layers by attention maps while `maps(...)` is active: f·A
    (`form="mul"`, the paper's) or f·(1 + A) (`"residual"`). A is near 0 wherever the
    reconstruction is good, so f·A turns most of a real face's mid-level features toward
    zero; f·(1 + A) keeps them and boosts where the reconstruction fails.

    With no maps set the hooks return None, which leaves the outputs untouched: the same
    backbone is the plain baseline.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], form: str = "mul"):
        if form not in ATTENTION_FORMS:
            raise ValueError(f"attention form must be one of {ATTENTION_FORMS}, got {form!r}")
        self._maps: dict[str, torch.Tensor] | None = None
        self.form = form
        super().__init__(model, layers)

    @contextmanager
    def maps(self, maps: Sequence[torch.Tensor]) -> Iterator[None]:
        """Scale layer i by maps[i], (B, 1, h, w) each, for the forward passes inside the block.

        Compute the maps under torch.no_grad(), not inference_mode(): the product saves them
        for the backward pass, which autograd refuses to do with inference tensors.
        """
        if len(maps) != len(self.layers):
            raise ValueError(f"{len(maps)} attention maps for {len(self.layers)} layers {self.layers}")
        for name, a in zip(self.layers, maps):
            if a.dim() != 4 or a.shape[1] != 1:
                raise ValueError(f"attention map for {name} must be (B, 1, h, w), got {tuple(a.shape)}")
        self._maps = dict(zip(self.layers, maps))
        try:
            yield
        finally:
            self._maps = None

    def _hook_for(self, name: str):
        def scale(module, inputs, output):
            if self._maps is None:
                return None
            feature = _feature_map(name, output)
            a = self._maps[name]
            if a.shape[0] != feature.shape[0]:
                raise ValueError(f"attention map for {name} has batch {a.shape[0]}, "
                                 f"the layer's output {feature.shape[0]}")
            if a.shape[-2:] != feature.shape[-2:]:
                a = F.interpolate(a, size=feature.shape[-2:], mode="bilinear", align_corners=False)
            # Cast so a float32 map does not promote a half-precision backbone.
            a = a.to(feature.dtype)
            return feature * (1 + a) if self.form == "residual" else feature * a

        return scale


@dataclass(frozen=True)
class Backbone:
    """A timm model and the input normalization its weights expect (mean/std per RGB channel)."""

    model: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]


def make_backbone(name: str = "legacy_xception", *, pretrained: bool, weights: str | None = None,
                  num_classes: int = 1) -> Backbone:
    """Build timm model `name` with a fresh `num_classes` head; never downloads.

    `weights`, a local checkpoint file, implies pretrained. Otherwise `pretrained` loads
    timm's default weights from the local torch-hub or Hugging Face cache, and a cache miss
    is a LrerrError that says where to put the file.
    """
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise LrerrError(f"unknown timm model {name}{hint}")
    source = None
    if weights is not None:
        source = _local_weights(weights)
    elif pretrained:
        source = str(require_cached(name, "pass --weights FILE, or --no-pretrained to start from random "
                                          "weights"))
    # Loading through create_model keeps timm's per-model key remapping and head surgery (a
    # classifier of another size is dropped); the `file` overlay keeps it off the network.
    model = timm.create_model(name, pretrained=source is not None, num_classes=num_classes,
                              pretrained_cfg_overlay={"file": source} if source else None)
    config = timm.data.resolve_data_config({}, model=model)
    return Backbone(model, tuple(config["mean"]), tuple(config["std"]))


def _local_weights(path: str) -> str:
    if not Path(path).is_file():
        raise LrerrError(f"backbone weights {path}: no such file")
    return path
