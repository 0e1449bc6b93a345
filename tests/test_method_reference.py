"""Refactors change how LRErr and the Xception baseline are put together, not what they
compute: the same seed on the same synthetic sample scores as the reference recorded (see its
_comment for when each method's numbers were made)."""

import json
from pathlib import Path

import pytest
from test_shard import shared_png_shards
from test_train_det import shared_detector

from lrerr_tools.manifest import iter_records
from lrerr_tools.score import ScoreConfig
from lrerr_tools.score import run as run_score

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REFERENCE = json.loads((Path(__file__).parent / "reference" / "reference_scores.json").read_text())


def close(actual, expected, where):
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            close(actual[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            close(a, e, f"{where}/{i}")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=1e-6), where
    else:
        assert actual == expected, where


@pytest.mark.parametrize("method", ["xception", "lrerr"])
def test_scores_match_the_reference(method, ffpp_root, tmp_path_factory, tmp_path):
    shards = shared_png_shards(ffpp_root, tmp_path_factory)
    detector = shared_detector(method, ffpp_root, tmp_path_factory)
    out = tmp_path / "score"
    run_score(ScoreConfig(shard_dir=str(shards), detector=str(detector), out=str(out), device="cpu",
                          workers=0, overlays=0, batch_size=8))
    metrics = json.loads((out / "metrics.json").read_text())
    expected = REFERENCE[method]
    for block in ("frame", "video", "per_method"):
        close(metrics[block], expected[block], block)
    probs = [r["prob"] for r in iter_records(out)]
    assert probs == pytest.approx(expected["probs"], abs=1e-6)
