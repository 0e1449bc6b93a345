"""Time reading training input from HDF5 shards (png, jpeg, raw) against a loose PNG folder.

All four go through the same DataLoader settings (batch 32, 2 workers, shuffled, persistent
workers) over the same crops: the synthetic FF++ sample -> extract -> landmarks -> shard.
The folder baseline is what a training script without shards does: one PNG file per item,
read and decoded by cv2, with its label and key mask from an in-memory index. Files are in
the page cache (just written), so this measures the per-item cost, not the disk.

    python benchmarks/bench_shards.py [--pairs 3] [--frames 32] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lrerr_tools.extract import ExtractConfig
from lrerr_tools.extract import run as run_extract
from lrerr_tools.landmarks import LandmarksConfig
from lrerr_tools.landmarks import run as run_landmarks
from lrerr_tools.manifest import open_parent
from lrerr_tools.shard import CODECS, ShardConfig
from lrerr_tools.shard import run as run_shard
from lrerr_tools.shard_dataset import ShardDataset
from lrerr_tools.synth import make_ffpp_sample

BATCH, WORKERS = 32, 2


class PngFolder(Dataset):
    """The baseline: the crops as loose PNG files, returning the same item as ShardDataset."""

    def __init__(self, landmarks_dir: Path):
        parent = open_parent(landmarks_dir, "landmarks")
        extract_dir = Path(parent.manifest.parent["path"])
        ok = [r for r in parent.records() if r["status"] == "ok"]
        self.paths = [str(extract_dir / r["crop"]) for r in ok]
        self.labels = [r["label"] for r in ok]
        self.video_ids = [r["video_id"] for r in ok]
        self.frames = [r["frame_index"] for r in ok]
        self.masks = np.zeros((len(ok), 196), bool)
        for i, r in enumerate(ok):
            self.masks[i, r["key_patches"]] = True

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        rgb = cv2.cvtColor(cv2.imread(self.paths[i], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return {"image": torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
                "key_mask": torch.from_numpy(self.masks[i]), "label": self.labels[i],
                "video_id": self.video_ids[i], "frame_index": self.frames[i]}


def images_per_second(dataset: Dataset, epochs: int) -> list[float]:
    """One warm-up epoch (starts the workers, opens files), then `epochs` timed ones."""
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS, shuffle=True,
                        persistent_workers=True, generator=torch.Generator().manual_seed(0))
    rates = []
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        n = sum(len(batch["label"]) for batch in loader)
        if epoch:
            rates.append(n / (time.perf_counter() - start))
    return rates


def folder_bytes(paths: list[str]) -> int:
    return sum(os.path.getsize(p) for p in paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="FF++ pairs in the sample")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per loader")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_ffpp_sample(tmp / "sample", n_pairs=args.pairs, n_frames=args.frames + 8)
        run_extract(ExtractConfig(root=str(root), dataset="ffpp", splits=str(root / "splits"),
                                  out=str(tmp / "extract"), frames=args.frames, jobs=2))
        run_landmarks(LandmarksConfig(extract_dir=str(tmp / "extract"), out=str(tmp / "landmarks"),
                                      jobs=2))
        loaders: dict[str, tuple[Dataset, int]] = {}
        folder = PngFolder(tmp / "landmarks")
        loaders["png folder"] = (folder, folder_bytes(folder.paths))
        shard_seconds = {}
        for codec in CODECS:
            start = time.perf_counter()
            manifest = run_shard(ShardConfig(landmarks=str(tmp / "landmarks"), out=str(tmp / codec),
                                             codec=codec, jobs=1))
            shard_seconds[codec] = time.perf_counter() - start
            size = sum(e["bytes"] for e in manifest.extra["shards"])
            loaders[f"shards {codec}"] = (ShardDataset(tmp / codec, split=None), size)

        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for _ in range(2):  # interleaved rounds, so a busy moment doesn't favour one loader
            for name, (dataset, _) in loaders.items():
                rates[name] += images_per_second(dataset, args.epochs)

    n = len(folder)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, torch {torch.__version__}")
    print(f"{n} crops of 224x224 (synthetic FF++ sample, {args.pairs} pairs x {args.frames} frames); "
          f"DataLoader batch {BATCH}, {WORKERS} workers, shuffled; median of {len(rates[name])} epochs")
    base = statistics.median(rates["png folder"])
    print(f"{'':<14}{'images/s':>10}{'vs folder':>11}{'MB':>8}{'pack s':>8}")
    for name, (_, size) in loaders.items():
        rate = statistics.median(rates[name])
        codec = name.removeprefix("shards ")
        pack = f"{shard_seconds[codec]:>8.1f}" if codec in shard_seconds else f"{'-':>8}"
        print(f"{name:<14}{rate:>10.0f}{rate / base:>10.2f}x{size / 1e6:>8.1f}{pack}")


if __name__ == "__main__":
    main()
