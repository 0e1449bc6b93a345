"""attention.png: what the LRErr detector looked at, on a few real and fake faces.

One row per face: the face, the MAE's reconstruction, then each layer's attention map A
upsampled over the face as a heatmap. A map's colours span 0 to the largest A of that layer
over all the rows, so real and fake rows compare by eye (a face-by-face scale would make
every map look equally hot).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from lrerr_tools.detector.model import Detector, prepare_inputs
from lrerr_tools.detector.reconstruction import Reconstructor
from lrerr_tools.normalization import from_mae
from lrerr_tools.shard_dataset import ShardDataset

GAP, HEADER = 4, 22  # pixels between panels, and above them for the column titles
HEAT_WEIGHT = 0.5
TEXT = dict(fontFace=cv2.FONT_HERSHEY_SIMPLEX, fontScale=0.45, lineType=cv2.LINE_AA)


def pick_faces(labels: np.ndarray, per_class: int) -> list[int]:
    """Up to `per_class` reals then as many fakes, spread evenly over the split (so over
    several videos and methods: shards are sorted by video)."""
    picks = []
    for label in (0, 1):
        where = np.flatnonzero(labels == label)
        spread = np.linspace(0, len(where) - 1, min(per_class, len(where))).round().astype(int)
        picks += where[spread].tolist()
    return picks


def _caption(image: np.ndarray, text: str, origin: tuple[int, int]) -> None:
    """Yellow on a black box: legible over light skin and dark hair alike."""
    (width, height), baseline = cv2.getTextSize(text, TEXT["fontFace"], TEXT["fontScale"], 1)
    x, y = origin
    cv2.rectangle(image, (x - 2, y - height - 3), (x + width + 2, y + baseline), (0, 0, 0), cv2.FILLED)
    cv2.putText(image, text, origin, color=(255, 255, 0), thickness=1, **TEXT)


def _uint8(images01: torch.Tensor) -> np.ndarray:
    return (images01.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def attention_figure(detector: Detector, reconstructor: Reconstructor, dataset: ShardDataset,
                     indices: list[int], probs: list[float], device: torch.device) -> np.ndarray:
    """uint8 RGB figure for the faces `indices` of `dataset`, captioned with their `probs`."""
    items = [dataset[i] for i in indices]
    batch = default_collate(items)
    inputs = prepare_inputs(detector, reconstructor, batch, device, None)
    size = batch["image"].shape[-1]
    faces = np.ascontiguousarray(batch["image"].permute(0, 2, 3, 1).numpy())
    panels = [faces, _uint8(from_mae(inputs.recon))]
    titles = ["face", "MAE reconstruction"]
    for name, a in zip(detector.layers, inputs.maps):
        a = F.interpolate(a, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        top = max(float(a.max()), 1e-6)
        heat = [cv2.cvtColor(cv2.applyColorMap((m / top * 255).round().astype(np.uint8), cv2.COLORMAP_JET),
                             cv2.COLOR_BGR2RGB) for m in a.cpu().numpy()]
        panels.append(np.stack([cv2.addWeighted(face, 1 - HEAT_WEIGHT, h, HEAT_WEIGHT, 0)
                                for face, h in zip(faces, heat)]))
        titles.append(f"A {name} (0-{top:.3f})")
    step = size + GAP
    figure = np.full((HEADER + len(items) * step - GAP, len(panels) * step - GAP, 3), 255, np.uint8)
    for col, title in enumerate(titles):
        cv2.putText(figure, title, (col * step + 2, HEADER - 7), color=(0, 0, 0), thickness=1, **TEXT)
    for row, item in enumerate(items):
        y = HEADER + row * step
        for col, panel in enumerate(panels):
            figure[y:y + size, col * step:col * step + size] = panel[row]
        caption = f"{'fake' if item['label'] else 'real'} {item['video_id']} #{item['frame_index']}"
        _caption(figure, caption, (4, y + 16))
        _caption(figure, f"p(fake) = {probs[row]:.3f}", (4, y + size - 8))
    return figure
