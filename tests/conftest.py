"""Shared fixtures: small FF++-layout samples made from scikit-image's astronaut."""

from __future__ import annotations

import pytest
import torch

from lrerr_tools.extract import ExtractConfig
from lrerr_tools.synth import make_ffpp_sample

TINY_METHODS = ("Deepfakes", "FaceSwap")
# `make test` deals whole files to two workers in collection order (pytest-xdist, --dist
# loadfile). The protocol scripts' file takes about half the suite's time, so it goes first
# and the other worker runs every other file beside it.
SLOWEST_FIRST = ("test_scripts.py",)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in SLOWEST_FIRST)  # stable: the rest keep their order


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch work on one intra-op thread. Tiny inputs gain nothing from more,
    and on a 2-core machine with the other core busy, OpenMP's spinning made a 32 px Xception
    forward take 2.7 s instead of 0.05 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
