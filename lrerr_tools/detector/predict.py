"""Fake probabilities for every face of a split, in dataset order: the validation pass of
`train-det` and the scoring pass of `score` are this one loop."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from lrerr_tools.detector.model import Detector, prepare_inputs
from lrerr_tools.detector.reconstruction import Reconstructor
from lrerr_tools.shard_dataset import ShardDataset
from lrerr_tools.training import autocast


@torch.no_grad()
def predict(detector: Detector, reconstructor: Reconstructor | None, dataset: ShardDataset, *,
            batch_size: int, workers: int, device: torch.device, dtype: torch.dtype | None,
            desc: str = "predict", progress: bool = True) -> tuple[list[dict], np.ndarray]:
    """Per face, a row {video_id, method, label, frame_index, prob} (what metrics take), and
    the logits (N,) as float64, for a loss."""
    was_training = detector.training
    detector.eval()
    rows, logits = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    with tqdm(total=len(dataset), unit="face", desc=desc, disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        for batch in loader:
            inputs = prepare_inputs(detector, reconstructor, batch, device, dtype)
            with autocast(device, dtype):
                out = detector(inputs.images, inputs.maps).float()
            logits.append(out.cpu().double())
            probs = torch.sigmoid(out).cpu().tolist()
            rows += [{"video_id": v, "method": m, "label": int(y), "frame_index": int(f), "prob": p}
                     for v, m, y, f, p in zip(batch["video_id"], batch["method"], batch["label"],
                                              batch["frame_index"], probs)]
            bar.update(len(probs))
    detector.train(was_training)
    return rows, torch.cat(logits).numpy() if logits else np.zeros(0)
