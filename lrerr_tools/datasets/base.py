"""Records shared by every dataset adapter, and the split-leak check."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lrerr_tools.atomic_io import sha256_file
from lrerr_tools.errors import LrerrError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv",
                    ".wmv")
SPLITS = ("train", "val", "test")
UNASSIGNED = "unassigned"


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset; label 1 = fake, 0 = real."""

    video_id: str
    path: str
    label: int
    split: str
    method: str
    compression: str | None
    dataset: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DatasetListing:
    """Videos found on disk, plus split-list entries that are not there, the split-list files
    their splits (and, for a CSV, labels) were read from, and lines saying where the numbers
    of videos differ from the dataset's official release."""

    videos: list[VideoRecord]
    missing: list[str]
    split_files: list[Path] = field(default_factory=list)
    count_warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Sorted here so every adapter lists deterministically without having to remember to.
        self.videos = sorted(self.videos, key=lambda video: video.video_id)
        self.missing = sorted(set(self.missing))

    def splits_sha256(self) -> str | None:
        """One hash of the split lists' names and contents (None when none was read), so a
        list edited after an extract is noticed; moving the lists elsewhere changes nothing."""
        if not self.split_files:
            return None
        digest = hashlib.sha256()
        for path in sorted(self.split_files, key=lambda p: p.name):
            digest.update(f"{path.name}\0{sha256_file(path)}\n".encode())
        return digest.hexdigest()


def official_count_differences(
    dataset: str, listing: DatasetListing, official: dict[str, int], methods: list[str] | None = None
) -> list[str]:
    """One line per group of `official` (a group is a method or a split, e.g. "FaceSwap" or
    "test") whose number of listed videos is not the official one. With `methods` the user
    left groups out on purpose, so a group it does not name is compared only where it still
    has videos (FF++'s reals are listed whatever the methods): an unchosen method is not absent."""
    found = Counter(group for video in listing.videos for group in (video.method, video.split))
    # One adapter call lists one compression, so any record tells which.
    comp = next((f" {video.compression}" for video in listing.videos if video.compression), "")
    lines = []
    for group, expected in official.items():
        n = found[group]
        if n == expected or (methods and group not in methods and not n):
            continue
        where = f"{dataset} {group}{comp}"
        lines.append(f"{where}: {n:,} of the official {expected:,} videos" if n < expected else
                     f"{where}: {n:,} videos, {n - expected:,} more than the official {expected:,}")
    return lines


def list_video_files(directory: Path, *, recursive: bool = False) -> list[Path]:
    """Video files in `directory` as absolute paths, sorted; an absent directory has none.
    A video-named entry that is not a readable file (a dangling symlink, a folder) is
    skipped with a warning that names it, never in silence."""
    if not directory.is_dir():
        return []
    # abspath rather than resolve: a symlinked dataset keeps the paths the user knows.
    directory = Path(os.path.abspath(directory))
    candidates = directory.rglob("*") if recursive else directory.iterdir()
    named = sorted(path for path in candidates if path.suffix.lower() in VIDEO_EXTENSIONS)
    # Dot files are skipped: macOS copies leave "._x.mp4" resource forks next to videos.
    hidden = [path for path in named if path.name.startswith(".")]
    if hidden:
        log.warning("skipped %d hidden files named like videos in %s (e.g. %s; macOS leaves ._ copies)",
                    len(hidden), directory, hidden[0].name)
    videos = [path for path in named if not path.name.startswith(".") and path.is_file()]
    for path in sorted(set(named) - set(hidden) - set(videos)):
        why = "a symlink to nothing" if path.is_symlink() and not path.exists() else "not a file"
        log.warning("skipped %s: named like a video but %s", path, why)
    return videos


def read_text(path: Path, what: str) -> str:
    """Text of a user-supplied list file; a failed read is the user's to fix."""
    try:
        # utf-8-sig: lists saved from Excel or Notepad start with a BOM.
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LrerrError(f"cannot read {what} {path}: {exc}") from exc


def check_no_split_leak(videos: Iterable[VideoRecord]) -> None:
    """Raise LrerrError if a video id is listed twice or one file sits in two splits."""
    seen_ids: set[str] = set()
    split_of_path: dict[str, str] = {}
    for video in videos:
        if video.video_id in seen_ids:
            raise LrerrError(f"video id {video.video_id} is listed twice ({video.path})")
        seen_ids.add(video.video_id)
        split = split_of_path.setdefault(os.path.normpath(video.path), video.split)
        if split != video.split:
            raise LrerrError(f"split leak: {video.path} is in both {split} and {video.split}")
