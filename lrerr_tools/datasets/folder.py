"""A user's own videos: real/ and fake/ subfolders, or a path,label,split CSV."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from lrerr_tools.datasets.base import (
    SPLITS,
    UNASSIGNED,
    VIDEO_EXTENSIONS,
    DatasetListing,
    VideoRecord,
    list_video_files,
    read_text,
)
from lrerr_tools.errors import LrerrError

LAYOUT = "ROOT/real/** and ROOT/fake/** video files, or a path,label,split CSV given as splits"
CLASS_LABELS = {"real": 0, "fake": 1}
CSV_COLUMNS = ("path", "label", "split")
# A user's own videos: there is no official release to compare with.
OFFICIAL_COUNTS: dict[str, int] = {}


def list_folder(
    root: Path,
    *,
    compression: str | None = None,
    methods: list[str] | None = None,
    splits: str | Path | None = None,
) -> DatasetListing:
    """List real/ and fake/ (split "unassigned"), or the videos a CSV given as `splits` names."""
    # Absolute so that video ids can be taken relative to it whatever the caller passed.
    root = Path(os.path.abspath(root))
    if splits is not None:
        return _from_csv(root, Path(splits))
    videos = [
        _record(root, path, label, UNASSIGNED)
        for name, label in CLASS_LABELS.items()
        for path in list_video_files(root / name, recursive=True)
    ]
    return DatasetListing(videos, [])


def _record(root: Path, path: Path, label: int, split: str) -> VideoRecord:
    return VideoRecord(
        video_id=path.relative_to(root).with_suffix("").as_posix(),
        path=str(path),
        label=label,
        split=split,
        method="fake" if label else "real",
        compression=None,
        dataset="folder",
    )


def _from_csv(root: Path, csv_path: Path) -> DatasetListing:
    if csv_path.suffix.lower() != ".csv" or not csv_path.is_file():
        raise LrerrError(
            f"folder splits must be a .csv file with header path,label,split: {csv_path}"
        )
    rows = csv.reader(io.StringIO(read_text(csv_path, "split CSV")))
    header = [name.strip() for name in next(rows, [])]
    absent = [name for name in CSV_COLUMNS if name not in header]
    if absent:
        raise LrerrError(
            f"{csv_path}: header must be path,label,split (missing {', '.join(absent)})"
        )
    columns = [header.index(name) for name in CSV_COLUMNS]

    videos, missing = [], []
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        where = f"{csv_path} line {rows.line_num}"
        if len(row) < len(header):
            raise LrerrError(f"{where}: expected {len(header)} columns, got {len(row)}")
        rel, label, split = (row[i].strip() for i in columns)
        if label not in ("0", "1"):
            raise LrerrError(f"{where}: label must be 0 (real) or 1 (fake), got {label!r}")
        if split not in SPLITS:
            raise LrerrError(f"{where}: split must be train, val or test, got {split!r}")
        # Joining an absolute path onto root yields that absolute path unchanged.
        path = Path(os.path.abspath(root / rel))
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise LrerrError(f"{where}: {rel!r} is not a video ({', '.join(VIDEO_EXTENSIONS)})")
        if not path.is_relative_to(root):
            raise LrerrError(f"{where}: {rel} is outside the dataset root {root}")
        if path.is_file():
            videos.append(_record(root, path, int(label), split))
        else:
            missing.append(path.relative_to(root).with_suffix("").as_posix())
    return DatasetListing(videos, missing, [csv_path])
