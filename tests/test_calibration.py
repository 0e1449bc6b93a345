import numpy as np
import pytest
import torch

from lrerr_tools.calibration import (
    describe,
    expected_calibration_error,
    fit_calibration,
    reliability_plot,
    sigmoid,
)


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
