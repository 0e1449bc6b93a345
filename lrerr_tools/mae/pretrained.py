"""`--init`: start the MAE's encoder from existing weights, never downloading anything.

NAME_OR_PATH is a file (a state dict, optionally under "model" or "state_dict" as in the
MAE release and in our own checkpoints; .safetensors too) or a timm model name such as
`vit_base_patch16_224.mae`, looked up in the local Hugging Face and torch-hub caches only.
Only the encoder is loaded (patch_embed, cls_token, blocks, norm); position embeddings are
fixed and the decoder starts fresh.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lrerr_tools.errors import LrerrError
from lrerr_tools.mae.model import MaskedAutoencoder
from lrerr_tools.weights import require_cached

ENCODER_PREFIXES = ("patch_embed.", "cls_token", "blocks.", "norm.")


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # whatever makes it unreadable, the file is the user's to fix
        raise LrerrError(f"--init {path}: not a readable torch weights file ({type(e).__name__})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise LrerrError(f"--init {path}: holds no state dict")
    return state


def _cached_timm_file(name: str) -> Path:
    """The weights of timm model `name` if a cache on this machine already holds them."""
    import timm

    if timm.models.get_pretrained_cfg(name) is None:
        raise LrerrError(f"--init {name}: neither a file nor a timm model name with pretrained weights")
    return require_cached(name, "or pass the weights file to --init")


def load_encoder(model: MaskedAutoencoder, name_or_path: str) -> str:
    """Copy encoder weights into `model`; returns the file they came from."""
    path = Path(name_or_path)
    path = path if path.is_file() else _cached_timm_file(name_or_path)
    state = _load_file(path)
    own = {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
    missing = [k for k in own if k not in state]
    if missing:
        raise LrerrError(f"--init {name_or_path}: has no encoder weight {missing[0]} "
                         f"({len(missing)} of {len(own)} missing) — is it a ViT/MAE encoder of the "
                         "--preset size?")
    wrong = [k for k in own if state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise LrerrError(f"--init {name_or_path}: {k} has shape {tuple(state[k].shape)}, the "
                         f"preset expects {tuple(own[k].shape)} — choose the matching --preset")
    model.load_state_dict({k: state[k] for k in own}, strict=False)
    return str(path)
