import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from lrerr_tools.bootstrap import Bootstrap, resampled_metrics
from lrerr_tools.errors import LrerrError
from lrerr_tools.metrics import compute_metrics


def test_weighted_metrics_match_scikit_learn_with_sample_weights():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    probs = np.round(rng.uniform(0, 1, 60) * 0.5 + labels * 0.3, 1)  # rounded: many ties
    weights = rng.integers(0, 4, (5, 60))
    values = resampled_metrics(probs, labels, weights, threshold=0.5)
    for b, w in enumerate(weights):
        assert values["auc"][b] == pytest.approx(roc_auc_score(labels, probs, sample_weight=w))
        assert values["ap"][b] == pytest.approx(average_precision_score(labels, probs, sample_weight=w))
        assert values["acc"][b] == pytest.approx(np.average((probs >= 0.5) == labels, weights=w))


def test_counts_draw_within_each_stratum():
    strata = np.array(["", "", "", "Deepfakes", "Deepfakes", "FaceSwap"])
    counts = Bootstrap(resamples=50, seed=3).counts(strata)
    assert counts.shape == (50, 6)
    assert (counts[:, :3].sum(axis=1) == 3).all() and (counts[:, 3:5].sum(axis=1) == 2).all()
    assert (counts[:, 5] == 1).all()
    assert (counts[:, :3] != 1).any()  # drawn with replacement


def scores(n_videos, seed, frames=4):
    """n_videos real and as many fake videos, each with `frames` noisy frames."""
    rng = np.random.default_rng(seed)
    rows = []
    for v in range(2 * n_videos):
        label, centre = v % 2, rng.normal(0.45 + 0.1 * (v % 2), 0.1)
        method = "Deepfakes" if label else "youtube"
        rows += [{"video_id": f"{method}/{v}", "method": method, "label": label,
                  "prob": float(np.clip(centre + rng.normal(0, 0.05), 0, 1))} for _ in range(frames)]
    return rows


def test_intervals_hold_the_estimate_shrink_with_more_videos_and_repeat_with_the_seed():
    small = compute_metrics(scores(10, 1), bootstrap=Bootstrap())
    large = compute_metrics(scores(160, 1), bootstrap=Bootstrap())
    for level in ("frame", "video"):
        for metric in ("acc", "auc", "ap"):
            for m in (small, large):
                low, high = m[level]["ci"][metric]
                assert low <= m[level][metric] <= high, (level, metric)
            width = {id(m): np.diff(m[level]["ci"][metric])[0] for m in (small, large)}
            assert width[id(large)] < width[id(small)] / 2, (level, metric)
    assert compute_metrics(scores(10, 1), bootstrap=Bootstrap()) == small
    other_seed = compute_metrics(scores(10, 1), bootstrap=Bootstrap(seed=1))
    assert other_seed["frame"]["ci"] != small["frame"]["ci"]
    assert small["bootstrap"] == {"resamples": 1000, "seed": 0, "confidence": 0.95, "by": "video",
                                  "strata": "the real videos, and each fake method's videos"}
    assert small["per_method"]["Deepfakes"]["video"]["ci"]["auc"] == small["video"]["ci"]["auc"]
    assert set(small["video_aggregates"]["max"]["video"]["ci"]) == {"acc", "auc", "ap"}


def test_one_class_has_an_acc_interval_only():
    m = compute_metrics([r for r in scores(5, 2) if r["label"] == 0], bootstrap=Bootstrap(resamples=20))
    assert m["frame"]["ci"]["auc"] is None and m["frame"]["ci"]["ap"] is None
    assert m["frame"]["ci"]["acc"][0] <= m["frame"]["acc"] <= m["frame"]["ci"]["acc"][1]
    with pytest.raises(LrerrError, match="--resamples must be at least 2"):
        compute_metrics(scores(5, 2), bootstrap=Bootstrap(resamples=1))
