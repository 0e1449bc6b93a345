"""Fake probabilities for every face of a split, in dataset order: the validation pass of
`train-det` and the scoring pass of `score` are this one loop, for any method."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from lrerr_tools.methods.base import Method
from lrerr_tools.shard_dataset import ShardDataset

# Validation (which picks best.pt) and `score` both predict at full precision, never under
# the run's AMP: the epoch is then chosen on the numbers that are reported, where bf16 logits
# could reorder faces that score close together.
EVAL_PRECISION = "float32"


@torch.no_grad()
def predict(method: Method, net: nn.Module, context: Any, dataset: ShardDataset, *, batch_size: int,
            workers: int, device: torch.device, desc: str = "predict",
            progress: bool = True) -> tuple[list[dict], np.ndarray]:
    """Per face, a row {video_id, method, label, frame_index, prob} (what metrics take), and
    the logits (N,) as float64, for a loss; at EVAL_PRECISION."""
    was_training = net.training
    net.eval()
    rows, logits = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    with tqdm(total=len(dataset), unit="face", desc=desc, disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        for batch in loader:
            out = net(method.inputs(net, context, batch, device, None))["logit"].float()
            logits.append(out.cpu().double())
            probs = torch.sigmoid(out).cpu().tolist()
            rows += [{"video_id": v, "method": m, "label": int(y), "frame_index": int(f), "prob": p}
                     for v, m, y, f, p in zip(batch["video_id"], batch["method"], batch["label"],
                                              batch["frame_index"], probs)]
            bar.update(len(probs))
    net.train(was_training)
    return rows, torch.cat(logits).numpy() if logits else np.zeros(0)
