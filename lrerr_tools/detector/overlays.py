"""The figure `score` writes for a method that has one: a few real and fake faces, one per
row, and one column per panel (the face, a reconstruction, a heat map over the face...).

Methods make their panels with `image_panels` and `heat_panels` and hand them to `layout`,
which adds the column titles and each row's label, video and p(fake).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

GAP, HEADER = 4, 22  # pixels between panels, and above them for the column titles
HEAT_WEIGHT = 0.5
LABELS = {0: "real ", 1: "fake "}
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


def image_panels(images: torch.Tensor) -> np.ndarray:
    """(N, 3, S, S) RGB in 0..255 (uint8 or float, clipped) → (N, S, S, 3) uint8."""
    return images.float().clamp(0, 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def heat_panels(faces: np.ndarray, maps: torch.Tensor) -> np.ndarray:
    """(N, 1, h, w) maps in [0, 1] as jet heat maps blended over `faces` (N, S, S, 3)."""
    size = faces.shape[1]
    maps = F.interpolate(maps.float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    heat = [cv2.cvtColor(cv2.applyColorMap((m.clip(0, 1) * 255).round().astype(np.uint8), cv2.COLORMAP_JET),
                         cv2.COLOR_BGR2RGB) for m in maps.cpu().numpy()]
    return np.stack([cv2.addWeighted(np.ascontiguousarray(face), 1 - HEAT_WEIGHT, h, HEAT_WEIGHT, 0)
                     for face, h in zip(faces, heat)])


def error_column(faces: np.ndarray, images: torch.Tensor, recon: torch.Tensor) -> tuple[str, np.ndarray]:
    """The |x − x̂| column of the reconstruction methods: `images` and `recon` (N, 3, S, S) in
    [0, 1] pixel units; the channel mean, coloured from 0 to the largest over all the rows (in
    the title), so real and fake rows compare by eye."""
    error = (recon - images).abs().mean(1, keepdim=True)
    top = max(float(error.max()), 1e-6)
    return f"|x - x^| (0-{top:.3f})", heat_panels(faces, error / top)


def _caption(image: np.ndarray, text: str, origin: tuple[int, int]) -> None:
    """Yellow on a black box: legible over light skin and dark hair alike."""
    (width, height), baseline = cv2.getTextSize(text, TEXT["fontFace"], TEXT["fontScale"], 1)
    x, y = origin
    cv2.rectangle(image, (x - 2, y - height - 3), (x + width + 2, y + baseline), (0, 0, 0), cv2.FILLED)
    cv2.putText(image, text, origin, color=(255, 255, 0), thickness=1, **TEXT)


def layout(columns: Sequence[tuple[str, np.ndarray]], batch: dict, probs: Sequence[float]) -> np.ndarray:
    """uint8 RGB figure: `columns` of (title, (N, S, S, 3) panels), a row per face of `batch`
    captioned with its label (if known), video, frame and p(fake)."""
    size = columns[0][1].shape[1]
    rows = len(probs)
    step = size + GAP
    figure = np.full((HEADER + rows * step - GAP, len(columns) * step - GAP, 3), 255, np.uint8)
    for col, (title, _) in enumerate(columns):
        cv2.putText(figure, title, (col * step + 2, HEADER - 7), color=(0, 0, 0), thickness=1, **TEXT)
    for row in range(rows):
        y = HEADER + row * step
        for col, (_, panels) in enumerate(columns):
            figure[y:y + size, col * step:col * step + size] = panels[row]
        label = LABELS.get(int(batch["label"][row]), "")  # none for `predict`'s faces, whose is unknown
        _caption(figure, f"{label}{batch['video_id'][row]} #{int(batch['frame_index'][row])}", (4, y + 16))
        _caption(figure, f"p(fake) = {probs[row]:.3f}", (4, y + size - 8))
    return figure
