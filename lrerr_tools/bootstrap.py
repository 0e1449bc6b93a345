"""Bootstrap confidence intervals by video, vectorised over the resamples.

A resample draws videos with replacement within strata (the real videos; each fake method's
videos), as many as each stratum holds, so every resample keeps the scored set's make-up and
every per-method subset keeps both classes. A video drawn c times weighs c: its frames at
frame level, itself at video level. Each metric is then a weighted sum over the samples for all
resamples at once: AUC by ranks (ties count one half), AP as scikit-learn's step sum over the
distinct scores, Acc as the weighted share right. The interval is the percentile one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lrerr_tools.errors import LrerrError

CHUNK_CELLS = 20_000_000  # resamples × samples per vectorised step: about 160 MB per float64 array


@dataclass(frozen=True)
class Bootstrap:
    resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95

    def check(self) -> None:
        if self.resamples < 2:
            raise LrerrError(f"--resamples must be at least 2, got {self.resamples}")
        if not 0 < self.confidence < 1:
            raise LrerrError(f"the confidence must be in (0, 1), got {self.confidence}")

    def counts(self, strata: np.ndarray) -> np.ndarray:
        """(resamples, videos) int: how often each video is drawn into each resample; `strata`
        (videos,) names each video's stratum."""
        rng = np.random.default_rng(self.seed)
        counts = np.zeros((self.resamples, len(strata)), np.int32)
        for stratum in sorted(set(strata.tolist())):  # a fixed order: the same draws on every run
            members = np.flatnonzero(strata == stratum)
            draws = rng.integers(0, len(members), size=(self.resamples, len(members)))
            cells = (draws + len(members) * np.arange(self.resamples)[:, None]).ravel()
            counts[:, members] = np.bincount(cells, minlength=draws.size).reshape(draws.shape)
        return counts

    def interval(self, values: np.ndarray) -> list[float]:
        tail = 100 * (1 - self.confidence) / 2
        low, high = np.percentile(values, [tail, 100 - tail])
        return [float(low), float(high)]


def resampled_metrics(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                      threshold: float) -> dict[str, np.ndarray]:
    """Acc, AUC and AP (each (B,)) of the samples under each row of `weights` (B, n)."""
    out = {name: np.empty(len(weights)) for name in ("acc", "auc", "ap")}
    order = np.argsort(-probs, kind="stable")
    ranked, fake = probs[order], labels[order].astype(bool)
    groups = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # runs of equal scores
    right = (probs >= threshold) == labels.astype(bool)
    step = max(1, CHUNK_CELLS // max(1, len(probs)))
    for start in range(0, len(weights), step):
        w = weights[start:start + step].astype(np.float64)
        part = slice(start, start + len(w))
        out["acc"][part] = (w * right).sum(axis=1) / w.sum(axis=1)
        w = w[:, order]
        fakes = np.add.reduceat(np.where(fake, w, 0), groups, axis=1)  # (b, distinct scores), high first
        reals = np.add.reduceat(np.where(fake, 0, w), groups, axis=1)
        n_fake, n_real = fakes.sum(axis=1), reals.sum(axis=1)
        reals_below = n_real[:, None] - np.cumsum(reals, axis=1)
        out["auc"][part] = (fakes * (reals_below + reals / 2)).sum(axis=1) / (n_fake * n_real)
        hits, called = np.cumsum(fakes, axis=1), np.cumsum(fakes + reals, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(fakes > 0, hits / called, 0)
        out["ap"][part] = (fakes * precision).sum(axis=1) / n_fake
    return out


@dataclass(frozen=True)
class Resampled:
    """A bootstrap's draws of one scored set's videos: `counts` (resamples, videos)."""

    bootstrap: Bootstrap
    counts: np.ndarray

    @classmethod
    def of_videos(cls, bootstrap: Bootstrap, labels: np.ndarray, methods: np.ndarray) -> Resampled:
        """Draws within the real videos and within each fake method's."""
        strata = np.where(labels == 1, methods, "")  # "" (real) is never a fake method's name
        return cls(bootstrap, bootstrap.counts(strata))

    def intervals(self, probs: np.ndarray, labels: np.ndarray, videos: np.ndarray, threshold: float) -> dict:
        """{"acc", "auc", "ap"}: each an interval [low, high]; AUC and AP None with one class.
        `videos` (n,) is each sample's video, an index into the counts' columns."""
        two_classes = 0 < labels.sum() < len(labels)
        with np.errstate(invalid="ignore", divide="ignore"):  # AUC and AP of one class: unused
            values = resampled_metrics(probs, labels, self.counts[:, videos], threshold)
        return {name: self.bootstrap.interval(values[name]) if name == "acc" or two_classes else None
                for name in ("acc", "auc", "ap")}

    def acc_interval(self, probs: np.ndarray, labels: np.ndarray, videos: np.ndarray,
                     threshold: float) -> list[float]:
        """The Acc interval alone: per resample, the right calls of each drawn video's samples
        over all drawn samples, from per-video sums."""
        right = np.bincount(videos, weights=(probs >= threshold) == labels, minlength=self.counts.shape[1])
        samples = np.bincount(videos, minlength=self.counts.shape[1])
        return self.bootstrap.interval(self.counts @ right / (self.counts @ samples))

    def describe(self) -> dict:
        return {"resamples": self.bootstrap.resamples, "seed": self.bootstrap.seed,
                "confidence": self.bootstrap.confidence, "by": "video",
                "strata": "the real videos, and each fake method's videos"}


def paired_auc_p_value(probs_a: np.ndarray, probs_b: np.ndarray, labels: np.ndarray, videos: np.ndarray,
                       strata: np.ndarray, bootstrap: Bootstrap) -> float:
    """Two-sided p-value of "A's AUC equals B's" for two detectors' scores of the same samples
    (`videos`: each sample's video; `strata`: each video's stratum). Both are resampled with
    the same draws of the videos, so what the test set's make-up does to both cancels; p is
    twice the share of resamples whose AUC difference falls on the far side of 0, at most 1."""
    weights = bootstrap.counts(strata)[:, videos]
    delta = (resampled_metrics(probs_a, labels, weights, 0.5)["auc"]
             - resampled_metrics(probs_b, labels, weights, 0.5)["auc"])
    return float(min(1.0, 2 * min((delta <= 0).mean(), (delta >= 0).mean())))
