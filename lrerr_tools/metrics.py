"""Frame- and video-level detection metrics (paper IV: AUC and Acc; plus AP and EER).

Input rows are per-frame scores: `video_id`, `method`, `label` (1 = fake) and `prob` (of
fake). A video's score is the mean of its frames' probs. Videos are grouped by the full
`video_id` ("Deepfakes/000_003"), never by a bare folder name, because the same id names
different videos under different methods. The result is a plain, JSON-ready dict; the
score stage writes it as `metrics.json` (schema: `manifests/metrics.schema.json`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from lrerr_tools.errors import LrerrError

THRESHOLD = 0.5
LEVELS = ("frame", "video")
ROW_KEYS = ("video_id", "method", "label", "prob")


@dataclass(frozen=True)
class Scores:
    """Labels and fake probabilities of one level (frames or videos), with each one's method."""

    labels: np.ndarray
    probs: np.ndarray
    methods: np.ndarray

    def subset(self, keep: np.ndarray) -> Scores:
        return Scores(self.labels[keep], self.probs[keep], self.methods[keep])


def compute_metrics(rows: Iterable[Mapping], threshold: float = THRESHOLD) -> dict:
    """All metrics of a test run: overall and per fake method, at frame and video level.

    ```
    {"threshold": 0.5,
     "frame": BLOCK, "video": BLOCK,
     "per_method": {"Deepfakes": {"frame": BLOCK, "video": BLOCK}, ...},
     "notes": ["video/per_method/Deepfakes: only fake samples — AUC, AP and EER undefined", ...]}
    BLOCK = {"n", "n_real", "n_fake", "acc", "auc", "ap", "eer"}
    ```
    Each fake method is scored against all the reals: reals are found by label 0, whatever
    their method is called (youtube, actors, Celeb-real, ...). Acc counts prob >= threshold
    as fake. AUC, AP and EER are None, with a note, where only one class is present.
    """
    if not 0 < threshold < 1:
        raise LrerrError(f"threshold must be between 0 and 1, got {threshold}")
    levels = dict(zip(LEVELS, scores_by_level(rows)))
    notes: list[str] = []
    result: dict = {"threshold": threshold, "notes": notes}
    for level, scores in levels.items():
        result[level] = block(scores, threshold, notes, where=level)
    fake_methods = sorted(set(levels["frame"].methods[levels["frame"].labels == 1]))
    result["per_method"] = {
        method: {
            level: block(scores.subset((scores.labels == 0) | (scores.methods == method)), threshold,
                         notes, where=f"{level}/per_method/{method}")
            for level, scores in levels.items()
        }
        for method in fake_methods
    }
    return result


def scores_by_level(rows: Iterable[Mapping]) -> tuple[Scores, Scores]:
    """Frame scores as given, and video scores as the mean over each video's frames."""
    frames = []
    for i, row in enumerate(rows):
        missing = [key for key in ROW_KEYS if key not in row]
        if missing:
            raise LrerrError(f"score row {i}: missing {', '.join(missing)}")
        try:
            prob = float(row["prob"])
        except (TypeError, ValueError):
            prob = math.nan
        if row["label"] not in (0, 1) or not 0 <= prob <= 1:
            raise LrerrError(f"score row {i} ({row['video_id']}): label must be 0 or 1 and prob in "
                             f"[0, 1], got {row['label']!r} and {row['prob']!r}")
        frames.append({"video_id": str(row["video_id"]), "method": str(row["method"]),
                       "label": int(row["label"]), "prob": prob})
    if not frames:
        raise LrerrError("no scores to evaluate")
    return tuple(Scores(np.array([r["label"] for r in level]), np.array([r["prob"] for r in level]),
                        np.array([r["method"] for r in level]))
                 for level in (frames, video_rows(frames)))


def video_rows(frames: Sequence[Mapping]) -> list[dict]:
    """One row per full video_id, in first-seen order: its method, label, frame count and mean prob."""
    groups: dict[str, list[Mapping]] = {}
    for row in frames:
        groups.setdefault(row["video_id"], []).append(row)
    videos = []
    for video_id, rows in groups.items():
        if len({r["label"] for r in rows}) > 1 or len({r["method"] for r in rows}) > 1:
            raise LrerrError(f"video {video_id}: its frames disagree on label or method")
        videos.append({"video_id": video_id, "method": rows[0]["method"], "label": rows[0]["label"],
                       "frames": len(rows), "prob": float(np.mean([r["prob"] for r in rows]))})
    return videos


def block(scores: Scores, threshold: float, notes: list[str], where: str) -> dict:
    """Counts, Acc, AUC, AP and EER of one set of scores; notes why any are undefined."""
    labels, probs = scores.labels, scores.probs
    n_fake = int(labels.sum())
    out = {
        "n": len(labels), "n_real": len(labels) - n_fake, "n_fake": n_fake,
        "acc": float(((probs >= threshold) == labels).mean()),
        "auc": None, "ap": None, "eer": None,
    }
    if n_fake in (0, len(labels)):
        notes.append(f"{where}: only {'fake' if n_fake else 'real'} samples — AUC, AP and EER undefined")
        return out
    fpr, tpr, _ = roc_curve(labels, probs)
    out.update(auc=float(roc_auc_score(labels, probs)), ap=float(average_precision_score(labels, probs)),
               eer=equal_error_rate(fpr, tpr))
    return out


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Where the false-positive and false-negative rates meet on the ROC curve.

    The curve is piecewise linear between its points, so the crossing is interpolated on the
    segment where FNR − FPR changes sign, rather than snapped to the nearest point.
    """
    gap = (1 - tpr) - fpr  # falls monotonically from 1 at (0, 0) to -1 at (1, 1)
    i = int(np.argmax(gap <= 0))
    if gap[i] == 0:
        return float(fpr[i])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def roc_plot(rows: Iterable[Mapping], path: str | Path, title: str = "ROC") -> Path:
    """Write a PNG of the frame- and video-level ROC curves, each with its AUC in the legend."""
    # A bare Figure renders with Agg without pyplot, so no global backend is switched and no
    # display is needed.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=120)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    for level, scores in zip(LEVELS, scores_by_level(rows)):
        if len(set(scores.labels)) < 2:
            ax.plot([], [], " ", label=f"{level}: one class, no ROC")
            continue
        fpr, tpr, _ = roc_curve(scores.labels, scores.probs)
        auc = roc_auc_score(scores.labels, scores.probs)
        ax.plot(fpr, tpr, label=f"{level} (AUC = {auc:.4f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
           title=title)
    ax.legend(loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
