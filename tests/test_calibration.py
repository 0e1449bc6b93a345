import numpy as np
import pytest
import torch

from lrerr_tools.bootstrap import Bootstrap
from lrerr_tools.calibration import (
    apply_calibration,
    describe,
    expected_calibration_error,
    fit_calibration,
    reliability_plot,
    sigmoid,
)
from lrerr_tools.metrics import compute_metrics


def logit(p):
    return float(np.log(p / (1 - p)))


def test_thresholds_by_hand():
    # Sorted val logits: R -2, F -1, R 0, F 1, F 2, R 3 (reals 3, fakes 3).
    logits = np.array([-2.0, -1, 0, 1, 2, 3])
    labels = np.array([0, 1, 0, 1, 1, 0])
    cal = fit_calibration(logits, labels)
    # Cuts lie midway between neighbours. Calling >= 0.5 fake: TPR 2/3, FPR 1/3, balanced acc
    # 2/3; >= -1.5: TPR 1, FPR 2/3, 2/3 too; every other cut 1/2 or less. Of the tie, the cut
    # nearest logit 0 is kept.
    assert cal["threshold"]["balanced_acc"] == pytest.approx(sigmoid(0.5))
    # FNR = FPR = 1/3 at the cut 0.5 (one fake of three below it, one real of three above).
    assert cal["threshold"]["eer"] == pytest.approx(sigmoid(0.5))
    assert cal["fitted_on"] == "val" and set(cal) == {"threshold", "temperature", "fitted_on"}


def test_a_shifted_separable_val_moves_the_threshold_off_one_half():
    # Every val logit sits above 0: at 0.5 every face is called fake; the val cut separates them.
    reals, fakes = np.array([1.0, 1.5, 2.0]), np.array([3.0, 3.5, 4.0])
    cal = fit_calibration(np.concatenate([reals, fakes]), np.array([0, 0, 0, 1, 1, 1]))
    assert cal["threshold"]["balanced_acc"] == cal["threshold"]["eer"] == pytest.approx(sigmoid(2.5))


def test_temperature_minimises_the_val_nll():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    logits = 4 * ((2 * labels - 1) + rng.normal(0, 1.2, 400))  # overconfident by about 4x
    temperature = fit_temperature_with_lbfgs(logits, labels)
    cal = fit_calibration(logits, labels)
    assert cal["temperature"] == pytest.approx(temperature, rel=1e-4) and cal["temperature"] > 1
    before = expected_calibration_error(1 / (1 + np.exp(-logits)), labels)
    after = expected_calibration_error(1 / (1 + np.exp(-logits / cal["temperature"])), labels)
    assert after < before


def fit_temperature_with_lbfgs(logits, labels):
    t = torch.ones(1, dtype=torch.float64, requires_grad=True)
    z, y = torch.tensor(logits), torch.tensor(labels, dtype=torch.float64)
    opt = torch.optim.LBFGS([t], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / t, y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(t.detach())


@pytest.mark.parametrize("labels, what", [([1, 1], "only fake val faces"), ([0, 0], "only real val faces"),
                                          ([], "no val faces")])
def test_one_class_gives_null_calibration_with_a_note(labels, what):
    cal = fit_calibration(np.arange(len(labels), dtype=float), np.array(labels))
    assert cal["threshold"] == {"balanced_acc": None, "eer": None} and cal["temperature"] is None
    assert cal["note"] == f"{what}: no threshold or temperature can be fitted"
    assert describe({**cal, "epoch": 1}) == f"val calibration: none ({cal['note']})"


def test_ece_by_hand():
    # Bin [0.6, 0.667): probs 0.6, 0.62, one fake of two → |0.5 − 0.61| = 0.11, weight 2/4.
    # Bin [0.933, 1]: probs 1.0, 0.95, both fake → |1 − 0.975| = 0.025, weight 2/4.
    probs, labels = np.array([0.6, 0.62, 1.0, 0.95]), np.array([1, 0, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.11 + 0.5 * 0.025)
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([0, 1])) == 0


def test_reliability_plot_writes_a_png(tmp_path):
    probs, labels = np.array([0.1, 0.4, 0.8, 0.9]), np.array([0, 1, 1, 1])
    curves = {"frame": {"raw": (probs, labels), "scaled": (probs ** 2, labels)},
              "video": {"raw": (probs, labels)}}
    path = reliability_plot(curves, tmp_path / "r" / "reliability.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def scored_rows(rng, n_videos=8, frames=5):
    """Frames of n_videos videos (half fake), with logits that lean the right way."""
    rows, logits = [], []
    for v in range(n_videos):
        label = v % 2
        for _ in range(frames):
            z = float(rng.normal(2 * label - 1, 1.5))
            rows.append({"video_id": f"{'Deepfakes' if label else 'youtube'}/{v:03d}",
                         "method": "Deepfakes" if label else "youtube", "label": label, "prob": sigmoid(z)})
            logits.append(z)
    return rows, np.array(logits)


FITTED = {"threshold": {"balanced_acc": 0.3, "eer": 0.6}, "temperature": 2.0, "epoch": 3, "fitted_on": "val"}


def test_the_test_labels_cannot_move_the_threshold_or_temperature():
    rows, logits = scored_rows(np.random.default_rng(1))
    result = apply_calibration(rows, logits, FITTED)
    permuted_videos = np.random.default_rng(2).permutation(8)
    for relabel in (lambda r: 1 - r["label"], lambda r: int(permuted_videos[int(r["video_id"][-3:])] % 2)):
        relabelled = [{**r, "label": relabel(r), "method": "x" if relabel(r) else "youtube"} for r in rows]
        other = apply_calibration(relabelled, logits, FITTED)
        assert (other["threshold"], other["temperature"], other["epoch"]) == (
            FITTED["threshold"], FITTED["temperature"], FITTED["epoch"])
    assert other["frame"]["acc"] != result["frame"]["acc"]  # the labels were read, for the Acc only
    flipped = apply_calibration([{**r, "label": 1 - r["label"]} for r in rows], logits, FITTED)
    assert flipped["frame"]["acc"]["0.5"] == pytest.approx(1 - result["frame"]["acc"]["0.5"])


def test_acc_and_ece_at_the_val_calibration():
    rows, logits = scored_rows(np.random.default_rng(3))
    result = apply_calibration(rows, logits, FITTED)
    probs, labels = np.array([r["prob"] for r in rows]), np.array([r["label"] for r in rows])
    assert result["frame"]["acc"] == {"0.5": np.mean((probs >= 0.5) == labels),
                                      "balanced_acc": np.mean((probs >= 0.3) == labels),
                                      "eer": np.mean((probs >= 0.6) == labels)}
    assert result["frame"]["ece"] == pytest.approx(expected_calibration_error(probs, labels))
    scaled = 1 / (1 + np.exp(-logits / 2))
    assert result["frame"]["ece_scaled"] == pytest.approx(expected_calibration_error(scaled, labels))
    video_scaled = scaled.reshape(8, 5).mean(axis=1)  # five frames per video, in order
    expected = expected_calibration_error(video_scaled, labels[::5])
    assert result["video"]["ece_scaled"] == pytest.approx(expected)
    assert result["notes"] == []
    unfitted = apply_calibration(rows, logits, {**fit_calibration(logits[:1], labels[:1]), "epoch": 1})
    assert unfitted["frame"]["acc"]["balanced_acc"] is None and unfitted["frame"]["ece_scaled"] is None
    assert unfitted["notes"] == ["only real val faces: no threshold or temperature can be fitted"]


def test_acc_intervals_use_the_draws_of_the_metrics_intervals():
    rows, logits = scored_rows(np.random.default_rng(4))
    boot = Bootstrap(resamples=200, seed=5)
    result = apply_calibration(rows, logits, FITTED, boot)
    metrics = compute_metrics(rows, bootstrap=boot)
    for level in ("frame", "video"):
        # at 0.5, the Acc of metrics.json's block, and the same interval
        assert result[level]["acc_ci"]["0.5"] == pytest.approx(metrics[level]["ci"]["acc"])
        low, high = result[level]["acc_ci"]["eer"]
        assert low <= result[level]["acc"]["eer"] <= high
