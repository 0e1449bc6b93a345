"""Dataset adapters: each lists a dataset's videos with labels and splits, opening none."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from lrerr_tools.datasets import celebdf, dfd, ffpp, folder
from lrerr_tools.datasets.base import (
    VIDEO_EXTENSIONS,
    DatasetListing,
    VideoRecord,
    check_no_split_leak,
    official_count_differences,
)
from lrerr_tools.errors import LrerrError

__all__ = [
    "ADAPTERS",
    "VIDEO_EXTENSIONS",
    "DatasetListing",
    "VideoRecord",
    "check_no_split_leak",
    "list_videos",
]

ADAPTERS: dict[str, Callable[..., DatasetListing]] = {
    "ffpp": ffpp.list_ffpp,
    "celebdf": celebdf.list_celebdf,
    "dfd": dfd.list_dfd,
    "folder": folder.list_folder,
}
_LAYOUTS = {
    "ffpp": ffpp.LAYOUT,
    "celebdf": celebdf.LAYOUT,
    "dfd": dfd.LAYOUT,
    "folder": folder.LAYOUT,
}
_OFFICIAL_COUNTS = {
    "ffpp": ffpp.OFFICIAL_COUNTS,
    "celebdf": celebdf.OFFICIAL_COUNTS,
    "dfd": dfd.OFFICIAL_COUNTS,
    "folder": folder.OFFICIAL_COUNTS,
}
# Only the FF++-layout datasets come in several compression levels.
_COMPRESSED = ("ffpp", "dfd")
# An option a dataset has no use for is refused rather than ignored, so that a user who
# asked for one method of Celeb-DF, or for official splits of DFD, does not get all of it.
_TAKES_METHODS = ("ffpp",)
_TAKES_SPLITS = ("ffpp", "celebdf", "folder")


def list_videos(
    dataset: str,
    root: str | Path,
    *,
    compression: str = "c23",
    methods: list[str] | None = None,
    splits: str | Path | None = None,
) -> DatasetListing:
    """List `dataset` under `root`, checked for split leaks and compared with the official
    counts (a subset is often meant, so a difference is a line in `count_warnings`, not an
    error); LrerrError if no video is found."""
    if dataset not in ADAPTERS:
        raise LrerrError(f"unknown dataset {dataset!r}; choose one of {', '.join(ADAPTERS)}")
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.exists():
        raise LrerrError(f"dataset root not found: {root}")
    if not root.is_dir():
        raise LrerrError(f"dataset root is not a folder: {root}")
    if methods and dataset not in _TAKES_METHODS:
        raise LrerrError(f"--methods selects FF++ fake methods; {dataset} has none to choose from")
    if splits is not None and dataset not in _TAKES_SPLITS:
        raise LrerrError(f"--splits does not apply to {dataset}: it has no official split, "
                         "every video is test")

    listing = ADAPTERS[dataset](root, compression=compression, methods=methods, splits=splits)
    check_no_split_leak(listing.videos)
    if not listing.videos:
        where = f"{root} (compression {compression})" if dataset in _COMPRESSED else str(root)
        layout = _LAYOUTS[dataset].format(comp=compression)
        raise LrerrError(f"no {dataset} videos found under {where} — expected layout {layout}")
    listing.count_warnings = official_count_differences(dataset, listing, _OFFICIAL_COUNTS[dataset],
                                                        methods)
    return listing
