"""Dataset adapters on tiny fake layouts: ids, labels, splits, and the errors users see."""

from __future__ import annotations

import inspect
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from lrerr_tools.datasets import (
    ADAPTERS,
    DatasetListing,
    VideoRecord,
    check_no_split_leak,
    list_videos,
)
from lrerr_tools.errors import LrerrError

FFPP_METHODS = ("Deepfakes", "FaceSwap")


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def write_pair_splits(split_dir: Path, **pairs: list[list[str]]) -> Path:
    split_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        (split_dir / f"{split}.json").write_text(json.dumps(pairs.get(split, [])))
    return split_dir


def make_ffpp(root: Path, comp: str = "c23") -> Path:
    reals = ("000", "003", "001", "002", "006")
    touch(root, *(f"original_sequences/youtube/{comp}/videos/{r}.mp4" for r in reals))
    for method in FFPP_METHODS:
        touch(
            root,
            *(
                f"manipulated_sequences/{method}/{comp}/videos/{stem}.mp4"
                for stem in ("000_003", "003_000", "001_002", "002_001")
            ),
        )
    # DFD shares the download; ffpp must leave it alone.
    touch(
        root,
        f"original_sequences/actors/{comp}/videos/01__talking.mp4",
        f"manipulated_sequences/DeepFakeDetection/{comp}/videos/01_02__talking__ABC.mp4",
    )
    return root


def make_celebdf(root: Path) -> Path:
    touch(
        root,
        "Celeb-real/id0_0000.mp4",
        "Celeb-real/id0_0001.mp4",
        "YouTube-real/00170.mp4",
        "Celeb-synthesis/id0_id1_0000.mp4",
        "Celeb-synthesis/id0_id1_0001.mp4",
    )
    (root / "List_of_testing_videos.txt").write_text(
        "1 YouTube-real/00170.mp4\n"
        "0 Celeb-synthesis/id0_id1_0000.mp4\n"
        "1 Celeb-real/id0_0000.mp4\n"
        "\n"
        "0 Celeb-synthesis/id9_id8_0007.mp4\n"
    )
    return root


def ids(listing: DatasetListing) -> list[str]:
    return [video.video_id for video in listing.videos]


def by_id(listing: DatasetListing) -> dict[str, VideoRecord]:
    return {video.video_id: video for video in listing.videos}


# --- FF++ -------------------------------------------------------------------------------


def test_ffpp_lists_reals_and_fakes_without_dfd(tmp_path):
    listing = list_videos("ffpp", make_ffpp(tmp_path))

    assert ids(listing) == sorted(ids(listing))
    assert "youtube/000" in ids(listing) and "FaceSwap/003_000" in ids(listing)
    assert len(listing.videos) == 5 + 4 * len(FFPP_METHODS)
    assert {v.method for v in listing.videos} == {"youtube", *FFPP_METHODS}
    for video in listing.videos:
        assert video.label == (0 if video.method == "youtube" else 1)
        assert (video.split, video.compression, video.dataset) == ("unassigned", "c23", "ffpp")
        assert Path(video.path).is_absolute() and Path(video.path).is_file()
    assert listing.missing == []


def test_ffpp_keeps_unknown_method_folder_as_its_own_method(tmp_path):
    make_ffpp(tmp_path)
    touch(tmp_path, "manipulated_sequences/NewGAN/c23/videos/000_003.mp4")

    assert by_id(list_videos("ffpp", tmp_path))["NewGAN/000_003"].label == 1


def test_ffpp_pair_rule_sends_both_fakes_and_both_reals_to_the_pairs_split(tmp_path):
    make_ffpp(tmp_path)
    split_dir = write_pair_splits(
        tmp_path / "splits", train=[["000", "003"]], val=[["001", "002"]], test=[["004", "005"]]
    )

    videos = by_id(list_videos("ffpp", tmp_path, splits=split_dir))

    for method in FFPP_METHODS:
        assert videos[f"{method}/000_003"].split == videos[f"{method}/003_000"].split == "train"
        assert videos[f"{method}/001_002"].split == videos[f"{method}/002_001"].split == "val"
    assert videos["youtube/000"].split == videos["youtube/003"].split == "train"
    assert videos["youtube/001"].split == videos["youtube/002"].split == "val"
    assert videos["youtube/006"].split == "unassigned"


def test_ffpp_reports_listed_videos_absent_on_disk(tmp_path):
    make_ffpp(tmp_path)
    split_dir = write_pair_splits(
        tmp_path / "splits", train=[["000", "003"]], test=[["004", "005"]]
    )

    listing = list_videos("ffpp", tmp_path, splits=split_dir)

    expected = {"youtube/004", "youtube/005"}
    expected |= {f"{m}/{stem}" for m in FFPP_METHODS for stem in ("004_005", "005_004")}
    assert listing.missing == sorted(expected)


@pytest.mark.parametrize("folder_name", ["c0", "raw"])
@pytest.mark.parametrize("compression", ["c0", "raw"])
def test_ffpp_uncompressed_folder_may_be_named_c0_or_raw(tmp_path, folder_name, compression):
    make_ffpp(tmp_path, comp=folder_name)

    listing = list_videos("ffpp", tmp_path, compression=compression)

    assert len(listing.videos) == 5 + 4 * len(FFPP_METHODS)
    assert {v.compression for v in listing.videos} == {"c0"}


def test_ffpp_compression_picks_only_its_own_folder(tmp_path):
    make_ffpp(tmp_path, comp="c40")
    touch(tmp_path, "original_sequences/youtube/c23/videos/999.mp4")

    listing = list_videos("ffpp", tmp_path, compression="c40")

    assert "youtube/999" not in ids(listing)
    with pytest.raises(LrerrError, match="compression"):
        list_videos("ffpp", tmp_path, compression="c99")


def test_ffpp_methods_filter_keeps_reals_and_named_fakes(tmp_path):
    listing = list_videos("ffpp", make_ffpp(tmp_path), methods=["FaceSwap"])

    assert {v.method for v in listing.videos} == {"youtube", "FaceSwap"}


def test_ffpp_unknown_method_names_the_available_ones(tmp_path):
    make_ffpp(tmp_path)

    with pytest.raises(LrerrError, match=r"NeuralTextures.*available: .*Deepfakes, .*FaceSwap"):
        list_videos("ffpp", tmp_path, methods=["FaceSwap", "NeuralTextures"])


def test_methods_asked_of_a_root_without_any_name_the_expected_layout(tmp_path):
    # e.g. --ffpp pointing one level too deep, or at the folder holding only the split lists
    (tmp_path / "splits").mkdir()

    root = re.escape(str(tmp_path))
    with pytest.raises(LrerrError, match=rf"no FF\+\+ methods under .* is {root} the FF\+\+ root\? "
                                         r"expected layout ROOT/original_sequences"):
        list_videos("ffpp", tmp_path, methods=["Deepfakes"])


def test_ffpp_real_in_pairs_of_two_splits_is_a_leak(tmp_path):
    make_ffpp(tmp_path)
    split_dir = write_pair_splits(
        tmp_path / "splits", train=[["000", "003"]], test=[["003", "001"]]
    )

    with pytest.raises(LrerrError, match="real video 003 is in train and test"):
        list_videos("ffpp", tmp_path, splits=split_dir)


def test_ffpp_split_dir_needs_all_three_lists(tmp_path):
    make_ffpp(tmp_path)
    split_dir = write_pair_splits(tmp_path / "splits", train=[["000", "003"]])
    (split_dir / "val.json").unlink()

    with pytest.raises(LrerrError, match=r"val\.json"):
        list_videos("ffpp", tmp_path, splits=split_dir)


def test_ffpp_malformed_split_list_is_a_user_error(tmp_path):
    make_ffpp(tmp_path)
    split_dir = write_pair_splits(tmp_path / "splits")
    (split_dir / "test.json").write_text('[["000", "003", "001"]]')

    with pytest.raises(LrerrError, match=r"test\.json"):
        list_videos("ffpp", tmp_path, splits=split_dir)


# --- DFD --------------------------------------------------------------------------------


def test_dfd_lists_actors_and_deepfakedetection_all_as_test(tmp_path):
    listing = list_videos("dfd", make_ffpp(tmp_path))

    assert ids(listing) == ["DeepFakeDetection/01_02__talking__ABC", "actors/01__talking"]
    videos = by_id(listing)
    assert videos["actors/01__talking"].label == 0
    assert videos["DeepFakeDetection/01_02__talking__ABC"].label == 1
    assert {(v.split, v.dataset, v.compression) for v in listing.videos} == {("test", "dfd", "c23")}


@pytest.mark.parametrize(("dataset", "make", "option", "message"), [
    ("dfd", make_ffpp, {"methods": ["Deepfakes"]}, "dfd has none to choose from"),
    ("celebdf", make_celebdf, {"methods": ["Celeb-synthesis"]}, "celebdf has none to choose from"),
    ("dfd", make_ffpp, {"splits": "splits"}, "--splits does not apply to dfd"),
])
def test_option_a_dataset_cannot_honour_is_refused_not_ignored(tmp_path, dataset, make, option, message):
    make(tmp_path)

    with pytest.raises(LrerrError, match=message):
        list_videos(dataset, tmp_path, **option)


def test_ffpp_refuses_deepfakedetection_by_name(tmp_path):
    with pytest.raises(LrerrError, match="DeepFakeDetection is the DFD dataset: extract it with --dataset "):
        list_videos("ffpp", make_ffpp(tmp_path), methods=["Deepfakes", "DeepFakeDetection"])


# --- Celeb-DF ---------------------------------------------------------------------------


def test_celebdf_converts_list_labels_and_splits(tmp_path):
    listing = list_videos("celebdf", make_celebdf(tmp_path))
    videos = by_id(listing)

    assert ids(listing) == sorted(videos)
    assert len(videos) == 5
    assert videos["YouTube-real/00170"].label == 0 and videos["YouTube-real/00170"].split == "test"
    assert videos["Celeb-synthesis/id0_id1_0000"].label == 1
    assert videos["Celeb-synthesis/id0_id1_0000"].split == "test"
    assert videos["Celeb-real/id0_0000"].split == "test"
    assert videos["Celeb-real/id0_0001"].split == "train"
    assert videos["Celeb-synthesis/id0_id1_0001"].split == "train"
    assert {v.method for v in listing.videos} == {"Celeb-real", "YouTube-real", "Celeb-synthesis"}
    assert {v.compression for v in listing.videos} == {None}
    assert listing.missing == ["Celeb-synthesis/id9_id8_0007"]


def test_celebdf_label_disagreeing_with_folder_names_the_line(tmp_path):
    make_celebdf(tmp_path)
    bad_list = tmp_path / "my_list.txt"
    # "1" means real in the official list, but Celeb-synthesis only holds fakes.
    bad_list.write_text("1 Celeb-real/id0_0000.mp4\n1 Celeb-synthesis/id0_id1_0000.mp4\n")

    with pytest.raises(LrerrError, match=r"my_list\.txt line 2"):
        list_videos("celebdf", tmp_path, splits=bad_list)


def test_celebdf_splits_overrides_the_test_list(tmp_path):
    make_celebdf(tmp_path)
    other = tmp_path / "other.txt"
    other.write_text("1 Celeb-real/id0_0001.mp4\n")

    videos = by_id(list_videos("celebdf", tmp_path, splits=other))

    assert [vid for vid, v in videos.items() if v.split == "test"] == ["Celeb-real/id0_0001"]


def test_celebdf_without_test_list_names_the_expected_path(tmp_path):
    make_celebdf(tmp_path)
    (tmp_path / "List_of_testing_videos.txt").unlink()

    with pytest.raises(LrerrError, match=r"List_of_testing_videos\.txt"):
        list_videos("celebdf", tmp_path)


# --- folder -----------------------------------------------------------------------------


def test_folder_subfolders_give_labels_and_nested_ids(tmp_path):
    touch(tmp_path, "real/a.mp4", "real/sub/b.MOV", "fake/c.webm", "fake/notes.txt", "other/d.mp4")

    listing = list_videos("folder", tmp_path)

    assert ids(listing) == ["fake/c", "real/a", "real/sub/b"]
    assert [v.label for v in listing.videos] == [1, 0, 0]
    assert [v.method for v in listing.videos] == ["fake", "real", "real"]
    assert {v.split for v in listing.videos} == {"unassigned"}


def test_folder_csv_lists_relative_and_absolute_paths(tmp_path):
    touch(tmp_path, "clips/a.mp4", "clips/b.mp4", "clips/c.avi")
    csv_path = tmp_path / "split.csv"
    csv_path.write_text(
        "path,label,split\n"
        "clips/a.mp4,0,train\n"
        f"{tmp_path / 'clips/b.mp4'},1,val\n"
        "clips/c.avi,1,test\n"
        "clips/gone.mp4,0,test\n"
    )

    listing = list_videos("folder", tmp_path, splits=csv_path)

    assert [(v.video_id, v.label, v.split, v.method) for v in listing.videos] == [
        ("clips/a", 0, "train", "real"),
        ("clips/b", 1, "val", "fake"),
        ("clips/c", 1, "test", "fake"),
    ]
    assert listing.missing == ["clips/gone"]


@pytest.mark.parametrize(
    ("row", "message"),
    [("clips/a.mp4,2,train", r"line 3: label"), ("clips/a.mp4,1,holdout", r"line 3: split")],
)
def test_folder_csv_bad_value_names_the_line(tmp_path, row, message):
    touch(tmp_path, "clips/a.mp4", "clips/b.mp4")
    csv_path = tmp_path / "split.csv"
    csv_path.write_text(f"path,label,split\nclips/b.mp4,0,train\n{row}\n")

    with pytest.raises(LrerrError, match=message):
        list_videos("folder", tmp_path, splits=csv_path)


def test_folder_csv_same_file_in_two_splits_is_a_leak(tmp_path):
    touch(tmp_path, "clips/a.mp4")
    csv_path = tmp_path / "split.csv"
    csv_path.write_text("path,label,split\nclips/a.mp4,0,train\nclips/a.mp4,0,test\n")

    with pytest.raises(LrerrError, match="clips/a"):
        list_videos("folder", tmp_path, splits=csv_path)


# --- official counts ---------------------------------------------------------------------


def test_short_ffpp_root_gets_one_line_per_group_short_of_the_official_release(tmp_path):
    listing = list_videos("ffpp", make_ffpp(tmp_path))

    # No --methods: every official method is expected, so absent folders are named too.
    assert listing.count_warnings == [
        "ffpp youtube c23: 5 of the official 1,000 videos",
        "ffpp Deepfakes c23: 4 of the official 1,000 videos",
        "ffpp Face2Face c23: 0 of the official 1,000 videos",
        "ffpp FaceSwap c23: 4 of the official 1,000 videos",
        "ffpp NeuralTextures c23: 0 of the official 1,000 videos",
        "ffpp FaceShifter c23: 0 of the official 1,000 videos",
    ]


def test_methods_left_out_on_purpose_are_not_reported_absent(tmp_path):
    listing = list_videos("ffpp", make_ffpp(tmp_path, comp="c40"), compression="c40",
                          methods=["FaceSwap"])

    assert listing.count_warnings == ["ffpp youtube c40: 5 of the official 1,000 videos",
                                      "ffpp FaceSwap c40: 4 of the official 1,000 videos"]


def test_full_ffpp_groups_are_quiet_and_extra_or_missing_videos_are_named(tmp_path):
    sizes = {"youtube": 1000, "Deepfakes": 1003, "Face2Face": 1000, "FaceSwap": 997,
             "NeuralTextures": 1000, "FaceShifter": 1000}
    for method, n in sizes.items():
        group = "original_sequences" if method == "youtube" else "manipulated_sequences"
        folder = tmp_path / group / method / "raw" / "videos"
        folder.mkdir(parents=True)
        for k in range(n):
            (folder / f"{k:04d}.mp4").write_bytes(b"")

    listing = list_videos("ffpp", tmp_path, compression="raw")

    assert listing.count_warnings == [
        "ffpp Deepfakes c0: 1,003 videos, 3 more than the official 1,000",
        "ffpp FaceSwap c0: 997 of the official 1,000 videos",
    ]


def test_celebdf_folders_and_test_list_are_compared_with_the_official_release(tmp_path):
    listing = list_videos("celebdf", make_celebdf(tmp_path))

    assert listing.count_warnings == [
        "celebdf Celeb-real: 2 of the official 590 videos",
        "celebdf YouTube-real: 1 of the official 300 videos",
        "celebdf Celeb-synthesis: 2 of the official 5,639 videos",
        "celebdf test: 3 of the official 518 videos",  # the fourth listed is not on disk
    ]


def test_dfd_is_compared_and_a_users_folder_has_no_official_counts(tmp_path):
    assert list_videos("dfd", make_ffpp(tmp_path)).count_warnings == [
        "dfd actors c23: 1 of the official 363 videos",
        "dfd DeepFakeDetection c23: 1 of the official 3,068 videos",
    ]
    touch(tmp_path / "mine", "real/a.mp4", "fake/b.mp4")
    assert list_videos("folder", tmp_path / "mine").count_warnings == []


# --- every adapter ----------------------------------------------------------------------


def make_folder_csv(root: Path) -> Path:
    touch(root, "v/a.mp4", "v/b.mp4", "v/c.mkv")
    (root / "split.csv").write_text(
        "path,label,split\nv/a.mp4,0,train\nv/b.mp4,1,val\nv/c.mkv,1,test\n"
    )
    return root


def make_ffpp_with_splits(root: Path) -> Path:
    make_ffpp(root)
    write_pair_splits(root / "splits", train=[["000", "003"]], val=[["001", "002"]])
    return root


LAYOUTS = {
    "ffpp": (make_ffpp_with_splits, "splits"),
    "dfd": (make_ffpp, None),
    "celebdf": (make_celebdf, None),
    "folder": (make_folder_csv, "split.csv"),
}


@pytest.mark.parametrize("dataset", sorted(LAYOUTS))
def test_no_video_or_identity_is_in_two_splits(tmp_path, dataset):
    make, splits = LAYOUTS[dataset]
    make(tmp_path)

    listing = list_videos(dataset, tmp_path, splits=tmp_path / splits if splits else None)

    assert listing.videos
    assert len(set(ids(listing))) == len(listing.videos)
    splits_of_path = defaultdict(set)
    for video in listing.videos:
        splits_of_path[video.path].add(video.split)
        assert json.loads(json.dumps(video.to_dict())) == video.to_dict()
    assert all(len(s) == 1 for s in splits_of_path.values())
    # FF++ fakes are made from two reals; both must sit in the fake's split.
    splits_of_id = {v.video_id: v.split for v in listing.videos}
    for video in listing.videos:
        if dataset == "ffpp" and video.label == 1 and video.split != "unassigned":
            for real in video.video_id.split("/")[1].split("_"):
                assert splits_of_id.get(f"youtube/{real}", video.split) == video.split


def test_adapters_share_one_keyword_signature():
    for adapter in ADAPTERS.values():
        params = inspect.signature(adapter).parameters
        assert list(params) == ["root", "compression", "methods", "splits"]
        assert {p.kind for name, p in params.items() if name != "root"} == {
            inspect.Parameter.KEYWORD_ONLY
        }


def record(video_id: str, path: str, split: str) -> VideoRecord:
    return VideoRecord(video_id, path, 0, split, "real", None, "folder")


def test_check_no_split_leak():
    check_no_split_leak([record("a", "/d/a.mp4", "train"), record("b", "/d/b.mp4", "test")])
    with pytest.raises(LrerrError, match="listed twice"):
        check_no_split_leak([record("a", "/d/a.mp4", "train"), record("a", "/d/b.mp4", "train")])
    with pytest.raises(LrerrError, match="train and test"):
        check_no_split_leak([record("a", "/d/a.mp4", "train"), record("b", "/d/a.mp4", "test")])


def test_missing_root_is_named(tmp_path):
    with pytest.raises(LrerrError, match="dataset root not found: .*nowhere"):
        list_videos("ffpp", tmp_path / "nowhere")


def test_empty_dataset_names_the_expected_layout(tmp_path):
    touch(tmp_path, "original_sequences/youtube/c23/videos/readme.txt")

    with pytest.raises(LrerrError, match=r"no ffpp videos found .*\(compression c23\).*youtube"):
        list_videos("ffpp", tmp_path)


def test_unknown_dataset_lists_the_choices(tmp_path):
    with pytest.raises(LrerrError, match="ffpp, celebdf, dfd, folder"):
        list_videos("dfdc", tmp_path)
