import pickle
import shutil
from collections import Counter

import cv2
import h5py
import numpy as np
import pytest
import torch
from test_shard import shared_extract_dir, shared_landmarks_dir, shared_png_shards
from torch.utils.data import DataLoader

from lrerr_tools.atomic_io import sha256_file
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import open_parent, read_manifest, write_stage
from lrerr_tools.shard import ShardConfig, run
from lrerr_tools.shard_dataset import ShardDataset, balanced_sampler


@pytest.fixture
def shards(ffpp_root, tmp_path_factory):
    return shared_png_shards(ffpp_root, tmp_path_factory)


@pytest.fixture
def ok_records(ffpp_root, tmp_path_factory):
    landmarks = shared_landmarks_dir(ffpp_root, tmp_path_factory)
    return [r for r in open_parent(landmarks, "landmarks").records() if r["status"] == "ok"]


def keys(records):
    return sorted((r["video_id"], r["frame_index"]) for r in records)


def test_filters_select_by_split_label_and_method(shards, ok_records):
    train = [r for r in ok_records if r["split"] == "train"]
    dataset = ShardDataset(shards)
    assert len(dataset) == len(train) == 22
    assert keys(dataset[i] for i in range(len(dataset))) == keys(train)
    assert len(ShardDataset(shards, split=None)) == 66
    assert len(ShardDataset(shards, split="val", labels=[0])) == 8
    fakes = ShardDataset(shards, split="test", labels=[1])
    assert set(fakes.labels.tolist()) == {1} and len(fakes) == 14
    swaps = ShardDataset(shards, split="train", methods=["FaceSwap", "youtube"])
    assert Counter(swaps[i]["method"] for i in range(len(swaps))) == {"youtube": 8, "FaceSwap": 6}
    # fake_methods keeps the reals without naming their source
    narrowed = ShardDataset(shards, split="train", fake_methods=["FaceSwap"])
    assert Counter(narrowed[i]["method"] for i in range(len(narrowed))) == {"youtube": 8, "FaceSwap": 6}
    assert len(ShardDataset(shards, split="unassigned")) == 0
    with pytest.raises(LrerrError, match="split must be one of"):
        ShardDataset(shards, split="training")


def test_items_hold_the_source_crop(shards, ok_records, ffpp_root, tmp_path_factory):
    extract = shared_extract_dir(ffpp_root, tmp_path_factory)
    dataset = ShardDataset(shards, split="val", fields=("key_mask", "landmarks"))
    by_key = {(r["video_id"], r["frame_index"]): r for r in ok_records}
    for i in (0, 7, len(dataset) - 1):
        item = dataset[i]
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 224, 224)
        assert item["key_mask"].dtype == torch.bool and item["key_mask"].shape == (196,)
        assert isinstance(item["label"], int) and isinstance(item["frame_index"], int)
        record = by_key[(item["video_id"], item["frame_index"])]
        crop = cv2.cvtColor(cv2.imread(str(extract / record["crop"])), cv2.COLOR_BGR2RGB)
        assert torch.equal(item["image"], torch.from_numpy(crop).permute(2, 0, 1))
        assert item["key_mask"].nonzero().flatten().tolist() == record["key_patches"]
        assert torch.equal(item["landmarks"], torch.tensor(record["landmarks"], dtype=torch.float32))
        assert item["label"] == record["label"] and record["split"] == "val"
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    # Only the fields asked for: a method that reads none pays for none.
    plain = ShardDataset(shards, split="val")[0]
    assert set(plain) == {"image", "label", "video_id", "frame_index", "method", "shard_sha256", "row"}
    # Which face of which shard: what the detector's frozen cache names faces by.
    entry = next(e for e in read_manifest(shards).extra["shards"] if e["sha256"] == plain["shard_sha256"])
    with h5py.File(shards / entry["file"], "r") as f:
        assert f["frame_index"][plain["row"]] == plain["frame_index"]
    with pytest.raises(LrerrError, match="unknown shard field 'depth'"):
        ShardDataset(shards, split="val", fields=("depth",))


def test_a_dataloader_with_two_workers_reads_every_face_once(shards, ok_records):
    dataset = ShardDataset(shards, split="train", fields=("key_mask",))
    dataset[0]  # opens a file here before the workers fork: they must open their own
    assert dataset._handles and pickle.loads(pickle.dumps(dataset))._handles == {}
    loader = DataLoader(dataset, batch_size=8, num_workers=2, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    seen = []
    for batch in loader:
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 224, 224)
        assert batch["key_mask"].dtype == torch.bool and batch["key_mask"].shape[1:] == (196,)
        assert batch["label"].dtype == torch.int64
        seen += zip(batch["video_id"], batch["frame_index"].tolist(), batch["label"].tolist())
    expected = sorted((r["video_id"], r["frame_index"], r["label"]) for r in ok_records
                      if r["split"] == "train")
    assert sorted(seen) == expected


def test_raw_shards_read_the_same(shards, ffpp_root, tmp_path_factory, tmp_path):
    landmarks = shared_landmarks_dir(ffpp_root, tmp_path_factory)
    run(ShardConfig(landmarks=str(landmarks), out=str(tmp_path / "raw"), shard_size=7, codec="raw"))
    png, raw = (ShardDataset(d, split="test", fields=("key_mask",)) for d in (shards, tmp_path / "raw"))
    assert len(png) == len(raw)
    for i in (0, 9, len(raw) - 1):
        a, b = png[i], raw[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["key_mask"], b["key_mask"])
        assert (a["video_id"], a["frame_index"]) == (b["video_id"], b["frame_index"])


def test_the_balanced_sampler_draws_real_and_fake_equally(shards):
    dataset = ShardDataset(shards, split=None)
    assert np.mean(dataset.labels) > 0.6  # 24 real, 42 fake
    sampler = balanced_sampler(dataset, num_samples=6000, seed=1)
    drawn = list(sampler)
    assert len(drawn) == 6000
    assert 0.47 < np.mean(dataset.labels[drawn]) < 0.53
    assert drawn == list(balanced_sampler(dataset, num_samples=6000, seed=1))
    assert len(list(balanced_sampler(dataset))) == len(dataset)


def test_the_balanced_sampler_needs_both_classes(shards):
    with pytest.raises(LrerrError, match="no real faces"):
        balanced_sampler(ShardDataset(shards, labels=[1]))


def test_shards_without_a_field_a_reader_needs_are_refused(shards, tmp_path):
    import h5py

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    for path in (copy / "shards").glob("*.h5"):
        with h5py.File(path, "a") as f:
            del f["key_mask"]
    reindex(copy)  # as an older version would have written them, hashes and all
    assert len(ShardDataset(copy, split="val")) == 22  # a reader of the images alone still works
    with pytest.raises(LrerrError, match=r"val-.*\.h5: has no key_mask — these shards cannot feed a reader "
                                         r"of key_mask; rebuild them with `lrerr-tools shard`"):
        ShardDataset(copy, split="val", fields=("key_mask",))


def reindex(shard_dir):
    """The shard index rewritten to the shards' present sizes and hashes."""
    manifest = read_manifest(shard_dir)
    for entry in manifest.extra["shards"]:
        path = shard_dir / entry["file"]
        entry.update(bytes=path.stat().st_size, sha256=sha256_file(path))
    write_stage(shard_dir, manifest, manifest.extra["shards"])
