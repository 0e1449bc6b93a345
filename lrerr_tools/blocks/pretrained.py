"""Pretrained weights into a network's own copy of a timm model's layers (RECCE's and CRL's
Xception, RLGC's EfficientNet-B4), every key checked by name and shape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lrerr_tools.errors import LrerrError


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape)


def load_fitting(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, target: str,
                 dropped: Sequence[str] = (), width: float | None = None) -> nn.Module:
    """Fill `module` from timm model `source`'s `state_dict`, less the keys under the
    `dropped` prefixes (the parts the module leaves out, such as a classifier head). Every
    other key must match in name and shape.

    Raises LrerrError naming the first mismatches, and that the weights fit width 1 only when
    the module has another `width`. BatchNorm's `num_batches_tracked` may be absent (older
    checkpoints lack it): torch fills it.
    """
    weights = {key: value for key, value in state_dict.items() if not key.startswith(tuple(dropped))}
    own = module.state_dict()
    missing = [key for key in own if key not in weights and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in weights if key not in own]
    wrong = [f"{key} {_shape(weights[key])} (model {_shape(own[key])})"
             for key in own if key in weights and _shape(weights[key]) != _shape(own[key])]
    if missing or unexpected or wrong:
        problems = []
        for label, keys in (("shape mismatch", wrong), ("missing", missing), ("unexpected", unexpected)):
            if keys:
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                problems.append(f"{label}: {', '.join(keys[:3])}{more}")
        hint = (f" — {source} weights fit width 1 only, this model has width {width}"
                if width not in (None, 1, 1.0) else "")
        raise LrerrError(f"the {source} weights do not fit {target}: " + "; ".join(problems) + hint)
    module.load_state_dict(weights, strict=True)
    return module
