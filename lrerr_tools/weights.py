"""Pretrained weights in this machine's caches, and `lrerr-tools weights`, the one command
that may use the network (and only when asked to).

timm keeps a model's weights in the Hugging Face cache (models with a hub id) or in
torch-hub's `checkpoints/` folder (models with only a URL). Training looks there and never
downloads: `weights fetch NAME` fills the same caches on a connected machine, and the
training commands then find the file as if timm had fetched it itself.
"""

from __future__ import annotations

import difflib
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from lrerr_tools.atomic_io import sha256_file
from lrerr_tools.errors import LrerrError

# What a run's defaults start from: the detectors' backbone and the MAE encoder's --init.
USED_HERE = ("legacy_xception", "tf_efficientnet_b4", "vit_base_patch16_224.mae")
HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")  # timm's order when none is pinned


@dataclass(frozen=True)
class CachedWeights:
    name: str
    path: Path
    bytes: int


def _pretrained_cfg(name: str):
    import timm

    cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(name) else None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        close = difflib.get_close_matches(name, timm.list_pretrained(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise LrerrError(f"timm has no pretrained weights named {name}{hint}")
    return cfg


def locations(name: str) -> list[tuple[Path | None, str]]:
    """Where the caches would hold `name`'s weights: (the file if it is there, how to say
    where it belongs), in the order timm looks."""
    cfg = _pretrained_cfg(name)
    found = []
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else list(HF_FILENAMES)
        hits = [try_to_load_from_cache(cfg.hf_hub_id, filename) for filename in filenames]
        path = next((Path(hit) for hit in hits if isinstance(hit, str)), None)
        found.append((path, f"the Hugging Face cache ({cfg.hf_hub_id}/{filenames[0]})"))
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        found.append((path if path.is_file() else None, f"{path} (from {cfg.url})"))
    return found


def cached_file(name: str) -> Path | None:
    """The weights of timm model `name` if a cache on this machine holds them."""
    return next((path for path, _ in locations(name) if path is not None), None)


def require_cached(name: str, fix: str) -> Path:
    """`cached_file(name)`, or a LrerrError saying where the file belongs and `fix`."""
    path = cached_file(name)
    if path is None:
        where = " and ".join(text for _, text in locations(name))
        raise LrerrError(f"pretrained {name} weights are not cached locally (looked for {where}) — "
                         f"run `lrerr-tools weights fetch {name}` on a connected machine, {fix}")
    return path


def fetch(name: str) -> CachedWeights:
    """Download `name`'s weights through timm into its usual cache; a machine without a
    network gets one line saying so."""
    import timm

    cfg = _pretrained_cfg(name)
    if cached_file(name) is None:
        _check_reachable(cfg, name)
        try:
            timm.create_model(name, pretrained=True)
        except Exception as e:  # the network's failures come as many types (URLError, HTTPError, hub errors)
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LrerrError(f"cannot download {name} weights ({type(e).__name__}: {reason}) — on a machine "
                             "without a network, copy the file from one that has fetched it to "
                             f"{' or '.join(text for _, text in locations(name))}") from None
    path = cached_file(name)
    if path is None:
        raise LrerrError(f"timm reported {name} downloaded, but no cache holds it — is HF_HUB_CACHE or "
                         "TORCH_HOME set differently for timm?")
    return CachedWeights(name, path, path.stat().st_size)


def _check_reachable(cfg, name: str) -> None:
    """Fail in one line, at once, where the download's host does not resolve: the hub client
    would otherwise retry for most of a minute, logging every attempt."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT if cfg.hf_hub_id else cfg.url).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        raise LrerrError(f"cannot download {name} weights: {host} does not resolve ({e.strerror or e}) — "
                         "no network here? On a machine without one, copy the file from one that has "
                         f"fetched it to {' or '.join(text for _, text in locations(name))}") from None


def cached(names: tuple[str, ...] = USED_HERE) -> list[tuple[str, CachedWeights | None]]:
    """Each of `names` with its cached weights, or None where no cache holds them."""
    rows = []
    for name in names:
        path = cached_file(name)
        rows.append((name, CachedWeights(name, path, path.stat().st_size) if path else None))
    return rows


def describe(weights: CachedWeights) -> str:
    size = f"{weights.bytes / 2**20:.1f} MiB"
    return f"{weights.name}: {weights.path} ({size}, sha256 {sha256_file(weights.path)})"
