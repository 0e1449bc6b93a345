"""Time `extract` at 32 frames per video against a naive baseline, in one run.

The baseline is what many preprocessing scripts do: read every frame with
cv2.VideoCapture.read() and detect (one frame at a time) on the sampled ones. Both use the
same detector, alignment and PNG writing, so the ratio isolates decoding and batching.

    python benchmarks/bench_extract.py [--videos 4] [--length 480] [--width 1280]

Videos are H.264 (like FF++'s c23, CRF 23) when ffmpeg is on PATH, else OpenCV's mp4v.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import cv2

from lrerr_tools.alignment import align_face
from lrerr_tools.detection import make_detector
from lrerr_tools.extract import ExtractConfig, run
from lrerr_tools.face_choice import choose_face
from lrerr_tools.sampling import sample_indices
from lrerr_tools.synth import astronaut_rgb, camera_clip, write_video


def make_videos(root: Path, count: int, length: int, width: int, h264: bool) -> list[Path]:
    size = (width, width * 9 // 16)
    paths = []
    for i in range(count):
        frames = camera_clip(astronaut_rgb(), length, size=size, seed=i)
        path = root / "real" / f"clip{i}.mp4"
        if h264:
            mp4v = write_video(root / "mp4v" / path.name, frames)
            path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(mp4v), "-c:v", "libx264",
                            "-crf", "23", "-pix_fmt", "yuv420p", str(path)], check=True)
            mp4v.unlink()
        else:
            write_video(path, frames)
        paths.append(path)
    return paths


def naive_baseline(paths: list[Path], frames: int, out: Path) -> int:
    detector = make_detector("retinaface-mnet")
    crops = 0
    for path in paths:
        cap = cv2.VideoCapture(str(path))
        wanted = set(sample_indices(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), frames=frames))
        index = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if index in wanted:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                face = choose_face(detector.detect([rgb])[0], rgb.shape, "largest")
                if face is not None:
                    crop, _ = align_face(rgb, face.kps)
                    cv2.imwrite(str(out / f"{path.stem}_{index}.png"), crop[..., ::-1])
                    crops += 1
            index += 1
        cap.release()
    return crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--length", type=int, default=480, help="frames per video")
    parser.add_argument("--width", type=int, default=1280, help="frame width (16:9)")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        h264 = shutil.which("ffmpeg") is not None
        paths = make_videos(tmp / "data", args.videos, args.length, args.width, h264)
        (tmp / "naive").mkdir()
        start = time.perf_counter()
        naive_crops = naive_baseline(paths, args.frames, tmp / "naive")
        naive = time.perf_counter() - start

        ours = {}
        for jobs in (1, 2):
            start = time.perf_counter()
            manifest = run(ExtractConfig(root=str(tmp / "data"), dataset="folder", jobs=jobs,
                                         out=str(tmp / f"jobs{jobs}"), frames=args.frames))
            ours[jobs] = (time.perf_counter() - start, manifest.counts["crops"])

    sampled = args.videos * args.frames
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.python_version()}")
    print(f"{args.videos} {'H.264' if h264 else 'mp4v'} videos x {args.length} frames at "
          f"{args.width}x{args.width * 9 // 16}, {args.frames} sampled per video")
    print(f"{'':<14}{'s/video':>10}{'frames/s':>10}{'crops':>8}{'vs naive':>10}")
    print(f"{'naive':<14}{naive / args.videos:>10.3f}{sampled / naive:>10.1f}{naive_crops:>8}"
          f"{1.0:>9.2f}x")
    for jobs, (seconds, crops) in ours.items():
        print(f"{f'extract -j{jobs}':<14}{seconds / args.videos:>10.3f}{sampled / seconds:>10.1f}"
              f"{crops:>8}{naive / seconds:>9.2f}x")


if __name__ == "__main__":
    main()
