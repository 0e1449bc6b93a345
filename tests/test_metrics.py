import json

import jsonschema
import numpy as np
import pytest

from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import schema
from lrerr_tools.metrics import Aggregation, compute_metrics, roc_plot


def rows(*specs):
    """(video_id, label, prob) → rows whose method is the video_id's folder."""
    return [dict(video_id=v, method=v.split("/")[0], label=label, prob=prob) for v, label, prob in specs]


FOUR_FRAMES = rows(("youtube/000", 0, 0.1), ("youtube/001", 0, 0.6),
                   ("Deepfakes/000_003", 1, 0.4), ("FaceSwap/001_002", 1, 0.8))


def test_four_frames_by_hand():
    frame = compute_metrics(FOUR_FRAMES)["frame"]
    # Fake-real pairs ranked right: 0.4>0.1, 0.8>0.1, 0.8>0.6, not 0.4>0.6 → 3/4.
    # Predictions at 0.5: real, fake, real, fake → 2 of 4 right.
    # Ranked: 0.8 F, 0.6 R, 0.4 F, 0.1 R → AP = 0.5·1 + 0.5·2/3.
    # ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1): FPR = FNR = 0.5 at (.5,.5).
    assert frame == dict(n=4, n_real=2, n_fake=2, acc=0.5, auc=0.75, ap=pytest.approx(5 / 6), eer=0.5)


def test_eer_is_interpolated_between_roc_points():
    # 2 reals, 5 fakes; a tie at 0.5 holds 1 real and 3 fakes, so the ROC runs straight from
    # (0, .2) to (.5, .8). FNR = FPR on it at FPR = 4/11; the nearest ROC point would say .35.
    scores = rows(("F/a", 1, 0.9), ("R/a", 0, 0.5), ("F/b", 1, 0.5), ("F/c", 1, 0.5), ("F/d", 1, 0.5),
                  ("R/b", 0, 0.1), ("F/e", 1, 0.1))
    assert compute_metrics(scores)["frame"]["eer"] == pytest.approx(4 / 11)
    perfect = compute_metrics(rows(("R/a", 0, 0.2), ("F/a", 1, 0.5)))["frame"]
    assert (perfect["auc"], perfect["acc"], perfect["eer"]) == (1.0, 1.0, 0.0)  # 0.5 counts as fake


def test_videos_are_grouped_by_full_id():
    scores = rows(("youtube/000_003", 0, 0.1), ("youtube/000_003", 0, 0.3),
                  ("Deepfakes/000_003", 1, 0.2), ("Deepfakes/000_003", 1, 0.4),
                  ("FaceSwap/000_003", 1, 0.8), ("FaceSwap/000_003", 1, 1.0))
    m = compute_metrics(scores)
    assert (m["frame"]["n"], m["video"]["n"], m["video"]["n_fake"]) == (6, 3, 2)
    # Video probs: real 0.2, Deepfakes 0.3, FaceSwap 0.9.
    assert m["video"]["auc"] == 1.0 and m["video"]["acc"] == pytest.approx(2 / 3)
    assert m["per_method"]["Deepfakes"]["video"] == dict(n=2, n_real=1, n_fake=1, acc=0.5, auc=1.0, ap=1.0,
                                                         eer=0.0)
    assert m["per_method"]["FaceSwap"]["video"]["acc"] == 1.0


def test_each_fake_method_against_all_reals_found_by_label():
    scores = rows(("actors/a", 0, 0.3), ("Celeb-real/b", 0, 0.7),
                  ("Deepfakes/a", 1, 0.9), ("FaceSwap/a", 1, 0.5))
    m = compute_metrics(scores)
    assert set(m["per_method"]) == {"Deepfakes", "FaceSwap"}
    deepfakes, faceswap = m["per_method"]["Deepfakes"]["frame"], m["per_method"]["FaceSwap"]["frame"]
    assert (deepfakes["n_real"], deepfakes["n_fake"], deepfakes["auc"]) == (2, 1, 1.0)
    assert (faceswap["n_real"], faceswap["n_fake"], faceswap["auc"]) == (2, 1, 0.5)
    assert m["notes"] == []


def test_one_class_is_undefined_with_a_note():
    m = compute_metrics(rows(("youtube/a", 0, 0.2), ("youtube/b", 0, 0.7)))
    assert m["frame"] == dict(n=2, n_real=2, n_fake=0, acc=0.5, auc=None, ap=None, eer=None)
    assert m["per_method"] == {}
    assert m["notes"] == ["frame: only real samples — AUC, AP and EER undefined",
                          "video: only real samples — AUC, AP and EER undefined"]
    fakes_only = compute_metrics(rows(("Deepfakes/a", 1, 0.9)))
    assert fakes_only["per_method"]["Deepfakes"]["video"]["auc"] is None
    assert "video/per_method/Deepfakes: only fake samples — AUC, AP and EER undefined" in fakes_only["notes"]


def test_result_is_json_that_the_schema_accepts():
    m = json.loads(json.dumps(compute_metrics(FOUR_FRAMES)))
    side = {"dataset": "ffpp", "compression": "c23", "methods": ["Deepfakes", "FaceSwap"]}
    run = {"train": {**side, "method": "lrerr"}, "test": {**side, "split": "test"}}
    jsonschema.validate({**m, "run": run}, schema("metrics"))


@pytest.mark.parametrize("bad, message", [
    ([], "no scores"),
    ([{"video_id": "a/b", "label": 1}], "missing method, prob"),
    (rows(("a/b", 2, 0.5)), "label must be 0 or 1"),
    (rows(("a/b", 1, float("nan"))), "prob in"),
    (rows(("a/b", 1, 0.5), ("a/b", 0, 0.5)), "a/b: its frames disagree"),
])
def test_bad_input_is_a_user_error(bad, message):
    with pytest.raises(LrerrError, match=message):
        compute_metrics(bad)


def test_roc_plot_writes_a_png(tmp_path):
    for name, scores in (("two.png", FOUR_FRAMES), ("one.png", rows(("youtube/a", 0, 0.2)))):
        path = roc_plot(scores, tmp_path / "plots" / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def frames_of(video_id, label, probs):
    return rows(*((video_id, label, p) for p in probs))


def test_each_aggregator_by_hand():
    video = np.array([0.1, 0.2, 0.9, 0.4, 0.3, 0.6, 0.7, 0.5])
    agg = Aggregation()
    assert agg.video_prob(video, "mean") == pytest.approx(0.4625)
    assert agg.video_prob(video, "median") == pytest.approx(0.45)
    assert agg.video_prob(video, "max") == 0.9
    assert agg.video_prob(video, "top_k_mean") == pytest.approx((0.9 + 0.7) / 2)  # k = floor(8 / 4) = 2
    assert agg.video_prob(video[:3], "top_k_mean") == 0.9  # k = floor(0.75) → at least 1
    # The confident rule: 8 frames, one above 0.8 — not more than 11, not more than 8 // 2.5 = 3;
    # two below 0.2, not more than 0.9 × 8: the plain mean.
    assert agg.video_prob(video, "confident") == pytest.approx(0.4625)
    # 20 frames, 12 of them > 0.8: 12 > 20 // 2.5 = 8 and 12 > 11, so the mean of the 12.
    confident_fake = np.array([0.95] * 12 + [0.1] * 8)
    assert agg.video_prob(confident_fake, "confident") == pytest.approx(0.95)
    assert agg.video_prob(confident_fake[1:], "confident") == pytest.approx(confident_fake[1:].mean())
    # 10 of 11 frames < 0.2, more than 0.9 × 11: the mean of those ten; 8 of 10 is not more than 9.
    confident_real = np.array([0.05] * 9 + [0.15])
    assert agg.video_prob(np.append(confident_real, 0.6), "confident") == pytest.approx(0.06)
    assert agg.video_prob(np.append(confident_real[:8], [0.6, 0.6]), "confident") == pytest.approx(0.16)
    # The constants are options: 2 of 9 frames > 0.8, more than 9 // 8 = 1 and more than 0.
    relaxed = Aggregation(min_fakes=0, fake_divisor=8)
    assert relaxed.video_prob(np.append(video, 0.85), "confident") == pytest.approx(0.875)


def test_video_aggregates_sit_beside_the_headline_mean():
    scores = (frames_of("youtube/000", 0, [0.1, 0.2, 0.9]) + frames_of("youtube/001", 0, [0.3] * 3)
              + frames_of("Deepfakes/000", 1, [0.2, 0.25, 0.3])
              + frames_of("FaceSwap/000", 1, [0.6, 0.1, 0.1]))
    m = compute_metrics(scores)
    aggregates = m["video_aggregates"]
    assert list(aggregates) == ["mean", "median", "max", "top_k_mean", "confident"]
    assert aggregates["mean"] == {"video": m["video"], "per_method": {k: v["video"] for k, v in
                                                                      m["per_method"].items()}}
    # Video probs by max: real 0.9 and 0.3, Deepfakes 0.3, FaceSwap 0.6 → fake-real pairs ranked
    # right: 0.3 vs 0.9 no, vs 0.3 tie (½), 0.6 vs 0.9 no, vs 0.3 yes → 1.5 / 4.
    assert aggregates["max"]["video"]["auc"] == pytest.approx(0.375)
    # By median: reals 0.2, 0.3; Deepfakes 0.25, FaceSwap 0.1 → 1 / 4.
    assert aggregates["median"]["video"]["auc"] == pytest.approx(0.25)
    assert aggregates["median"]["per_method"]["Deepfakes"]["auc"] == pytest.approx(0.5)
    assert m["aggregation"] == {"top_fraction": 0.25, "fake_prob": 0.8, "real_prob": 0.2, "fake_divisor": 2.5,
                                "min_fakes": 11, "real_share": 0.9}
    with pytest.raises(LrerrError, match="--top-fraction must be in"):
        compute_metrics(scores, aggregation=Aggregation(top_fraction=0))
