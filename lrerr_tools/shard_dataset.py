"""A PyTorch Dataset over a shard directory (the output of `lrerr-tools shard`).

    ds = ShardDataset("work/shards", split="train", methods=["Deepfakes", "youtube"])
    loader = DataLoader(ds, batch_size=32, sampler=balanced_sampler(ds), num_workers=4)

At construction it reads the shard index from the manifest, checks the split's shards
against it (size and sha256) and reads, from each shard of the split, only the small
per-face arrays (label, method, video, frame, and the key mask when asked for), to filter
and to keep in memory (the key masks bit-packed: 25 bytes a face).
`fields` names the optional per-face keys an item carries: `key_mask`, `landmarks` (read
with the image). The HDF5 image
datasets are opened lazily, once per process, on first access: a DataLoader worker opens its
own handles, and pickling the dataset (which starting workers does) drops any open ones.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler
from tqdm import tqdm

from lrerr_tools.atomic_io import sha256_file
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import open_parent

SPLITS = ("train", "val", "test", "unassigned")
OPTIONAL_FIELDS = ("key_mask", "landmarks")
HASH_THREADS = 8
HASH_BAR_BYTES = 1 << 30  # a check that takes under a second or so needs no progress bar


class ShardDataset(Dataset):
    """Faces of one split (None: all), optionally only some labels (0 real, 1 fake) or methods.

    `fake_methods` keeps every real face but only the fakes of these methods (training on a
    subset of manipulations); `methods` filters reals and fakes alike. `only_videos` narrows
    a dataset to some videos' faces.

    An item is a dict: `image` uint8 tensor (3,S,S) RGB, `label` int, `video_id` str,
    `frame_index` int and `method` str, `shard_sha256` str and `row` int (which face of
    which shard it is: the name caches key faces by); with `fields`, also `key_mask` bool
    tensor (G*G,) and `landmarks` float32 tensor (68, 2) in crop pixels.
    """

    def __init__(self, shard_dir: str | Path, split: str | None = "train",
                 labels: Iterable[int] | None = None, methods: Iterable[str] | None = None,
                 fake_methods: Iterable[str] | None = None, fields: Iterable[str] = ()):
        self.shard_dir = Path(shard_dir)
        self.fields = tuple(fields)
        unknown = [f for f in self.fields if f not in OPTIONAL_FIELDS]
        if unknown:
            raise LrerrError(f"unknown shard field {unknown[0]!r}; the optional ones are "
                             f"{', '.join(OPTIONAL_FIELDS)}")
        if split is not None and split not in SPLITS:
            raise LrerrError(f"split must be one of {', '.join(SPLITS)} or None (got {split!r})")
        manifest = open_parent(self.shard_dir, "shard").manifest
        self.split = split
        self.key_region = manifest.extra.get("key_region")
        self.image_size = manifest.extra.get("image_size")
        self._mask_len = int((self.key_region or {}).get("grid", 14)) ** 2
        labels = None if labels is None else {int(x) for x in labels}
        methods = None if methods is None else set(methods)
        fake_methods = None if fake_methods is None else set(fake_methods)

        self.files: list[str] = []
        self.codecs: list[str] = []
        self.shard_rows: dict[str, int] = {}  # sha256 → faces in that shard, for every shard read
        self._sha256: list[str] = []  # by the shard's place in self.files
        self.video_ids: list[str] = []  # global tables the per-item arrays index into
        self.method_names: list[str] = []
        video_lookup: dict[str, int] = {}
        method_lookup: dict[str, int] = {}
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("shard", "row", "label", "frame",
                                                              "video", "method", "key_bits")}
        entries = [entry for entry in manifest.extra["shards"]
                   if (split is None or entry["split"] == split)
                   and (methods is None or methods & set(entry["methods"]))
                   and (labels is None or any(entry[("n_real", "n_fake")[x]] for x in labels & {0, 1}))
                   and (fake_methods is None or entry["n_real"] or fake_methods & set(entry["methods"]))]
        check_intact(self.shard_dir, entries)
        for entry in entries:
            with h5py.File(self.shard_dir / entry["file"], "r") as f:
                label = f["label"][:]
                frame = f["frame_index"][:]
                shard_videos = f["video_ids"].asstr()[:]
                shard_methods = f["methods"].asstr()[:]
                video = f["video_index"][:]
                method = f["method_index"][:]
                codec = f.attrs["codec"]
                absent = [name for name in self.fields if name not in f]
                if absent:
                    raise LrerrError(f"{self.shard_dir / entry['file']}: has no {absent[0]} — these shards "
                                     f"cannot feed a reader of {', '.join(self.fields)}; rebuild them with "
                                     "`lrerr-tools shard`")
                key_mask = f["key_mask"][:] if "key_mask" in self.fields else np.zeros((len(label), 0), bool)
            keep = np.ones(len(label), bool)
            if labels is not None:
                keep &= np.isin(label, list(labels))
            if methods is not None:
                keep &= np.isin(shard_methods[method], list(methods))
            if fake_methods is not None:
                keep &= (label == 0) | np.isin(shard_methods[method], list(fake_methods))
            if not keep.any():
                continue
            to_video = np.array([video_lookup.setdefault(v, len(video_lookup)) for v in shard_videos],
                                np.int32)
            to_method = np.array([method_lookup.setdefault(m, len(method_lookup)) for m in shard_methods],
                                 np.int32)
            rows = np.flatnonzero(keep)
            if key_mask.shape[1]:
                self._mask_len = key_mask.shape[1]
            parts["key_bits"].append(np.packbits(key_mask[rows], axis=1))
            parts["shard"].append(np.full(len(rows), len(self.files), np.int32))
            parts["row"].append(rows.astype(np.int32))
            parts["label"].append(label[rows])
            parts["frame"].append(frame[rows])
            parts["video"].append(to_video[video[rows]])
            parts["method"].append(to_method[method[rows]])
            self.files.append(str(self.shard_dir / entry["file"]))
            self._sha256.append(entry["sha256"])
            self.shard_rows[entry["sha256"]] = len(label)
            self.codecs.append(codec.decode() if isinstance(codec, bytes) else str(codec))
        self.video_ids = list(video_lookup)
        self.method_names = list(method_lookup)
        joined = {k: np.concatenate(v) if v else np.zeros(0, np.int32) for k, v in parts.items()}
        self._shard, self._row = joined["shard"], joined["row"]
        self.labels = joined["label"].astype(np.int64)  # per item, for samplers and class weights
        self.frame_index = joined["frame"].astype(np.int64)
        self._video, self._method = joined["video"], joined["method"]
        self._key_bits = joined["key_bits"]
        self._handles: dict[int, tuple] = {}
        self._pid = os.getpid()

    @property
    def face_videos(self) -> np.ndarray:
        """The video id of each face."""
        return np.asarray(self.video_ids, dtype=object)[self._video]

    def only_videos(self, videos: Iterable[str]) -> ShardDataset:
        """This dataset's faces of `videos` alone (`train-det --label-fraction`'s labelled
        videos), without reading or checking the shards again."""
        keep = np.isin(self.face_videos, list(set(videos)))
        subset = copy.copy(self)
        for name in ("_shard", "_row", "labels", "frame_index", "_video", "_method", "_key_bits"):
            setattr(subset, name, getattr(self, name)[keep])
        subset._handles = {}
        return subset

    def __len__(self) -> int:
        return len(self._row)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} faces")
        shard, row = int(self._shard[index]), int(self._row[index])
        image = self._images(shard)[row]
        if self.codecs[shard] != "raw":
            bgr = cv2.imdecode(image, cv2.IMREAD_COLOR)
            if bgr is None:
                raise OSError(f"{self.files[shard]}: image {row} does not decode")
            image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": int(self.labels[index]),
            "video_id": self.video_ids[self._video[index]],
            "frame_index": int(self.frame_index[index]),
            "method": self.method_names[self._method[index]],
            "shard_sha256": self._sha256[shard],
            "row": row,
        }
        if "key_mask" in self.fields:
            item["key_mask"] = torch.from_numpy(
                np.unpackbits(self._key_bits[index], count=self._mask_len).astype(bool))
        if "landmarks" in self.fields:
            item["landmarks"] = torch.from_numpy(self._handles[shard][0]["landmarks"][row].astype(np.float32))
        return item

    def _images(self, shard: int):
        if self._pid != os.getpid():  # forked after opening: the parent's handles are not ours
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            f = h5py.File(self.files[shard], "r")
            self._handles[shard] = (f, f["images"])
        return self._handles[shard][1]

    def close(self) -> None:
        """Close the HDF5 files this process opened (they reopen on the next access)."""
        for f, *_ in self._handles.values():
            f.close()
        self._handles = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # never pickle an open h5py file; each process opens its own
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()


def check_intact(shard_dir: Path, entries: list[dict]) -> None:
    """Refuse, before any training or scoring, a shard deleted, cut short or changed since the
    shard stage wrote it, rather than fail on its first bad image mid-epoch. Sizes first (one
    stat each), then the sha256 of every byte, several shards at once: hashlib releases the
    GIL, so this reads at disk speed (about 2 GB/s a core from the page cache)."""
    for entry in entries:
        path = shard_dir / entry["file"]
        size = path.stat().st_size if path.is_file() else None
        if size != entry["bytes"]:
            found = "is missing" if size is None else f"has {size} bytes, the manifest {entry['bytes']}"
            _refuse(shard_dir, path, found)
    total = sum(entry["bytes"] for entry in entries)
    with ThreadPoolExecutor(max_workers=min(HASH_THREADS, os.cpu_count() or 1)) as pool, \
            tqdm(total=total, unit="B", unit_scale=True, desc="checking shards",
                 disable=total < HASH_BAR_BYTES) as bar:
        paths = [shard_dir / entry["file"] for entry in entries]
        for entry, path, digest in zip(entries, paths, pool.map(sha256_file, paths)):
            bar.update(entry["bytes"])
            if digest != entry["sha256"]:
                _refuse(shard_dir, path, "changed since it was written (sha256 differs from the manifest)")


def _refuse(shard_dir: Path, path: Path, found: str) -> None:
    raise LrerrError(f"{path}: {found} — check the directory with `lrerr-tools verify {shard_dir}`, "
                     "then rebuild it with `lrerr-tools shard --overwrite`")


def balanced_sampler(dataset: ShardDataset, num_samples: int | None = None,
                     seed: int = 0, labelled: np.ndarray | None = None) -> WeightedRandomSampler:
    """Draw real and fake faces equally often (with replacement); `num_samples` defaults to
    the dataset's length, i.e. one epoch. `labelled` (a bool per face): only those faces'
    labels are read; they are drawn as often in all as their share of the faces, balanced
    real/fake among themselves, and the unlabelled ones uniformly, whatever their label."""
    labels = np.asarray(dataset.labels)
    known = np.ones(len(labels), bool) if labelled is None else np.asarray(labelled, bool)
    counts = np.bincount(labels[known], minlength=2)
    if counts[0] == 0 or counts[1] == 0:
        missing = "real" if counts[0] == 0 else "fake"
        raise LrerrError(f"cannot balance real and fake: the dataset holds no {missing} faces")
    share = known.mean()
    weights = np.where(known, share * 0.5 / counts[np.where(known, labels, 0)],
                       (1 - share) / max(1, (~known).sum()))
    weights = torch.from_numpy(weights)
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(weights, num_samples or len(labels), replacement=True,
                                 generator=generator)
