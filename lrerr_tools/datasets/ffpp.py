"""FaceForensics++ in its official download layout, with the official pair splits."""

from __future__ import annotations

import json
from pathlib import Path

from lrerr_tools.datasets.base import (
    SPLITS,
    UNASSIGNED,
    DatasetListing,
    VideoRecord,
    list_video_files,
    read_text,
)
from lrerr_tools.errors import LrerrError

LAYOUT = (
    "ROOT/original_sequences/youtube/{comp}/videos/*.mp4 and "
    "ROOT/manipulated_sequences/<Method>/{comp}/videos/*.mp4"
)
REAL_METHOD = "youtube"
# Shipped inside the FF++ download but a dataset of its own: the dfd adapter lists it.
DFD_METHOD = "DeepFakeDetection"
COMPRESSIONS = ("c0", "c23", "c40")
# Videos of the official release per method folder, the same at every compression: 1,000
# original sequences, each manipulated by every method (FaceForensics repository,
# README.md, dataset/README.md and dataset/FaceShifter/README.md).
OFFICIAL_COUNTS = {REAL_METHOD: 1000, "Deepfakes": 1000, "Face2Face": 1000, "FaceSwap": 1000,
                   "NeuralTextures": 1000, "FaceShifter": 1000}


def canonical_compression(compression: str) -> str:
    """FF++ calls the uncompressed level both c0 and raw; records always say c0."""
    comp = "c0" if compression == "raw" else compression
    if comp not in COMPRESSIONS:
        raise LrerrError(
            f"unknown FF++ compression {compression!r}; choose c0 (or raw), c23 or c40"
        )
    return comp


def sequence_videos(sequence_dir: Path, comp: str) -> list[Path]:
    """Videos of one FF++ sequence folder (e.g. manipulated_sequences/FaceSwap) at `comp`."""
    for name in ("c0", "raw") if comp == "c0" else (comp,):
        videos_dir = sequence_dir / name / "videos"
        if videos_dir.is_dir():
            return list_video_files(videos_dir)
    return []


def ff_record(
    path: Path, *, method: str, label: int, split: str, comp: str, dataset: str
) -> VideoRecord:
    return VideoRecord(
        video_id=f"{method}/{path.stem}",
        path=str(path),
        label=label,
        split=split,
        method=method,
        compression=comp,
        dataset=dataset,
    )


def list_ffpp(
    root: Path,
    *,
    compression: str = "c23",
    methods: list[str] | None = None,
    splits: str | Path | None = None,
) -> DatasetListing:
    """List FF++ reals and fakes; `splits` is the folder of official train/val/test.json."""
    comp = canonical_compression(compression)
    fake_methods = _select_methods(root / "manipulated_sequences", methods)
    real_split, fake_split = _read_pair_splits(Path(splits)) if splits is not None else ({}, {})

    sources = [("original_sequences", REAL_METHOD, 0, real_split)]
    sources += [("manipulated_sequences", method, 1, fake_split) for method in fake_methods]
    videos = [
        ff_record(
            path,
            method=method,
            label=label,
            split=split_of.get(path.stem, UNASSIGNED),
            comp=comp,
            dataset="ffpp",
        )
        for group, method, label, split_of in sources
        for path in sequence_videos(root / group / method, comp)
    ]
    expected = {f"{method}/{stem}" for _, method, _, split_of in sources for stem in split_of}
    split_files = [Path(splits) / f"{split}.json" for split in SPLITS] if splits is not None else []
    return DatasetListing(videos, list(expected - {video.video_id for video in videos}), split_files)


def _select_methods(manipulated_dir: Path, methods: list[str] | None) -> list[str]:
    folders = manipulated_dir.iterdir() if manipulated_dir.is_dir() else []
    available = sorted(p.name for p in folders if p.is_dir() and not p.name.startswith("."))
    if methods is None:
        return [method for method in available if method != DFD_METHOD]
    if DFD_METHOD in methods:
        # Its videos are named by actor and scene, not by FF++ pair: they would all fall
        # outside the split lists.
        raise LrerrError(f"{DFD_METHOD} is the DFD dataset: extract it with --dataset dfd")
    # The reals are always listed, so naming them is allowed but selects nothing extra.
    unknown = [m for m in methods if m not in available and m != REAL_METHOD]
    if unknown and not available:
        # Nothing at all where the methods should be: the root is wrong, not the names.
        raise LrerrError(f"no FF++ methods under {manipulated_dir} — is {manipulated_dir.parent} the FF++ "
                         f"root? expected layout {LAYOUT.format(comp='<comp>')}")
    if unknown:
        raise LrerrError(
            f"unknown FF++ method {', '.join(unknown)} under {manipulated_dir}; "
            f"available: {', '.join(available)}"
        )
    return [method for method in dict.fromkeys(methods) if method != REAL_METHOD]


def _read_pair_splits(split_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Split of each real id and of each fake stem ("953_974" and "974_953") from the lists."""
    if not split_dir.is_dir():
        raise LrerrError(
            f"FF++ splits must be a folder holding train.json, val.json and test.json: {split_dir}"
        )
    real_split: dict[str, str] = {}
    fake_split: dict[str, str] = {}
    for split in SPLITS:
        for a, b in _read_pairs(split_dir / f"{split}.json"):
            for real in (a, b):
                if real_split.setdefault(real, split) != split:
                    raise LrerrError(
                        f"FF++ split lists in {split_dir} leak: real video {real} is in "
                        f"{real_split[real]} and {split} pairs"
                    )
            fake_split[f"{a}_{b}"] = fake_split[f"{b}_{a}"] = split
    return real_split, fake_split


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise LrerrError(f"FF++ split list not found: {path}")
    try:
        pairs = json.loads(read_text(path, "FF++ split list"))
    except ValueError as exc:
        raise LrerrError(f"FF++ split list {path} is not valid JSON: {exc}") from exc
    if not isinstance(pairs, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(i, str) for i in pair)
        for pair in pairs
    ):
        raise LrerrError(f'FF++ split list {path} must be a JSON list of ["id", "id"] pairs')
    return [(a, b) for a, b in pairs]
