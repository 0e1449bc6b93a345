"""DeepFakeDetection (Google/Jigsaw), as shipped inside the FF++ download."""

from __future__ import annotations

from pathlib import Path

from lrerr_tools.datasets.base import DatasetListing
from lrerr_tools.datasets.ffpp import DFD_METHOD, canonical_compression, ff_record, sequence_videos

LAYOUT = (
    "ROOT/original_sequences/actors/{comp}/videos/*.mp4 and "
    f"ROOT/manipulated_sequences/{DFD_METHOD}/{{comp}}/videos/*.mp4"
)
# Videos of the official release at every compression: 363 actor sequences and 3,068
# manipulated ones (FaceForensics repository, dataset/README.md, "Space requirement").
OFFICIAL_COUNTS = {"actors": 363, DFD_METHOD: 3068}
_SOURCES = (("original_sequences", "actors", 0), ("manipulated_sequences", DFD_METHOD, 1))


def list_dfd(
    root: Path,
    *,
    compression: str = "c23",
    methods: list[str] | None = None,
    splits: str | Path | None = None,
) -> DatasetListing:
    """List DFD actors (real) and fakes; with no official split, the literature tests on all."""
    comp = canonical_compression(compression)
    videos = [
        ff_record(path, method=method, label=label, split="test", comp=comp, dataset="dfd")
        for group, method, label in _SOURCES
        for path in sequence_videos(root / group / method, comp)
    ]
    return DatasetListing(videos, [])
