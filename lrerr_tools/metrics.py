"""Frame- and video-level detection metrics (paper IV: AUC and Acc; plus AP and EER).

Input rows are per-frame scores: `video_id`, `method`, `label` (1 = fake) and `prob` (of
fake). A video's score is the mean of its frames' probs (the paper's, the headline); the
other aggregators of `AGGREGATORS` are scored beside it. Videos are grouped by the full
`video_id` ("Deepfakes/000_003"), never by a bare folder name, because the same id names
different videos under different methods. The result is a plain, JSON-ready dict; the
score stage writes it as `metrics.json` (schema: `manifests/metrics.schema.json`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from lrerr_tools.bootstrap import Bootstrap, Resampled
from lrerr_tools.errors import LrerrError

THRESHOLD = 0.5
LEVELS = ("frame", "video")
ROW_KEYS = ("video_id", "method", "label", "prob")
AGGREGATORS = ("mean", "median", "max", "top_k_mean", "confident")
HEADLINE = "mean"  # the paper's video score: metrics.json's `video` block


@dataclass(frozen=True)
class Aggregation:
    """The constants of the video aggregators. `top_k_mean` is the mean of a video's k highest
    frame probs, k = max(1, floor(top_fraction × frames)). `confident` is the DFDC winner's
    rule (Seferbekov, 2020): when more than floor(frames / fake_divisor) and more than
    `min_fakes` frames have prob > `fake_prob`, the mean of those; else, when more than
    `real_share` × frames have prob < `real_prob`, the mean of those; else the mean of all."""

    top_fraction: float = 0.25
    fake_prob: float = 0.8
    real_prob: float = 0.2
    fake_divisor: float = 2.5
    min_fakes: int = 11
    real_share: float = 0.9

    def check(self) -> None:
        if not 0 < self.top_fraction <= 1:
            raise LrerrError(f"--top-fraction must be in (0, 1], got {self.top_fraction}")
        if not 0 <= self.real_prob < self.fake_prob <= 1:
            raise LrerrError(f"--confident-real-prob must be below --confident-fake-prob, both in [0, 1] "
                             f"(got {self.real_prob} and {self.fake_prob})")
        if not self.fake_divisor > 0 or self.min_fakes < 0 or not 0 <= self.real_share <= 1:
            raise LrerrError("--confident-fake-divisor must be positive, --confident-min-fakes 0 or more and "
                             "--confident-real-share in [0, 1]")

    def video_prob(self, probs: np.ndarray, aggregator: str) -> float:
        """One video's score from its frames' probs."""
        if aggregator == "mean":
            return float(probs.mean())
        if aggregator == "median":
            return float(np.median(probs))
        if aggregator == "max":
            return float(probs.max())
        if aggregator == "top_k_mean":
            k = max(1, math.floor(self.top_fraction * len(probs)))
            return float(np.sort(probs)[-k:].mean())
        fakes, reals = probs > self.fake_prob, probs < self.real_prob
        if fakes.sum() > len(probs) // self.fake_divisor and fakes.sum() > self.min_fakes:
            return float(probs[fakes].mean())
        if reals.sum() > self.real_share * len(probs):
            return float(probs[reals].mean())
        return float(probs.mean())


def video_prob_key(aggregator: str) -> str:
    """The key of an aggregator's prob in a video row: `prob` for the headline mean."""
    return "prob" if aggregator == HEADLINE else f"prob_{aggregator}"


@dataclass(frozen=True)
class Scores:
    """Labels and fake probabilities of one level (frames or videos), with each one's method
    and video (an index into the scored set's videos)."""

    labels: np.ndarray
    probs: np.ndarray
    methods: np.ndarray
    videos: np.ndarray

    def subset(self, keep: np.ndarray) -> Scores:
        return Scores(self.labels[keep], self.probs[keep], self.methods[keep], self.videos[keep])


def compute_metrics(rows: Iterable[Mapping], threshold: float = THRESHOLD,
                    aggregation: Aggregation = Aggregation(), bootstrap: Bootstrap | None = None) -> dict:
    """All metrics of a test run: overall and per fake method, at frame and video level.

    ```
    {"threshold": 0.5,
     "frame": BLOCK, "video": BLOCK,
     "per_method": {"Deepfakes": {"frame": BLOCK, "video": BLOCK}, ...},
     "aggregation": {"top_fraction": 0.25, ...},
     "video_aggregates": {"mean": AGG, "median": AGG, "max": AGG, "top_k_mean": AGG, "confident": AGG},
     "bootstrap": {"resamples": 1000, "seed": 0, "confidence": 0.95, ...},   (with `bootstrap`)
     "notes": ["video/per_method/Deepfakes: only fake samples — AUC, AP and EER undefined", ...]}
    BLOCK = {"n", "n_real", "n_fake", "acc", "auc", "ap", "eer"[, "ci": {"acc", "auc", "ap"}]}
    AGG = {"video": BLOCK, "per_method": {"Deepfakes": BLOCK, ...}}
    ```
    With `bootstrap`, every block has `ci`: the interval [low, high] of each of its Acc, AUC
    and AP over the same resamples of the videos (bootstrap.py), None where the AUC is.
    `video` is the mean aggregator's. Each fake method is scored against all the reals: reals
    are found by label 0, whatever their method is called (youtube, actors, Celeb-real, ...).
    Acc counts prob >= threshold as fake. AUC, AP and EER are None, with a note, where only
    one class is present.
    """
    if not 0 < threshold < 1:
        raise LrerrError(f"threshold must be between 0 and 1, got {threshold}")
    aggregation.check()
    frames = checked_frames(rows)
    videos = video_rows(frames, aggregation)
    frame_scores, video_scores = scored_levels(frames, videos)
    resampled = None
    if bootstrap is not None:
        bootstrap.check()
        headline = video_scores[HEADLINE]
        resampled = Resampled.of_videos(bootstrap, headline.labels, headline.methods)
    notes: list[str] = []
    levels = {"frame": frame_scores, "video": video_scores[HEADLINE]}
    result: dict = {"threshold": threshold, "notes": notes}
    for level, scores in levels.items():
        result[level] = block(scores, threshold, notes, level, resampled)
    fake_methods = sorted(set(frame_scores.methods[frame_scores.labels == 1]))
    result["per_method"] = {
        method: {level: block(against_reals(scores, method), threshold, notes, f"{level}/per_method/{method}",
                              resampled)
                 for level, scores in levels.items()}
        for method in fake_methods
    }
    unnoted: list[str] = []  # the same classes as the headline video blocks, already noted
    result["aggregation"] = asdict(aggregation)
    result["video_aggregates"] = {
        name: {"video": block(scores, threshold, unnoted, name, resampled),
               "per_method": {method: block(against_reals(scores, method), threshold, unnoted, name,
                                            resampled)
                              for method in fake_methods}}
        for name, scores in video_scores.items()
    }
    if resampled is not None:
        result["bootstrap"] = resampled.describe()
    return result


def scored_levels(frames: Sequence[Mapping], videos: Sequence[Mapping]) -> tuple[Scores, dict[str, Scores]]:
    """The frame scores, and the video scores by aggregator; each sample knows its video."""
    index = {v["video_id"]: i for i, v in enumerate(videos)}
    frame_scores = scores_of(frames, np.array([index[f["video_id"]] for f in frames]))
    return frame_scores, {name: scores_of(videos, np.arange(len(videos)), video_prob_key(name))
                          for name in AGGREGATORS}


def against_reals(scores: Scores, method: str) -> Scores:
    """The fakes of `method` and every real."""
    return scores.subset((scores.labels == 0) | (scores.methods == method))


def scores_of(rows: Sequence[Mapping], videos: np.ndarray, prob_key: str = "prob") -> Scores:
    return Scores(np.array([r["label"] for r in rows]), np.array([r[prob_key] for r in rows]),
                  np.array([r["method"] for r in rows]), videos)


def scores_by_level(rows: Iterable[Mapping]) -> tuple[Scores, Scores]:
    """Frame scores as given, and video scores as the mean over each video's frames."""
    frames = checked_frames(rows)
    frame_scores, video_scores = scored_levels(frames, video_rows(frames))
    return frame_scores, video_scores[HEADLINE]


def checked_frames(rows: Iterable[Mapping]) -> list[dict]:
    """The score rows as plain typed dicts; a row that is not a score is a user error."""
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
    return frames


def video_rows(frames: Sequence[Mapping], aggregation: Aggregation = Aggregation()) -> list[dict]:
    """One row per full video_id, in first-seen order: its method, label, frame count and
    score by each aggregator (`prob`: the mean; `prob_median`, `prob_max`, ...)."""
    groups: dict[str, list[Mapping]] = {}
    for row in frames:
        groups.setdefault(row["video_id"], []).append(row)
    videos = []
    for video_id, rows in groups.items():
        if len({r["label"] for r in rows}) > 1 or len({r["method"] for r in rows}) > 1:
            raise LrerrError(f"video {video_id}: its frames disagree on label or method")
        probs = np.array([r["prob"] for r in rows], dtype=np.float64)
        videos.append({"video_id": video_id, "method": rows[0]["method"], "label": rows[0]["label"],
                       "frames": len(rows),
                       **{video_prob_key(name): aggregation.video_prob(probs, name) for name in AGGREGATORS}})
    return videos


def block(scores: Scores, threshold: float, notes: list[str], where: str,
          resampled: Resampled | None = None) -> dict:
    """Counts, Acc, AUC, AP and EER of one set of scores, and with `resampled` their
    intervals; notes why any are undefined."""
    labels, probs = scores.labels, scores.probs
    n_fake = int(labels.sum())
    out = {
        "n": len(labels), "n_real": len(labels) - n_fake, "n_fake": n_fake,
        "acc": float(((probs >= threshold) == labels).mean()),
        "auc": None, "ap": None, "eer": None,
    }
    if resampled is not None:
        out["ci"] = resampled.intervals(probs, labels, scores.videos, threshold)
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
