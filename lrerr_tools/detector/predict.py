"""Fake probabilities for every face of a split, in dataset order: the validation pass of
`train-det` and the scoring pass of `score` are this one loop, for any method."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lrerr_tools.methods.base import Method

# Validation (which picks best.pt) and `score` both predict at full precision, never under
# the run's AMP: the epoch is then chosen on the numbers that are reported, where bf16 logits
# could reorder faces that score close together.
EVAL_PRECISION = "float32"


def prepared_inputs(method: Method, net: nn.Module, context: Any, batch: dict, device: torch.device,
                    dtype: torch.dtype | None, cache=None) -> dict:
    """`method.inputs` of a shard batch, its frozen part read from `cache` (a FrozenCache)
    where stored; None: computed."""
    frozen = None if cache is None else cache.fetch(batch, lambda faces: method.frozen(net, context, faces,
                                                                                       device))
    return method.inputs(net, context, batch, device, dtype, frozen)


def eval_loader(dataset: Dataset, *, batch_size: int, workers: int, device: torch.device,
                persistent: bool = False) -> DataLoader:
    """The faces of `dataset` in order; `persistent` keeps the workers for the next pass."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=persistent and workers > 0)


@torch.no_grad()
def predict(method: Method, net: nn.Module, context: Any, dataset: Dataset, *, batch_size: int,
            workers: int, device: torch.device, desc: str = "predict", progress: bool = True,
            loader: DataLoader | None = None, cache=None) -> tuple[list[dict], np.ndarray]:
    """Per face, a row {video_id, method, label, frame_index, prob} (what metrics take), and
    the logits (N,) as float64, for a loss; at EVAL_PRECISION. `loader`: one made by
    `eval_loader` over `dataset`, kept between calls; `cache`: where frozen inputs are kept."""
    was_training = net.training
    net.eval()
    rows, logits = [], []
    if loader is None:
        loader = eval_loader(dataset, batch_size=batch_size, workers=workers, device=device)
    with tqdm(total=len(dataset), unit="face", desc=desc, disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        for batch in loader:
            out = net(prepared_inputs(method, net, context, batch, device, None, cache))["logit"].float()
            logits.append(out.cpu().double())
            probs = torch.sigmoid(out).cpu().tolist()
            rows += [{"video_id": v, "method": m, "label": int(y), "frame_index": int(f), "prob": p}
                     for v, m, y, f, p in zip(batch["video_id"], batch["method"], batch["label"],
                                              batch["frame_index"], probs)]
            bar.update(len(probs))
    net.train(was_training)
    return rows, torch.cat(logits).numpy() if logits else np.zeros(0)
