"""Time `predict` on one minute of 720p video: seconds per minute of video and faces per
second, for each detector run given (e.g. the demo's `demo-out/ffpp-c23/det/xception` and
`.../lrerr`, which are full-size networks: legacy_xception, and a base MAE for LRErr).

    python benchmarks/bench_predict.py RUN... [--seconds 60] [--width 1280] [--frames 32] [--device cpu]

The video is 2 s of the astronaut filmed by a moving camera (`synth.camera_clip`), looped to
`--seconds` at 25 fps and written with OpenCV's mp4v: every sampled frame has one face.
Loading the model is timed apart from predicting, which includes reading and decoding the
video, RetinaFace, alignment and scoring.

The baseline, in the same run: the way to score a video without `predict`, as a dataset of
one (a `folder` dataset whose CSV lists the clip as a fake test video), through `extract`,
`landmarks`, `shard` and `score` called as the CLI calls them, with the detector's own
extract settings and the same sampled frames. Its "s/min" is all four stages, the model's
load in `score` included; "ratio" is that over `predict`'s load + predict.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import cv2

from lrerr_tools import extract as extract_stage
from lrerr_tools import landmarks, score, shard
from lrerr_tools.predict_media import predict_input, prepare
from lrerr_tools.synth import astronaut_rgb, camera_clip

FPS = 25


def make_video(path: Path, seconds: int, width: int) -> Path:
    size = (width, width * 9 // 16)
    loop = camera_clip(astronaut_rgb(), 2 * FPS, size=size, seed=0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, size)
    for i in range(seconds * FPS):
        writer.write(cv2.cvtColor(loop[i % len(loop)], cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def as_dataset_of_one(video: Path, run: str, setup, work: Path, device: str) -> float:
    """Seconds to score `video` through extract, landmarks, shard and score, fresh."""
    work.mkdir()
    (work / "list.csv").write_text(f"path,label,split\n{video.name},1,test\n")
    start = time.perf_counter()
    extract_stage.run(replace(setup.extract, root=str(video.parent), dataset="folder", methods=None,
                              keep_splits=None, splits=str(work / "list.csv"), out=str(work / "extract")))
    known = {f.name for f in fields(landmarks.LandmarksConfig)} - set(landmarks.LandmarksConfig.RUN_OPTIONS)
    trained = {k: v for k, v in setup.scorer.training["landmarks"].items() if k in known}
    landmarks.run(landmarks.LandmarksConfig(extract_dir=str(work / "extract"), out=str(work / "landmarks"),
                                            **trained))
    shard.run(shard.ShardConfig(landmarks=str(work / "landmarks"), out=str(work / "shards"),
                                codec=setup.shard_codec))
    score.run(score.ScoreConfig(shard_dir=str(work / "shards"), detector=run, out=str(work / "score"),
                                device=device, workers=0))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="train-det runs (or exported files)")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--width", type=int, default=1280, help="frame width (16:9)")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled (0: the detector's own)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "clip.mp4", args.seconds, args.width)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{platform.python_version()}; {args.seconds} s of {args.width}x{args.width * 9 // 16} "
              f"mp4v at {FPS} fps, {args.frames or 'as the detector'} frames sampled, --device {args.device}")
        print(f"{'detector':<40}{'load s':>8}{'s/min':>8}{'faces':>7}{'faces/s':>9}"
              f"{'dataset s/min':>15}{'ratio':>7}")
        for i, run in enumerate(args.runs):
            start = time.perf_counter()
            setup = prepare(run, frames=args.frames or None, device=args.device, progress=False)
            loaded = time.perf_counter() - start
            start = time.perf_counter()
            prediction = predict_input(video, setup)
            seconds = time.perf_counter() - start
            faces = sum(f.prob is not None for f in prediction.faces)
            baseline = "" if Path(run).is_file() else as_dataset_of_one(
                video, run, setup, Path(tmp) / f"dataset-{i}", args.device)
            line = (f"{run:<40}{loaded:>8.2f}{seconds * 60 / args.seconds:>8.2f}{faces:>7}"
                    f"{faces / seconds:>9.2f}")
            if baseline:
                line += f"{baseline * 60 / args.seconds:>15.2f}{baseline / (loaded + seconds):>7.2f}"
            print(line)


if __name__ == "__main__":
    main()
