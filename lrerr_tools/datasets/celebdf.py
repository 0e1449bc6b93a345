"""Celeb-DF (v2), split by its official list of testing videos."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from lrerr_tools.datasets.base import DatasetListing, VideoRecord, list_video_files, read_text
from lrerr_tools.errors import LrerrError

LAYOUT = "ROOT/Celeb-real/*.mp4, ROOT/YouTube-real/*.mp4 and ROOT/Celeb-synthesis/*.mp4"
TEST_LIST = "List_of_testing_videos.txt"
FOLDER_LABELS = {"Celeb-real": 0, "YouTube-real": 0, "Celeb-synthesis": 1}
# Videos of the official Celeb-DF (v2) release per folder, and its test videos (the
# "Dataset Structure" of the celeb-deepfakeforensics repository's README.md).
OFFICIAL_COUNTS = {"Celeb-real": 590, "YouTube-real": 300, "Celeb-synthesis": 5639, "test": 518}


def list_celebdf(
    root: Path,
    *,
    compression: str | None = None,
    methods: list[str] | None = None,
    splits: str | Path | None = None,
) -> DatasetListing:
    """List Celeb-DF videos: those in the test list are "test", the rest "train"."""
    test_list = Path(splits) if splits is not None else root / TEST_LIST
    test_ids = _read_test_list(test_list)
    videos = []
    for folder, label in FOLDER_LABELS.items():
        for path in list_video_files(root / folder):
            video_id = f"{folder}/{path.stem}"
            videos.append(
                VideoRecord(
                    video_id=video_id,
                    path=str(path),
                    label=label,
                    split="test" if video_id in test_ids else "train",
                    method=folder,
                    compression=None,
                    dataset="celebdf",
                )
            )
    return DatasetListing(videos, list(test_ids - {video.video_id for video in videos}), [test_list])


def _read_test_list(path: Path) -> set[str]:
    """Ids of the listed test videos, after checking each line's label against its folder."""
    if not path.is_file():
        raise LrerrError(
            f"Celeb-DF test list not found: {path} (needed to tell test from train; "
            "pass its path as splits if it lives elsewhere)"
        )
    test_ids = set()
    for line_no, line in enumerate(read_text(path, "Celeb-DF test list").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {line_no}"
        fields = line.split()
        if len(fields) != 2 or fields[0] not in ("0", "1"):
            raise LrerrError(f"{where}: expected '<1 real | 0 fake> <folder>/<video>'")
        rel = PurePosixPath(fields[1])
        if len(rel.parts) != 2 or rel.parts[0] not in FOLDER_LABELS:
            raise LrerrError(f"{where}: {fields[1]} is not in {', '.join(FOLDER_LABELS)}")
        # The official list marks real as 1, the opposite of our 1 = fake.
        if 1 - int(fields[0]) != FOLDER_LABELS[rel.parts[0]]:
            kind = "real" if fields[0] == "1" else "fake"
            raise LrerrError(f"{where}: {fields[1]} is marked {kind}, which its folder is not")
        test_ids.add(f"{rel.parts[0]}/{rel.stem}")
    return test_ids
