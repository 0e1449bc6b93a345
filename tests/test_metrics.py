import json

import jsonschema
import pytest

from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import schema
from lrerr_tools.metrics import compute_metrics, roc_plot


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
