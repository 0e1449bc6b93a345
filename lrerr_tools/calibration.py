"""Decision thresholds and a temperature chosen on val logits, and the calibration error.

`train-det` calls `fit_calibration` on each validated epoch's val logits and records the best
epoch's result in its manifest (`extra.calibration`); `score` applies it to the test split and
fits nothing there. Thresholds are fake probabilities: a face is called fake when its prob is
>= the threshold, as for the default 0.5.

- `balanced_acc`: the cut maximising (TPR + TNR) / 2 on val;
- `eer`: the cut where the false-positive and false-negative rates on val are closest;
- the temperature T minimises the val BCE of sigmoid(logit / T) (Guo et al., 2017). BCE is
  convex in 1/T, so a golden-section search over log(1/T) within the bounds finds it, with
  numpy alone.

Candidate cuts lie midway between neighbouring distinct val logits (and beyond both ends), so
a cut never sits on a val face's own score. Among equally good cuts the one nearest logit 0
(prob 0.5) is kept: the least departure from the default.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lrerr_tools.bootstrap import Bootstrap, Resampled

FITTED_ON = "val"
ECE_BINS = 15
INVERSE_TEMPERATURE_BOUNDS = (1e-3, 1e3)  # T between 0.001 and 1000
GOLDEN_STEPS = 200  # shrinks the log-bracket of width 13.8 by 0.618^200: far below float precision


def fit_calibration(logits: np.ndarray, labels: np.ndarray) -> dict:
    """`{"threshold": {"balanced_acc", "eer"}, "temperature", "fitted_on": "val"}` of val
    logits (N,) and labels (1 = fake); all null, with a `note`, unless both classes are there."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        what = "no val faces" if len(labels) == 0 else f"only {'fake' if labels.any() else 'real'} val faces"
        return unfitted(f"{what}: no threshold or temperature can be fitted")
    cuts = candidate_cuts(logits)
    tpr, fpr = rates_at(logits, labels, cuts)
    return {"threshold": {"balanced_acc": sigmoid(best_cut(cuts, -(tpr + 1 - fpr))),
                          "eer": sigmoid(best_cut(cuts, np.abs((1 - tpr) - fpr)))},
            "temperature": fit_temperature(logits, labels), "fitted_on": FITTED_ON}


def unfitted(note: str) -> dict:
    """A calibration with null thresholds and temperature, and why."""
    return {"threshold": {"balanced_acc": None, "eer": None}, "temperature": None, "fitted_on": FITTED_ON,
            "note": note}


def describe(calibration: dict) -> str:
    """One line for the terminal: the thresholds and temperature, or why there are none."""
    if calibration["temperature"] is None:
        return f"val calibration: none ({calibration['note']})"
    threshold = calibration["threshold"]
    return (f"val calibration (epoch {calibration['epoch']}): threshold {threshold['balanced_acc']:.4f} "
            f"(balanced acc), {threshold['eer']:.4f} (EER); temperature {calibration['temperature']:.4f}")


def candidate_cuts(logits: np.ndarray) -> np.ndarray:
    values = np.unique(logits)
    return np.concatenate([[values[0] - 1], (values[:-1] + values[1:]) / 2, [values[-1] + 1]])


def rates_at(logits: np.ndarray, labels: np.ndarray, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True- and false-positive rates of calling logit >= cut fake, for each cut."""
    fakes, reals = np.sort(logits[labels]), np.sort(logits[~labels])
    tpr = 1 - np.searchsorted(fakes, cuts, side="left") / len(fakes)
    fpr = 1 - np.searchsorted(reals, cuts, side="left") / len(reals)
    return tpr, fpr


def best_cut(cuts: np.ndarray, cost: np.ndarray) -> float:
    """The cut of lowest cost, the one nearest 0 among ties."""
    tied = np.flatnonzero(np.isclose(cost, cost.min(), rtol=0, atol=1e-12))
    return float(cuts[tied[np.argmin(np.abs(cuts[tied]))]])


def bce(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(logits), computed stably."""
    return float(np.mean(np.logaddexp(0, logits) - labels * logits))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in the bounds that minimises the BCE of logits / T."""
    labels = labels.astype(np.float64)
    lo, hi = (math.log(b) for b in INVERSE_TEMPERATURE_BOUNDS)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = (bce(math.exp(x) * logits, labels) for x in (a, b))
    for _ in range(GOLDEN_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = bce(math.exp(a) * logits, labels)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = bce(math.exp(b) * logits, labels)
    return float(math.exp(-(lo + hi) / 2))


def sigmoid(x: float) -> float:
    return 0.0 if x < -700 else 1 / (1 + math.exp(-x))  # exp would overflow below -709


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> tuple[np.ndarray, ...]:
    """Per equal-width bin of p(fake) over [0, 1]: the count, mean prob and fraction of fakes."""
    index = np.minimum((np.asarray(probs) * bins).astype(int), bins - 1)  # prob 1 in the last bin
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(index, weights=probs, minlength=bins) / counts
        fake_rate = np.bincount(index, weights=labels, minlength=bins) / counts
    return counts, mean_prob, fake_rate


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of p(fake): Σ_b (n_b / N) · |fraction of fakes in b − mean prob in b|, over equal-width
    bins of [0, 1]. Binning p(fake) itself rather than the winning class's confidence keeps
    the reliability diagram readable as "of the faces given p ≈ x, how many were fake"."""
    counts, mean_prob, fake_rate = reliability_bins(probs, labels, bins)
    filled = counts > 0
    return float(np.sum(counts[filled] * np.abs(fake_rate[filled] - mean_prob[filled])) / counts.sum())


def reliability_plot(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], path: str | Path,
                     title: str) -> Path:
    """A PNG with one reliability diagram per level: {level: {curve label: (probs, labels)}}."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, no display

    fig = Figure(figsize=(5 * len(curves), 5), dpi=110)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    centres = (np.arange(ECE_BINS) + 0.5) / ECE_BINS
    for ax, (level, by_label) in zip(axes, curves.items()):
        ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="perfectly calibrated")
        for label, (probs, labels) in by_label.items():
            counts, mean_prob, fake_rate = reliability_bins(probs, labels)
            filled = counts > 0
            ece = expected_calibration_error(probs, labels)
            ax.plot(mean_prob[filled], fake_rate[filled], marker="o",
                    label=f"{label} (ECE {100 * ece:.2f} %)")
        hist = ax.twinx()
        hist.bar(centres, reliability_bins(*next(iter(by_label.values())))[0], width=1 / ECE_BINS,
                 color="0.85", zorder=0)
        hist.set_ylabel("samples per bin")
        ax.set_zorder(hist.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean p(fake) in bin", ylabel="fraction fake in bin",
               title=f"{level} level")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def apply_calibration(rows: list[dict], logits: np.ndarray, fitted: dict,
                      bootstrap: Bootstrap | None = None) -> dict:
    """What the val-fitted `fitted` (train-det's `extra.calibration`) gives on scored rows
    (metrics' rows, with their logits (N,)), at frame and video level:

    ```
    {**fitted, "notes": [...],
     "frame": {"acc": {"0.5": a, "balanced_acc": a, "eer": a}, "ece": e, "ece_scaled": e,
               "acc_ci": {"0.5": [low, high], ...}},     (acc_ci with `bootstrap`)
     "video": ...}
    ```
    A video's prob is the mean of its frames' (scaled: of their scaled probs), and its Acc uses
    the same frame-level thresholds. Only `rows`' labels are read from the scored split: the
    thresholds and temperature are `fitted`'s, whatever those labels say.
    """
    from lrerr_tools.metrics import LEVELS, scores_by_level

    notes = [fitted["note"]] if fitted.get("note") else []
    temperature, thresholds = fitted["temperature"], fitted["threshold"]
    raw = scores_by_level(rows)
    scaled = None if temperature is None else scores_by_level(scaled_rows(rows, logits, temperature))
    # The same draws as metrics.json's intervals: the same videos, strata and seed.
    resampled = None if bootstrap is None else Resampled.of_videos(bootstrap, raw[1].labels, raw[1].methods)
    cuts = {"0.5": 0.5, **thresholds}
    result = {**{k: v for k, v in fitted.items() if k != "note"}, "notes": notes}
    for i, level in enumerate(LEVELS):
        probs, labels = raw[i].probs, raw[i].labels
        result[level] = {
            "acc": {name: None if t is None else accuracy(probs, labels, t) for name, t in cuts.items()},
            "ece": expected_calibration_error(probs, labels),
            "ece_scaled": None if scaled is None else expected_calibration_error(scaled[i].probs, labels)}
        if resampled is not None:
            result[level]["acc_ci"] = {name: None if t is None else
                                       resampled.acc_interval(probs, labels, raw[i].videos, t)
                                       for name, t in cuts.items()}
    return result


def scaled_rows(rows: list[dict], logits: np.ndarray, temperature: float) -> list[dict]:
    """`rows` with each prob recomputed as sigmoid(logit / T)."""
    return [{**r, "prob": sigmoid(float(z) / temperature)} for r, z in zip(rows, logits)]


def accuracy(probs: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    return float(((probs >= threshold) == labels).mean())
