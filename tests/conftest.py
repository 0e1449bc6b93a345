"""Shared fixtures: small FF++-layout samples made from scikit-image's astronaut."""

from __future__ import annotations

import pytest

from lrerr_tools.extract import ExtractConfig
from lrerr_tools.synth import make_ffpp_sample

TINY_METHODS = ("Deepfakes", "FaceSwap")


@pytest.fixture(scope="session")
def ffpp_root(tmp_path_factory):
    """3 pairs (one per split) x (2 reals + 2 methods x 2 fakes) = 18 videos of 12 frames."""
    return make_ffpp_sample(tmp_path_factory.mktemp("ffpp"), n_pairs=3, methods=TINY_METHODS,
                            n_frames=12, size=(192, 144), seed=0)


@pytest.fixture
def extract_config(ffpp_root, tmp_path):
    """An extract config over `ffpp_root` that keeps 4 frames per video."""

    def make(**overrides) -> ExtractConfig:
        fields = dict(root=str(ffpp_root), dataset="ffpp", out=str(tmp_path / "extract"),
                      splits=str(ffpp_root / "splits"), frames=4)
        fields.update(overrides)
        return ExtractConfig(**fields)

    return make
