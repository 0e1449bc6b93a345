"""`score --perturb`: the detector's metrics on the scored faces under each perturbation and
level of `perturb.py`, the figure of what each level does to a face, and `report`'s plot of
AUC against level.

    OUT/metrics.json  `robustness`: {perturbation: {"1".."5": the metrics block of those faces}}
                      and `robustness_protocol`: the seed and each level's parameter
    OUT/robustness.csv  perturbation, level, video_id, method, frame_index, label, prob
    OUT/perturbations.png  one real and one fake face at every perturbation and level
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from lrerr_tools.bootstrap import Bootstrap
from lrerr_tools.mae.grid import write_grid
from lrerr_tools.metrics import Aggregation, compute_metrics
from lrerr_tools.perturb import LEVELS, PERTURBATIONS, PerturbedFaces

ROBUSTNESS_CSV, PERTURBATIONS_FIGURE = "robustness.csv", "perturbations.png"
ROBUSTNESS_FIELDS = ["perturbation", "level", "video_id", "method", "frame_index", "label", "prob"]
# What every block of metrics.json shares with the clean one, so is not repeated per level.
SHARED_KEYS = ("threshold", "aggregation", "bootstrap")
# perturbations.png, in pixels: between faces, under each (its caption), per title line, between the faces
GAP, CAPTION, LINE, BLOCK_GAP = 4, 18, 20, 16

Predict = Callable[[Dataset, str], list[dict]]  # (faces, progress label) → score rows


def score_perturbed(faces: Dataset, names: Sequence[str], seed: int, predict: Predict,
                    aggregation: Aggregation, bootstrap: Bootstrap | None) -> tuple[dict, list[dict]]:
    """The `robustness` block of metrics.json, and every perturbed face's score row (with its
    perturbation and level), from `predict` of the faces under each perturbation and level."""
    robustness, rows = {}, []
    for name in names:
        robustness[name] = {}
        for level in tqdm(LEVELS, desc=f"perturb {name}", unit="level", dynamic_ncols=True):
            scored = predict(PerturbedFaces(faces, name, level, seed), f"{name} level {level}")
            metrics = compute_metrics(scored, aggregation=aggregation, bootstrap=bootstrap)
            robustness[name][str(level)] = {k: v for k, v in metrics.items() if k not in SHARED_KEYS}
            rows += [{"perturbation": name, "level": level, **row} for row in scored]
    return robustness, rows


def protocol(names: Sequence[str], seed: int) -> dict:
    """The `robustness_protocol` block: the seed and each perturbation's parameter by level."""
    return {"seed": seed, "perturbations": {
        name: {"title": p.title, "parameter": p.parameter, "values": list(p.values), "source": p.source}
        for name, p in ((name, PERTURBATIONS[name]) for name in names)}}


def perturbations_figure(faces: Dataset, picks: Sequence[int], names: Sequence[str], seed: int,
                         path: Path, title: str) -> None:
    """One row per perturbation; for each picked face, its clean crop and then levels 1 to 5,
    each captioned with the level's parameter, at the faces' own pixels."""
    size = faces[picks[0]]["image"].shape[-1]
    columns = 1 + len(LEVELS)
    step_x, step_y = size + GAP, size + CAPTION + GAP
    block_x = columns * step_x + BLOCK_GAP
    grid = np.full((2 * LINE + len(names) * step_y, len(picks) * block_x - BLOCK_GAP - GAP, 3), 255, np.uint8)
    _text(grid, title, (2, LINE - 6))
    for row, name in enumerate(names):
        perturbation = PERTURBATIONS[name]
        levels = [PerturbedFaces(faces, name, level, seed) for level in LEVELS]
        y = 2 * LINE + row * step_y
        for block, index in enumerate(picks):
            clean = faces[index]
            if row == 0:
                face = f"{('real', 'fake')[clean['label']]}: {clean['video_id']} frame {clean['frame_index']}"
                _text(grid, face, (block * block_x + 2, 2 * LINE - 6))
            cells = [(f"{perturbation.title}: clean", clean["image"])] + [
                (f"{level}: {perturbation.parameter} {perturbation.value(level)}", perturbed[index]["image"])
                for level, perturbed in zip(LEVELS, levels)]
            for col, (caption, image) in enumerate(cells):
                x = block * block_x + col * step_x
                grid[y:y + size, x:x + size] = image.numpy().transpose(1, 2, 0)
                _text(grid, caption, (x + 2, y + size + CAPTION - 5))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_grid(path, grid)


def _text(image: np.ndarray, text: str, origin: tuple[int, int]) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)


def robustness_plot(curves: Mapping[str, Mapping[str, Sequence[float | None]]], path: Path,
                    title: str) -> None:
    """One panel per perturbation: each curve's AUC (in %) at clean (0) and levels 1 to 5.
    `curves` is {perturbation: {curve label: [clean, level 1, ..., level 5]}}."""
    from matplotlib.figure import Figure

    columns = min(4, len(curves))
    rows = -(-len(curves) // columns)
    fig = Figure(figsize=(3.2 * columns, 2.8 * rows + 0.8), dpi=110)
    # One AUC scale for every panel, so that the perturbations compare by eye.
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True).ravel()
    for ax, (name, by_label) in zip(axes, curves.items()):
        for label, aucs in by_label.items():
            values = [np.nan if v is None else 100 * v for v in aucs]
            ax.plot(range(len(values)), values, marker="o", label=label)
        ax.set(title=PERTURBATIONS[name].title, xlabel="level", ylabel="AUC (%)",
               xticks=range(1 + len(LEVELS)), xticklabels=["clean", *map(str, LEVELS)])
        ax.grid(alpha=0.3)
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    # A label names its run and test set, most of a panel wide: one legend column per panel.
    ncol = max(1, min(columns, len(labels)))
    legend_rows = -(-len(labels) // ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.22 * (legend_rows + 0.5) / fig.get_figheight(), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
