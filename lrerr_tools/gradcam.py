"""Where a detector looks: Grad-CAM (Selvaraju et al., ICCV 2017) of its fake logit, and the
figure `score --cam N` writes of the N most confident fakes, the N most confident reals and
the N worst mistakes of the scored split.

The map is pytorch_grad_cam's `GradCAM` on the layer each method names as its last spatial map
(`Method.cam_layer`): that map's channels weighted by their mean gradient of the fake logit,
summed, ReLU, scaled to [0, 1] on each face and resized to the face. A map near zero is
stretched to [0, 1] all the same, so a heat map says where, never how strongly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from lrerr_tools.detector.overlays import LABELS, heat_panels, image_panels
from lrerr_tools.methods.base import Method
from lrerr_tools.metrics import THRESHOLD

CAM_FILE = "cam.png"
ROWS = ("most confident fakes", "most confident reals", "worst mistakes")
CELL_INCHES, DPI = 2.3, 100  # about 230 px a face
# Faces per row at most: 100 are 23,000 px wide, within what Agg can draw (2^16 px a side).
MAX_PER_ROW = 100


class _FakeLogit(nn.Module):
    """The network as pytorch_grad_cam calls a model: one image tensor in, (B, 1) scores out.

    Our networks take a dict (LRErr's attention maps and RLGC's Sobel map beside the faces),
    which GradCAM cannot pass, so the batch's other inputs, made by the method's own `inputs`,
    are held fixed here: what is explained is exactly the logit `score` reports.
    """

    def __init__(self, net: nn.Module, inputs: dict):
        super().__init__()
        self.net, self.inputs = net, inputs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # A leaf that wants its gradient, so the last map has one even behind frozen layers
        # (a linear probe's encoder), whose outputs GradCAM would otherwise find without.
        images = images.detach().requires_grad_(True)
        return self.net({**self.inputs, "images": images})["logit"].float()[:, None]


def grad_cam(method: Method, net: nn.Module, context: Any, batch: dict, device: torch.device) -> np.ndarray:
    """(B, S, S) float32 in [0, 1]: the Grad-CAM of the fake logit of each face of a shard
    `batch`, at the method's `cam_layer`, at the faces' size. Leaves `net` in eval mode."""
    # Imported here: pytorch_grad_cam loads scikit-learn's decompositions and more at import,
    # seconds that every `score` without --cam would pay.
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    inputs = method.inputs(net, context, batch, device, None)
    images = inputs["images"]
    cam = GradCAM(_FakeLogit(net, inputs), [method.cam_layer(net)])
    try:  # not `with`: GradCAM's __exit__ swallows an IndexError and returns None
        with torch.enable_grad():
            return cam(images, targets=[ClassifierOutputTarget(0)] * len(images))
    finally:
        cam.activations_and_grads.release()


def layer_name(net: nn.Module, layer: nn.Module) -> str:
    return next(name for name, module in net.named_modules() if module is layer)


def cam_picks(probs: np.ndarray, labels: np.ndarray, count: int) -> dict[str, list[int]]:
    """Face indices per row of ROWS: the `count` fakes scored most fake, the `count` reals
    scored most real, and the `count` faces misclassified at the headline Acc's threshold
    whose p(fake) lies furthest from their label; fewer where the split has fewer. Ties keep
    the dataset order."""
    error = np.abs(labels - probs)
    wrong = np.flatnonzero((probs >= THRESHOLD) != (labels == 1))

    def by_error(indices: np.ndarray, descending: bool = False) -> list[int]:
        order = np.argsort(-error[indices] if descending else error[indices], kind="stable")
        return indices[order][:count].tolist()

    fakes, reals = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    return dict(zip(ROWS, (by_error(fakes), by_error(reals), by_error(wrong, descending=True))))


def write_cam_figure(path: Path, method: Method, net: nn.Module, context: Any, dataset: Dataset,
                     rows: Sequence[dict], count: int, *, batch_size: int, device: torch.device,
                     title: str) -> Path:
    """`path`: a PNG of ROWS (`cam_picks` of the scored `rows`), each face under its Grad-CAM
    with its label, p(fake), video and frame, and a note where the map is flat; `title` names
    the run and split."""
    probs = np.array([r["prob"] for r in rows])
    labels = np.array([r["label"] for r in rows])
    picks = cam_picks(probs, labels, count)
    faces = sorted({i for indices in picks.values() for i in indices})
    items = [dataset[i] for i in faces]
    panels = dict(zip(faces, _overlays(method, net, context, items, batch_size, device)))
    layer = layer_name(net, method.cam_layer(net))
    return _draw(path, {row: [(panels[i], rows[i]) for i in indices] for row, indices in picks.items()},
                 f"{title}\nGrad-CAM of the fake logit at {layer}")


def _overlays(method: Method, net: nn.Module, context: Any, items: list[dict], batch_size: int,
              device: torch.device) -> list[tuple[np.ndarray, bool]]:
    """Each face (S, S, 3) uint8 under its Grad-CAM as a jet heat map, and whether the map is
    flat (0 everywhere: nowhere on the face does the evidence raise the fake logit), in
    `items`' order."""
    out = []
    for start in range(0, len(items), batch_size):
        batch = default_collate(items[start:start + batch_size])
        maps = torch.from_numpy(grad_cam(method, net, context, batch, device))[:, None]
        out += zip(heat_panels(image_panels(batch["image"]), maps), (maps.amax((1, 2, 3)) == 0).tolist())
    return out


def _draw(path: Path, cells: dict[str, list[tuple[tuple[np.ndarray, bool], dict]]], title: str) -> Path:
    # A bare Figure renders with Agg without pyplot, as metrics.roc_plot does.
    from matplotlib.figure import Figure

    columns = max(1, *map(len, cells.values()))
    fig = Figure(figsize=(CELL_INCHES * columns, CELL_INCHES * len(cells) + 0.6), dpi=DPI,
                 layout="constrained")
    fig.suptitle(title, fontsize=10)
    axes = fig.subplots(len(cells), columns, squeeze=False)
    for ax_row, (row, faces) in zip(axes, cells.items()):
        for col, ax in enumerate(ax_row):
            ax.set(xticks=[], yticks=[])
            if col < len(faces):
                (panel, flat), face = faces[col]
                ax.imshow(panel)
                ax.set_title(f"{LABELS[face['label']]}p(fake) {face['prob']:.3f}\n"
                             f"{face['video_id']} #{face['frame_index']}", fontsize=7)
                if flat:
                    ax.set_xlabel("flat: no evidence for fake", fontsize=7)
            elif col == 0:
                ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.set_axis_off()
        ax_row[0].set_ylabel(row, fontsize=9)
    path = Path(path)
    fig.savefig(path)
    return path
